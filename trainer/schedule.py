"""When to checkpoint: every ``save_steps`` optimizer steps *or* every ``save_minutes``, whichever first.

Why time as well as steps: the brief's ``save_steps = 10000`` at ~90 s per optimizer step of a 7B
model is a checkpoint every ten days; a preemption whose notice save fails (no notice, a notice
too short for the upload) would lose all of that. With a time bound the loss is at most the
interval (plus one upload). The decisions are pure functions of a clock reading; the HF glue
(:class:`TimedSaveCallback`) takes the clock as an argument so tests drive it with a fake one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def save_due(now: float, last_save: float, save_minutes: float) -> bool:
    """Whether ``save_minutes`` (0 = off) have passed between ``last_save`` and ``now`` (seconds)."""
    if save_minutes <= 0:
        return False
    return now - last_save >= save_minutes * 60.0


def at_risk_minutes(now: float, last_commit: float | None, started: float | None = None) -> float:
    """Minutes of training a preemption right now would lose: since the last commit (or the start).

    ``now``, ``last_commit`` and ``started`` are Unix times; with neither a commit nor a start
    known, nothing can be said and 0 is returned.
    """
    since = last_commit if last_commit is not None else started
    if since is None:
        return 0.0
    return max(0.0, (now - since) / 60.0)


def at_risk_line(now: float, last_commit: float | None, started: float | None = None) -> str:
    """What ``invoke status`` and ``STATUS.json`` say about the work a preemption would cost."""
    minutes = at_risk_minutes(now, last_commit, started)
    what = "the last commit" if last_commit is not None else "the start (no commit yet)"
    return f"at risk since {what}: {minutes:.0f} min"


def _any_rank_true(flag: bool) -> bool:
    from trainer.spot import _any_rank_true as agree

    return agree(flag)


def _build_timed_save_callback() -> type:
    from transformers import TrainerCallback

    class TimedSaveCallback(TrainerCallback):
        """HF callback: ask for a save once ``save_minutes`` have passed since the last save.

        Every rank takes the same decision (a ZeRO-3 save is collective): the flag is all-reduced
        (MAX), so a rank whose clock runs ahead decides for all. Any save (by steps, convergence,
        interruption) restarts the interval. ``clock`` is injectable (tests use a fake one);
        ``agree`` is the cross-rank decision (identity without a process group).
        """

        def __init__(
            self,
            save_minutes: float,
            *,
            clock: Clock = time.monotonic,
            agree: Callable[[bool], bool] = _any_rank_true,
        ) -> None:
            self.save_minutes = float(save_minutes)
            self.clock = clock
            self.agree = agree
            self.last_save = clock()
            self.timed_saves: list[int] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.last_save = self.clock()  # the model load and data preparation are not at risk
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.save_minutes <= 0:
                return control
            due = self.agree(save_due(self.clock(), self.last_save, self.save_minutes))
            if due and not control.should_save:
                control.should_save = True
                self.timed_saves.append(int(state.global_step))
                log.info(
                    "step %d: %.0f min since the last save; checkpointing (training.save_minutes)",
                    state.global_step,
                    self.save_minutes,
                )
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.last_save = self.clock()
            return control

    TimedSaveCallback.__qualname__ = "TimedSaveCallback"
    return TimedSaveCallback


def __getattr__(name: str) -> Any:
    # Subclasses transformers' TrainerCallback: built on first use so importing stays cheap.
    if name == "TimedSaveCallback":
        cls = _build_timed_save_callback()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
