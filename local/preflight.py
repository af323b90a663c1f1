"""Preflight: will this QLoRA run fit on this device? Decide before loading gigabytes.

The estimate is arithmetic over the model's shape (``local.shape``: read from ``config.json`` by
building the model on the ``meta`` device, no weights are read) and the run config. It errs high:

* frozen base: quantized linear weights at 0.5 byte/param plus their quantization constants
  (one absmax per 64 weights: fp32, or 8-bit + a second-level fp32 per 256 blocks with double
  quantization); the rest (embeddings, ``lm_head``, norms) in fp32, because
  ``prepare_model_for_kbit_training`` upcasts every non-quantized parameter;
* LoRA: fp32 weights + grads + two Adam moments = 16 bytes/param;
* activations: with gradient checkpointing one saved hidden state per layer plus one layer
  recomputed in full; the attention score matrix; fp32 logits with their gradient;
* transients: one dequantized copy of the largest linear layer, the CUDA context, 10 % margin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from local.config import FinetuneConfig
from local.errors import LocalError
from local.shape import (
    ModelShape,
    linear_names,
    load_meta_model,
    model_shape,
    position_limit,
    resolve_target_modules,
)

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
BLOCKSIZE = 64  # bitsandbytes 4-bit quantization block
NESTED_BLOCKSIZE = 256  # double quantization: absmax of absmax
CUDA_CONTEXT_BYTES = 600 * MIB
MARGIN = 0.10


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak, with the breakdown a person needs to decide what to change."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


@dataclass(frozen=True)
class PreflightReport:
    """Device, free memory, estimate and the verdict."""

    device: str
    device_name: str
    free_bytes: int
    budget_bytes: int
    estimate: MemoryEstimate
    shape: ModelShape
    target_modules: list[str]
    advice: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.budget_bytes

    def summary(self) -> str:
        parts = ", ".join(f"{k} {_size(v)}" for k, v in self.estimate.parts.items())
        return (
            f"preflight: device {self.device} ({self.device_name}), free {_size(self.free_bytes)}, "
            f"budget {_size(self.budget_bytes)}, estimated peak {_size(self.estimate.total)} "
            f"at 4-bit ({parts})"
        )


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def _dtype_bytes(compute_dtype: str) -> int:
    return 4 if compute_dtype == "float32" else 2


def quant_bytes(params: int, *, double_quant: bool) -> int:
    """Bytes of 4-bit weights plus quantization constants for ``params`` quantized weights."""
    blocks = -(-params // BLOCKSIZE)
    if double_quant:
        constants = (
            blocks * 1 + (-(-blocks // NESTED_BLOCKSIZE)) * 4 * 2
        )  # 8-bit absmax + fp32 scale/offset
    else:
        constants = blocks * 4
    return -(-params // 2) + constants


def estimate_peak(
    shape: ModelShape, cfg: FinetuneConfig, *, device: str, compute_dtype: str
) -> MemoryEstimate:
    """Estimated peak bytes of a QLoRA step (pure: shape + config → breakdown)."""
    a = _dtype_bytes(compute_dtype)
    b, s = cfg.batch_size, cfg.max_seq_len
    per_layer_full = (
        b * s * (16 * shape.hidden + 2 * shape.intermediate) * a + 2 * b * shape.heads * s * s * a
    )
    if cfg.gradient_checkpointing:
        activations = shape.layers * b * s * shape.hidden * a + per_layer_full
    else:
        activations = shape.layers * per_layer_full
    parts = {
        "base 4-bit": quant_bytes(shape.quantized_params, double_quant=cfg.double_quant),
        "base fp32 (embeddings, norms)": shape.other_params * 4,
        "LoRA + grads + Adam": shape.lora_params * 16,
        "activations": activations,
        "logits": 3 * b * s * shape.vocab * 4,
        "dequantize buffer": 2 * shape.largest_linear * a,
    }
    if device == "cuda":
        parts["CUDA context"] = CUDA_CONTEXT_BYTES
    parts["margin 10%"] = int(MARGIN * sum(parts.values()))
    return MemoryEstimate(parts)


def advise(est: MemoryEstimate, budget: int, cfg: FinetuneConfig, device: str) -> list[str]:
    """What to change, biggest lever first, when the estimate exceeds the budget (pure)."""
    if est.total <= budget:
        return []
    tips = []
    weights = est.parts["base 4-bit"] + est.parts["base fp32 (embeddings, norms)"]
    act = est.parts["activations"] + est.parts["logits"]
    if act > 0.1 * est.total:
        if cfg.batch_size > 1:
            tips.append(
                f"lower batch_size ({cfg.batch_size}) and raise grad_accum to keep the effective batch"
            )
        if cfg.max_seq_len > 128:
            tips.append(f"lower max_seq_len ({cfg.max_seq_len})")
        if not cfg.gradient_checkpointing:
            tips.append("set gradient_checkpointing = true")
    if weights > budget:
        tips.append(
            "the 4-bit base alone does not fit: use a device with more memory or a smaller model"
        )
    if device == "cpu":
        tips.append("close other programs or run on a GPU")
    else:
        tips.append("free GPU memory held by other processes (nvidia-smi) or use a larger GPU")
    return tips


def check_positions(model_dir: Path, cfg: FinetuneConfig) -> None:
    """Refuse a ``max_seq_len`` the model cannot embed, before anything is hashed or decrypted."""
    from transformers import AutoConfig

    try:
        hf_cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        raise LocalError(f"{model_dir}: not a Hugging Face model folder ({err})") from None
    limit = position_limit(hf_cfg)
    if limit is not None and cfg.max_seq_len > limit[1]:
        raise LocalError(
            f"config key max_seq_len={cfg.max_seq_len} exceeds the model's position limit "
            f"({limit[0]} = {limit[1]} in {model_dir}/config.json); set max_seq_len <= {limit[1]}"
        )


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; asking for missing CUDA is an error."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise LocalError(
            'config asks for device \'cuda\' but no CUDA device is available; set device = "auto" or "cpu"'
        )
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


def free_memory(device: str) -> tuple[int, str]:
    """Free bytes on ``device`` right now and a human name for it."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free), torch.cuda.get_device_name()
    import psutil

    return int(psutil.virtual_memory().available), "host RAM"


def run_preflight(
    model_dir: Path,
    cfg: FinetuneConfig,
    *,
    device: str,
    compute_dtype: str,
    free_bytes: int | None = None,
) -> PreflightReport:
    """Measure, estimate and decide; raise :class:`LocalError` with advice when it cannot fit.

    ``free_bytes`` injects a budget (tests); ``cfg.memory_limit_mb`` caps it for users.
    """
    hf_cfg, meta = load_meta_model(model_dir)
    targets = resolve_target_modules(
        getattr(hf_cfg, "model_type", ""), cfg.target_modules, linear_names(meta)
    )
    shape = model_shape(hf_cfg, meta, cfg, targets)
    del meta
    if free_bytes is None:
        free, name = free_memory(device)
    else:
        free, name = free_bytes, "injected budget"
    budget = free
    if cfg.memory_limit_mb:
        budget = min(budget, cfg.memory_limit_mb * MIB)
    est = estimate_peak(shape, cfg, device=device, compute_dtype=compute_dtype)
    report = PreflightReport(
        device, name, free, budget, est, shape, targets, advise(est, budget, cfg, device)
    )
    log.info("%s", report.summary())
    if not report.fits:
        raise LocalError(
            f"not enough memory: estimated peak {_size(est.total)} > {_size(budget)} "
            f"available on {device}; " + "; ".join(report.advice)
        )
    return report
