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
    units = training.epoch_units([5] * 10, 0, 0)
    assert units == [[i] for i in training.epoch_order(10, 0, 0)]
    rest = list(training.micro_batches(units, 4, cursor=1))
    assert rest == list(training.micro_batches(units, 4, cursor=0))[1:]
    assert list(training.micro_batches(units, 4, cursor=0))[0] == units[:4]


def test_packing_fills_sequences_up_to_max_seq_len_in_the_epoch_order():
    lengths = [30, 50, 20, 64, 10, 40, 5]
    units = training.epoch_units(lengths, 1, 0, pack_to=64)
    order = training.epoch_order(7, 1, 0)
    assert [i for u in units for i in u] == order  # every record once, order kept
    assert all(sum(lengths[i] for i in u) <= 64 for u in units)
    assert len(units) < len(lengths)  # several records per sequence
    assert training.epoch_units(lengths, 1, 0, pack_to=64) == units  # pure


def test_packed_rows_keep_records_apart_and_pad_with_a_pseudo_record():
    from local.batching import collate, non_pad_fraction
    from local.records import IGNORE, Example

    a, b, c = Example([1, 2, 3], [IGNORE, 2, 3]), Example([4, 5], [4, 5]), Example([6], [6])
    batch = collate([[a, b], [c]], 0, packed=True)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [
        [IGNORE, 2, 3, IGNORE, 5],  # no loss across the seam between a and b
        [IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
    ]
    assert "attention_mask" not in batch
    padded = collate([[a], [b], [c]], 0, packed=False)
    assert padded["input_ids"].shape == (3, 3) and padded["attention_mask"].sum() == 6
    assert non_pad_fraction([[[a], [b], [c]]]) == 6 / 9
    assert non_pad_fraction([[[a, b], [c]]]) == 6 / 10


def test_early_stop_needs_evaluations():
    with pytest.raises(LocalError, match="early_stop_patience.*needs eval_steps"):
        dataclasses.replace(load_config(h.TINY_CONFIG), eval_steps=0, early_stop_patience=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from local import tokens

    model_dir = h.build_tiny_llama(tmp_path_factory.mktemp("m"))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cfg = load_config(h.TINY_CONFIG)
    examples, _ = tokens.tokenize_records(h.records(40), tok, cfg)
    return model_dir, cfg, examples


def _model(model_dir, cfg):
    from local.model import load_qlora_model

    return load_qlora_model(model_dir, cfg, "cpu", "float32", ["q_proj", "v_proj"])


@pytest.mark.slow
def test_packing_is_detected_and_fits_more_records_per_step(setup):
    from local.batching import packing_works

    model_dir, cfg, examples = setup
    model = _model(model_dir, cfg)
    assert packing_works(model, "cpu", 300)
    kw = dict(device="cpu", compute_dtype="float32", steps=4, pad_id=0)
    cfg = dataclasses.replace(cfg, max_seq_len=128)  # records <= 64 tokens: two or more per row
    packed = training.train(model, examples[:32], examples[32:], cfg, packed=True, **kw)
    padded = training.train(
        _model(model_dir, cfg), examples[:32], examples[32:], cfg, packed=False, **kw
    )
    assert packed.records >= 1.5 * padded.records  # several records per row
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
