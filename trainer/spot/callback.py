"""The spot-notice glue in the HF Trainer's loop: stop at the next micro-batch or step boundary.

The notice comes from :class:`trainer.spot.notice.InterruptionWatcher`; whether the interruption
checkpoint can be committed before the deadline is :func:`trainer.spot.deadline.decide_upload`
(pure). This module imports transformers: only the loop imports it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers import TrainerCallback

from artifacts.run import ExitCode
from trainer.dist import any_rank_true, earliest_across_ranks
from trainer.spot.deadline import decide_upload
from trainer.spot.notice import InterruptionWatcher

log = logging.getLogger(__name__)


class InterruptionCallback(TrainerCallback):
    """HF callback: once any rank has a notice, save the last completed step and stop.

    Checked at every micro-batch boundary (``on_substep_end``) as well as at every optimizer
    step (``on_step_end``): on a notice mid-accumulation the partial gradients are dropped and
    the checkpoint is the state of the last completed optimizer step (weights, optimizer,
    scheduler and data position have not moved since; a resume replays that step's
    micro-batches), so the notice waits at most one micro-batch instead of a whole step.

    Before asking for the save it reads the notice's deadline and asks
    :func:`trainer.spot.deadline.decide_upload` with ``estimate()`` (this node's measured bytes,
    upload throughput and save time); when the upload cannot finish in time on some node, no
    rank saves and the run relies on the last committed checkpoint (:attr:`decision`).

    After ``Trainer.train()`` returns, :attr:`interrupted` tells the entry point to exit 75;
    ``on_train_end`` has waited for the commit when a committer is given (and
    ``CommitCallback.on_train_end`` waits too). ``check_every`` > 1 trades reaction time for
    fewer all-reduces on very fast steps.
    """

    def __init__(
        self,
        watcher: InterruptionWatcher,
        *,
        committer: Any = None,
        check_every: int = 1,
        estimate: Any = None,
        clock: Any = time.time,
    ) -> None:
        self.watcher = watcher
        self.committer = committer
        self.check_every = max(1, int(check_every))
        self.estimate = estimate
        self.clock = clock
        self.interrupted = False
        self.interrupted_at_step: int | None = None
        #: True when the notice was acted on between two micro-batches of one step.
        self.mid_step = False
        self.decision: Any = None
        self.deadline: float | None = None
        #: Whether this callback asked for the interruption checkpoint to be saved.
        self.save = False
        #: The last completed step was already saved when the notice came (nothing to save).
        self.saved_before = False
        self.notice_to_commit_s: float | None = None

    def _interrupt(self, state: Any, control: Any, *, mid_step: bool) -> Any:
        if self.watcher.notice is None:
            self.watcher.set_notice("another rank was notified")
        self.interrupted = True
        self.mid_step = mid_step
        self.interrupted_at_step = state.global_step
        numbers = dict(self.estimate()) if self.estimate is not None else {}
        # The rank that read the notice knows the deadline; the node's local rank 0 knows
        # the upload numbers: every rank decides with the earliest deadline any rank saw.
        self.deadline = earliest_across_ranks(self.watcher.deadline)
        decision = self._agree(decide_upload(now=self.clock(), deadline=self.deadline, **numbers),
                               numbers)  # fmt: skip
        upload = decision.upload
        if decision.abandon and self.committer is not None:
            self.committer.abandon_inflight()
        # Only a node's local rank 0 submits, so only it knows the step is already saved: every
        # rank must take its answer, or one rank saves (a collective) while the others stop.
        saved = any_rank_true(
            self.committer is not None
            and getattr(self.committer, "has_submitted", lambda step: False)(state.global_step)
        )
        save = upload
        if upload and mid_step and (saved or state.global_step == 0):
            # The last completed step is already saved (its upload may be reading those very
            # files through hard links: rewriting them would corrupt it), or nothing is done
            # yet: waiting for that commit is the whole job.
            save = False
        self.decision = decision
        self.save = save
        self.saved_before = saved
        control.should_save = save
        control.should_training_stop = True
        if self.committer is not None and hasattr(self.committer, "expedite"):
            self.committer.expedite()  # uploads are now the critical path
        where = "between two micro-batches of step" if mid_step else "at the end of step"
        if upload:
            log.warning(
                "interrupted %s %d: saving the last completed step (%d), then stopping (%s)",
                where,
                state.global_step + (1 if mid_step else 0),
                state.global_step,
                decision.reason,
            )
        else:
            log.warning(
                "interrupted %s %d: not saving: %s",
                where,
                state.global_step + (1 if mid_step else 0),
                decision.reason,
            )
        return control

    def _agree(self, decision: Any, numbers: dict[str, Any]) -> Any:
        """One action for every node: the best one feasible on all of them (every node must
        upload the same steps, or the head waits for a part that never comes)."""
        from dataclasses import replace

        from trainer.spot.deadline import AGREED_ACTIONS

        mine = self._feasible(decision)
        allowed = tuple(a for a in AGREED_ACTIONS if not any_rank_true(a not in mine))
        action = "finish-and-save" if decision.action == "save" else decision.action
        saving = {"finish-and-save", "abandon-and-save"}
        if action in allowed or (action == "skip" and not saving & set(allowed)):
            return decision
        agreed = decide_upload(now=self.clock(), deadline=self.deadline, allowed=allowed, **numbers)
        if not agreed.upload and decision.upload:
            agreed = replace(
                agreed,
                reason="another node cannot finish its upload before the deadline; "
                + ("its in-flight checkpoint commits" if allowed else
                   "relying on the last committed checkpoint"),
            )  # fmt: skip
        return agreed

    @staticmethod
    def _feasible(decision: Any) -> set[str]:
        """The agreed-on actions this node could take before the deadline."""
        from trainer.spot.deadline import AGREED_ACTIONS

        if decision.needed_s is None:  # no deadline or nothing measured: it tries
            return set(AGREED_ACTIONS)
        fits = {a for a, s in decision.options.items() if s <= (decision.available_s or 0.0)}
        if "save" in fits:  # nothing in flight here: finishing or abandoning costs nothing
            fits |= {"finish-and-save", "abandon-and-save"}
        if not decision.inflight_bytes:
            fits.add("finish-only")
        return fits & set(AGREED_ACTIONS)

    def record(self, **extra: Any) -> dict[str, Any]:
        """This interruption for ``STATUS.json``: what, when, where, the decision, the time."""
        from datetime import UTC, datetime

        def iso(t: float | None) -> str | None:
            if t is None:
                return None
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        return {
            "notice": self.watcher.notice,
            "noticed_at": iso(self.watcher.noticed_at),
            "deadline": iso(self.deadline),
            "step": self.interrupted_at_step,
            "between_micro_batches": self.mid_step,
            # the interruption's step is in a checkpoint: saved now, or just before the notice
            "saved": self.save or (self.saved_before and bool(self.decision and self.decision.upload)),
            "saved_before_notice": self.saved_before,
            "decision": None if self.decision is None else self.decision.to_dict(),
            "notice_to_commit_s": self.notice_to_commit_s,
            **extra,
        }

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.interrupted or state.global_step % self.check_every:
            return control
        if any_rank_true(self.watcher.notice is not None):
            return self._interrupt(state, control, mid_step=False)
        return control

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # Every rank is at the same micro-batch (ZeRO-3 forwards are collective), so an
        # all-reduce here is as safe as at the step end; it costs one per micro-batch.
        if self.interrupted:
            return control
        if any_rank_true(self.watcher.notice is not None):
            return self._interrupt(state, control, mid_step=True)
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # Breaking out of the loop still runs the epoch-end hooks: no evaluation of a partial
        # epoch inside the notice window (it would also feed the convergence criterion an
        # evaluation an uninterrupted run never makes).
        if self.interrupted:
            control.should_evaluate = False
            if not self.save:
                control.should_save = False  # cannot finish in time, or already saved
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not self.interrupted:
            return control
        if self.committer is not None:
            self.committer.wait()
        if self.watcher.noticed_at is None:
            return control
        elapsed = round(time.time() - self.watcher.noticed_at, 2)
        if self.decision is not None and not self.decision.upload:
            log.warning(
                "interruption: notice -> stopped without saving in %.1fs (%s); exit %d",
                elapsed,
                self.decision.reason,
                ExitCode.INTERRUPTED,
            )
            return control
        self.notice_to_commit_s = elapsed
        log.warning(
            "interruption: notice -> checkpoint of step %s committed in %.1fs; exit %d",
            self.interrupted_at_step,
            self.notice_to_commit_s,
            ExitCode.INTERRUPTED,
        )
        return control
