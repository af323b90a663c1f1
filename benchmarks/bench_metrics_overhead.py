"""Stage-1 step time with TensorBoard metrics + sample generations on vs off (issue 23).

Both arms run ``python -m trainer`` (2 CPU ranks, ZeRO-3, the tiny recipe, ``max_steps`` fixed,
never converging) on the same committed data; "on" keeps the recipe's ``[eval]`` (event files
every log step, committed every 5 s, one sample prompt × 12 tokens at every evaluation), "off"
sets ``tensorboard = false`` and no sample prompts. Step time = the trainer's own ``StepTimer``
(intervals containing an evaluation or save left out: samples are generated only at
evaluations), median after 5 warm-up steps; the cost of the samples is reported separately per
evaluation (``sample_seconds`` in the training summary). Runs alternate ABBA so load drift hits
both arms.

    python benchmarks/bench_metrics_overhead.py [--steps 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_trainer_overhead import bench_config, launch  # noqa: E402


def arm_config(base: Path, on: bool) -> Path:
    text = base.read_text()
    if not on:
        start = text.index("[eval]")
        text = text[:start] + "[eval]\ntensorboard = false\nsample_prompts = []\n"
    path = base.with_name(f"bench-{'on' if on else 'off'}.toml")
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    ns = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    os.environ["TWOSTAGE_SCRATCH"] = str(tmp / "scratch")
    base = bench_config(tmp, ns.steps)
    configs = {"on": arm_config(base, True), "off": arm_config(base, False)}
    results: dict[str, list[dict]] = {"on": [], "off": []}
    for r in range(ns.rounds):
        for arm in ("on", "off") if r % 2 == 0 else ("off", "on"):
            run = tmp / f"run-{arm}-{r}"
            wall = launch(
                ["--module", "trainer", "--config", str(configs[arm]), "--run", str(run)],
                tmp / f"{arm}-{r}.log",
            )
            summary = json.loads((run / "final" / "training_summary.json").read_text())
            events = list((run / "logs" / "tensorboard").rglob("events.out.tfevents.*"))
            results[arm].append({
                **summary["step_time"], "wall_s": wall, "event_files": len(events),
                "sample_seconds": summary.get("sample_seconds") or [],
            })  # fmt: skip
            print(json.dumps({arm: results[arm][-1]}), flush=True)
    med = {k: statistics.median(x["median_s"] for x in v) for k, v in results.items()}
    samples = [s for x in results["on"] for s in x["sample_seconds"]]
    report = {
        "steps_per_run": ns.steps,
        "rounds": ns.rounds,
        "on_step_median_s": med["on"],
        "off_step_median_s": med["off"],
        "ratio": med["on"] / med["off"],
        "sample_s_per_eval_median": statistics.median(samples) if samples else None,
        "evals_per_run": len(results["on"][0]["sample_seconds"]),
        "wall_s": {k: [x["wall_s"] for x in v] for k, v in results.items()},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
