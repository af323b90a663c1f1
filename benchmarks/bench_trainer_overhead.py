"""Trainer overhead: ``python -m trainer`` vs a bare HF Trainer + DeepSpeed script, 2 CPU ranks.

Both train the same tiny GPT-2 (the ``configs/pretrain-tiny.toml`` sizes) on the same packed
blocks with the same generated DeepSpeed ZeRO-3 JSON, the same TrainingArguments batch/LR/logging
and the same CPU adaptations (without those a bare script does not run multi-rank on CPU at all).
The trainer adds: per-epoch evaluation + convergence, background checkpoint commits, the spot
watcher's per-step all-reduce, STATUS.json, final publish. Step time = wall time between
consecutive optimizer steps, intervals containing an evaluation or save left out, median after 5
warm-up steps (the same ``StepTimer`` callback in both). Runs alternate (trainer, bare, trainer,
bare, ...) so machine load drifts hit both.

    python benchmarks/bench_trainer_overhead.py [--steps 200] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "configs" / "pretrain-tiny.toml"


def bare_rank(config: Path, run_dir: Path, out: Path, steps: int) -> None:
    """One rank of the baseline: stock Trainer + DeepSpeed, nothing of twostage but the setup."""
    from trainer.config import load_config
    from trainer.data.loader import open_data
    from trainer.loop import cpu_compat
    from trainer.loop.callbacks import StepTimer
    from trainer.loop.dsconfig import build_ds_config
    from trainer.loop.model import build_model_config

    cfg = load_config(config)
    t = cfg.training
    compat = cpu_compat.apply(precision=t.precision)
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    args = TrainingArguments(
        output_dir=str(out / "bare-output"),
        max_steps=steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        logging_steps=t.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=cfg.run.seed,
        data_seed=cfg.run.seed,
        deepspeed=build_ds_config(cfg.deepspeed, accelerator=False),
        disable_tqdm=True,
        **compat.training_kwargs,
    )
    data = open_data(cfg, str(run_dir), out / "scratch", global_batch=args.train_batch_size)
    tok = data.tokenizer
    model = AutoModelForCausalLM.from_config(
        build_model_config(
            cfg.model,
            vocab_size=len(tok),
            block_size=cfg.data.block_size,
            eos_token_id=tok.eos_token_id,
        )
    )
    timer = StepTimer()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,  # the shards the trainer prepared (stock sampler)
        data_collator=default_data_collator,
        callbacks=[timer],
    )
    trainer.train()
    if args.process_index == 0:
        (out / "bare-step-times.json").write_text(json.dumps(timer.summary()))


def bench_config(tmp: Path, steps: int) -> Path:
    text = TINY.read_text()
    text = re.sub(r"(?m)^num_train_epochs = .*$", "num_train_epochs = 1000", text)
    text = re.sub(r"(?m)^save_steps = .*$", "save_steps = 100", text)
    text = re.sub(r"(?m)^patience = .*$", "patience = 1000", text)  # never converge: run all steps
    text = text.replace("[training]\n", f"[training]\nmax_steps = {steps}\n", 1)
    path = tmp / "bench.toml"
    path.write_text(text)
    return path


def launch(cmd_tail: list[str], log: Path) -> float:
    from artifacts.ports import free_port
    from trainer.launch.single_node import launcher_env

    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *cmd_tail,
    ]
    started = time.monotonic()
    with log.open("wb") as fh:
        rc = subprocess.call(cmd, env=launcher_env(), stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc != 0:
        raise SystemExit(f"run failed ({rc}); see {log}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--bare-rank", nargs=3, metavar=("CONFIG", "RUN", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.bare_rank:
        config, run_dir, out = ns.bare_rank
        bare_rank(Path(config), Path(run_dir), Path(out), ns.steps)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    os.environ["TWOSTAGE_SCRATCH"] = str(tmp / "scratch")
    config = bench_config(tmp, ns.steps)
    results: dict[str, list[dict]] = {"trainer": [], "bare": []}
    run_dir: Path | None = None
    for r in range(ns.rounds):
        # ABBA order: a load trend over time does not favour either side. Round 0 starts with
        # the trainer, which builds the data cache the bare script then reads.
        for kind in ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer"):
            if kind == "trainer":
                run = tmp / f"run-{r}"
                wall = launch(
                    ["--module", "trainer", "--config", str(config), "--run", str(run)],
                    tmp / f"trainer-{r}.log",
                )
                summary = json.loads((run / "final" / "training_summary.json").read_text())
                results["trainer"].append({**summary["step_time"], "wall_s": wall})
                run_dir = run  # its committed token shards: the same blocks for the bare script
            else:
                out = tmp / f"bare-{r}"
                out.mkdir()
                assert run_dir is not None
                cmd = [
                    str(Path(__file__)),
                    "--steps",
                    str(ns.steps),
                    "--bare-rank",
                    str(config),
                    str(run_dir),
                    str(out),
                ]
                wall = launch(cmd, tmp / f"bare-{r}.log")
                results["bare"].append(
                    {**json.loads((out / "bare-step-times.json").read_text()), "wall_s": wall}
                )
        print(json.dumps({k: v[-1] for k, v in results.items()}), flush=True)
    med = {k: statistics.median(x["median_s"] for x in v) for k, v in results.items()}
    report = {
        "steps_per_run": ns.steps,
        "rounds": ns.rounds,
        "trainer_step_median_s": med["trainer"],
        "bare_step_median_s": med["bare"],
        "ratio": med["trainer"] / med["bare"],
        "runs": results,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
