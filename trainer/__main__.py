"""Entry point on every rank: ``python -m trainer --config FILE.toml [--run URI]``.

Exit codes are :class:`artifacts.run.ExitCode` (OK, INTERRUPTED = resume me, USER error, …); a
launcher judges a rank's exit with :func:`artifacts.run.verdict`, which also reads the run's status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


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


def main(argv: list[str] | None = None) -> int:
    from artifacts.errors import UserError
    from artifacts.logs import init_logging

    init_logging()
    args = parse_args(argv)
    try:
        from artifacts.run import Run
        from trainer.config import load_config
        from trainer.env import run_uri
        from trainer.loop.train import run_training

        cfg = load_config(args.config)
        code = run_training(cfg, Run(run_uri(cfg.run, args.run)))
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
