"""Time-based checkpoints (``training.save_minutes``) on a fake clock, and the at-risk figure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from trainer.checkpoint.schedule import at_risk_line, at_risk_minutes, save_due
from trainer.config import config_from_dict, load_config
from trainer.errors import TrainerError


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, minutes: float) -> None:
        self.t += minutes * 60.0


def test_save_due_is_a_pure_function_of_the_clock():
    assert not save_due(now=100.0, last_save=100.0, save_minutes=30)
    assert not save_due(now=100.0 + 29.9 * 60, last_save=100.0, save_minutes=30)
    assert save_due(now=100.0 + 30 * 60, last_save=100.0, save_minutes=30)
    assert not save_due(now=1e9, last_save=0.0, save_minutes=0)  # 0 = off


def test_at_risk_since_the_last_commit():
    assert at_risk_minutes(now=1000.0 + 17 * 60, last_commit=1000.0) == pytest.approx(17)
    assert at_risk_line(1000.0 + 17 * 60 + 20, 1000.0) == "at risk since the last commit: 17 min"
    assert at_risk_line(700.0, None, started=100.0) == (
        "at risk since the start (no commit yet): 10 min"
    )
    assert at_risk_minutes(5.0, None) == 0.0


def test_recipe_key_and_validation(tmp_path):
    assert load_config("configs/pretrain-p4d.toml").training.save_minutes == 30
    raw = {"data": {"generated_corpus": True}, "training": {"save_minutes": -1}}
    with pytest.raises(TrainerError, match="training.save_minutes: must be >= 0"):
        config_from_dict(raw, source="r.toml")
    raw["training"]["save_minutes"] = 0
    assert config_from_dict(raw).training.save_minutes == 0.0


def _control() -> SimpleNamespace:
    return SimpleNamespace(should_save=False)


def test_callback_fires_on_the_fake_clock_and_restarts_after_any_save():
    pytest.importorskip("transformers")
    from trainer.loop.callbacks import TimedSaveCallback

    clock = FakeClock()
    votes: list[bool] = []
    cb = TimedSaveCallback(30, clock=clock, agree=lambda f: votes.append(f) or f)
    cb.on_train_begin(None, None, _control())
    state = SimpleNamespace(global_step=1)
    clock.advance(29)
    assert not cb.on_step_end(None, state, _control()).should_save
    clock.advance(1)
    state.global_step = 2
    assert cb.on_step_end(None, state, _control()).should_save
    cb.on_save(None, state, _control())
    clock.advance(10)
    state.global_step = 3
    assert not cb.on_step_end(None, state, _control()).should_save  # the interval restarted
    cb.on_save(None, state, _control())  # a step-based save also restarts it
    clock.advance(25)
    assert not cb.on_step_end(None, state, _control()).should_save
    assert cb.timed_saves == [2]
    assert len(votes) == 4  # every step is voted on by every rank (a ZeRO-3 save is collective)


def test_another_rank_past_the_interval_makes_every_rank_save():
    pytest.importorskip("transformers")
    from trainer.loop.callbacks import TimedSaveCallback

    cb = TimedSaveCallback(
        30, clock=FakeClock(), agree=lambda flag: True
    )  # the all-reduce said yes
    assert cb.on_step_end(None, SimpleNamespace(global_step=5), _control()).should_save


def test_real_trainer_loop_saves_by_time_before_save_steps(tmp_path):
    """HF Trainer (no DeepSpeed), 12 steps, save_steps far away: saves come from the clock only."""
    torch = pytest.importorskip("torch")
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainer.loop.callbacks import TimedSaveCallback

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, x, y):
            return {"loss": torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), y)}

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int):
            return {"x": torch.full((4,), float(i)), "y": torch.tensor(float(i))}

    clock = FakeClock()

    class Tick(TrainerCallback):
        """Each optimizer step takes 7 minutes of fake time."""

        def on_step_begin(self, args, state, control, **kw):
            clock.advance(7)

    saved: list[int] = []

    class Saved(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            saved.append(state.global_step)

    timed = TimedSaveCallback(30, clock=clock, agree=lambda f: f)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=1,
        max_steps=12,
        save_strategy="steps",
        save_steps=1000,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_only_model=True,
    )
    trainer = Trainer(
        model=Tiny(), args=args, train_dataset=Data(), callbacks=[Tick(), timed, Saved()]
    )
    trainer.train()
    # 7 min per step, 30 min interval: due after steps 5 (35 min), 10 (35 min after 5); step 12 is
    # HF's own save at max_steps.
    assert timed.timed_saves == [5, 10]
    assert saved[:2] == [5, 10]
    assert (tmp_path / "checkpoint-5").is_dir() and (tmp_path / "checkpoint-10").is_dir()
