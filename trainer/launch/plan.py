"""A plan before you pay: will this recipe fit, what does a checkpoint, a notice and a loss cost?

Pure arithmetic over plain inputs (no torch, no AWS): :func:`make_plan` takes the recipe's
dimensions and batch settings, the node count and a :class:`Hardware` row, and returns a
:class:`Plan` whose :meth:`Plan.lines` is what ``invoke plan`` prints and whose
:meth:`Plan.refusal` is the one line ``invoke plan`` / ``invoke pretrain`` exit 2 with. Every
input is a named constant or a field below, with its source:

- **ZeRO-3 model states**: 16 B/param (bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m 4
  + v 4), partitioned over every GPU, plus the largest layer gathered in full (DeepSpeed's
  ``estimate_zero3_model_states_mem_needs``: ``4 × largest_layer``); with ``offload_optimizer``
  the 12 B/param of optimizer state live in host memory, with ``offload_param`` the weights too.
- **Activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation", 16-bit):
  ``s·b·h·(34 + 5·a·s/h)`` bytes per layer without checkpointing; with gradient checkpointing
  only each layer's input (``2·s·b·h``) is kept, plus one layer recomputed in full; plus the fp32
  logits ``4·s·b·V`` of the loss.
- **Checkpoint**: 12 B/param in the optimizer shards (fp32 master + m + v; the ``model_states``
  files hold placeholders under ZeRO-3), split evenly over the nodes.
- **Rates**: 0.15–0.2 GB/s per Python upload/download process (s3transfer, measured ~110 MiB/s at
  300 % CPU on a CPU without SHA-NI; 0.175 used), ≤ 100 Gbps per node to S3 (the primary ENA
  interface; EFA's 400 Gbps does not carry TCP to S3), 2.7 GB/s per NVMe device (p4d: 8 × 1 TB).
- **Going on with one node fewer** (the resharding load): each survivor fetches the old shard
  files its new ranks read that it does not hold (:func:`survivor_fetch_files`), then each rank
  reads its share at :data:`RESHARD_S_PER_GB` (measured) or the node's NVMe rate; the global
  batch is held, so a step takes ``N/(N-1)`` as long.
- **Compute**: 8·N·T FLOPs per micro-batch with gradient checkpointing (6·N·T without), at
  ``mfu`` of the GPU's dense bf16 peak.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from trainer.launch.memory import (  # noqa: F401  (re-exported: the plan's public numbers)
    MODEL_STATE_BYTES,
    OFFLOADED_OPTIMIZER_BYTES,
    USABLE_FRACTION,
    deepspeed_estimate_gb,
    gpu_gb,
    what_fits,
)

GB = 1e9
CHECKPOINT_BYTES = 12
"""Bytes per parameter in a committed checkpoint's optimizer shards."""
PROCESS_GBPS = 0.175
"""One Python upload/download process to S3 (0.15–0.2 GB/s)."""
NODE_S3_GBPS = 100 / 8
"""One node to S3: ≤ 100 Gbps on the primary interface."""
NVME_GBPS = 2.7
"""One local NVMe device, sequential write."""
RESHARD_S_PER_GB = 1.4
"""One rank process copying its slices out of the old shards (the resharding load): the slowest
rank measured here (0.23–1.38 s/GB, BENCHMARKS.md §20 P11)."""


@dataclass(frozen=True)
class Hardware:
    """One instance type as the plan sees it (AWS's published numbers)."""

    gpus: int
    gpu_gb: float
    peak_flops: float
    """Dense bf16 FLOP/s per GPU."""
    nvme_devices: int
    node_s3_gbps: float = NODE_S3_GBPS


INSTANCE_TYPES: dict[str, Hardware] = {
    "p4d.24xlarge": Hardware(gpus=8, gpu_gb=40.0, peak_flops=312e12, nvme_devices=8),
    "p4de.24xlarge": Hardware(gpus=8, gpu_gb=80.0, peak_flops=312e12, nvme_devices=8),
    "p5.48xlarge": Hardware(gpus=8, gpu_gb=80.0, peak_flops=989e12, nvme_devices=8),
}


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs of the model (from the recipe's ``[model]`` and ``[data]``)."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq: int
    tied: bool

    @property
    def layer_params(self) -> int:
        h, head_dim = self.hidden, self.hidden // self.heads
        if self.family == "gpt2":
            return 4 * h * h + 4 * h + 2 * h * self.intermediate + self.intermediate + h + 4 * h
        kv = 2 * h * self.kv_heads * head_dim
        return 2 * h * h + kv + 3 * h * self.intermediate + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        extra = self.seq * self.hidden + 2 * self.hidden if self.family == "gpt2" else self.hidden
        head = 0 if self.tied else self.embedding_params
        return self.embedding_params + head + self.layers * self.layer_params + extra

    @property
    def largest_layer_params(self) -> int:
        return max(self.layer_params, self.embedding_params)


def shape_of(cfg: Any) -> ModelShape:
    """The :class:`ModelShape` of a loaded recipe (``trainer.config.TrainerConfig``)."""
    m = cfg.model
    h = m.hidden_size
    if m.intermediate_size:
        inter = m.intermediate_size
    elif m.family == "gpt2":
        inter = 4 * h
    else:
        inter = 64 * ((8 * h // 3 + 63) // 64)  # as trainer.loop.model builds it
    return ModelShape(
        family=m.family, hidden=h, layers=m.num_layers, heads=m.num_heads,
        kv_heads=m.num_kv_heads or m.num_heads, intermediate=inter,
        vocab=cfg.data.vocab_size, seq=cfg.data.block_size, tied=m.tie_word_embeddings,
    )  # fmt: skip


@dataclass(frozen=True)
class Knobs:
    """The recipe's settings the plan depends on, and the assumptions it states."""

    micro_batch: int
    accumulation: int
    checkpointing: bool
    offload_optimizer: bool = False
    offload_param: bool = False
    spot_poll_s: float = 5.0
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for step time."""
    processes_per_node: int = 8
    """Upload/download processes per node (one per local rank)."""
    detect_s: float = 10.0
    """Controller: a lost node noticed (the nodes' exit reports / a 10 s poll)."""
    relaunch_s: float = 60.0
    """SSM command delivered, Python and the launcher up, before the fetch starts."""
    engine_s: float = 90.0
    """Model built, DeepSpeed engine initialised, checkpoint loaded from local NVMe."""


@dataclass(frozen=True)
class Plan:
    """The numbers of one recipe on ``nodes`` × ``instance_type``."""

    instance_type: str
    nodes: int
    gpus: int
    params: int
    micro_batch: int
    model_states_gb: float
    activations_gb: float
    per_gpu_gb: float
    usable_gb: float
    checkpoint_gb: float
    per_node_gb: float
    micro_batch_s: float
    step_s: float
    notice_to_commit_s: float
    recovery_s: float
    """Node lost → training again at the same size, once a replacement is InService."""
    recovery_fewer_s: float | None
    """Node lost → training again on the survivors (resharding load); None: one node, or the
    model does not fit on one node fewer."""
    usd_per_hour: float | None
    price_source: str
    usd_per_1b_tokens: float | None
    suggestions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.per_gpu_gb <= self.usable_gb

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}

    def refusal(self) -> str | None:
        """One line naming the numbers and what would fit, or None when the recipe fits."""
        if self.fits:
            return None
        return (
            f"{self.params / 1e9:.1f}B parameters do not fit on {self.nodes} × "
            f"{self.instance_type}: {self.per_gpu_gb:.1f} GB per GPU (model states "
            f"{self.model_states_gb:.1f} + activations {self.activations_gb:.1f} at micro-batch "
            f"{self.micro_batch}) > {self.usable_gb:.1f} GB usable; would fit: "
            + "; ".join(self.suggestions or ["nothing on this instance type"])
        )

    def lines(self) -> list[str]:
        usd = "unknown" if self.usd_per_hour is None else f"${self.usd_per_hour:,.2f}/h"
        per_b = "unknown" if self.usd_per_1b_tokens is None else f"${self.usd_per_1b_tokens:,.0f}"
        return [
            f"plan: {self.params / 1e9:.2f}B parameters on {self.nodes} × {self.instance_type} "
            f"({self.gpus} GPUs)",
            f"memory per GPU: {self.per_gpu_gb:.1f} GB of {self.usable_gb:.1f} usable (ZeRO-3 "
            f"model states {self.model_states_gb:.1f} + activations {self.activations_gb:.1f} at "
            f"micro-batch {self.micro_batch}): {'fits' if self.fits else 'DOES NOT FIT'}",
            f"checkpoint: {self.checkpoint_gb:.1f} GB ({CHECKPOINT_BYTES} B/param), "
            f"{self.per_node_gb:.1f} GB per node",
            f"step: {self.step_s:.1f} s ({self.micro_batch_s:.2f} s per micro-batch)",
            f"spot notice -> commit: {self.notice_to_commit_s:.0f} s (of 120 s)",
            "node lost -> training again: "
            + ("" if self.recovery_fewer_s is None else
               f"{self.recovery_fewer_s / 60:.1f} min going on with {self.nodes - 1} node(s) "
               "(resharding load), or ")
            + f"{self.recovery_s / 60:.1f} min once a replacement is InService (plus its wait); "
            "the controller goes on when a resume is shorter than the replacement's wait",
            f"cost: {usd} ({self.price_source}), {per_b} per 1B tokens",
        ]


def make_plan(
    shape: ModelShape,
    knobs: Knobs,
    *,
    nodes: int,
    instance_type: str,
    usd_per_node_hour: float | None,
    price_source: str,
) -> Plan:
    """The plan for ``nodes`` × ``instance_type``; suggestions filled in when it does not fit."""
    hw = INSTANCE_TYPES[instance_type]
    gpus = nodes * hw.gpus
    states, acts = gpu_gb(shape, gpus, knobs.micro_batch, knobs)
    usable = hw.gpu_gb * USABLE_FRACTION
    ckpt = CHECKPOINT_BYTES * shape.params / GB
    per_node = ckpt / nodes
    flops = (8 if knobs.checkpointing else 6) * shape.params * knobs.micro_batch * shape.seq
    mb_s = flops / (hw.peak_flops * knobs.mfu)
    step_s = mb_s * knobs.accumulation
    s3 = min(knobs.processes_per_node * PROCESS_GBPS, hw.node_s3_gbps)
    save_s = per_node / (NVME_GBPS * hw.nvme_devices)
    notice = knobs.spot_poll_s + 1.0 + mb_s + save_s + per_node / s3 + 2.0
    recovery = knobs.detect_s + knobs.relaunch_s + per_node / s3 + knobs.engine_s + step_s
    fewer = None
    if nodes > 1 and sum(gpu_gb(shape, (nodes - 1) * hw.gpus, knobs.micro_batch, knobs)) <= usable:
        fetch = survivor_fetch_files(nodes, nodes - 1, hw.gpus) * ckpt / gpus / s3
        read = max(ckpt / ((nodes - 1) * hw.gpus) * RESHARD_S_PER_GB,
                   ckpt / (nodes - 1) / (NVME_GBPS * hw.nvme_devices))  # fmt: skip
        fewer = (knobs.detect_s + knobs.relaunch_s + fetch + read + knobs.engine_s
                 + step_s * nodes / (nodes - 1))  # fmt: skip
    usd = None if usd_per_node_hour is None else usd_per_node_hour * nodes
    tokens_per_s = gpus * hw.peak_flops * knobs.mfu / (flops / (knobs.micro_batch * shape.seq))
    per_1b = None if usd is None else usd / 3600 / tokens_per_s * 1e9
    plan = Plan(
        instance_type=instance_type, nodes=nodes, gpus=gpus, params=shape.params,
        micro_batch=knobs.micro_batch, model_states_gb=round(states, 2),
        activations_gb=round(acts, 2), per_gpu_gb=round(states + acts, 2),
        usable_gb=round(usable, 2), checkpoint_gb=round(ckpt, 1), per_node_gb=round(per_node, 1),
        micro_batch_s=round(mb_s, 3), step_s=round(step_s, 1),
        notice_to_commit_s=round(notice, 1), recovery_s=round(recovery, 1),
        recovery_fewer_s=None if fewer is None else round(fewer, 1),
        usd_per_hour=None if usd is None else round(usd, 2), price_source=price_source,
        usd_per_1b_tokens=None if per_1b is None else round(per_1b, 2),
    )  # fmt: skip
    if plan.fits:
        return plan
    return replace(plan, suggestions=what_fits(shape, knobs, nodes=nodes, hw=hw))


def survivor_fetch_files(before: int, after: int, gpus: int) -> int:
    """Old shard files the worst surviving node lacks for the resharding load, over which node
    was lost and which survivor (nodes keep their order). One large parameter stands for all:
    every real parameter spans all ranks alike; the small ones add at most one file."""
    from trainer.checkpoint.reshard import old_ranks_needed

    old_w, new_w = gpus * before, gpus * after
    shapes = [{"w": (old_w * new_w * 1024,)}]
    worst = 0
    for lost in range(before):
        survivors = [n for n in range(before) if n != lost][:after]
        for k, old_node in enumerate(survivors):
            need = old_ranks_needed(shapes, old_w, set(range(k * gpus, (k + 1) * gpus)), new_w)
            held = set(range(old_node * gpus, (old_node + 1) * gpus))
            worst = max(worst, len(need - held))
    return worst


def plan_recipe(
    cfg: Any,
    *,
    nodes: int,
    instance_type: str,
    usd_per_node_hour: float | None,
    price_source: str,
) -> Plan:
    """:func:`make_plan` for a loaded recipe; an unknown type or node count is a user error."""
    from trainer.launch import LaunchError

    if instance_type not in INSTANCE_TYPES:
        raise LaunchError(
            f"--instance-type {instance_type}: the plan knows {', '.join(INSTANCE_TYPES)}"
        )
    if nodes < 1:
        raise LaunchError(f"--nodes {nodes}: give at least 1 node")
    t, ds = cfg.training, cfg.deepspeed
    knobs = Knobs(
        micro_batch=t.per_device_train_batch_size,
        accumulation=t.gradient_accumulation_steps,
        checkpointing=t.gradient_checkpointing,
        offload_optimizer=ds.offload_optimizer,
        offload_param=ds.offload_param,
        spot_poll_s=cfg.spot.poll_interval,
    )
    return make_plan(
        shape_of(cfg), knobs, nodes=nodes, instance_type=instance_type,
        usd_per_node_hour=usd_per_node_hour, price_source=price_source,
    )  # fmt: skip


def require_fit(plan: Plan) -> Plan:
    """The plan when it fits; else :class:`~trainer.launch.LaunchError` with its one line (exit 2)."""
    from trainer.launch import LaunchError

    line = plan.refusal()
    if line is not None:
        raise LaunchError(line)
    return plan
