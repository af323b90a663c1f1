"""Packed vs padded batches in the QLoRA fine-tune, same run (target: >= 1.5x tokens/s on CPU).

The real stage-2 pieces: a tiny Llama loaded through ``local.finetune.load_qlora_model`` (4-bit
NF4 + LoRA, gradient checkpointing), ``local.batching.collate`` with ``packed`` False/True, and
the training step of ``local.training`` (forward, backward, clip, AdamW). Dataset: prompt/response
records of mixed length, log-uniform in 8..max_seq_len tokens (the long tail of real
instruction/chat data: many short records, few long ones), batch 8. Rounds alternate
padded/packed (ABAB) over the *same* micro-batches; tokens/s counts real (non-pad) tokens only.

    python benchmarks/bench_packing.py [--steps 12] [--rounds 3] [--hidden 256]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "local")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=128)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import dataclasses

    import qlora_helpers as h
    import torch

    from local import finetune
    from local.batching import collate, non_pad_fraction, packing_works
    from local.config import load_config
    from local.records import Example

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    model_dir = h.build_tiny_llama(tmp / "m", hidden=args.hidden)
    cfg = dataclasses.replace(load_config(h.TINY_CONFIG), batch_size=args.batch, max_seq_len=args.max_len)
    model = finetune.load_qlora_model(model_dir, cfg, "cpu", "float32", ["q_proj", "v_proj"])
    assert packing_works(model, "cpu", 300)
    rng = random.Random(0)
    examples = []
    for _ in range(args.batch * args.steps):
        n = round(math.exp(rng.uniform(math.log(8), math.log(args.max_len))))
        split = rng.randint(1, n - 1)
        ids = [rng.randrange(1, 300) for _ in range(n)]
        examples.append(Example(ids, [-100] * split + ids[split:]))
    batches = [examples[i : i + args.batch] for i in range(0, len(examples), args.batch)]
    real_tokens = sum(len(e.input_ids) for e in examples)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def run(packed: bool) -> float:
        t0 = time.perf_counter()
        for b in batches:
            loss = model(**collate(b, 0, packed)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    run(False)  # warm-up (allocator, kernels)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for packed in (False, True):
            times[packed].append(run(packed))
    padded_frac, _ = non_pad_fraction(batches)
    pad_t, pack_t = statistics.median(times[False]), statistics.median(times[True])
    print(f"records {len(examples)}, real tokens {real_tokens}, batch {args.batch}, lengths 8..{args.max_len} log-uniform, hidden {args.hidden}")
    print(f"non-pad fraction: padded {padded_frac:.3f}, packed 1.000")
    print(f"padded: median {pad_t:.2f}s  {real_tokens / pad_t:.0f} tok/s  rounds {[round(t, 2) for t in times[False]]}")
    print(f"packed: median {pack_t:.2f}s  {real_tokens / pack_t:.0f} tok/s  rounds {[round(t, 2) for t in times[True]]}")
    print(f"speed-up (tokens/s packed / padded): {pad_t / pack_t:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
