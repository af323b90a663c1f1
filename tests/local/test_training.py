"""The training loop: packing keeps records apart, evaluation every N steps, early stop, order."""

from __future__ import annotations

import dataclasses

import pytest
import qlora_helpers as h

from local import training
from local.config import load_config
from local.errors import LocalError


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    assert training.epoch_order(10, 0, 1) == training.epoch_order(10, 0, 1)
    assert training.epoch_order(10, 0, 1) != training.epoch_order(10, 0, 2)
    assert sorted(training.epoch_order(10, 3, 0)) == list(range(10))
    rest = list(training.micro_batches(10, 4, 0, 0, cursor=1))
    assert rest == list(training.micro_batches(10, 4, 0, 0, cursor=0))[1:]


def test_packed_batches_have_no_padding_and_per_record_positions():
    from local.batching import non_pad_fraction, pack_collate
    from local.records import IGNORE, Example

    a, b = Example([1, 2, 3], [IGNORE, 2, 3]), Example([4, 5], [4, 5])
    batch = pack_collate([a, b])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5]]  # no loss across the seam
    assert "attention_mask" not in batch
    assert non_pad_fraction([[a, b]]) == (5 / 6, 1.0)


def test_early_stop_needs_evaluations():
    with pytest.raises(LocalError, match="early_stop_patience.*needs eval_steps"):
        dataclasses.replace(load_config(h.TINY_CONFIG), eval_steps=0, early_stop_patience=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from local import finetune

    model_dir = h.build_tiny_llama(tmp_path_factory.mktemp("m"))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = load_config(h.TINY_CONFIG)
    examples, _ = finetune.tokenize_records(h.records(40), tok, cfg)
    return model_dir, cfg, examples


def _model(model_dir, cfg):
    from local import finetune

    return finetune.load_qlora_model(model_dir, cfg, "cpu", "float32", ["q_proj", "v_proj"])


@pytest.mark.slow
def test_packing_is_detected_and_trains_with_fewer_positions(setup):
    from local.batching import packing_works

    model_dir, cfg, examples = setup
    model = _model(model_dir, cfg)
    assert packing_works(model, "cpu", 300)
    kw = dict(device="cpu", compute_dtype="float32", steps=4, pad_id=0)
    packed = training.train(model, examples[:32], examples[32:], cfg, packed=True, **kw)
    padded = training.train(
        _model(model_dir, cfg), examples[:32], examples[32:], cfg, packed=False, **kw
    )
    assert packed.tokens < padded.tokens  # same records, no pad positions
    assert packed.loss_after < packed.loss_before


@pytest.mark.slow
def test_eval_every_n_steps_and_early_stop_with_stage_1s_criterion(setup):
    model_dir, cfg, examples = setup
    # a learning rate of ~0: the held-out loss never improves, every evaluation after the first stalls
    cfg = dataclasses.replace(cfg, learning_rate=1e-12, eval_steps=2, early_stop_patience=2,
                              max_steps=40, checkpoint_steps=0)  # fmt: skip
    stats = training.train(
        _model(model_dir, cfg), examples[:32], examples[32:], cfg, device="cpu",
        compute_dtype="float32", steps=40, pad_id=0, packed=False,
    )  # fmt: skip
    assert [s for s, _ in stats.evals] == [2, 4, 6]  # best at 2, stalls at 4 and 6 → stop
    assert stats.early_stopped and stats.steps == 6
