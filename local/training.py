"""The fine-tune training loop: masked loss, packing, periodic eval, early stop, encrypted resume.

A plain PyTorch loop rather than HF ``Trainer``, because every piece of state must stay in
memory or go to disk encrypted: ``Trainer`` checkpoints and resumes only through plaintext files
in its output folder. The optimizer still comes from ``Trainer.get_optimizer_cls_and_kwargs``
(so ``optim`` takes any HF optimizer name), the schedule is transformers' linear warm-up/decay,
gradients are clipped at 1.0 as the ``Trainer`` does.

Sample order (and, with packing, which records share a sequence) is a pure function of
``(seed, epoch)``; the position (epoch, micro-batch cursor) rides in every checkpoint, so a resumed run sees exactly the batches the interrupted one would
have. Early stop uses stage 1's criterion (:class:`artifacts.convergence.ConvergenceCriterion`)
on the held-out loss every ``eval_steps``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from local.batching import collate, pad_collate
from local.config import FinetuneConfig
from local.errors import LocalError
from local.records import Example

log = logging.getLogger(__name__)


@dataclass
class TrainStats:
    loss_before: float
    loss_after: float
    steps: int
    history: list[list[float]] = field(default_factory=list)
    """``[[step, training loss], ...]`` every ``logging_steps``."""
    evals: list[list[float]] = field(default_factory=list)
    """``[[step, held-out loss], ...]`` every ``eval_steps``."""
    early_stopped: bool = False
    resumed_from: int = 0
    tokens: int = 0
    """Positions computed (padding included)."""
    records: int = 0
    """Records trained on (a packed step holds more of them)."""


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of one epoch (pure)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def epoch_units(lengths: list[int], seed: int, epoch: int, pack_to: int = 0) -> list[list[int]]:
    """The epoch's training units in order (pure): one record each, or with ``pack_to`` records
    packed greedily, in the shuffled order, into sequences of at most ``pack_to`` tokens."""
    order = epoch_order(len(lengths), seed, epoch)
    if not pack_to:
        return [[i] for i in order]
    units: list[list[int]] = []
    size = pack_to + 1
    for i in order:
        if size + lengths[i] > pack_to:
            units.append([])
            size = 0
        units[-1].append(i)
        size += lengths[i]
    return units


def micro_batches(units: list[list[int]], batch: int, cursor: int) -> Iterator[list[list[int]]]:
    """The units (record index lists) of each micro-batch, from micro-batch ``cursor`` on."""
    for start in range(cursor * batch, len(units), batch):
        yield units[start : start + batch]


def _autocast(device: str, compute_dtype: str) -> Any:
    import torch

    if compute_dtype in ("bfloat16", "float16") and device == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, compute_dtype))
    return contextlib.nullcontext()


def evaluate(
    model: Any,
    examples: list[Example],
    cfg: FinetuneConfig,
    *,
    device: str,
    compute_dtype: str,
    pad_id: int,
) -> float:
    """Mean loss per supervised token on ``examples`` (padded batches, no grad)."""
    import torch

    was = model.training
    model.eval()
    total = tokens = 0.0
    with torch.no_grad(), _autocast(device, compute_dtype):
        for i in range(0, len(examples), cfg.batch_size):
            batch = {
                k: v.to(device)
                for k, v in pad_collate(examples[i : i + cfg.batch_size], pad_id).items()
            }
            n = int((batch["labels"][:, 1:] != -100).sum())
            if n:
                total += float(model(**batch).loss) * n
                tokens += n
    model.train(was)
    return total / tokens if tokens else float("nan")


def _optimizer(model: Any, cfg: FinetuneConfig, device: str, steps: int) -> tuple[Any, Any]:
    from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

    with tempfile.TemporaryDirectory(prefix="twostage-args-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            optim=cfg.optim,
            learning_rate=cfg.learning_rate,
            use_cpu=device == "cpu",
            report_to="none",
        )
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = cls(params, **kwargs)
    return optimizer, get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, steps)


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def train(
    model: Any,
    train_set: list[Example],
    evals: list[Example],
    cfg: FinetuneConfig,
    *,
    device: str,
    compute_dtype: str,
    steps: int,
    pad_id: int,
    packed: bool,
    checkpointer: Any = None,
    resume: dict[str, Any] | None = None,
) -> TrainStats:
    """Run ``steps`` optimizer steps (fewer on early stop); see the module docstring."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    from artifacts.convergence import ConvergenceCriterion

    optimizer, scheduler = _optimizer(model, cfg, device, steps)
    scaler = (
        torch.amp.GradScaler("cuda") if compute_dtype == "float16" and device == "cuda" else None
    )
    criterion = ConvergenceCriterion(cfg.min_rel_improvement, max(1, cfg.early_stop_patience))
    ev = dict(device=device, compute_dtype=compute_dtype, pad_id=pad_id)
    model.config.use_cache = False
    if resume is not None:
        set_peft_model_state_dict(model, resume["adapter"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        criterion.load_state_dict(resume["criterion"])
        stats = TrainStats(**resume["stats"])
        stats.resumed_from = int(resume["step"])
        step, epoch, cursor = int(resume["step"]), int(resume["epoch"]), int(resume["cursor"])
        _set_rng_state(resume["rng"])
    else:
        stats = TrainStats(evaluate(model, evals, cfg, **ev), float("nan"), 0)
        step, epoch, cursor = 0, 0, 0
        log.info("eval loss before: %.4f", stats.loss_before)
    model.train()
    running, running_n = 0.0, 0
    lengths = [len(e.input_ids) for e in train_set]
    pack_to = cfg.max_seq_len if packed else 0
    units = {epoch: epoch_units(lengths, cfg.seed, epoch, pack_to)}
    bar = tqdm(total=steps, initial=step, desc="fine-tune", unit="step", leave=False)
    while step < steps and not stats.early_stopped:
        batches = micro_batches(units[epoch], cfg.batch_size, cursor)
        for _accum in range(cfg.grad_accum):
            idx = next(batches, None)
            if idx is None:
                epoch, cursor = epoch + 1, 0
                units = {epoch: epoch_units(lengths, cfg.seed, epoch, pack_to)}
                batches = micro_batches(units[epoch], cfg.batch_size, 0)
                idx = next(batches)
            cursor += 1
            batch = {
                k: v.to(device)
                for k, v in collate(
                    [[train_set[i] for i in u] for u in idx], pad_id, packed
                ).items()
            }
            stats.tokens += int(batch["input_ids"].numel())
            stats.records += sum(len(u) for u in idx)
            with _autocast(device, compute_dtype):
                loss = model(**batch).loss / cfg.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            running += float(loss.detach()) * cfg.grad_accum
            running_n += 1
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.logging_steps == 0:
            stats.history.append([step, running / running_n])
            log.info("step %d: training loss %.4f", step, running / running_n)
            running, running_n = 0.0, 0
        if cfg.eval_steps and step % cfg.eval_steps == 0 and step < steps:
            val = evaluate(model, evals, cfg, **ev)
            stats.evals.append([step, val])
            log.info("step %d: held-out loss %.4f", step, val)
            if cfg.early_stop_patience and criterion.update(val):
                stats.early_stopped = True
                log.info("early stop at step %d: %d stalled evaluations", step, criterion.stalls)
        if (
            checkpointer is not None
            and cfg.checkpoint_steps
            and step % cfg.checkpoint_steps == 0
            and step < steps
        ):
            checkpointer.save(
                step,
                {
                    "adapter": {
                        k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()
                    },
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler else {},
                    "criterion": criterion.state_dict(),
                    "rng": _rng_state(),
                    "epoch": epoch,
                    "cursor": cursor,
                    "stats": {k: v for k, v in stats.__dict__.items() if k != "resumed_from"},
                },
            )
    bar.close()
    stats.steps = step
    stats.loss_after = evaluate(model, evals, cfg, **ev)
    log.info("eval loss after %d steps: %.4f", step, stats.loss_after)
    if not (math.isfinite(stats.loss_before) and math.isfinite(stats.loss_after)):
        raise LocalError(
            f"training diverged (eval loss {stats.loss_before} -> {stats.loss_after}); lower learning_rate"
        )
    return stats
