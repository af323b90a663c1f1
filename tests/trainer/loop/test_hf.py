"""A resume from a checkpoint saved on an epoch's last step makes the epoch-end evaluation it lacks.

HF saves at the step's end and evaluates at the epoch's end (``eval_strategy="epoch"``), so such a
checkpoint's ``log_history`` has no evaluation of that step; a plain ``Trainer`` resumed from it
goes on to the next epoch and that validation point (and the convergence count) is lost. CI once
saw it as ``[4, 6, 8] == [2, 4, 6, 8]`` in the interruption e2e test when the notice came just
after the step-2 commit. Tiny GPT-2 on random tokens, CPU, no DeepSpeed: this is the loop's logic.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.loop.hf import missed_epoch_end_eval

SPE = 3  # optimizer steps per epoch


def _train(out: Path, *, base: type | None = None, resume: str | None = None, callbacks=()):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments, default_data_collator

    from trainer.loop.hf import build_trainer_class

    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": t, "labels": t} for t in torch.randint(0, 64, (SPE * 4, 16), generator=g)]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    args = TrainingArguments(
        output_dir=str(out), num_train_epochs=3, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, eval_strategy="epoch", save_strategy="steps",
        save_steps=SPE, logging_strategy="steps", logging_steps=1, report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=1,
    )  # fmt: skip
    trainer = (base or build_trainer_class())(
        model=model, args=args, train_dataset=rows, eval_dataset=rows[:4],
        data_collator=default_data_collator, callbacks=list(callbacks),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _evals(trainer) -> list[tuple[int, float]]:
    return [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]


def test_resume_at_an_epoch_boundary_evaluates_like_the_uninterrupted_run(tmp_path: Path) -> None:
    from transformers import Trainer

    full = _train(tmp_path / "a")
    assert [s for s, _ in _evals(full)] == [SPE, 2 * SPE, 3 * SPE]
    start = str(tmp_path / "a" / f"checkpoint-{SPE}")

    # Control: the stock Trainer loses the evaluation of step SPE (the test can fail).
    stock = _train(tmp_path / "stock", base=Trainer, resume=start)
    assert [s for s, _ in _evals(stock)] == [2 * SPE, 3 * SPE]

    resumed = _train(tmp_path / "b", resume=start)
    assert [s for s, _ in _evals(resumed)] == [s for s, _ in _evals(full)]
    # The restored weights give the uninterrupted run's value (later steps' training differs with
    # HF's own shuffling here; exact training on resume is the e2e tests' job, with our sampler).
    assert _evals(resumed)[0][1] == pytest.approx(_evals(full)[0][1], rel=1e-6)


def test_a_caught_up_evaluation_that_converges_trains_no_further_step(tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class StopAtFirstEval(TrainerCallback):
        def on_evaluate(self, args, state, control, **kw):
            control.should_training_stop = True
            control.should_save = True
            return control

    _train(tmp_path / "a")
    resumed = _train(
        tmp_path / "b", resume=str(tmp_path / "a" / f"checkpoint-{SPE}"), callbacks=[StopAtFirstEval()]
    )
    assert resumed.state.global_step == SPE  # stopped where the uninterrupted run would have
    assert [s for s, _ in _evals(resumed)] == [SPE]
    assert not (tmp_path / "b" / f"checkpoint-{SPE}").exists()  # the step was already committed


def _state(step: int, epoch: float, evals: tuple[int, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step, epoch=epoch, log_history=[{"step": s, "eval_loss": 1.0} for s in evals]
    )


def _kw(**over):
    return {"resume_from_checkpoint": "/ckpt", "epoch": 1, "epochs_trained": 1,
            "steps_trained_in_current_epoch": 0, **over}  # fmt: skip


@pytest.mark.parametrize(
    ("state", "kw", "strategy", "expected"),
    [
        (_state(3, 1.0), _kw(), "epoch", True),
        (_state(3, 1.0, evals=(3,)), _kw(), "epoch", False),  # the checkpoint has it
        (_state(3, 1.0), _kw(resume_from_checkpoint=None), "epoch", False),  # fresh start
        (_state(4, 1.33), _kw(steps_trained_in_current_epoch=1), "epoch", False),  # mid-epoch
        (_state(3, 1.0), _kw(epoch=2), "epoch", False),  # a later epoch of the resume
        (_state(0, 0.0), _kw(epoch=0, epochs_trained=0), "epoch", False),  # nothing trained
        (_state(3, 1.0), _kw(), "steps", False),  # step evaluations precede the save
        (_state(3, 1.0), _kw(), "no", False),
    ],
)
def test_which_resumes_lack_the_epoch_end_evaluation(state, kw, strategy, expected) -> None:
    args = SimpleNamespace(eval_strategy=strategy, eval_delay=0)
    assert missed_epoch_end_eval(args, state, kw) is expected
