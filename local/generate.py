"""``invoke generate``: text from a base model, base + adapter, or a merged export; streamed.

How a prompt is rendered (so the model sees what it was trained on):

* ``{"messages": [...]}`` prompts and ``--chat`` turns: the chat template (the tokenizer's, the one
  the adapter export carries, else ``local.records.DEFAULT_CHAT_TEMPLATE``), with the generation
  prompt;
* a plain prompt with ``--adapter``: the fine-tune's prompt/response form
  (``local.records.PROMPT_TEMPLATE``);
* a plain prompt without one: the model's chat template where it has one, else the raw text.

Greedy at ``temperature = 0``; otherwise sampling seeded per prompt, so the same seed gives the
same text whatever the order of the prompts. Prompts come from ``--prompt``, a file (one per
line, or JSON Lines ``{"prompt": ...}`` / ``{"messages": [...]}``), an encrypted file (``invoke
encrypt``, decrypted in memory in the sandbox with ``--key-file``) or the terminal (``--chat``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from local.errors import LocalError

log = logging.getLogger(__name__)

TARGET = "local.generate:generate_request"


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise LocalError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LocalError(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")


def parse_prompt_line(line: str, where: str) -> str | list[dict[str, str]] | None:
    """One prompt from a file line (pure): plain text, or JSON with ``prompt`` / ``messages``."""
    text = line.strip()
    if not text:
        return None
    if not text.startswith("{"):
        return text
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise LocalError(f"{where}: starts with '{{' but is not valid JSON") from None
    if isinstance(doc.get("prompt"), str):
        return doc["prompt"]
    if isinstance(doc.get("messages"), list):
        return doc["messages"]
    raise LocalError(f"{where}: a JSON prompt needs a 'prompt' string or a 'messages' list")


def read_prompts(path: Path, key: bytes | None) -> list[str | list[dict[str, str]]]:
    """The prompts of a plain or (with ``key``) encrypted file, decrypted in memory only."""
    if key is not None:
        from local.dataset import open_decrypted_text

        lines = open_decrypted_text(path, key)
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
    prompts = []
    for n, line in enumerate(lines, start=1):
        p = parse_prompt_line(line, f"{path.name}: line {n}")
        if p is not None:
            prompts.append(p)
    if not prompts:
        raise LocalError(f"--prompts {path}: no prompts in it")
    return prompts


def render(loaded: Any, prompt: str | list[dict[str, str]], adapter: bool) -> list[int]:
    """Token ids the model sees for ``prompt`` (rules in the module doc)."""
    from local.records import DEFAULT_CHAT_TEMPLATE, PROMPT_TEMPLATE

    tok = loaded.tokenizer
    if isinstance(prompt, str) and adapter:
        return list(tok(PROMPT_TEMPLATE.format(prompt=prompt))["input_ids"])
    if isinstance(prompt, str) and not loaded.chat_template:
        return list(tok(prompt)["input_ids"])
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(
        messages, chat_template=loaded.chat_template or DEFAULT_CHAT_TEMPLATE,
        add_generation_prompt=True, tokenize=False,
    )  # fmt: skip
    return list(tok(text, add_special_tokens=False)["input_ids"])


def generate_one(loaded: Any, ids: list[int], settings: Settings, out: TextIO | None) -> tuple[str, int]:
    """Generate from ``ids``, streaming decoded text to ``out``; ``(text, new tokens)``."""
    import torch
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if out is not None:
                out.write(text + ("\n" if stream_end else ""))
                out.flush()

    tok = loaded.tokenizer
    torch.manual_seed(settings.seed)
    sample = settings.temperature > 0
    with torch.no_grad():
        result = loaded.model.generate(
            input_ids=torch.tensor([ids], device=loaded.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=loaded.device),
            max_new_tokens=settings.max_new_tokens,
            do_sample=sample,
            temperature=settings.temperature if sample else None,
            top_p=None, top_k=None,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            streamer=_Streamer(tok, skip_prompt=True, skip_special_tokens=True),
        )  # fmt: skip
    new = result[0, len(ids) :].tolist()
    return tok.decode(new, skip_special_tokens=True), len(new)


def generate_request(request: dict[str, Any]) -> dict[str, Any]:
    """The sandboxed side: load, render, generate each prompt (or chat); texts + timings back."""
    from local.inference import load
    from local.offline import guarded

    model_dir = Path(request["model"])
    adapter = Path(request["adapter"]) if request.get("adapter") else None
    settings = Settings(**request["settings"])
    key = bytes.fromhex(request["key"]) if request.get("key") else None
    with guarded(request["airgapped"]):
        prompts = request.get("prompts") or []
        if request.get("prompts_file"):
            prompts = read_prompts(Path(request["prompts_file"]), key)
        loaded = load(model_dir, adapter)
        if request.get("chat_fd") is not None:
            return _chat(loaded, settings, os.fdopen(request["chat_fd"], "r"))
        texts, tokens, seconds = [], 0, 0.0
        for i, prompt in enumerate(prompts):
            if len(prompts) > 1:
                sys.stdout.write(f"--- [{i + 1}/{len(prompts)}]\n")
            start = time.perf_counter()
            text, n = generate_one(loaded, render(loaded, prompt, adapter is not None), settings, sys.stdout)
            seconds += time.perf_counter() - start
            texts.append(text)
            tokens += n
        log.info("generated %d tokens in %.2fs (%.1f tokens/s)", tokens, seconds, tokens / max(seconds, 1e-9))
        return {"texts": texts, "tokens": tokens, "seconds": seconds}


def _chat(loaded: Any, settings: Settings, terminal: TextIO) -> dict[str, Any]:
    """A conversation on the terminal: each reply joins the history; an empty line or EOF ends it."""
    messages: list[dict[str, str]] = []
    texts = []
    while True:
        sys.stdout.write("you> ")
        sys.stdout.flush()
        line = terminal.readline()
        if not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        sys.stdout.write("model> ")
        text, _n = generate_one(loaded, render(loaded, messages, False), settings, sys.stdout)
        messages.append({"role": "assistant", "content": text})
        texts.append(text)
    return {"texts": texts, "tokens": 0, "seconds": 0.0}
