"""Task ``demo``: the whole two-stage pipeline on one CPU box, no cloud account."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from artifacts.cli_support import user_errors


@task(
    help={
        "workdir": "Folder for everything the demo writes (default demo-out/); must be new or empty.",
        "s3": "Use moto's S3 server on 127.0.0.1 as the bucket instead of a local folder.",
        "force": "Replace the workdir of a previous demo run (never a folder the demo did not make).",
        "verbose": "Show the training processes' full output instead of progress bars.",
    }
)
@user_errors
def demo(c, workdir="demo-out", s3=False, force=False, verbose=False):
    """Run both stages on this machine: pretrain to convergence, sign, verify, encrypt, air-gapped fine-tune.

    :param workdir: all artefacts land here (keys, bucket, model, ciphertext, export, summary, plot).
    :param s3: publish and download through moto's S3 on 127.0.0.1 (needs the dev extras).
    :param force: empty a previous demo's workdir first.
    :param verbose: stream the children's logs (also kept in WORKDIR/logs/).
    """
    from artifacts.logs import init_logging
    from demo.pipeline import DemoOptions, run_demo

    init_logging(None if verbose else "WARNING")
    run_demo(DemoOptions(workdir=Path(workdir), s3=s3, force=force, verbose=verbose))


TASKS = [demo]
