"""Run config and data upload for a remote run (validated with the trainer's own loader).

Local ``data.train_files`` go to the run's ``data/``; the run's config is written to the run's
``config.toml`` pointing at them, with ``run.uri`` set to the run prefix. Entries the trainer reads
in place are left alone: store URIs (``s3://…``) and ``run:REL`` (REL under the run prefix, e.g.
``run:data/`` for a corpus already uploaded there) — the latter is checked to exist before launch.
"""

from __future__ import annotations

import glob
import logging
import tomllib
from pathlib import Path
from typing import Any

from artifacts.config import dump_toml
from artifacts.run import RUN_REF, Run
from trainer.launch import LaunchError

log = logging.getLogger(__name__)


def validate_config(path: Path) -> dict[str, Any]:
    """Validate with the trainer's own loader; return the parsed TOML."""
    from trainer.config import load_config

    load_config(path)  # raises TrainerError (a UserError) naming the key and the file
    return tomllib.loads(path.read_text(encoding="utf-8"))


def local_train_files(patterns: list[str], config_dir: Path) -> list[Path]:
    """The local files a ``data.train_files`` list names (store URIs and ``run:`` are left alone).

    A relative pattern is looked up from the current directory, then from the config's folder.
    """
    files: list[Path] = []
    for pattern in patterns:
        if _read_in_place(pattern):
            continue
        p = Path(pattern).expanduser()
        matched: list[Path] = []
        for base in (Path.cwd(), config_dir) if not p.is_absolute() else (Path("/"),):
            matched = sorted(Path(m) for m in glob.glob(str(base / p)))
            if matched:
                break
        for m in matched or [p]:
            if m.is_dir():
                files += sorted(f for f in m.rglob("*") if f.is_file())
            elif m.is_file():
                files.append(m)
            else:
                raise LaunchError(f"data.train_files: {pattern} matches no file")
    return files


def _read_in_place(pattern: str) -> bool:
    """The trainer reads this entry from a store itself (nothing to upload)."""
    return "://" in pattern or pattern.startswith(RUN_REF)


def check_run_refs(patterns: list[str], run: Run) -> None:
    """Every ``run:REL`` entry names something that exists under the run prefix (before launch)."""
    for pattern in patterns:
        if pattern.startswith(RUN_REF):
            uri = run.resolve(pattern)
            from artifacts.store import open_store

            if not open_store(uri).list():
                raise LaunchError(
                    f"data.train_files: {pattern} is empty: nothing under {uri} (upload the corpus "
                    "there, or list local files and `invoke pretrain` uploads them)"
                )


def upload_run_config(config: Path, run: Run) -> dict[str, Any]:
    """Upload local data to the run's ``data/`` and its config (pointing at it) to ``config.toml``."""
    raw = validate_config(config)
    if raw.get("run", {}).get("signing_key"):
        # A node runs third-party code as root: it must never hold a long-lived signing key.
        raise LaunchError(
            f"{config}: run.signing_key sends a private key to the nodes; remove it and sign the "
            "finished run on your machine with `invoke sign --run URI --signing-key KEY`"
        )
    data = dict(raw.get("data", {}))
    patterns = list(data.get("train_files", []))
    check_run_refs(patterns, run)
    local = local_train_files(patterns, config.parent)
    store = run.store
    if local:
        in_place = [p for p in patterns if _read_in_place(p)]
        for i, f in enumerate(local):
            store.upload_file(f, run.data_key(i, f.name), progress=True)
        data["train_files"] = in_place + [run.data_uri + "/"]
        log.info("uploaded %d local data file(s) to %s/", len(local), run.data_uri)
    tok = data.get("tokenizer")
    if tok and "://" not in tok:
        raise LaunchError(
            f"data.tokenizer {tok} is a local folder: publish it (`invoke publish`) and use its s3:// URI"
        )
    init = raw.get("model", {}).get("init_from")
    if init and "://" not in init:
        raise LaunchError(
            f"model.init_from {init} is a local folder: upload it and use its s3:// URI"
        )
    remote_raw = {**raw, "data": data, "run": {**raw.get("run", {}), "uri": run.uri}}
    text = dump_toml(remote_raw, header=f"run config for {run.uri}\ngenerated from {config}")
    store.put_bytes(Run.CONFIG, text.encode("utf-8"))
    return remote_raw
