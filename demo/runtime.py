"""The demo's plumbing: workdir policy, the bucket (folder or moto S3), child processes, progress.

Kept apart from :mod:`demo.stages` so the stages there read as the pipeline and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from artifacts.errors import UserError
from trainer.launch.single_node import launcher_env

REPO_ROOT = Path(__file__).resolve().parent.parent
PRETRAIN_CONFIG = REPO_ROOT / "configs" / "pretrain-tiny.toml"
FINETUNE_CONFIG = REPO_ROOT / "configs" / "finetune-tiny.toml"
#: Written into every folder the demo creates; only such a folder is ever emptied (with --force).
MARKER = ".twostage-demo"
S3_BUCKET = "twostage-demo"
RUN_NAME = "demo"
#: Names chosen so they cannot collide with words the export checks search for.
DATA_NAME = "private-ft.jsonl.enc"
DATA_KEY_NAME = "private-ft.key"


class DemoError(UserError):
    """A demo stage failed or was refused; the message names the log to read."""


@dataclass
class Paths:
    """Every artefact the demo writes, under one workdir."""

    root: Path

    def __post_init__(self) -> None:
        r = self.root
        self.keys, self.logs = r / "keys", r / "logs"
        self.signing_key = self.keys / "signing.key"
        self.public_key = self.keys / "signing.key.pub"
        self.data_key = self.keys / DATA_KEY_NAME
        self.config = r / "pretrain.toml"
        self.bucket, self.scratch = r / "bucket", r / "scratch"
        self.model, self.data, self.export = r / "model", r / DATA_NAME, r / "export"
        self.summary, self.plot = r / "summary.json", r / "loss.png"
        self.evaluation, self.gguf = r / "evaluate.json", r / "gguf" / "model.gguf"


def prepare_workdir(workdir: Path, *, force: bool = False) -> Path:
    """Create ``workdir`` (or reuse an empty one); refuse anything else unless it is an old demo's and ``force``."""
    workdir = Path(workdir).absolute()
    if workdir.exists() and not workdir.is_dir():
        raise DemoError(f"--workdir {workdir} exists and is not a folder")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise DemoError(
                f"--workdir {workdir} is not empty and was not made by the demo; pass a new or empty folder"
            )
        if not force:
            raise DemoError(
                f"--workdir {workdir} holds a previous demo run; pass a fresh --workdir, or --force to replace it"
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text(
        json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"
    )
    return workdir


def write_toml(doc: dict[str, Any], path: Path) -> Path:
    """Write a recipe with the trainer's own TOML writer (the one its loader round-trips)."""
    from artifacts.config import dump_toml

    path.write_text(dump_toml(doc))
    return path


def demo_recipe(paths: Paths, run_uri: str) -> Path:
    """The tiny pretraining recipe, plus this run's scratch folder and run URI.

    No signing key in the recipe: the machines that train never hold one; the owner signs the
    finished run afterwards (:func:`demo.stages.download`, ``invoke sign``).
    """
    from trainer.config import load_config

    if not PRETRAIN_CONFIG.is_file():
        raise DemoError(
            f"{PRETRAIN_CONFIG} is missing: the trainer's tiny recipe is needed for the demo"
        )
    raw = json.loads(json.dumps(load_config(PRETRAIN_CONFIG).raw))  # deep copy
    run = raw.setdefault("run", {})
    run.update(
        name=RUN_NAME,
        uri=run_uri,
        scratch_dir=str(paths.scratch),
    )
    write_toml(raw, paths.config)
    load_config(paths.config)  # the written file must validate like any user's recipe
    return paths.config


# ---------------------------------------------------------------------------------------------
# The bucket: a local folder, or moto's S3 server on 127.0.0.1 for the length of the run


@contextlib.contextmanager
def bucket(paths: Paths, s3: bool) -> Iterator[str]:
    """Yield the run prefix URI; with ``s3`` a moto server on 127.0.0.1 serves it (env set for children)."""
    if not s3:
        paths.bucket.mkdir()
        yield f"file://{paths.bucket}/runs/{RUN_NAME}"
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise DemoError("--s3 needs moto's server: pip install -e '.[dev]'") from None
    # The server's request log (werkzeug, INFO per request) would drown the progress view.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {
        k: os.environ.get(k)
        for k in [*env, "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"]
    }
    try:
        for k in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
            os.environ.pop(k, None)
        os.environ.update(env)
        from artifacts.s3 import make_client

        make_client().create_bucket(Bucket=S3_BUCKET)
        yield f"s3://{S3_BUCKET}/runs/{RUN_NAME}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


# ---------------------------------------------------------------------------------------------
# Child processes


def last_line(log_path: Path) -> str:
    """The last non-empty line of a log (what a person reads first when a stage failed)."""
    try:
        lines = [
            ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()
        ]
    except FileNotFoundError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


@contextlib.contextmanager
def child(
    cmd: list[str],
    log_path: Path,
    *,
    cwd: Path,
    verbose: bool,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in its own process group, output to ``log_path`` (and the terminal if verbose).

    On any exit from the block while it still runs (an error, Ctrl-C) it is stopped (:func:`stop`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**launcher_env(), **(env or {})},  # one thread per rank: 2 ranks share 2 cores
            stdout=None if verbose else out,
            stderr=None if verbose else subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop a child still running: SIGTERM (a trainer saves and exits), again, then SIGKILL.

    The second SIGTERM matters for ``launch_local``: its first one asks the ranks to save, the
    second kills its launcher's process group, which this process cannot see.
    """
    for signum, grace in ((signal.SIGTERM, 60), (signal.SIGTERM, 15), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def pretrain_cmd(config: Path, run_uri: str, nproc: int) -> list[str]:
    """``launch_local`` in a fresh interpreter (its exit code is the run's)."""
    code = (
        "import sys; from pathlib import Path; from trainer.launch.single_node import launch_local; "
        "sys.exit(launch_local(Path(sys.argv[1]), sys.argv[2], nproc=int(sys.argv[3])))"
    )
    return [sys.executable, "-c", code, str(config), run_uri, str(nproc)]


def finetune_cmd(paths: Paths) -> list[str]:
    """The README's stage-2 command, exactly: ``invoke finetune --airgapped ...``."""
    return [
        sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "finetune",
        "--model", str(paths.model), "--data", str(paths.data), "--key-file", str(paths.data_key),
        "--out", str(paths.export), "--config", str(FINETUNE_CONFIG),
        "--public-key", str(paths.public_key), "--airgapped",
    ]  # fmt: skip


def follow_training(
    proc: subprocess.Popen,
    run_uri: str,
    *,
    enabled: bool,
    patience: int,
    on_epoch: Any = None,
) -> None:
    """A progress bar driven by the run's ``STATUS.json`` until the training process exits.

    ``on_epoch(status_dict)`` is called once per new evaluation seen (the demo's spot
    interruption is triggered from there).
    """
    from tqdm.auto import tqdm

    from artifacts.run import Run

    run = Run(run_uri)
    bar = tqdm(
        desc="      pretraining", unit=" epochs", disable=None if enabled else True, leave=False,
        bar_format="{desc}: epoch {n} [{elapsed}]{postfix}",
    )  # fmt: skip
    bar.set_postfix_str("starting the ranks (imports, corpus, tokenizer)", refresh=False)
    try:
        while True:
            try:
                proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            st = run.read_status()
            status = st.to_dict() if st else {}
            history = status.get("val_loss_history") or []
            if history and len(history) != bar.n:
                last = history[-1]
                stalls = len(history) - max(
                    (i + 1 for i, h in enumerate(history) if not h.get("stalled")), default=0
                )
                bar.set_postfix_str(
                    f"step {status.get('global_step')}, val loss {last.get('val_loss') or float('nan'):.4f} "
                    f"(best {status.get('best_val_loss') or float('nan'):.4f}, stalls {stalls}/{patience})",
                    refresh=False,
                )
                bar.update(len(history) - bar.n)
                if on_epoch is not None:
                    on_epoch(status)
            bar.refresh()  # the clock ticks between epochs too
    finally:
        bar.close()


class Progress:
    """The stage-by-stage view: ``[2/6] pretraining …`` then ``done in 52 s: <result>``."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.times: dict[str, float] = {}

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    @contextlib.contextmanager
    def stage(self, n: int, key: str, title: str) -> Iterator[list[str]]:
        """Time one stage; append a one-line result to the yielded list to print it after."""
        self.say(f"[{n}/{self.total}] {title} …")
        started = time.monotonic()
        note: list[str] = []
        yield note
        self.times[key] = round(time.monotonic() - started, 1)
        self.say(f"      done in {self.times[key]:.0f} s{': ' + note[0] if note else ''}")
