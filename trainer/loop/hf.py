"""The HF ``Trainer`` as stage 1 uses it — every subclass and every private HF API in one place.

Private methods are overridden, and they are what pins ``transformers>=5.24``:

* ``_save_checkpoint`` (timing) and ``save_model`` (no gathered model in interim checkpoints),
  below;
* ``_run_epoch`` and ``_get_train_sampler``: the training sampler is the data stream's global
  order (:class:`trainer.data.stream.StreamSampler`), and its epoch is set where the Trainer
  names it;
* ``_run_epoch`` again (with ``_evaluate``): the epoch-end evaluation a checkpoint missed.

Why an evaluation is caught up on resume: with ``eval_strategy="epoch"`` and step-based saves,
a save that falls on an epoch's last step is written at the step's end, *before* the
epoch-end evaluation (HF's order: ``on_step_end`` save, then ``on_epoch_end`` evaluate). A run
resumed from that checkpoint starts the next epoch and never makes that evaluation: its
validation history and the convergence criterion's count would differ from the uninterrupted
run's (seen as a lost val point in CI). So the first epoch of a resume from an epoch boundary
first makes the evaluation the checkpoint lacks, on the restored weights, exactly as the
uninterrupted run did; if it converges the run there, no step is trained.

Why no gathered model in interim checkpoints: under ZeRO-3, ``Trainer._save_checkpoint`` first calls
``save_model``, which gathers every parameter into one 16-bit copy on rank 0 and writes it
(``stage3_gather_16bit_weights_on_model_save``), then writes the ZeRO shards. For a 7B model
that is 14 GB written by one rank on top of the 98 GB of shards, and 7–14 s inside a spot
notice, for weights nobody reads: a resume restores from the shards (the fp32 master copy
inside the optimizer shards). So periodic and interruption checkpoints are the shards plus the
trainer state (config, tokenizer, scheduler, RNG, ``trainer_state.json``); the consolidated
model is written for ``final/`` only (``save_model`` called directly, as
:func:`trainer.loop.publish.publish_final` does) or on request from a checkpoint
(``invoke export-checkpoint``, DeepSpeed's ``zero_to_fp32``).

The subclass also times every checkpoint save (``save_seconds``), which the spot-notice
decision and ``STATUS.json`` use.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from trainer.errors import TrainerError

log = logging.getLogger(__name__)

CONSOLIDATED_WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Weight files a consolidated model would add to a checkpoint folder (none in interim ones)."""


def is_consolidated_weight(relpath: str) -> bool:
    """Whether a checkpoint file is (a shard of) a gathered 16-bit/fp32 model, not a ZeRO shard."""
    name = relpath.rsplit("/", 1)[-1]
    if name in CONSOLIDATED_WEIGHT_NAMES:
        return True
    return name.startswith(("model-", "pytorch_model-")) and name.endswith((".safetensors", ".bin"))


def missed_epoch_end_eval(args: Any, state: Any, run_epoch_kwargs: dict[str, Any]) -> bool:
    """Whether this ``_run_epoch`` call starts a resume whose checkpoint lacks the evaluation
    that ends the previous epoch (see the module docstring)."""
    from transformers.trainer_utils import IntervalStrategy

    kw = run_epoch_kwargs
    if kw.get("resume_from_checkpoint") is None or kw.get("steps_trained_in_current_epoch"):
        return False  # a fresh start, or a resume in the middle of an epoch
    if kw.get("epoch") != kw.get("epochs_trained") or not state.global_step:
        return False  # not the resume's first epoch, or nothing trained yet
    if args.eval_strategy != IntervalStrategy.EPOCH or args.eval_delay > (state.epoch or 0):
        return False
    return not any(
        "eval_loss" in e and e.get("step") == state.global_step for e in state.log_history
    )


def build_trainer_class() -> type:
    """``StageOneTrainer``: built on first use (importing transformers takes seconds)."""
    from transformers import Trainer

    class StageOneTrainer(Trainer):
        """``Trainer`` whose checkpoints hold ZeRO shards + trainer state, no gathered model.

        ``interim_model=False`` (default) applies under DeepSpeed only; without DeepSpeed the
        model weights are the only copy of the state and are written as usual. ``on_saved`` is
        called with ``(global_step, seconds)`` after every checkpoint save, on every rank.
        """

        def __init__(
            self,
            *args: Any,
            interim_model: bool = False,
            on_saved: Callable[[int, float], None] | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.interim_model = interim_model
            self.on_saved = on_saved
            #: global step -> seconds the checkpoint save took on this rank
            self.save_seconds: dict[int, float] = {}

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            started = time.monotonic()
            super()._save_checkpoint(model, trial)
            seconds = time.monotonic() - started
            step = int(self.state.global_step)
            self.save_seconds[step] = round(seconds, 3)
            if self.on_saved is not None:
                self.on_saved(step, seconds)

        @functools.wraps(Trainer._run_epoch)  # its signature: streaming_trainer_class binds it
        def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
            if missed_epoch_end_eval(self.args, self.state, kwargs):
                log.info(
                    "resume: the checkpoint of step %d was saved before its epoch-end "
                    "evaluation; evaluating now, as the uninterrupted run did",
                    self.state.global_step,
                )
                self._evaluate(kwargs.get("trial"), kwargs.get("ignore_keys_for_eval"))
                if self.control.should_training_stop:  # that evaluation converged the run
                    self.control.should_save = False  # the step is already committed
                    return None
            return super()._run_epoch(*args, **kwargs)

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            if not (_internal_call and self.is_deepspeed_enabled and not self.interim_model):
                return super().save_model(output_dir, _internal_call)
            # A checkpoint: the shards come next from _save_optimizer_and_scheduler
            # (engine.save_checkpoint, every rank); here only what describes the model.
            output_dir = output_dir or self.args.output_dir
            if not self.args.should_save:
                return None
            os.makedirs(output_dir, exist_ok=True)
            unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            config = getattr(unwrapped, "config", None)
            if config is not None:
                config.save_pretrained(output_dir)
            generation = getattr(unwrapped, "generation_config", None)
            if generation is not None:
                generation.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            return None

    StageOneTrainer.__qualname__ = "StageOneTrainer"
    return StageOneTrainer


def streaming_trainer_class(base: type, sampler: Any) -> type:
    """``base`` (HF ``Trainer``) whose training sampler is ``sampler`` (the global order)."""

    import inspect

    run_epoch = getattr(base, "_run_epoch", None)
    if run_epoch is None or "epoch" not in inspect.signature(run_epoch).parameters:
        raise TrainerError(
            f"{base.__module__}.{base.__name__} has no _run_epoch(epoch=...): the streaming sampler "
            "needs transformers >= 5.24 (pip install 'transformers>=5.24,<6')"
        )

    class StreamingTrainer(base):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return sampler

        def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
            # accelerate's set_epoch does not reach a sampler behind skip_first_batches
            # (SkipBatchSampler -> BatchSamplerShard -> BatchSampler): a mid-epoch resume would
            # replay epoch 0's order. The epoch is set here, where the Trainer names it.
            epoch = inspect.signature(run_epoch).bind(self, *args, **kwargs).arguments["epoch"]
            sampler.set_epoch(epoch)
            return super()._run_epoch(*args, **kwargs)

    return StreamingTrainer
