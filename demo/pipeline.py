"""The demo's stages: keys + bucket → pretrain → verified download → encrypt → air-gapped fine-tune → report.

Each stage calls the same library code or command a user runs by hand; nothing is special-cased
for the demo except the tiny recipes and a local folder (or moto's S3 on 127.0.0.1) standing in
for the bucket. The two training stages run as child processes with their logs in
``<workdir>/logs/``, so the terminal shows one line per stage and a progress bar, not two ranks of
DeepSpeed chatter:

* pretraining: ``trainer.launch.single_node.launch_local`` (2 CPU ranks, ZeRO-3) in a child process; the
  progress bar follows the run's ``STATUS.json`` in the bucket, as an operator would;
* fine-tune: ``invoke finetune --airgapped`` as a subprocess — the very command the README gives.
  A separate process also keeps the air-gap guard (it patches ``socket``) and the HF offline
  switches out of this process, which still talks to loopback S3 in ``--s3`` mode.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from demo.runtime import (
    DemoError,
    Paths,
    Progress,
    bucket,
    child,
    demo_recipe,
    finetune_cmd,
    follow_training,
    last_line,
    prepare_workdir,
    pretrain_cmd,
)
from demo.use import use_adapter

STAGES = 6


@dataclass(frozen=True)
class DemoOptions:
    """What ``invoke demo`` was asked to do."""

    workdir: Path
    s3: bool = False
    force: bool = False
    verbose: bool = False
    nproc: int = 2
    interrupt_after_epochs: int = 10
    """Simulate one spot interruption after this many epochs (about mid-run: the tiny recipe
    converges after ~20), then resume on one rank (0: none). Later rather than earlier because one
    rank on a shared 2-core box trains slower than two (see BENCHMARKS.md §12)."""


def setup(paths: Paths, run_uri: str) -> str:
    """Fresh signing key pair and dataset key, and the recipe that names the signing key."""
    from artifacts.signing import generate_keypair
    from local.keys import generate_key_file

    paths.keys.mkdir(mode=0o700)
    generate_keypair(paths.signing_key)
    generate_key_file(paths.data_key)
    demo_recipe(paths, run_uri)
    return f"Ed25519 signing key + AES-256 data key in {paths.keys}; bucket {run_uri}"


def pretrain(opts: DemoOptions, paths: Paths, run_uri: str) -> dict[str, Any]:
    """Stage 1 to convergence in a child process; the summary comes from the bucket, not the child."""
    from artifacts.manifest import committed_folders
    from artifacts.run import ExitCode, Run
    from trainer.config import load_config

    log_path = paths.logs / "pretrain.log"
    conv = load_config(paths.config).convergence
    run = Run(run_uri)
    interruption: dict[str, Any] | None = None
    noticed: list[float] = []

    def spot_notice(status: dict[str, Any]) -> None:
        # What a spot reclaim does to a node: SIGTERM (the two-minute notice) to the launcher,
        # which asks the ranks to save, commit and exit 75.
        epochs = len(status.get("val_loss_history") or [])
        if opts.interrupt_after_epochs and not noticed and epochs >= opts.interrupt_after_epochs:
            noticed.append(time.monotonic())
            proc.send_signal(signal.SIGTERM)

    with child(
        pretrain_cmd(paths.config, run_uri, opts.nproc), log_path, cwd=paths.root,
        verbose=opts.verbose,
    ) as proc:  # fmt: skip
        follow_training(
            proc, run_uri, enabled=not opts.verbose, patience=conv.patience, on_epoch=spot_notice
        )
    if noticed and proc.returncode == ExitCode.INTERRUPTED:
        stopped = run.read_status()
        resume_log = paths.logs / "pretrain-resumed.log"
        with child(
            pretrain_cmd(paths.config, run_uri, 1), resume_log, cwd=paths.root,
            verbose=opts.verbose,
        ) as proc:  # fmt: skip
            follow_training(proc, run_uri, enabled=not opts.verbose, patience=conv.patience)
        log_path = resume_log
        interruption = interruption_summary(stopped, run.read_status(), opts.nproc)
    status = run.read_status()
    if proc.returncode != 0 or status is None or not status.done:
        state = status.state if status else None
        raise DemoError(
            f"pretraining failed (exit {proc.returncode}, state {state}): {last_line(log_path)} — log: {log_path}"
        )
    history = list(status.val_loss_history)
    losses = [h.get("val_loss") for h in history]
    # Where the trainer's criterion declared convergence: the trainer records it in the status.
    at = next((h for h in history if h.get("step") == status.converged_at_step), None)
    finite = [x for x in losses if x is not None and math.isfinite(x)]
    store = run.store
    return {
        "state": str(status.state),
        "global_step": status.global_step,
        "epochs": status.epoch,
        "converged": status.converged,
        "converged_by_criterion": status.converged_at_step is not None,
        "converged_epoch": None if at is None else round(float(at["epoch"]), 2),
        "converged_step": status.converged_at_step,
        "patience": conv.patience,
        "min_rel_improvement": conv.min_rel_improvement,
        "first_val_loss": finite[0] if finite else None,
        "best_val_loss": min(finite) if finite else None,
        "final_val_loss": finite[-1] if finite else None,
        "val_history": [
            [round(float(h["epoch"]), 3), h["val_loss"]]
            for h in history
            if h.get("val_loss") is not None
        ],
        "checkpoints": len(committed_folders(store.list(Run.CHECKPOINTS), Run.CHECKPOINTS)),
        "latest_sample": status.extra.get("latest_sample"),
        "tensorboard_files": len(store.list(Run.TENSORBOARD + "/")),
        "run_uri": run_uri,
        "final_uri": status.final or run.final_uri,
        "interruption": interruption,
    }


def interruption_summary(stopped: Any, resumed: Any, world_before: int) -> dict[str, Any]:
    """What the simulated spot interruption cost: the step it stopped at, where the relaunch
    resumed (and on how many ranks), and the committed steps lost in between (goal: 0)."""
    at_step = int(stopped.global_step) if stopped is not None else None
    info = dict((resumed.extra.get("resumed") if resumed is not None else None) or {})
    resumed_at = info.get("step")
    return {
        "at_step": at_step,
        "at_epoch": None if stopped is None or stopped.epoch is None else round(stopped.epoch, 3),
        "reason": stopped.reason if stopped is not None else None,
        "notice_to_commit_s": stopped.extra.get("notice_to_commit_s") if stopped else None,
        "from_world_size": int(info.get("from_world_size") or world_before),
        "to_world_size": info.get("world_size"),
        "resumed_at_step": resumed_at,
        "steps_lost": None if at_step is None or resumed_at is None else at_step - resumed_at,
        "note": info.get("note"),
    }


def download(paths: Paths, run_uri: str, final_uri: str) -> dict[str, Any]:
    """The owner's ``invoke sign`` (their key, their machine: the training ranks never had it),
    then ``invoke download --public-key``: signature, then every byte verified before DEST appears."""
    from artifacts.attest import sign_run
    from artifacts.download import download_verified

    sign_run(run_uri, paths.signing_key)
    manifest = download_verified(final_uri, paths.model, public_key=paths.public_key, progress=True)
    return {
        "source": final_uri,
        "path": str(paths.model),
        "files": len(manifest.files),
        "bytes_verified": manifest.total_bytes,
        "signature_verified": True,
    }


def train_history(model_dir: Path) -> list[list[float]]:
    """``[[epoch, train loss], ...]`` from the verified model's ``loss_history.json``."""
    path = model_dir / "loss_history.json"
    if not path.is_file():
        return []
    train = json.loads(path.read_text()).get("train", [])
    return [
        [round(float(e["epoch"]), 3), float(e["loss"])] for e in train if e.get("epoch") is not None
    ]


def private_data(paths: Paths) -> dict[str, Any]:
    """A fresh private dataset, encrypted from memory with the fresh data key."""
    from demo.corpus_private import write_encrypted_dataset
    from local.keys import load_key

    ds = write_encrypted_dataset(paths.data, load_key(paths.data_key))
    return {
        "path": str(ds.path),
        "key_file": str(paths.data_key),
        "records": ds.records,
        "plaintext_bytes_in_memory": ds.plaintext_bytes,
        "ciphertext_bytes": ds.ciphertext_bytes,
    }


def finetune(opts: DemoOptions, paths: Paths) -> dict[str, Any]:
    """Stage 2 exactly as a user runs it; the numbers come from the export's manifest."""
    from tqdm.auto import tqdm

    from artifacts.manifest import MANIFEST_NAME

    log_path = paths.logs / "finetune.log"
    with child(finetune_cmd(paths), log_path, cwd=paths.root, verbose=opts.verbose) as proc:
        with tqdm(
            desc="      fine-tuning (air-gapped)",
            bar_format="{desc} [{elapsed}]",
            disable=True if opts.verbose else None,
            leave=False,
        ) as bar:
            while True:
                try:
                    proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    bar.refresh()  # a ticking clock, so a person sees it is alive
    if proc.returncode != 0:
        raise DemoError(
            f"fine-tune failed (exit {proc.returncode}): {last_line(log_path)} — log: {log_path}"
        )
    meta = json.loads((paths.export / MANIFEST_NAME).read_text())["metadata"]
    files = [p for p in paths.export.rglob("*") if p.is_file()]
    return {
        "steps": meta.get("steps"),
        "loss_before": meta.get("eval_loss_before"),
        "loss_after": meta.get("eval_loss_after"),
        "train_history": [list(map(float, p)) for p in meta.get("train_loss_history", [])],
        "export_path": str(paths.export),
        "export_files": len(files),
        "export_bytes": sum(p.stat().st_size for p in files),
        "airgapped": True,
        "isolation": meta.get("isolation"),
        "data": meta.get("data", {}),
        "privacy_audit": meta.get("privacy_audit"),
    }


def plaintext_on_disk(root: Path) -> dict[str, Any]:
    """Search every file the demo wrote for the marker every private record carries."""
    from demo.corpus_private import CANARY

    needle, hits, searched, size = CANARY.encode(), [], 0, 0
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            searched, size = searched + 1, size + len(data)
            if needle in data:
                hits.append(str(p.relative_to(root)))
    return {"files_searched": searched, "bytes_searched": size, "files_with_plaintext": hits}


def artefacts(paths: Paths, summary: dict[str, Any]) -> dict[str, str]:
    pre = summary.get("pretrain", {})
    return {
        "workdir": str(paths.root),
        "pretraining recipe": str(paths.config),
        "signing key (private / public)": f"{paths.signing_key} / {paths.public_key}",
        "dataset key": str(paths.data_key),
        "run prefix (bucket)": pre.get("run_uri", ""),
        "published final model": pre.get("final_uri", ""),
        "verified model copy": str(paths.model),
        "encrypted dataset": str(paths.data),
        "fine-tune export": str(paths.export),
        "evaluation (JSON)": str(paths.evaluation),
        "GGUF + Ollama Modelfile": str(paths.gguf),
        "TensorBoard": f"invoke tensorboard --run {pre.get('run_uri', '')}",
        "summary (JSON)": str(paths.summary),
        "loss plot (PNG)": str(paths.plot),
        "logs": str(paths.logs),
    }


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every stage's cleanup: children are stopped


def run_demo(opts: DemoOptions, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run every stage in ``opts.workdir``; print the progress view and summary; return the summary.

    SIGTERM is handled like Ctrl-C, so ``kill`` also stops the training processes (they run in
    sessions of their own and would otherwise outlive the demo).
    """
    if threading.current_thread() is not threading.main_thread():
        return _run_demo(opts, out)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run_demo(opts, out)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_demo(opts: DemoOptions, out: TextIO) -> dict[str, Any]:
    from demo import report

    started = time.monotonic()
    paths = Paths(prepare_workdir(opts.workdir, force=opts.force))
    progress = Progress(out, STAGES)
    where = "moto's S3 server on 127.0.0.1" if opts.s3 else "a local folder"
    progress.say(f"twostage demo in {paths.root} — the bucket is {where}; logs in {paths.logs}")
    summary: dict[str, Any] = {
        "workdir": str(paths.root),
        "bucket": "s3 (moto, 127.0.0.1)" if opts.s3 else "local folder",
    }
    with bucket(paths, opts.s3) as run_uri:
        with progress.stage(1, "setup", "keys, bucket, recipe") as note:
            note.append(setup(paths, run_uri))
        title = f"pretraining: corpus → tokenizer → tiny model, DeepSpeed ZeRO-3 on {opts.nproc} CPU ranks until converged"
        if opts.interrupt_after_epochs:
            title += f" (a spot interruption after epoch {opts.interrupt_after_epochs}, resumed on 1 rank)"
        with progress.stage(2, "pretrain", title) as note:
            pre = summary["pretrain"] = pretrain(opts, paths, run_uri)
            note.append(
                f"{pre['state']} at epoch {pre['converged_epoch'] or pre['epochs']:g} (step {pre['global_step']}), "
                f"best val loss {pre['best_val_loss']:.4f}; final model (unsigned) → {pre['final_uri']}"
            )
            if pre.get("interruption"):
                cut = pre["interruption"]
                note[0] += (
                    f"; interrupted at step {cut['at_step']} on {cut['from_world_size']} ranks, "
                    f"resumed on {cut['to_world_size']} at step {cut['resumed_at_step']} "
                    f"({cut['steps_lost']} steps lost)"
                )
        with progress.stage(
            3, "download", "owner signs the finished run (invoke sign), verified download (signature + SHA-256)"
        ) as note:
            dl = summary["download"] = download(paths, run_uri, pre["final_uri"])
            pre["train_history"] = train_history(paths.model)
            note.append(
                f"{dl['files']} files, {dl['bytes_verified']:,} bytes verified, signature ok → {paths.model}"
            )
    with progress.stage(
        4, "private_data", "private dataset: generated in memory, encrypted with a fresh key"
    ) as note:
        data = summary["private_data"] = private_data(paths)
        note.append(
            f"{data['records']} records → {paths.data.name} ({data['ciphertext_bytes']:,} bytes ciphertext)"
        )
    with progress.stage(
        5, "finetune", "air-gapped QLoRA fine-tune from the ciphertext → export"
    ) as note:
        ft = summary["finetune"] = finetune(opts, paths)
        note.append(
            f"{ft['steps']} steps, eval loss {ft['loss_before']:.4f} → {ft['loss_after']:.4f}; "
            f"{ft['export_files']} files exported → {paths.export}"
        )
        used = summary["use"] = use_adapter(paths, verbose=opts.verbose)
        ev, gg = used["evaluate"], used["gguf"]
        note.append(
            f"invoke evaluate (held-out): base {ev['base (4-bit)']['loss']:.4f} → adapter "
            f"{ev['base + adapter']['loss']:.4f}; invoke export-gguf: {gg['dtype']} "
            f"{gg['bytes'] / 1e6:.2f} MB, read back by transformers (max |logit diff| "
            f"{gg['readback_max_abs_diff']:.3f}) → {paths.gguf}"
        )
    with progress.stage(6, "report", "report: privacy check, summary.json, loss plot") as note:
        summary["private_data"]["plaintext_on_disk"] = plaintext_on_disk(paths.root)
        if summary["private_data"]["plaintext_on_disk"]["files_with_plaintext"]:
            hits = summary["private_data"]["plaintext_on_disk"]["files_with_plaintext"]
            raise DemoError(
                f"private plaintext found on disk in {hits[0]}: this is a bug, please report it"
            )
        summary["artefacts"] = artefacts(paths, summary)
        summary["stage_seconds"] = progress.times
        summary["wall_seconds"] = round(time.monotonic() - started, 1)
        report.plot_losses(summary, paths.plot)
        report.write_summary_json(summary, paths.summary)
        note.append(
            f"no private plaintext in {summary['private_data']['plaintext_on_disk']['files_searched']} files on disk"
        )
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    report.write_summary_json(summary, paths.summary)
    progress.say("")
    progress.say(report.format_table(summary))
    progress.say("")
    width = max(len(k) for k in summary["artefacts"])
    for name, path in summary["artefacts"].items():
        progress.say(f"  {name.ljust(width)}  {path}")
    if opts.s3:
        progress.say(
            "  (moto's S3 lives in memory: the bucket is gone now that the demo has ended)"
        )
    return summary
