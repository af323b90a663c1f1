"""The privacy audit separates a deliberately memorised canary set from held-out records."""

from __future__ import annotations

import dataclasses
import random

import pytest
import qlora_helpers as h

from local.audit import probe, run_audit
from local.config import load_config
from local.records import IGNORE, Example


def test_probe_starts_at_the_first_supervised_token():
    ex = Example([1, 2, 3, 4, 5, 6, 7], [IGNORE, IGNORE, 3, 4, 5, 6, 7])
    assert probe(ex, prefix=2, k=3) == ([1, 2, 3, 4], [5, 6, 7])
    assert probe(ex, prefix=2, k=4) is None  # too short to probe


@pytest.mark.slow
def test_a_memorised_canary_set_is_separated_from_held_out():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(0)

    def canary() -> Example:
        ids = [rng.randrange(3, 300) for _ in range(20)]  # random tokens: nothing to generalise
        return Example(ids, ids)

    train, held = [canary() for _ in range(8)], [canary() for _ in range(8)]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.tensor([e.input_ids for e in train])
    model.train()
    for _ in range(150):  # memorise the canaries
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    cfg = dataclasses.replace(load_config(h.TINY_CONFIG), audit_records=8, audit_prefix_tokens=4,
                              audit_verbatim_tokens=8)  # fmt: skip
    from local.training import evaluate

    held_loss = evaluate(model, held, cfg, device="cpu", compute_dtype="float32", pad_id=0)
    audit = run_audit(model, train, held, cfg, device="cpu", compute_dtype="float32", pad_id=0,
                      heldout_loss=held_loss)  # fmt: skip
    assert audit["records"] == {"train": 8, "heldout": 8}
    assert audit["train_exposure"] >= 0.75 and audit["heldout_exposure"] == 0.0
    assert audit["loss_gap"] > 1.0
