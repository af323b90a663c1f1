"""What must not leave the box, known before training: the forbidden list of a run (paths, key
ID, hostnames, data/key file names) and the files the export will copy from the base, scanned
against it before anything heavy runs (``local.scan`` does the matching)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

from local.errors import LocalError


def forbidden_items(
    data: Path, key_file: Path, key: bytes, model_dir: Path, out: Path
) -> list[Any]:
    """Paths, key ID (exact), hostnames and data/key file names (whole names only)."""
    from local.crypto import key_id
    from local.scan import EXACT, WORD, Forbidden

    home = os.path.expanduser("~")
    items = [
        Forbidden("data file path", str(data.resolve()), EXACT),
        Forbidden("key file path", str(key_file.resolve()), EXACT),
        Forbidden("model folder path", str(model_dir.resolve()), EXACT),
        Forbidden("export folder path", str(out.resolve()), EXACT),
        Forbidden("work area path", str(out.resolve().parent / f".{out.name}"), EXACT),
        Forbidden("home folder path", home if home not in ("/", "") else "", EXACT),
        Forbidden("key ID", key_id(key).hex(), EXACT),
        Forbidden("data file name", data.name, WORD),
        Forbidden("key file name", key_file.name, WORD),
    ]
    for p, label in ((data, "data file path"), (key_file, "key file path")):
        if p.is_absolute() or "/" in str(p):
            items.append(Forbidden(label, str(p), EXACT))
    for host in {socket.gethostname(), platform.node()}:
        if len(host) >= 4:
            items.append(Forbidden("hostname", host, WORD))
    return items


def base_label(model_dir: Path, verified: bool) -> str:
    """Neutral base reference for exported configs: the verified manifest's hash, else ``base``."""
    from artifacts.manifest import MANIFEST_NAME

    manifest = model_dir / MANIFEST_NAME
    if verified and manifest.is_file():
        return "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    return "base"


def base_public_files(model_dir: Path, label: str, merge: bool) -> dict[str, bytes]:
    """What the export will copy from the base (scrubbed), known before training."""
    from local import export

    files = export.tokenizer_files(model_dir, label)
    if merge:
        for name in ("config.json", "generation_config.json"):
            src = model_dir / name
            if src.is_file():
                doc = export.scrub_json(json.loads(src.read_text(encoding="utf-8")), label)
                files[f"merged/{name}"] = json.dumps(doc).encode()
    return files


def preflight_export(files: dict[str, bytes], forbidden: list[Any]) -> None:
    """Refuse the run when a file every export copies from the base carries a forbidden item."""
    from local.scan import preflight_scan

    found = preflight_scan(files, forbidden)
    if found:
        f = found[0]
        raise LocalError(
            f"preflight: the base model's {f.file} (copied into every export) contains the "
            f"{f.label}; nothing was trained. Remove it from the base's files (then re-publish "
            "and download it) or rename the file/host"
        )
