"""ZeRO-3 memory per GPU, and what would fit instead: the memory half of :mod:`trainer.launch.plan`.

Pure arithmetic (the sources are in :mod:`trainer.launch.plan`'s docstring): model states
16 B/param partitioned over every GPU plus the largest layer gathered in full; activations after
Korthikanti et al. 2022; DeepSpeed's own estimator as a cross-check.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

# The shapes and knobs are trainer.launch.plan's dataclasses, read by attribute only (importing
# them here would make plan ↔ memory a circle): ModelShape, Knobs, Hardware.
ModelShape = Knobs = Hardware = Any

GB = 1e9
MODEL_STATE_BYTES = 16
"""Bytes per parameter of ZeRO-3 model state with mixed-precision Adam."""
OFFLOADED_OPTIMIZER_BYTES = 12
"""Of those, the optimizer's share (fp32 master, m, v): host memory with ``offload_optimizer``."""
USABLE_FRACTION = 0.9
"""Share of a GPU's memory the plan may use (CUDA context, allocator fragmentation, NCCL buffers)."""


def gpu_gb(
    shape: ModelShape, gpus: int, micro_batch: int, knobs: Knobs
) -> tuple[float, float]:
    """(model states, activations) in GB per GPU."""
    per_param = MODEL_STATE_BYTES
    if knobs.offload_optimizer:
        per_param -= OFFLOADED_OPTIMIZER_BYTES
    if knobs.offload_param:
        per_param -= 2
    states = per_param * shape.params / gpus + 4 * shape.largest_layer_params
    s, b, h, a = shape.seq, micro_batch, shape.hidden, shape.heads
    full_layer = s * b * h * (34 + 5 * a * s / h)
    if knobs.checkpointing:
        acts = shape.layers * 2 * s * b * h + full_layer
    else:
        acts = shape.layers * full_layer
    acts += 4 * s * b * shape.vocab
    return states / GB, acts / GB


def what_fits(shape: ModelShape, knobs: Knobs, *, nodes: int, hw: Hardware) -> list[str]:
    """Alternatives that fit: a smaller micro-batch, more nodes, optimizer offload."""
    usable = hw.gpu_gb * USABLE_FRACTION
    out: list[str] = []

    def fits(n: int, mb: int, k: Knobs) -> bool:
        return sum(gpu_gb(shape, n * hw.gpus, mb, k)) <= usable

    mb = next((m for m in range(knobs.micro_batch - 1, 0, -1) if fits(nodes, m, knobs)), None)
    if mb is not None:
        out.append(
            f"micro-batch {mb} (training.per_device_train_batch_size; raise "
            "gradient_accumulation_steps to keep the global batch)"
        )
    more = next((n for n in range(nodes + 1, 257) if fits(n, knobs.micro_batch, knobs)), None)
    if more is not None:
        out.append(f"{more} nodes at micro-batch {knobs.micro_batch}")
    else:
        more1 = next((n for n in range(nodes + 1, 257) if fits(n, 1, knobs)), None)
        if more1 is not None:
            out.append(f"{more1} nodes at micro-batch 1")
    off = replace(knobs, offload_optimizer=True)
    if not knobs.offload_optimizer:
        best = next((m for m in range(knobs.micro_batch, 0, -1) if fits(nodes, m, off)), None)
        if best is not None:
            out.append(
                f"deepspeed.offload_optimizer = true at micro-batch {best} (host memory: "
                f"{OFFLOADED_OPTIMIZER_BYTES * shape.params / nodes / GB:.0f} GB per node)"
            )
    if not knobs.checkpointing and fits(nodes, knobs.micro_batch, replace(knobs, checkpointing=True)):
        out.append("training.gradient_checkpointing = true")
    return out


def deepspeed_estimate_gb(shape: ModelShape, *, gpus_per_node: int, nodes: int) -> float | None:
    """DeepSpeed's own ZeRO-3 model-state estimate per GPU (GB), as a cross-check; None without it.

    ``estimate_zero3_model_states_mem_needs`` is the arithmetic behind
    ``estimate_zero3_model_states_mem_needs_all_cold`` (which only prints): 18 B/param over the
    GPUs plus 4 × the largest layer, no offload. It counts 2 B/param more than our 16 (a buffer).
    """
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    except ImportError:
        return None
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        shape.params, shape.largest_layer_params, num_gpus_per_node=gpus_per_node,
        num_nodes=nodes, cpu_offload=False, cpu_offload_params=False,
    )  # fmt: skip
    return gpu / GB
