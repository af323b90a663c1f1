"""The training run on every rank: config → CPU adaptations → data → model → HF Trainer → finish.

The HF ``Trainer`` (with DeepSpeed from the generated JSON) does the loop; this module adds the
callbacks that make it a stage-1 run: evaluation every epoch feeds the convergence criterion
(state saved as ``convergence.json`` in every checkpoint, restored on resume), every save is
committed to the run prefix in the background (``trainer.checkpoints``), a spot notice or SIGTERM
saves and exits 75 (``trainer.spot``), and the end publishes ``final/`` with ``STATUS.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from artifacts.run import ExitCode, Run, RunState
from trainer.config import TrainerConfig
from trainer.convergence import ConvergenceCriterion
from trainer.env import ensure_dist_env, node_layout, scratch_dir

log = logging.getLogger(__name__)

CONVERGENCE_FILE = "convergence.json"
LOSS_HISTORY_FILE = "loss_history.json"


def _all_ok(flag: bool) -> bool:
    """All-reduce MIN of a flag: a barrier that also tells every rank whether all succeeded."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def training_arguments(
    cfg: TrainerConfig,
    *,
    output_dir: Path,
    ds_config: dict[str, Any],
    precision: str,
    extra: dict[str, Any],
    plan: Any = None,
) -> Any:
    """HF ``TrainingArguments`` from the recipe (transformers 5.x names).

    ``plan`` (a :class:`trainer.batching.BatchPlan`) overrides the recipe's per-device batch and
    accumulation, so a resume on another world size keeps the checkpoint's global batch.
    """
    from transformers import TrainingArguments

    t = cfg.training
    per_device = plan.per_device if plan is not None else t.per_device_train_batch_size
    grad_accum = plan.grad_accum if plan is not None else t.gradient_accumulation_steps
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy="epoch",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to="none",
        seed=cfg.run.seed,
        data_seed=cfg.run.seed,
        deepspeed=ds_config,
        gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=t.dataloader_num_workers,
        disable_tqdm=not sys.stderr.isatty() or os.environ.get("TWOSTAGE_PROGRESS") == "0",
        save_only_model=False,
        ddp_timeout=1800,
        **extra,
    )


def _build_convergence_callback() -> type:
    from transformers import TrainerCallback

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
                from trainer.finish import loss_history

                (folder / LOSS_HISTORY_FILE).write_text(
                    json.dumps(loss_history(state.log_history), indent=2) + "\n"
                )
            return control

    return ConvergenceCallback


def _build_step_timer() -> type:
    from transformers import TrainerCallback

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

    return StepTimer


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


def _elastic_resume(
    run: Run,
    args: Any,
    resumed: tuple[Path, dict[str, Any]],
    rank: int,
    local_rank: int,
    node_rank: int,
    status: Any,
) -> Path:
    """The folder to resume from: the checkpoint itself, or its universal form when it was
    written at another world size (then DeepSpeed is told to load universal; see
    :mod:`trainer.elastic`). Logs and records "resumed at step S from … world size A on B"."""
    from trainer.elastic import (
        GLOBAL_BATCH_KEY,
        WORLD_SIZE_KEY,
        adapt_rng_files,
        enable_universal_load,
        fetch_or_convert,
        shard_world_size,
    )

    folder, meta = resumed
    step = int(meta.get("global_step") or folder.name.rsplit("-", 1)[-1])
    planned = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if meta.get(GLOBAL_BATCH_KEY) and int(meta[GLOBAL_BATCH_KEY]) != planned and rank == 0:
        log.warning(  # the newest checkpoint did not verify and an older one differs
            "checkpoint %d was trained with global batch %s; this launch trains with %d",
            step,
            meta[GLOBAL_BATCH_KEY],
            planned,
        )
    source = int(meta.get(WORLD_SIZE_KEY) or shard_world_size(folder) or args.world_size)
    world = args.world_size
    if source != world:

        def barrier() -> None:
            _all_ok(True)

        folder = fetch_or_convert(
            run, folder, step, is_head=node_rank == 0, local_rank=local_rank, barrier=barrier
        )
        enable_universal_load(args.hf_deepspeed_config.config)
        adapt_rng_files(folder, rank=rank, world=world, source_world=source)
    note = f"resumed at step {step} from a checkpoint of world size {source} on world size {world}"
    if rank == 0:
        log.info("%s%s", note, " (universal checkpoint)" if source != world else "")
    status.resumed = {"step": step, "from_world_size": source, "world_size": world, "note": note}
    return folder


def run_training(cfg: TrainerConfig, run: Run) -> int:
    """Train on this rank until convergence, the epoch limit or an interruption; return the exit code."""
    from artifacts.logs import init_logging

    started = time.monotonic()
    ensure_dist_env()
    init_logging(rank=int(os.environ["RANK"]))
    import torch

    from trainer import cpu_compat
    from trainer.dsconfig import build_ds_config, resolve_precision, write_ds_config
    from trainer.elastic import plan_launch

    # The batch split is decided (and an impossible one refused) before any start-up cost.
    plan, _ = plan_launch(cfg, run, int(os.environ["WORLD_SIZE"]))

    accelerator = cpu_compat.has_accelerator()
    bf16_ok = torch.cuda.is_bf16_supported() if accelerator else cpu_compat.cpu_bf16_supported()
    precision = resolve_precision(
        cfg.training.precision, accelerator=accelerator, bf16_supported=bf16_ok
    )
    compat = cpu_compat.apply(precision=precision)
    scratch = scratch_dir(cfg.run, run)
    from trainer.data import ensure_prepared

    # Data preparation runs before torch.distributed starts (TrainingArguments below starts it):
    # a long preparation is never inside a collective or under its timeout.
    env_node, env_nodes = node_layout(
        os.environ, world=int(os.environ["WORLD_SIZE"]), rank=int(os.environ["RANK"])
    )
    ensure_prepared(
        cfg,
        run,
        scratch,
        node_rank=env_node,
        num_nodes=env_nodes,
        local_rank=int(os.environ["LOCAL_RANK"]),
    )
    ds_config = build_ds_config(cfg, accelerator=accelerator)
    args = training_arguments(
        cfg,
        output_dir=scratch / "output",
        ds_config=ds_config,
        precision=precision,
        extra=compat.training_kwargs,
        plan=plan,
    )
    rank, local_rank, world = args.process_index, args.local_process_index, args.world_size
    node_rank, num_nodes = node_layout(os.environ, world=world, rank=rank)
    if rank == 0:
        write_ds_config(ds_config, scratch / "ds_config.json")
        log.info(
            "run %s: %d rank(s) on %d node(s), precision %s, ZeRO-%d, global batch %s, scratch %s",
            run,
            world,
            num_nodes,
            precision,
            cfg.deepspeed.zero_stage,
            plan.describe(),
            scratch,
        )

    from trainer.finish import StatusWriter
    from trainer.outage import StoreOutageError

    window = cfg.run.store_outage_minutes * 60
    status = StatusWriter(
        run, enabled=rank == 0, node_count=num_nodes, world_size=world, outage_window=window
    )
    status.write(RunState.RUNNING, world_size=world)
    try:
        return _train(
            cfg, run, args, scratch, status, rank, local_rank, node_rank, num_nodes, started
        )
    except StoreOutageError as err:
        # Weather, not a bug and not the user's fault: stop as interrupted, relaunch resumes.
        status.write(RunState.INTERRUPTED, reason=f"store outage: {err}"[:500], world_size=world)
        log.error("%s; exit %d (relaunch the same run to resume)", err, ExitCode.INTERRUPTED)
        return ExitCode.INTERRUPTED
    except BaseException as err:
        status.write(RunState.FAILED, reason=f"{type(err).__name__}: {err}"[:500], world_size=world)
        raise
    finally:
        status.close(timeout=min(window, 120.0))


def _train(
    cfg: TrainerConfig,
    run: Run,
    args: Any,
    scratch: Path,
    status: Any,
    rank: int,
    local_rank: int,
    node_rank: int,
    num_nodes: int,
    started: float,
) -> int:
    from transformers import default_data_collator

    from trainer.checkpoints import CheckpointCommitter, CommitCallback, agree_resume_checkpoint
    from trainer.data import open_data
    from trainer.finish import loss_history, publish_final
    from trainer.hf_trainer import build_trainer_class
    from trainer.model import build_model
    from trainer.spot import InterruptionCallback, InterruptionWatcher
    from trainer.stream import (
        build_position_callback,
        check_resume_position,
        streaming_trainer_class,
    )

    global_batch = (
        args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    )
    data = open_data(cfg, run, scratch, global_batch=global_batch)
    tokenizer = data.tokenizer
    resumed = agree_resume_checkpoint(run, scratch / "resume", local_rank=local_rank)
    resume_from = None
    if resumed is not None:
        resume_from = _elastic_resume(run, args, resumed, rank, local_rank, node_rank, status)
    # HF Trainer seeds only after a model passed in was built: seed first, or equal seeds differ.
    from transformers import set_seed

    set_seed(cfg.run.seed)
    model = build_model(
        cfg.model,
        vocab_size=len(tokenizer),
        block_size=cfg.data.block_size,
        eos_token_id=tokenizer.eos_token_id,
        workdir=scratch,
    )
    train_ds, val_ds = data.train, data.val

    criterion = ConvergenceCriterion(cfg.convergence.min_rel_improvement, cfg.convergence.patience)
    history: list[dict[str, Any]] = []
    if resumed is not None:
        history = restore_convergence(resumed[0], criterion)
        step = int(resumed[1].get("global_step", 0))
        check_resume_position(
            resumed[0], data.order, data.fingerprint, step,
            allow_batch_change=cfg.training.allow_global_batch_change,
        )  # fmt: skip
    signing_key = Path(cfg.run.signing_key) if cfg.run.signing_key else None
    committer = CheckpointCommitter(
        run,
        node_rank=node_rank,
        num_nodes=num_nodes,
        keep_last=cfg.run.keep_last,
        signing_key=signing_key,
        outage_window=cfg.run.store_outage_minutes * 60,
    )
    watcher = (
        InterruptionWatcher(cfg.spot.endpoint, cfg.spot.poll_interval) if cfg.spot.enabled else None
    )

    from trainer.elastic import elastic_metadata

    layout = elastic_metadata(
        world=args.world_size,
        per_device=args.per_device_train_batch_size,
        grad_accum=args.gradient_accumulation_steps,
    )

    def metadata(state: Any) -> dict[str, Any]:
        return {
            **layout,
            "converged": criterion.converged,
            "best_val_loss": criterion.best,
            "convergence": criterion.state_dict(),
            "config": cfg.raw,
        }

    from trainer.schedule import TimedSaveCallback

    callbacks: list[Any] = [
        _build_convergence_callback()(criterion, history, status),
        TimedSaveCallback(cfg.training.save_minutes),  # and every save_minutes, whichever first
        build_position_callback(data.order, data.fingerprint),  # before the commit callback
        CommitCallback(committer, metadata=metadata),
    ]
    interruption = None
    if watcher is not None:
        interruption = InterruptionCallback(
            watcher, committer=committer, estimate=committer.estimate
        )
        callbacks.append(interruption)
    timer = _build_step_timer()()
    callbacks.append(timer)  # last, so its interval includes every other callback

    from trainer.ckpt_report import CheckpointReport

    previous = status.previous  # read before this launch's first write replaced it
    report = CheckpointReport(committer, previous=previous.extra if previous else None)
    status.providers.append(report.status_fields)

    def saved(step: int, seconds: float) -> None:
        committer.last_save_s = seconds  # the next notice's decision counts on it
        report.record_save(step, seconds)

    # The streaming sampler is the order contract (whole global batches, the same for any world
    # size: trainer.batching's test); it replaces the map-style elastic sampler.
    trainer = streaming_trainer_class(build_trainer_class(), data.sampler)(
        on_saved=saved,
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    if watcher is not None:
        watcher.start()
    try:
        if criterion.converged and resumed is not None:
            # Converged before the last launch could publish: finish from the checkpoint as it is.
            done = int(resumed[1].get("global_step", 0)) or 1
            log.info("resume: the run had already converged at step %d; publishing", done)
            trainer.args.max_steps = done  # the training loop has nothing left to do
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        if watcher is not None:
            watcher.stop()
    state = trainer.state
    if interruption is not None and interruption.interrupted:
        committer.close()
        report.add_interruption(interruption.record(run_step=state.global_step))
        status.write(
            RunState.INTERRUPTED,
            global_step=state.global_step,
            epoch=state.epoch,
            best_val_loss=criterion.best,
            converged=False,
            val_loss_history=history,
            notice=watcher.notice if watcher else None,
            notice_to_commit_s=interruption.notice_to_commit_s,
            reason="spot interruption notice" if watcher and watcher.notice else "stop requested",
            world_size=args.world_size,
        )
        # All ranks leave together: the launcher SIGTERMs the others when the first exits 75.
        _all_ok(True)
        log.warning(
            "interrupted at step %d; exit %d (resume me)", state.global_step, ExitCode.INTERRUPTED
        )
        return ExitCode.INTERRUPTED
    final_state = RunState.CONVERGED if criterion.converged else RunState.FINISHED
    converged_at = int(history[-1]["step"]) if criterion.converged and history else None
    summary = {
        "state": str(final_state),
        "converged": criterion.converged,
        "converged_at_step": converged_at,
        "global_step": state.global_step,
        "epoch": state.epoch,
        "best_val_loss": criterion.best,
        "convergence": criterion.state_dict(),
        "val_loss_history": history,
        "loss_history": loss_history(state.log_history),
        "num_nodes": num_nodes,
        "world_size": args.world_size,
        "step_time": timer.summary(),
        **report.summary(),
        "first_step_unix": timer.first_step_unix,
        "train_seconds_this_launch": round(time.monotonic() - started, 1),
        "config": cfg.raw,
    }
    final_uri = publish_final(
        trainer,
        trainer.processing_class,
        run=run,
        out_dir=scratch / Run.FINAL,
        summary=summary,
        signing_key=signing_key,
        is_main=rank == 0,
        outage_window=cfg.run.store_outage_minutes * 60,
    )
    committer.close()
    status.write(
        final_state,
        global_step=state.global_step,
        epoch=state.epoch,
        best_val_loss=criterion.best,
        converged=criterion.converged,
        val_loss_history=history,
        final=final_uri,
        converged_at_step=converged_at,
        world_size=args.world_size,
    )
    _all_ok(True)  # nobody exits (and tears the group down) before rank 0 has published
    if rank == 0:
        log.info(
            "%s at step %d (epoch %.2f), best val loss %.4f; final model: %s",
            final_state,
            state.global_step,
            state.epoch or 0.0,
            criterion.best if criterion.best is not None else float("nan"),
            final_uri,
        )
    return ExitCode.OK
