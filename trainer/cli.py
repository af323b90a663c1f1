"""Invoke tasks of the stage-1 trainer that need no cluster: ``prepare-data``, ``export-checkpoint``."""

from __future__ import annotations

from invoke import task

from artifacts.cli_support import user_errors
from trainer.errors import TrainerError


@task(
    help={
        "config": "run recipe TOML (its [data] section says what to prepare)",
        "run": "run prefix URI or path (default: [run] uri, else a fresh runs/<name>-<time>)",
        "workers": "tokenizer processes (default: data.workers, 0 = one per CPU core)",
        "node_rank": "this node's index on a cluster (each node takes a disjoint set of units)",
        "node_count": "nodes preparing together (node 0 commits the manifest once all are done)",
    }
)
@user_errors
def prepare_data(c, config, run=None, workers=0, node_rank=0, node_count=1):
    """Tokenize the corpus into committed token shards under <run>/cache/data/ (resumable).

    Sources: local files/folders/globs and s3:// prefixes; plain text (a document per line),
    .jsonl with a "text" field, .gz and .zst. Trains the tokenizer on a bounded seeded sample
    (or uses data.tokenizer), cleans every document ([data.clean]), removes duplicates across
    the corpus and the nodes (data.dedup: exact by default, minhash, off), tokenizes in parallel
    processes (big files and compressed/S3 objects shared by byte ranges or lanes), writes
    fixed-size shards each committed as it is done, DATA_REPORT.json and the manifest last, and
    prints the report (documents in/out, dropped per reason, duplicate clusters, time per stage). Rerunning reuses a matching cache or finishes
    an interrupted one. `invoke pretrain` and the trainer run this too when the cache is missing.
    """
    from artifacts.logs import init_logging
    from trainer.data.prepare import run_prepare

    init_logging()
    run_uri, prepared = run_prepare(config, run, int(workers), int(node_rank), int(node_count))
    meta = prepared.metadata
    verb = "reused" if prepared.reused else "committed"
    print(
        f"{verb} {prepared.cache_uri}: {meta.get('train_tokens', 0):,} train / "
        f"{meta.get('val_tokens', 0):,} validation tokens in {len(meta.get('train', []))} + "
        f"{len(meta.get('val', []))} shards (fingerprint {prepared.fingerprint})"
    )
    from trainer.data.prepare import read_report
    from trainer.data.report import REPORT_NAME, report_lines

    report = read_report(prepared.cache_uri)
    if report is not None:
        for line in report_lines(report):
            print(f"  {line}")
        print(f"  report: {prepared.cache_uri.rstrip('/')}/{REPORT_NAME}")
    print(f"train on it: invoke pretrain --local --config {config} --run {run_uri}")


@task(
    help={
        "run": "run prefix: s3://bucket/runs/NAME, file:///abs/path or a local folder",
        "step": "global step of the committed checkpoint to export (default: the newest)",
        "out": "folder for the HF model (new or empty; default export-step-N/)",
        "public_key": "Ed25519 public key: also check the checkpoint's manifest signature",
        "force": "replace a non-empty OUT (only after the export succeeded)",
    }
)
@user_errors
def export_checkpoint(c, run, step=None, out=None, public_key=None, force=False):
    """Consolidated fp32 weights of a committed checkpoint (DeepSpeed zero_to_fp32) as an HF folder.

    Periodic and interruption checkpoints hold only ZeRO shards + trainer state (no gathered
    model); this downloads checkpoint --step verified, merges every rank's shards with
    `python -m deepspeed.utils.zero_to_fp32` and adds config + tokenizer, so the folder loads
    with `from_pretrained`.
    """
    from pathlib import Path

    from artifacts.logs import init_logging
    from trainer.checkpoint.export import export_checkpoint as export

    init_logging()
    try:
        wanted = None if step is None else int(step)
    except ValueError:
        raise TrainerError(f"--step {step}: give a global step number") from None
    if wanted is not None and wanted < 0:
        raise TrainerError(f"--step {step}: must be >= 0")
    dest = Path(out) if out else Path(f"export-step-{wanted if wanted is not None else 'latest'}")
    chosen, path = export(
        run, dest, step=wanted, public_key=Path(public_key) if public_key else None, force=force
    )
    print(f"step {chosen}: consolidated model in {path}")


@task(
    help={
        "run": "run prefix URI or path (s3://bucket/runs/NAME or a local folder)",
        "logdir": "local folder for the fetched event files (default: a cache under ~/.cache)",
        "port": "TensorBoard's port on 127.0.0.1 (default 6006)",
        "fetch_only": "fetch the event files and print the TensorBoard command, start nothing",
    }
)
@user_errors
def tensorboard(c, run, logdir=None, port=6006, fetch_only=False):
    """Watch a run: fetch its TensorBoard event files (incrementally), start TensorBoard on 127.0.0.1.

    Rank 0 commits the files to <run>/logs/tensorboard/ in the background: train/val loss,
    learning rate, grad norm, tokens/s, MFU (known GPUs), checkpoint times, interruptions, world
    size and the sample generations ([eval] sample_prompts). Re-run it to fetch what grew. Without
    the tensorboard extra (pip install 'twostage[tensorboard]') the command is printed instead.
    """
    import subprocess
    from pathlib import Path

    from artifacts.logs import init_logging
    from trainer.launch import tensorboard as tb

    init_logging()
    dest = Path(logdir) if logdir else tb.cache_dir(run)
    fetched, total = tb.fetch_events(run, dest)
    if total == 0:
        raise TrainerError(
            f"--run {run}: no event files under logs/tensorboard/ yet (rank 0 commits them "
            "every [eval] tensorboard_sync_s; is [eval] tensorboard = false?)"
        )
    print(f"fetched {fetched} of {total} event file(s) into {dest}")
    cmd = tb.command(dest, int(port))
    if fetch_only or not tb.installed():
        if not tb.installed():
            print("TensorBoard is not installed (pip install 'twostage[tensorboard]'); then run:")
        print(" ".join(cmd))
        return
    print(f"TensorBoard on http://127.0.0.1:{int(port)}/ (Ctrl-C stops it)")
    subprocess.run(cmd, check=False)


TASKS = [prepare_data, export_checkpoint, tensorboard]
