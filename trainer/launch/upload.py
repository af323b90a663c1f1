"""Run config and data upload for a remote run (validated with the trainer's own loader).

Local ``data.train_files`` go to ``<run>/data/``; the run's config is written to
``<run>/config.toml`` pointing at them, with ``run.uri`` set to the run prefix.
"""

from __future__ import annotations

import glob
import logging
import tomllib
from pathlib import Path
from typing import Any

from trainer.config import dump_toml
from trainer.launch import LaunchError

log = logging.getLogger(__name__)


def validate_config(path: Path) -> dict[str, Any]:
    """Validate with the trainer's own loader; return the parsed TOML."""
    from trainer.config import load_config

    load_config(path)  # raises TrainerError (a UserError) naming the key and the file
    return tomllib.loads(path.read_text(encoding="utf-8"))


def local_train_files(patterns: list[str], config_dir: Path) -> list[Path]:
    """The local files a ``data.train_files`` list names (store URIs are left alone).

    A relative pattern is looked up from the current directory, then from the config's folder.
    """
    files: list[Path] = []
    for pattern in patterns:
        if "://" in pattern:
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


def upload_run_config(config: Path, run_uri: str, store: Any) -> dict[str, Any]:
    """Upload local data to ``data/`` and the run's config (pointing at it) to ``config.toml``."""
    raw = validate_config(config)
    data = dict(raw.get("data", {}))
    patterns = list(data.get("train_files", []))
    local = local_train_files(patterns, config.parent)
    if local:
        remote = [p for p in patterns if "://" in p]
        for i, f in enumerate(local):
            key = f"data/{i:04d}-{f.name}"
            store.upload_file(f, key, progress=True)
        data["train_files"] = remote + [f"{run_uri}/data/"]
        log.info("uploaded %d local data file(s) to %s/data/", len(local), run_uri)
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
    if raw.get("run", {}).get("signing_key"):
        log.warning("run.signing_key must exist at that path on every node")
    remote_raw = {**raw, "data": data, "run": {**raw.get("run", {}), "uri": run_uri}}
    text = dump_toml(remote_raw, header=f"run config for {run_uri}\ngenerated from {config}")
    store.put_bytes("config.toml", text.encode("utf-8"))
    return remote_raw
