"""Memory of the QLoRA path (4-bit NF4 + double quant base) vs LoRA on a bf16 base, same model.

Usage: python benchmarks/bench_qlora_memory.py [--hidden 2048] [--layers 6] [--steps 3]

A Llama whose linear layers dominate (hidden 2048, intermediate 5504, vocab 1000) is saved once
as bf16 safetensors. Each mode then runs in its own fresh subprocess (so one cannot inherit the
other's allocator state) and reports:

* base-weight bytes: the frozen base's tensors as they sit in memory — every frozen parameter
  plus the 4-bit quantization state (absmax, nested absmax, code tables) — counted exactly;
* RSS after loading (steady state, after gc) minus RSS after the imports;
* peak RSS during a few training steps (VmHWM reset through /proc/self/clear_refs) minus the
  same import baseline.

Both modes put LoRA (r=8, alpha=32) on q_proj/v_proj and train with AdamW; the QLoRA mode goes
through ``prepare_model_for_kbit_training`` exactly as ``local.finetune`` does, which upcasts the
non-quantized parameters (embeddings, lm_head, norms) to fp32. Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024**2


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def build(path: Path, hidden: int, layers: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.6875),
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(path))


def base_weight_bytes(model) -> dict[str, int]:
    """Exact bytes of the frozen base: frozen params + quantization state tensors."""
    import torch

    quantized = other = state = 0
    seen: set[int] = set()
    for p in model.parameters():
        if p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * p.element_size()
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            quantized += n
            tensors = [qs.absmax, qs.code]
            if getattr(qs, "nested", False):
                tensors += [qs.state2.absmax, qs.state2.code, qs.offset]
            state += sum(
                t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)
            )
        elif p.dim() == 2 and p.shape[0] != model.config.vocab_size:
            quantized += n  # a bf16 linear weight in the 16-bit mode
        else:
            other += n
    return {"linear_weights": quantized, "quant_state": state, "embeddings_norms": other}


def child(mode: str, model_dir: str, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    gc.collect()
    baseline = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    if mode == "qlora":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=quant, dtype=torch.bfloat16, device_map={"": "cpu"}
        )
        for m in model.modules():  # as local.finetune does (bnb CPU repacking breaks training)
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.bfloat16, device_map={"": "cpu"}
        )
        # transformers maps safetensors lazily: copy into anonymous memory so RSS shows the
        # weights as a training process holds them (every step touches all of them anyway).
        for p in model.parameters():
            p.data = p.data.clone()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=8,
        lora_alpha=32,
        lora_dropout=0.05,
        bias="none",
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    load_s = time.perf_counter() - t0
    gc.collect()
    after_load = _rss_kib("VmRSS")
    weights = base_weight_bytes(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 64))
    _reset_peak()
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    step_s = (time.perf_counter() - t0) / steps
    peak = _rss_kib("VmHWM")
    return {
        "mode": mode,
        "base_weight_bytes": weights,
        "base_weight_total": sum(weights.values()),
        "rss_after_load_mib": (after_load - baseline) / 1024,
        "peak_rss_training_mib": (peak - baseline) / 1024,
        "load_s": load_s,
        "step_s": step_s,
        "losses": losses,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--child", choices=["qlora", "lora16"])
    ap.add_argument("--model-dir")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.steps)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        build(Path(tmp), args.hidden, args.layers)
        on_disk = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        results = {}
        # A fixed mmap threshold makes glibc hand big freed buffers (dequantized weights,
        # activations) back to the OS at once, so RSS tracks live memory, not allocator caching.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        for mode in ("lora16", "qlora"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--model-dir", tmp, "--steps", str(args.steps)],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    q, b = results["qlora"], results["lora16"]
    lin_ratio = (
        q["base_weight_bytes"]["linear_weights"] + q["base_weight_bytes"]["quant_state"]
    ) / b["base_weight_bytes"]["linear_weights"]
    report = {
        "model": f"Llama hidden {args.hidden}, {args.layers} layers, vocab 1000",
        "checkpoint_bf16_mib": on_disk / MIB,
        "results": results,
        "ratio_base_weights_total": q["base_weight_total"] / b["base_weight_total"],
        "ratio_linear_weights_incl_quant_state": lin_ratio,
        "ratio_rss_after_load": q["rss_after_load_mib"] / b["rss_after_load_mib"],
        "ratio_peak_rss_training": q["peak_rss_training_mib"] / b["peak_rss_training_mib"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
