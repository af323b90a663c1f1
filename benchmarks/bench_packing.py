"""Packed vs padded batches in the QLoRA fine-tune, same run (target: >= 1.5x tokens/s on CPU).

The real stage-2 pieces: a tiny Llama loaded through ``local.model.load_qlora_model`` (4-bit
NF4 + LoRA, gradient checkpointing), ``local.batching.collate`` with ``packed`` False/True, and
the training step of ``local.training`` (forward, backward, clip, AdamW), in three modes over the
same records: ``padded`` (batch = 8 records, right-padded), ``flattened`` (the same 8-record
micro-batches as one row, no padding: DataCollatorWithFlattening alone) and ``packed`` (what
``packing = true`` does: records packed by ``local.training.epoch_units`` into sequences of
<= max_seq_len tokens, batch = 8 such rows, per-record position ids). Dataset: prompt/response
records of mixed length, log-uniform in 8..max_seq_len tokens (the long tail of real
instruction/chat data: many short records, few long ones), batch 8. Rounds alternate
the modes (ABCABC); tokens/s counts real (non-pad) tokens only, the same records in every mode.

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

    from local.batching import collate, non_pad_fraction, packing_works
    from local.config import load_config
    from local.model import load_qlora_model
    from local.records import Example

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    model_dir = h.build_tiny_llama(tmp / "m", hidden=args.hidden)
    cfg = dataclasses.replace(
        load_config(h.TINY_CONFIG), batch_size=args.batch, max_seq_len=args.max_len
    )
    model = load_qlora_model(model_dir, cfg, "cpu", "float32", ["q_proj", "v_proj"])
    assert packing_works(model, "cpu", 300)
    rng = random.Random(0)
    examples = []
    for _ in range(args.batch * args.steps):
        n = round(math.exp(rng.uniform(math.log(8), math.log(args.max_len))))
        split = rng.randint(1, n - 1)
        ids = [rng.randrange(1, 300) for _ in range(n)]
        examples.append(Example(ids, [-100] * split + ids[split:]))
    from local.training import epoch_units, micro_batches

    lengths = [len(e.input_ids) for e in examples]
    singles = epoch_units(lengths, 0, 0)
    bins = epoch_units(lengths, 0, 0, pack_to=args.max_len)

    def units(plan: list[list[int]]) -> list[list[list[Example]]]:
        return [[[examples[i] for i in u] for u in b] for b in micro_batches(plan, args.batch, 0)]

    batches, packed_batches = units(singles), units(bins)
    flat = [[[e for u in b for e in u]] for b in batches]  # the 8 records of a batch in one row
    real_tokens = sum(len(e.input_ids) for e in examples)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    modes = {
        "padded": (batches, False),
        "flattened": (flat, True),
        "packed": (packed_batches, True),
    }

    def run(mode: str) -> float:
        todo, packed = modes[mode]
        t0 = time.perf_counter()
        for b in todo:
            loss = model(**collate(b, 0, packed)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    run("padded")  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            times[mode].append(run(mode))
    padded_frac, packed_frac = non_pad_fraction(batches), non_pad_fraction(packed_batches)
    print(f"records {len(examples)}, real tokens {real_tokens}, batch {args.batch}, "
          f"lengths 8..{args.max_len} log-uniform, hidden {args.hidden}")  # fmt: skip
    print(f"non-pad fraction: padded {padded_frac:.3f}, flattened 1.000, packed {packed_frac:.3f}; steps: "
          f"padded/flattened {len(batches)}, packed {len(packed_batches)} "
          f"({len(bins)} sequences of <= {args.max_len} tokens)")  # fmt: skip
    base = statistics.median(times["padded"])
    for mode in modes:
        t = statistics.median(times[mode])
        print(f"{mode:9s}: median {t:.2f}s  {real_tokens / t:.0f} tok/s  x{base / t:.2f}  "
              f"rounds {[round(x, 2) for x in times[mode]]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
