"""``invoke generate`` overhead and ``invoke export-gguf`` cost on a small Llama (issue 23).

Usage: python benchmarks/bench_use.py [--hidden 256] [--layers 4] [--tokens 64] [--repeats 5]

A Llama (hidden H, 4 heads, intermediate 2H, the locally trained byte-level BPE of the tests) is
built once and saved as fp32 safetensors. Then, in this one process:

* generate: the project's path (``local.generate.render`` + ``generate_one``, streaming every
  token through the ``TextStreamer`` into a sink) against a bare ``model.generate`` with the same
  input ids, greedy, ``--tokens`` new tokens (``min_new_tokens`` pins the count), on the same
  loaded model, alternating, ``--repeats`` each; median tokens/s and the ratio;
* export-gguf: wall time of ``local.gguf_release.export_gguf`` per dtype (without and with the
  read-back check), the file size vs the fp32 safetensors and vs an fp16 ``save_pretrained``
  (the "merged safetensors" in the same precision), and the read-back logits max |diff|.

Threads pinned to 1 (other processes share these cores). Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "local"))


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def bench_generate(model_dir: Path, tokens: int, repeats: int) -> dict:
    import torch

    from local import inference
    from local.generate import Settings, generate_one, render

    loaded = inference.load(model_dir, None)
    ids = render(loaded, "the cat sat on the mat and", adapter=False)
    settings = Settings(max_new_tokens=tokens)
    model = loaded.model
    ours, bare = [], []

    def run_bare() -> int:
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                pad_token_id=loaded.tokenizer.eos_token_id,
            )  # fmt: skip
        return out.shape[1] - len(ids)

    model.generation_config.min_new_tokens = tokens  # both paths generate exactly `tokens`
    run_bare()  # warm-up
    for _ in range(repeats):
        t = time.perf_counter()
        n = run_bare()
        bare.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        _text, n = generate_one(loaded, ids, settings, _Sink())
        ours.append(n / (time.perf_counter() - t))
    b, o = statistics.median(bare), statistics.median(ours)
    return {"bare_tokens_per_s": b, "ours_tokens_per_s": o, "overhead": b / o}


def bench_gguf(model_dir: Path, tmp: Path) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from local.gguf_release import export_gguf

    fp32 = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    half = tmp / "fp16"
    AutoModelForCausalLM.from_pretrained(str(model_dir)).half().save_pretrained(str(half))
    fp16 = sum(p.stat().st_size for p in half.glob("*.safetensors"))
    rows = []
    for dtype in ("f16", "bf16", "q8_0"):
        (tmp / f"{dtype}-plain").mkdir()
        t = time.perf_counter()
        export_gguf(model_dir, tmp / f"{dtype}-plain" / "m.gguf", dtype=dtype, verify=False)
        plain_s = time.perf_counter() - t
        (tmp / dtype).mkdir()
        info = export_gguf(model_dir, tmp / dtype / "m.gguf", dtype=dtype, verify=True)
        rows.append({
            "dtype": dtype, "export_s": plain_s, "export_with_readback_s": info.seconds,
            "bytes": info.bytes, "vs_fp32_safetensors": info.bytes / fp32,
            "vs_fp16_safetensors": info.bytes / fp16,
            "readback_max_abs_diff": info.readback_max_abs_diff,
        })  # fmt: skip
    return rows


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    import qlora_helpers as h

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = h.build_tiny_llama(tmp / "model", hidden=a.hidden, layers=a.layers)
        result = {
            "model": {"hidden": a.hidden, "layers": a.layers},
            "generate": bench_generate(model, a.tokens, a.repeats),
            "gguf": bench_gguf(model, tmp),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
