"""The HF ``TrainerCallback``s that make the Trainer's loop a stage-1 run.

Each is thin: the decisions live in the package that owns them (the convergence criterion in
:mod:`artifacts.convergence`, when to save in :mod:`trainer.checkpoint.schedule`, the commit in
:mod:`trainer.checkpoint.committer`, the data position in :mod:`trainer.data.stream`); a callback
only reads the Trainer's state at the right hook. The spot-notice callback is
:mod:`trainer.spot.callback`. This module imports transformers: only the loop imports it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from artifacts.convergence import ConvergenceCriterion
from artifacts.run import RunState
from trainer.checkpoint.committer import CheckpointCommitter
from trainer.checkpoint.schedule import Clock, save_due
from trainer.data.stream import POSITION_FILE, GlobalOrder, position
from trainer.dist import any_rank_true, barrier
from trainer.status import loss_history

log = logging.getLogger(__name__)

CONVERGENCE_FILE = "convergence.json"
LOSS_HISTORY_FILE = "loss_history.json"

Metadata = dict[str, Any] | Callable[[Any], dict[str, Any]] | None


def checkpoint_metadata(state: Any) -> dict[str, Any]:
    """What every checkpoint's manifest says about training, from the HF ``TrainerState``."""
    evals = [
        {"step": e.get("step"), "epoch": e.get("epoch"), "eval_loss": e["eval_loss"]}
        for e in getattr(state, "log_history", []) or []
        if "eval_loss" in e
    ]
    return {
        "global_step": int(state.global_step),
        "epoch": None if state.epoch is None else float(state.epoch),
        "val_losses": evals,
        "best_metric": getattr(state, "best_metric", None),
    }


class ConvergenceCallback(TrainerCallback):
    """Feeds each evaluation's loss to the criterion; saves and stops once converged.

    Also: saves at the epoch limit (so the last state is committed), writes
    ``convergence.json`` and ``loss_history.json`` into every checkpoint folder (global rank
    0, before the commit callback submits it) and updates ``STATUS.json`` after every eval.
    """

    def __init__(
        self, criterion: ConvergenceCriterion, history: list[dict[str, Any]], status: Any
    ) -> None:
        self.criterion = criterion
        self.history = history
        self.status = status

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True  # epoch/step limit: commit the last state too
        return control

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        **kw: Any,
    ) -> Any:
        loss = (metrics or {}).get("eval_loss")
        stalled = self.criterion.is_stall(loss) and self.criterion.best is not None
        converged = self.criterion.update(loss)
        self.history.append(
            {
                "step": state.global_step,
                "epoch": state.epoch,
                "val_loss": loss,
                "stalled": bool(stalled),
            }
        )
        log.info(
            "epoch %.2f step %d: val loss %.4f (best %.4f, %d/%d stalls)",
            state.epoch or 0.0,
            state.global_step,
            float("nan") if loss is None else loss,
            float("nan") if self.criterion.best is None else self.criterion.best,
            self.criterion.stalls,
            self.criterion.patience,
        )
        if converged:
            log.info("converged at step %d: saving, publishing, stopping", state.global_step)
            control.should_save = True
            control.should_training_stop = True
        self.status.write(
            RunState.RUNNING,
            global_step=state.global_step,
            epoch=state.epoch,
            best_val_loss=self.criterion.best,
            converged=converged,
            converged_at_step=state.global_step if converged else None,
            val_loss_history=self.history,
            world_size=args.world_size,
        )
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            doc = {"criterion": self.criterion.state_dict(), "val_loss_history": self.history}
            (folder / CONVERGENCE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
            (folder / LOSS_HISTORY_FILE).write_text(
                json.dumps(loss_history(state.log_history), indent=2) + "\n"
            )
        return control


def restore_convergence(folder: Path, criterion: ConvergenceCriterion) -> list[dict[str, Any]]:
    """Load ``convergence.json`` of a resumed checkpoint into ``criterion``; returns the val history."""
    path = folder / CONVERGENCE_FILE
    if not path.exists():
        log.warning("resume: %s has no %s; convergence counting restarts", folder, CONVERGENCE_FILE)
        return []
    doc = json.loads(path.read_text())
    criterion.load_state_dict(doc["criterion"])
    log.info(
        "resume: convergence state restored (best %s, %d/%d stalls)",
        criterion.best,
        criterion.stalls,
        criterion.patience,
    )
    return list(doc.get("val_loss_history", []))


class StepTimer(TrainerCallback):
    """Wall time between consecutive optimizer steps (data, forward, backward, step, callbacks).

    Intervals that contain an evaluation or a save are left out, so the number is the steady
    training step time (reported in ``training_summary.json``; used by the benchmarks).
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None
        #: wall clock of this launch's first optimizer step (relaunch → first step, benchmarks)
        self.first_step_unix: float | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.first_step_unix is None:
            self.first_step_unix = time.time()
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._last = None
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._last = None
        return control

    def summary(self, skip: int = 5) -> dict[str, Any]:
        """Median and p90 of the step times after the first ``skip`` (warm-up) steps."""
        times = sorted(self.times[skip:])
        if not times:
            return {"n": 0, "median_s": None, "p90_s": None}
        return {
            "n": len(times),
            "median_s": times[len(times) // 2],
            "p90_s": times[min(len(times) - 1, int(len(times) * 0.9))],
        }


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
        agree: Callable[[bool], bool] = any_rank_true,
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


class CommitCallback(TrainerCallback):
    """HF callback: after each save, local rank 0 of every node submits the checkpoint.

    ``metadata`` (a dict, or a function of the ``TrainerState``) is merged over
    :func:`checkpoint_metadata`; the core adds convergence state and the config hash.
    ``on_train_end`` waits for the last commit and then holds every rank at a barrier, so no
    rank exits (and makes the launcher kill the uploader) before the commit is written.
    """

    def __init__(self, committer: CheckpointCommitter, *, metadata: Metadata = None) -> None:
        self.committer = committer
        self.metadata = metadata

    def _extra(self, state: Any) -> dict[str, Any]:
        if self.metadata is None:
            return {}
        return dict(self.metadata(state) if callable(self.metadata) else self.metadata)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        barrier()  # every rank has finished writing its shards and RNG state
        if getattr(args, "local_process_index", 0) == 0:
            local_dir = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            meta = {**checkpoint_metadata(state), **self._extra(state)}
            self.committer.submit(local_dir, state.global_step, meta)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if getattr(args, "local_process_index", 0) == 0:
            self.committer.wait()
        barrier()
        return control


class DataPositionCallback(TrainerCallback):
    """Writes ``data_position.json`` into every checkpoint (global rank 0), so a resume can check
    it continues the same stream (:func:`trainer.data.stream.check_resume_position`)."""

    def __init__(self, order: GlobalOrder, fingerprint: str) -> None:
        self.order = order
        self.fingerprint = fingerprint

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            doc = position(state.global_step, self.order, self.fingerprint)
            (folder / POSITION_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        return control


class ReshardReport(TrainerCallback):
    """Logs, on every rank once the checkpoint is loaded, what the resharding load read
    (:mod:`trainer.checkpoint.reshard`): bytes of old slices and the old files opened."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        from trainer.checkpoint.reshard import loaded_report

        got = loaded_report()
        log.info(
            "resume: resharded load on rank %d read %.1f MB of old slices from old rank(s) %s",
            args.process_index,
            got["bytes_read"] / 1e6,
            got["old_ranks_opened"],
        )
        return control
