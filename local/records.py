"""Records → token ids and labels: which tokens carry the loss, and what happens when too long.

Three forms (``local.dataset`` validates them):

* ``text`` — every token carries the loss;
* ``prompt``/``response`` — rendered with :data:`PROMPT_TEMPLATE`; the loss is on the response
  (and the EOS after it) only, unless ``train_on_prompt = true``;
* ``messages`` (``system``/``user``/``assistant`` turns) — rendered with the tokenizer's chat
  template (:data:`DEFAULT_CHAT_TEMPLATE` where it has none); the loss is on the assistant turns
  only. Spans are found by rendering each prefix of the conversation and mapping characters to
  tokens with the fast tokenizer's offsets, so any template that renders prefixes as prefixes
  works.

Over-long records (more than ``max_seq_len`` tokens) are counted; ``truncation = "left"`` keeps
the last ``max_seq_len`` tokens (the response and the end of the prompt survive),
``truncation = "drop"`` skips them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from local.errors import LocalError

IGNORE = -100
PROMPT_TEMPLATE = "### Prompt:\n{prompt}\n\n### Response:\n"
#: Used for ``messages`` records when the base tokenizer has no chat template (documented in
#: docs/finetune.md and exported as ``chat_template.jinja`` with the adapter).
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass(frozen=True)
class Example:
    """One training sequence: token ids and per-token labels (``IGNORE`` = no loss)."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class EncodeStats:
    """Counts for the log and the result line (never contents)."""

    records: int = 0
    over_long: int = 0
    dropped: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def record_kind(record: dict[str, Any]) -> str:
    if "messages" in record:
        return "chat"
    if "prompt" in record:
        return "prompt-response"
    return "text"


def record_fields(record: dict[str, Any]) -> list[str]:
    """The private strings of a record (for the export scan's n-grams)."""
    if "messages" in record:
        return [m["content"] for m in record["messages"]]
    if "prompt" in record:
        return [record["prompt"], record["response"]]
    return [record["text"]]


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _chat(
    record: dict[str, Any], tokenizer: Any, template: str | None
) -> tuple[list[int], list[bool]]:
    messages = record["messages"]
    kwargs: dict[str, Any] = {"tokenize": False}
    if template is not None:
        kwargs["chat_template"] = template
    full = tokenizer.apply_chat_template(messages, **kwargs)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = (
            tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, **kwargs)
            if i
            else ""
        )
        upto = tokenizer.apply_chat_template(messages[: i + 1], **kwargs)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise LocalError(
                "the chat template does not render a conversation's prefixes as prefixes; "
                "assistant turns cannot be located for loss masking (use prompt/response records)"
            )
        spans.append((len(before), len(upto)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    mask = [any(s <= a < e for s, e in spans) for a, _b in enc["offset_mapping"]]
    return ids, mask


def encode(
    record: dict[str, Any],
    tokenizer: Any,
    *,
    train_on_prompt: bool = False,
    chat_template: str | None = None,
) -> tuple[list[int], list[bool]]:
    """``(ids, supervised)`` of one record before truncation (``supervised[i]``: token i has loss)."""
    eos = tokenizer.eos_token_id
    kind = record_kind(record)
    if kind == "text":
        ids = [*_ids(tokenizer, record["text"], True), eos]
        sup = [True] * len(ids)
    elif kind == "prompt-response":
        head = _ids(tokenizer, PROMPT_TEMPLATE.format(prompt=record["prompt"]), True)
        tail = [*_ids(tokenizer, record["response"], False), eos]
        ids, sup = head + tail, [False] * len(head) + [True] * len(tail)
    else:
        ids, sup = _chat(record, tokenizer, chat_template)
    if train_on_prompt:
        sup = [True] * len(ids)
    return ids, sup


def encode_all(
    records: Iterable[dict[str, Any]],
    tokenizer: Any,
    *,
    max_len: int,
    truncation: str = "left",
    train_on_prompt: bool = False,
    chat_template: str | None = None,
    on_record: Any = None,
) -> tuple[list[Example], EncodeStats]:
    """Encode every record (truncating or dropping over-long ones); ``on_record(record)`` sees
    each record first (the export scan samples n-grams there)."""
    from tqdm.auto import tqdm

    if tokenizer.eos_token_id is None:
        raise LocalError(
            "the model's tokenizer has no EOS token; add one to its tokenizer_config.json"
        )
    stats = EncodeStats()
    out = []
    for record in tqdm(records, desc="decrypt + tokenize", unit="rec", leave=False):
        if on_record is not None:
            on_record(record)
        stats.records += 1
        kind = record_kind(record)
        stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
        ids, sup = encode(
            record, tokenizer, train_on_prompt=train_on_prompt, chat_template=chat_template
        )
        if len(ids) > max_len:
            stats.over_long += 1
            if truncation == "drop":
                stats.dropped += 1
                continue
            ids, sup = ids[-max_len:], sup[-max_len:]
        if not any(sup):
            stats.dropped += 1  # nothing left to learn from (e.g. no assistant turn survived)
            continue
        out.append(Example(ids, [t if s else IGNORE for t, s in zip(ids, sup, strict=True)]))
    return out, stats


def chat_template_for(tokenizer: Any) -> str | None:
    """``None`` to use the tokenizer's own template, or the default when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return None
    return DEFAULT_CHAT_TEMPLATE
