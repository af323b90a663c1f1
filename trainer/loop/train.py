"""The training run on every rank: setup → resume → fit → finish, over one :class:`RunContext`.

The HF ``Trainer`` (with DeepSpeed from the generated JSON) does the loop; the callbacks
(:mod:`trainer.loop.callbacks`, :mod:`trainer.spot.callback`) make it a stage-1 run: evaluation
every epoch feeds the convergence criterion (state saved as ``convergence.json`` in every
checkpoint, restored on resume), every save is committed to the run prefix in the background
(:mod:`trainer.checkpoint.committer`), a spot notice or SIGTERM saves and exits 75
(:mod:`trainer.spot`), and the end publishes ``final/`` (:mod:`trainer.loop.publish`) with
``STATUS.json`` (:mod:`trainer.status`).

Order matters and is the point of this module: the batch plan is decided (an impossible one
refused) before any start-up cost; data preparation runs before ``torch.distributed`` starts (a
long preparation is never under the collective's timeout); the process group starts with
``TrainingArguments``; the resume checkpoint is agreed after it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.convergence import ConvergenceCriterion
from artifacts.run import NOTICE_REASON, STOP_REASON, ExitCode, Run, RunState
from trainer.config import TrainerConfig
from trainer.dist import all_ok
from trainer.env import ensure_dist_env, node_layout, scratch_dir

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every step of one launch on this rank shares (set up once by :func:`setup`)."""

    cfg: TrainerConfig
    run: Run
    args: Any  # transformers.TrainingArguments (the process group exists once it is built)
    scratch: Path
    status: Any  # trainer.status.StatusWriter
    node_rank: int
    num_nodes: int
    started: float
    prefetched: dict[str, Any] = field(default_factory=lambda: {"step": -1})
    """This node's share of the resume checkpoint, fetched before the collective."""
    criterion: ConvergenceCriterion = field(init=False)
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        conv = self.cfg.convergence
        self.criterion = ConvergenceCriterion(conv.min_rel_improvement, conv.patience)

    @property
    def rank(self) -> int:
        return self.args.process_index

    @property
    def local_rank(self) -> int:
        return self.args.local_process_index

    @property
    def world(self) -> int:
        return self.args.world_size

    @property
    def global_batch(self) -> int:
        a = self.args
        return a.per_device_train_batch_size * a.world_size * a.gradient_accumulation_steps

    @property
    def signing_key(self) -> Path | None:
        return Path(self.cfg.run.signing_key) if self.cfg.run.signing_key else None

    @property
    def outage_window(self) -> float:
        return self.cfg.run.store_outage_minutes * 60


@dataclass
class Resumed:
    """The checkpoint this launch continues from (None when it starts fresh)."""

    folder: Path  # the committed checkpoint as downloaded
    metadata: dict[str, Any]
    load_from: Path  # what the Trainer loads: the folder, or its universal form

    @property
    def step(self) -> int:
        return int(self.metadata.get("global_step") or self.folder.name.rsplit("-", 1)[-1])


def run_training(cfg: TrainerConfig, run: Run) -> int:
    """Train on this rank until convergence, the epoch limit or an interruption; return the exit code."""
    from trainer.checkpoint.outage import StoreOutageError

    ctx = setup(cfg, run)
    try:
        return fit(ctx)
    except StoreOutageError as err:
        # Weather, not a bug and not the user's fault: stop as interrupted, relaunch resumes.
        ctx.status.write(RunState.INTERRUPTED, reason=f"store outage: {err}"[:500], world_size=ctx.world)
        log.error("%s; exit %d (relaunch the same run to resume)", err, ExitCode.INTERRUPTED)
        return ExitCode.INTERRUPTED
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"[:500]
        ctx.status.write(RunState.FAILED, reason=reason, world_size=ctx.world)
        raise
    finally:
        ctx.status.close(timeout=min(ctx.outage_window, 120.0))


def setup(cfg: TrainerConfig, run: Run) -> RunContext:
    """Batch plan, precision, CPU adaptations, data preparation, ``TrainingArguments``, status."""
    from artifacts.logs import init_logging

    started = time.monotonic()
    ensure_dist_env()
    init_logging(rank=int(os.environ["RANK"]))
    import torch

    from trainer.checkpoint.elastic import plan_launch
    from trainer.checkpoint.prefetch import prefetch_resume
    from trainer.data.loader import ensure_prepared
    from trainer.loop import cpu_compat
    from trainer.loop.args import training_arguments
    from trainer.loop.dsconfig import build_ds_config, resolve_precision, write_ds_config
    from trainer.status import StatusWriter

    env_world, env_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    plan, _ = plan_launch(cfg, run, env_world)
    accelerator = cpu_compat.has_accelerator()
    bf16_ok = torch.cuda.is_bf16_supported() if accelerator else cpu_compat.cpu_bf16_supported()
    precision = resolve_precision(
        cfg.training.precision, accelerator=accelerator, bf16_supported=bf16_ok
    )
    compat = cpu_compat.apply(precision=precision)
    scratch = scratch_dir(cfg.run, run)
    env_node, env_nodes = node_layout(os.environ, world=env_world, rank=env_rank)
    ensure_prepared(
        cfg,
        run,
        scratch,
        node_rank=env_node,
        num_nodes=env_nodes,
        local_rank=int(os.environ["LOCAL_RANK"]),
    )
    # Everything that grows with model size happens here, before torch.distributed starts:
    # each node fetches only its own ranks' share (a survivor re-uses its local copy).
    prefetched = prefetch_resume(
        run, scratch, world=env_world, node_rank=env_node, num_nodes=env_nodes,
        local_rank=int(os.environ["LOCAL_RANK"]),
    )  # fmt: skip
    ds_config = build_ds_config(cfg.deepspeed, accelerator=accelerator)
    args = training_arguments(
        cfg,
        output_dir=scratch / "output",
        ds_config=ds_config,
        precision=precision,
        extra=compat.training_kwargs,
        plan=plan,
    )  # starts torch.distributed
    rank, world = args.process_index, args.world_size
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
    status = StatusWriter(
        run,
        enabled=rank == 0,
        node_count=num_nodes,
        world_size=world,
        outage_window=cfg.run.store_outage_minutes * 60,
    )
    status.write(RunState.RUNNING, world_size=world)
    return RunContext(cfg, run, args, scratch, status, node_rank, num_nodes, started, prefetched)


def resume(ctx: RunContext, data: Any) -> Resumed | None:
    """Agree on the newest committed checkpoint, adapt it to this world size, restore the
    convergence state and check the data stream continues where it stopped."""
    from trainer.checkpoint.prefetch import agree_prefetched
    from trainer.checkpoint.resume import agree_resume_checkpoint, drop_saves_after
    from trainer.data.stream import check_resume_position
    from trainer.loop.callbacks import restore_convergence

    found = agree_prefetched(
        ctx.prefetched,
        lambda: agree_resume_checkpoint(ctx.run, ctx.scratch / "resume", local_rank=ctx.local_rank),
    )
    resumed = None if found is None else Resumed(found[0], found[1], load_from=found[0])
    if ctx.local_rank == 0:  # this node's saves of an earlier attempt that never committed
        drop_saves_after(Path(ctx.args.output_dir), -1 if resumed is None else resumed.step)
    if resumed is None:
        return None
    folder, meta = resumed.folder, resumed.metadata
    resumed.load_from = _adapt_world_size(ctx, resumed)
    ctx.history = restore_convergence(folder, ctx.criterion)
    check_resume_position(
        folder, data.order, data.fingerprint, int(meta.get("global_step", 0)),
        allow_batch_change=ctx.cfg.training.allow_global_batch_change,
    )  # fmt: skip
    return resumed


def _adapt_world_size(ctx: RunContext, resumed: Resumed) -> Path:
    """The folder to resume from, and how DeepSpeed loads it: the checkpoint itself at the same
    world size; at another one the same folder read slice by slice (:mod:`trainer.checkpoint.reshard`,
    prepared before the collective), or its universal form (:mod:`trainer.checkpoint.elastic`) when
    the reshard does not apply or the nodes had to agree the slow way. Logs and records "resumed at step S from … world size A on B"."""
    from trainer.checkpoint.elastic import (
        GLOBAL_BATCH_KEY,
        WORLD_SIZE_KEY,
        adapt_rng_files,
        enable_universal_load,
        fetch_or_convert,
        shard_world_size,
    )

    folder, meta, step, args = resumed.folder, resumed.metadata, resumed.step, ctx.args
    if meta.get(GLOBAL_BATCH_KEY) and int(meta[GLOBAL_BATCH_KEY]) != ctx.global_batch and ctx.rank == 0:
        log.warning(  # the newest checkpoint did not verify and an older one differs
            "checkpoint %d was trained with global batch %s; this launch trains with %d",
            step,
            meta[GLOBAL_BATCH_KEY],
            ctx.global_batch,
        )
    source = int(meta.get(WORLD_SIZE_KEY) or shard_world_size(folder) or ctx.world)
    world = ctx.world
    prefetched = ctx.prefetched.get("report") or {}
    if source != world and prefetched.get("reshard") and prefetched.get("step") == step:
        from trainer.checkpoint.reshard import install

        install()  # DeepSpeed's universal load reads this rank's slices of the old files
        enable_universal_load(args.hf_deepspeed_config.config)
        adapt_rng_files(folder, rank=ctx.rank, world=world, source_world=source)
        how = "resharded: each rank read its slices of the old shards"
    elif source != world and prefetched.get("universal") and prefetched.get("step") == step:
        folder = Path(prefetched["universal"])  # converted before the collective
        enable_universal_load(args.hf_deepspeed_config.config)
        adapt_rng_files(folder, rank=ctx.rank, world=world, source_world=source)
        how = "universal checkpoint"
    elif source != world:
        folder = fetch_or_convert(
            ctx.run,
            folder,
            step,
            is_head=ctx.node_rank == 0,
            local_rank=ctx.local_rank,
            barrier=lambda: all_ok(True),
        )
        enable_universal_load(args.hf_deepspeed_config.config)
        adapt_rng_files(folder, rank=ctx.rank, world=world, source_world=source)
        how = "universal checkpoint"
    note = f"resumed at step {step} from a checkpoint of world size {source} on world size {world}"
    if ctx.rank == 0:
        log.info("%s%s", note, f" ({how})" if source != world else "")
    ctx.status.resumed = {"step": step, "from_world_size": source, "world_size": world, "note": note,
                          "fetch": ctx.prefetched.get("report")}  # fmt: skip
    return folder


def fit(ctx: RunContext) -> int:
    """Data, resume, model, callbacks, ``Trainer.train``; then :func:`finish` or an interruption."""
    from transformers import default_data_collator, set_seed

    from trainer.checkpoint.committer import CheckpointCommitter
    from trainer.checkpoint.elastic import elastic_metadata
    from trainer.checkpoint.report import CheckpointReport
    from trainer.data.loader import open_data
    from trainer.loop.callbacks import (
        CommitCallback,
        ConvergenceCallback,
        DataPositionCallback,
        ReshardReport,
        StepTimer,
        TimedSaveCallback,
    )
    from trainer.loop.hf import build_trainer_class, streaming_trainer_class
    from trainer.loop.metrics import MetricsCallback
    from trainer.loop.model import build_model
    from trainer.spot.callback import InterruptionCallback
    from trainer.spot.notice import InterruptionWatcher

    cfg, args = ctx.cfg, ctx.args
    data = open_data(cfg, ctx.run, ctx.scratch, global_batch=ctx.global_batch)
    tokenizer = data.tokenizer
    resumed = resume(ctx, data)
    # HF Trainer seeds only after a model passed in was built: seed first, or equal seeds differ.
    set_seed(cfg.run.seed)
    model = build_model(
        cfg.model,
        vocab_size=len(tokenizer),
        block_size=cfg.data.block_size,
        eos_token_id=tokenizer.eos_token_id,
        workdir=ctx.scratch,
    )
    committer = CheckpointCommitter(
        ctx.run,
        node_rank=ctx.node_rank,
        num_nodes=ctx.num_nodes,
        keep_last=cfg.run.keep_last,
        signing_key=ctx.signing_key,
        outage_window=ctx.outage_window,
    )
    watcher = (
        InterruptionWatcher(cfg.spot.endpoint, cfg.spot.poll_interval) if cfg.spot.enabled else None
    )
    layout = elastic_metadata(
        world=args.world_size,
        per_device=args.per_device_train_batch_size,
        grad_accum=args.gradient_accumulation_steps,
    )
    criterion = ctx.criterion

    def metadata(state: Any) -> dict[str, Any]:
        return {
            **layout,
            "converged": criterion.converged,
            "best_val_loss": criterion.best,
            "convergence": criterion.state_dict(),
            "config": cfg.raw,
        }

    previous = ctx.status.previous  # read before this launch's first write replaced it
    report = CheckpointReport(committer, previous=previous.extra if previous else None)
    metrics = MetricsCallback(
        local_dir=ctx.scratch / "tensorboard" if ctx.rank == 0 else None,
        store=ctx.run.store if ctx.rank == 0 else None,
        eval_cfg=cfg.eval,
        tokenizer=tokenizer,
        tokens_per_step=ctx.global_batch * cfg.data.block_size,
        n_params=sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()),
        report=report,
        launches=len(ctx.status.launches),
    )
    callbacks: list[Any] = [
        metrics,  # first: its sample is in the status the convergence callback writes
        ConvergenceCallback(criterion, ctx.history, ctx.status),
        TimedSaveCallback(cfg.training.save_minutes),  # and every save_minutes, whichever first
        DataPositionCallback(data.order, data.fingerprint),  # before the commit callback
        CommitCallback(committer, metadata=metadata),
    ]
    interruption = None
    if watcher is not None:
        interruption = InterruptionCallback(
            watcher, committer=committer, estimate=committer.estimate
        )
        callbacks.append(interruption)
    if (ctx.prefetched.get("report") or {}).get("reshard"):
        callbacks.append(ReshardReport())
    timer = StepTimer()
    callbacks.append(timer)  # last, so its interval includes every other callback

    ctx.status.providers.append(report.status_fields)
    ctx.status.providers.append(metrics.status_fields)

    def saved(step: int, seconds: float) -> None:
        committer.last_save_s = seconds  # the next notice's decision counts on it
        report.record_save(step, seconds)

    # The streaming sampler is the order contract (whole global batches, the same for any world
    # size at a fixed global batch: trainer.data.stream).
    trainer = streaming_trainer_class(build_trainer_class(), data.sampler)(
        on_saved=saved,
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.val,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    if watcher is not None:
        watcher.start()
    try:
        if criterion.converged and resumed is not None:
            # Converged before the last launch could publish: finish from the checkpoint as it is.
            done = int(resumed.metadata.get("global_step", 0)) or 1
            log.info("resume: the run had already converged at step %d; publishing", done)
            trainer.args.max_steps = done  # the training loop has nothing left to do
        trainer.train(resume_from_checkpoint=str(resumed.load_from) if resumed else None)
    finally:
        metrics.close()  # the last event files committed (bounded), also on an interruption
        if watcher is not None:
            watcher.stop()
    if interruption is not None and interruption.interrupted:
        return interrupted(ctx, trainer.state, committer, report, interruption, watcher)
    measured = {
        "step_time": timer.summary(),
        **report.summary(),
        "first_step_unix": timer.first_step_unix,
        "sample_seconds": metrics.sample_seconds,
        "latest_sample": metrics.latest_sample,
    }
    return finish(ctx, trainer, committer, measured)


def interrupted(
    ctx: RunContext, state: Any, committer: Any, report: Any, interruption: Any, watcher: Any
) -> int:
    """A notice or SIGTERM stopped the loop: record it, leave together, exit 75 (resume me)."""
    committer.close()
    report.add_interruption(interruption.record(run_step=state.global_step))
    ctx.status.write(
        RunState.INTERRUPTED,
        global_step=state.global_step,
        epoch=state.epoch,
        best_val_loss=ctx.criterion.best,
        converged=False,
        val_loss_history=ctx.history,
        notice=watcher.notice if watcher else None,
        notice_to_commit_s=interruption.notice_to_commit_s,
        reason=NOTICE_REASON if watcher and watcher.notice else STOP_REASON,
        world_size=ctx.world,
    )
    # All ranks leave together: the launcher SIGTERMs the others when the first exits 75.
    all_ok(True)
    log.warning(
        "interrupted at step %d; exit %d (resume me)", state.global_step, ExitCode.INTERRUPTED
    )
    return ExitCode.INTERRUPTED


def finish(ctx: RunContext, trainer: Any, committer: Any, measured: dict[str, Any]) -> int:
    """Converged or at the epoch limit: publish ``final/``, write the final status, exit 0."""
    from trainer.loop.publish import publish_final
    from trainer.status import loss_history

    state, criterion, history = trainer.state, ctx.criterion, ctx.history
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
        "num_nodes": ctx.num_nodes,
        "world_size": ctx.world,
        **measured,
        "train_seconds_this_launch": round(time.monotonic() - ctx.started, 1),
        "config": ctx.cfg.raw,
    }
    final_uri = publish_final(
        trainer,
        trainer.processing_class,
        run=ctx.run,
        out_dir=ctx.scratch / Run.FINAL,
        summary=summary,
        signing_key=ctx.signing_key,
        is_main=ctx.rank == 0,
        outage_window=ctx.outage_window,
    )
    committer.close()
    ctx.status.write(
        final_state,
        global_step=state.global_step,
        epoch=state.epoch,
        best_val_loss=criterion.best,
        converged=criterion.converged,
        val_loss_history=history,
        final=final_uri,
        converged_at_step=converged_at,
        world_size=ctx.world,
    )
    all_ok(True)  # nobody exits (and tears the group down) before rank 0 has published
    if ctx.rank == 0:
        log.info(
            "%s at step %d (epoch %.2f), best val loss %.4f; final model: %s",
            final_state,
            state.global_step,
            state.epoch or 0.0,
            criterion.best if criterion.best is not None else float("nan"),
            final_uri,
        )
    return ExitCode.OK
