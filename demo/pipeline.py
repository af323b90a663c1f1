"""The demo's run: keys + bucket → pretrain → verified download → encrypt → air-gapped fine-tune → report.

:func:`run_demo` runs the stages of :mod:`demo.stages` in order inside the bucket's lifetime,
prints one line per stage as it ends (the progress view of :class:`demo.runtime.Progress`), then
the summary table and the path of every artefact, and writes ``summary.json`` and the loss plot.
Ctrl-C or SIGTERM stop the training children on the way out.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, TextIO

from demo.runtime import DemoError, Paths, Progress, bucket, prepare_workdir
from demo.stages import (
    DemoOptions,
    download,
    finetune,
    plaintext_on_disk,
    pretrain,
    private_data,
    setup,
    train_history,
)
from demo.use import use_adapter

STAGES = 6


def artefacts(paths: Paths, summary: dict[str, Any]) -> dict[str, str]:
    """Every artefact by name, with its path (or command): the list the demo ends on."""
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
