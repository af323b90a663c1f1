"""Every CPU-only adaptation of the DeepSpeed + HF Trainer stack, in one place.

Applied by :func:`apply` only when no accelerator is present (``has_accelerator()`` is False); on a
GPU node nothing here runs and the stock code paths are used. Each adaptation names the trap it
works around (measured with transformers 5.23, accelerate 1.15, deepspeed 0.19.8):

1. **Threads** — ranks share the cores; ``torch.set_num_threads(OMP_NUM_THREADS or 1)``
   (the launcher does not set it, and N ranks × all cores thrash).
2. **DeepSpeed's shared-memory comm op** — on CPU DeepSpeed JIT-compiles a C++ all-reduce op with
   g++ on first use (20–50 s, cached in ``~/.cache/torch_extensions``) and leaves a 66 MB
   ``/dev/shm`` buffer per process. We make ``build_shm_op`` return None, so collectives use the
   gloo process group (identical results; measured no slower on tiny models). Set
   ``TWOSTAGE_CPU_SHM_COMM=1`` to keep DeepSpeed's op.
3. **Distributed state** — with ``TrainingArguments(deepspeed=...)`` and no GPU, accelerate picks
   no backend, so every rank believes it is rank 0 of 1 ("auto" batch sizes then assert
   ``8 != 8 * 1 * 2`` and data is not sharded). ``use_cpu=True`` would turn DeepSpeed off instead.
   We create accelerate's ``PartialState`` ourselves with the gloo backend and DeepSpeed enabled,
   and tell the Trainer to use it (``accelerator_config={"use_configured_state": True}``).
4. **bf16 on CPU** — ``TrainingArguments`` refuses ``bf16=True`` without a bf16 GPU although ZeRO-3
   trains fine in bf16 on CPU; its capability check is pointed at the CPU's own bf16 support.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

SHM_ENV = "TWOSTAGE_CPU_SHM_COMM"


def has_accelerator() -> bool:
    """Whether torch sees a CUDA (or XPU) device; False means the CPU adaptations apply."""
    import torch

    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class CpuCompat:
    """What :func:`apply` changed; ``training_kwargs`` go into ``TrainingArguments``."""

    applied: list[str] = field(default_factory=list)
    """Names of the adaptations applied, in order (logged, asserted in tests)."""
    training_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``TrainingArguments`` keyword arguments."""


def set_threads() -> int:
    """Adaptation 1: pin torch's intra-op threads to ``OMP_NUM_THREADS`` (default 1)."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "") or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    return threads


def disable_shm_comm_op() -> bool:
    """Adaptation 2: collectives over gloo instead of DeepSpeed's JIT-compiled shm op."""
    if os.environ.get(SHM_ENV, "") == "1":
        return False
    # ``deepspeed.comm.torch`` as an attribute is torch itself (re-exported); use the module.
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    ds_comm_torch.build_shm_op = _no_shm_op
    return True


def _no_shm_op() -> None:
    return None


def init_distributed_state(timeout_s: int) -> bool:
    """Adaptation 3: a multi-process gloo ``PartialState`` flagged for DeepSpeed.

    Needs the launcher's environment (``LOCAL_RANK``, ``RANK``, ``WORLD_SIZE``, ``MASTER_*``).
    Returns False (nothing done) outside a launcher.
    """
    if int(os.environ.get("LOCAL_RANK", "-1")) < 0:
        return False
    from accelerate.state import PartialState

    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        state = PartialState(backend="gloo", timeout=timedelta(seconds=timeout_s))
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != world:
        raise RuntimeError(f"gloo state has {state.num_processes} processes, launcher says {world}")
    return True


def allow_cpu_bf16() -> bool:
    """Adaptation 4: let ``TrainingArguments(bf16=True)`` through when the CPU has bf16."""
    if not cpu_bf16_supported():
        return False
    training_args = importlib.import_module("transformers.training_args")
    training_args.is_torch_bf16_gpu_available = _cpu_bf16_available
    return True


def _cpu_bf16_available(*args: Any, **kwargs: Any) -> bool:
    return True


def apply(*, precision: str, timeout_s: int = 1800) -> CpuCompat:
    """Apply every CPU adaptation (call before building ``TrainingArguments``); no-op on GPUs."""
    result = CpuCompat()
    if has_accelerator():
        return result
    set_threads()
    result.applied.append("threads")
    if disable_shm_comm_op():
        result.applied.append("no-shm-comm-op")
    if init_distributed_state(timeout_s):
        result.applied.append("gloo-deepspeed-state")
        result.training_kwargs["accelerator_config"] = {"use_configured_state": True}
    if precision == "bf16" and allow_cpu_bf16():
        result.applied.append("cpu-bf16")
    log.info("CPU adaptations applied: %s", ", ".join(result.applied) or "none")
    return result
