"""The demo's stages, each one what a user runs by hand; each returns its part of the summary.

Nothing is special-cased for the demo except the tiny recipes and a local folder (or moto's S3 on
127.0.0.1) standing in for the bucket. The two training stages run as child processes with their
logs in ``<workdir>/logs/``, so the terminal shows one line per stage and a progress bar, not two
ranks of DeepSpeed chatter:

* pretraining: ``trainer.launch.single_node.launch_local`` (2 CPU ranks, ZeRO-3) in a child process; the
  progress bar follows the run's ``STATUS.json`` in the bucket, as an operator would;
* fine-tune: ``invoke finetune --airgapped`` as a subprocess — the very command the README gives.
  A separate process also keeps the air-gap guard (it patches ``socket``) and the HF offline
  switches out of this process, which still talks to loopback S3 in ``--s3`` mode.

Their order, the progress view and the final report are :mod:`demo.pipeline`'s. The run's options
(:class:`DemoOptions`) are defined here, as the training stages are what read them.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.runtime import (
    DemoError,
    Paths,
    child,
    demo_recipe,
    finetune_cmd,
    follow_training,
    last_line,
    pretrain_cmd,
)


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
