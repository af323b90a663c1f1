"""Fine-tune wall time in the air-gap sandbox (bubblewrap) vs the network-namespace-only child.

Usage::

    python benchmarks/bench_sandbox.py [--steps 12] [--repeats 3] [--records 48]

Both sides run the same fine-tune the same way — the parent checks the arguments and the key,
makes and holds the staging folder, sends the job over a pipe, and publishes the export — and
differ only in the child's isolation: ``unshare -rn`` + ``python -m local.netns`` (what
``--airgapped`` ran before issue 21) against ``bwrap`` with the allow-listed file system and
environment (what it runs now). Wall time is measured from just before the child is started to
its result (``local.isolated.run_sandboxed``), so it includes the sandbox's set-up, the
interpreter start and imports inside it, decryption, training, audit and export.

The tiny model and data are the tests' (``tests/local/qlora_helpers.py``): a CPU run. Repeats are
interleaved in ABBA order (sandbox, namespace, namespace, sandbox, …), after one uncounted warm-up
run of each (the first run reads everything cold), so load from other
processes, rising or falling, hits both sides; the
median of each side and the median of the per-pair ratios are reported. (CPU time of the child
is not: bwrap's PID-namespace init reaps the child, so ``RUSAGE_CHILDREN`` never sees it.) It
also times 20 interleaved starts of ``python -c pass`` bare, in the namespace and in the sandbox:
the sandbox's fixed cost (setting up ~20 mounts), the most it can add — inside, the same code
runs on the same kernel, and bind mounts and tmpfs cost nothing per read. Writes
``benchmarks/out/sandbox.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "local"))

import qlora_helpers as h  # noqa: E402

from local import sandbox  # noqa: E402
from local.config import load_config  # noqa: E402
from local.isolated import run_sandboxed  # noqa: E402
from local.job import Job  # noqa: E402
from local.keys import load_key  # noqa: E402


def one_run(base: Job, out: Path, isolation: str) -> float:
    """Wall seconds of one whole fine-tune."""
    job = dataclasses.replace(base, out=out, isolation=isolation, started=time.monotonic())
    t0 = time.perf_counter()
    result = run_sandboxed(job)
    seconds = time.perf_counter() - t0
    assert result.steps == base.steps and out.is_dir()
    return seconds


def start_cost(repeats: int) -> dict[str, float]:
    """Median wall seconds to start ``python -c pass`` in each isolation and in none: the fixed
    cost the sandbox adds, which is all it can add (inside, the code runs as it would outside)."""
    plan = sandbox.Plan()
    cmds = {
        "none": [sys.executable, "-c", "pass"],
        sandbox.NAMESPACE: [*(sandbox.unshare_command() or []), sys.executable, "-c", "pass"],
        sandbox.SANDBOX: [*sandbox.command(plan), sys.executable, "-c", "pass"],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=sandbox.child_env())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--records", type=int, default=48)
    args = ap.parse_args()
    if sandbox.missing():
        raise SystemExit(f"no sandbox here: {sandbox.missing()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    model = h.verified_model(tmp)
    cipher, key_file = h.encrypted_dataset(tmp, n=args.records, name="data.enc")
    base = Job(
        model_dir=model, data=cipher, key_file=key_file, out=tmp / "unused",
        cfg=load_config(h.TINY_CONFIG), airgapped=True, verify=True, merge=False,
        steps=args.steps, public_key=None, free_bytes=None, resume=False, max_exposure=None,
        started=0.0, swap=sandbox.swap_state(), key=load_key(key_file),
    )  # fmt: skip
    starts = start_cost(20)
    for isolation in (sandbox.SANDBOX, sandbox.NAMESPACE):  # warm-up, not counted: cold caches
        one_run(base, tmp / f"warm-{isolation}", isolation)
    times: dict[str, list[float]] = {sandbox.SANDBOX: [], sandbox.NAMESPACE: []}
    for i in range(args.repeats):
        order = (sandbox.SANDBOX, sandbox.NAMESPACE)
        for isolation in order if i % 2 == 0 else order[::-1]:  # ABBA: drifting load hits both
            times[isolation].append(one_run(base, tmp / f"out-{isolation}-{i}", isolation))
            print(f"repeat {i} {isolation}: {times[isolation][-1]:.2f} s", flush=True)
    ratios = [s / n for s, n in zip(times[sandbox.SANDBOX], times[sandbox.NAMESPACE], strict=True)]
    sb, ns = (statistics.median(times[k]) for k in (sandbox.SANDBOX, sandbox.NAMESPACE))
    rows = [
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {sandbox.bwrap_version()}; {args.steps} steps, "
        f"{args.records} records, {args.repeats} interleaved repeats.",
        "",
        "| isolation | start `python -c pass` (s) | median wall (s) | wall, all runs (s) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {k} | {starts[k]:.3f} | {statistics.median(v):.2f} | "
            f"{', '.join(f'{t:.2f}' for t in v)} |"
            for k, v in times.items()
        ),
        f"| none | {starts['none']:.3f} | | |",
        "",
        f"sandbox / namespace, wall: median of medians **{sb / ns:.3f}×**, median of per-pair "
        f"ratios **{statistics.median(ratios):.3f}×** (target ≤ 1.05×). Start cost added by "
        f"the sandbox over the namespace: {starts[sandbox.SANDBOX] - starts[sandbox.NAMESPACE]:+.3f} s "
        f"= {(starts[sandbox.SANDBOX] - starts[sandbox.NAMESPACE]) / ns * 100:+.2f} % of the "
        "namespace run's median wall.",
    ]
    text = "\n".join(rows)
    print(text)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "sandbox.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
