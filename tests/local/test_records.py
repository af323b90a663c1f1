"""Data forms: loss masks for prompt/response and chat, chat templates, over-long records."""

from __future__ import annotations

import random

import pytest
import qlora_helpers as h

from local.records import DEFAULT_CHAT_TEMPLATE, IGNORE, encode_all


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    path = h.build_tiny_llama(tmp_path_factory.mktemp("tok"), hidden=32, layers=1)
    return AutoTokenizer.from_pretrained(str(path))


def _supervised(example) -> list[int]:
    return [t for t in example.labels if t != IGNORE]


def test_text_records_carry_the_loss_on_every_token(tok):
    [ex], stats = encode_all([{"text": "the cat sat"}], tok, max_len=64)
    assert ex.labels == ex.input_ids and ex.input_ids[-1] == tok.eos_token_id
    assert stats.records == 1 and stats.over_long == 0


def test_masking_random_prompts_fixed_responses_only_response_tokens_carry_loss(tok):
    """The issue's proof: whatever the prompt, the supervised tokens are exactly the response."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from local.batching import pad_collate

    rng = random.Random(0)
    response = "dog ran to park"
    want = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    records = [
        {
            "prompt": " ".join(rng.choice(h.WORDS) for _ in range(rng.randint(1, 9))),
            "response": response,
        }
        for _ in range(16)
    ]
    examples, _ = encode_all(records, tok, max_len=64)
    assert all(_supervised(e) == want for e in examples)
    # and in the model's loss: only logits that predict a response token get a gradient
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2))  # fmt: skip
    batch = pad_collate(examples[:4], tok.pad_token_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    out.logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    )
    loss.backward()
    has_grad = out.logits.grad.abs().sum(-1) > 0
    expected = torch.zeros_like(has_grad)
    expected[:, :-1] = batch["labels"][:, 1:] != IGNORE
    assert torch.equal(has_grad, expected)
    assert int(expected.sum()) == 4 * len(want)


def test_train_on_prompt_puts_the_loss_everywhere(tok):
    [ex], _ = encode_all(
        [{"prompt": "a b", "response": "c"}], tok, max_len=64, train_on_prompt=True
    )
    assert ex.labels == ex.input_ids


CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "where did the dog run"},
    {"role": "assistant", "content": "to the park"},
    {"role": "user", "content": "and the bird"},
    {"role": "assistant", "content": "over the tree"},
]


def test_chat_uses_the_default_template_and_masks_all_but_assistant_turns(tok):
    assert not tok.chat_template
    [ex], stats = encode_all(
        [{"messages": CHAT}], tok, max_len=256, chat_template=DEFAULT_CHAT_TEMPLATE
    )
    assert stats.kinds == {"chat": 1}
    text = tok.decode(ex.input_ids)
    assert text.startswith("### System:\nbe brief") and "### Assistant:\nto the park" in text
    spoken = tok.decode(_supervised(ex))
    assert "to the park" in spoken and "over the tree" in spoken
    assert "where did" not in spoken and "be brief" not in spoken and "bird" not in spoken
    assert spoken.count(tok.eos_token) == 2  # each assistant turn learns to stop


def test_chat_uses_the_tokenizers_own_template(tok):
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tok.name_or_path)
    own.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    [ex], _ = encode_all([{"messages": CHAT}], own, max_len=256)
    assert own.decode(ex.input_ids).startswith("<system>be brief</s><user>")
    spoken = own.decode(_supervised(ex))
    assert spoken == "to the park</s>over the tree</s>"


def test_over_long_records_are_counted_and_keep_their_response(tok):
    long_prompt = " ".join(["the cat sat on mat"] * 40)
    records = [{"prompt": long_prompt, "response": "fish swam"}, {"text": "short"}]
    want = tok("fish swam", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    left, stats = encode_all(records, tok, max_len=32, truncation="left")
    assert stats.over_long == 1 and stats.dropped == 0
    assert len(left[0].input_ids) == 32 and _supervised(left[0]) == want
    dropped, stats = encode_all(records, tok, max_len=32, truncation="drop")
    assert stats.over_long == 1 and stats.dropped == 1 and len(dropped) == 1
