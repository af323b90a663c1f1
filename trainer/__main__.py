"""Entry point on every rank: ``python -m trainer --config FILE.toml [--run URI]``.

Exit codes: 0 finished (converged or epoch limit), 75 interrupted (resume me), 2 user error,
anything else a failure. A launcher should also read ``<run>/STATUS.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", required=True, help="recipe TOML (e.g. configs/pretrain-tiny.toml)"
    )
    parser.add_argument(
        "--run",
        # --run-uri: same flag for torchrun, whose own parser rejects "--run" as an ambiguous
        # prefix of its --run-path even after the module name.
        "--run-uri",
        dest="run",
        default=None,
        help="run prefix URI (s3://..., file://..., or a path); default: [run] uri, else runs/<name>-<time>",
    )
    # The DeepSpeed launcher appends --local_rank=N; the environment carries the same value.
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def default_run_uri(name: str) -> str:
    """A fresh folder under ``runs/`` (used when neither ``--run`` nor ``[run] uri`` is given)."""
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    from artifacts.errors import UserError
    from artifacts.logs import init_logging

    init_logging()
    args = parse_args(argv)
    try:
        from trainer.config import load_config
        from trainer.train import run_training

        cfg = load_config(args.config)
        run_uri = args.run or cfg.run.uri or default_run_uri(cfg.run.name)
        code = run_training(cfg, run_uri)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    logging.getLogger("trainer").info("exit %d", code)
    return code


def exit_now(code: int) -> None:
    """Leave without interpreter teardown once everything is committed.

    Why: after training, Python's teardown of the DeepSpeed/gloo state takes seconds per rank
    and in a few percent of CPU runs aborts (``terminate called without an active exception``),
    turning a finished run into a failed exit code. By now every upload has been waited for and
    STATUS.json written, so the process group is destroyed, streams flushed, and we exit.
    """
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as err:  # noqa: BLE001 - exiting anyway; say why it was not clean
        logging.getLogger("trainer").warning("process group teardown failed: %s", err)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
