"""A refused export is kept, encrypted with the dataset key, instead of being thrown away.

When the post-training scan finds something (``local.scan``), the staged adapter, tokenizer and
metadata are packed into one tar in memory and written in the twostage stream format with the
*dataset* key to the run's work area next to ``--out`` (``.<out>.work/held-export.tar.enc``). The
trained weights may have memorised the data, so they get the data's protection. Nothing is
written in the clear.

``invoke export-held --held FILE --key-file K --out DIR`` prints what the scan found (file and
kind, never the strings); with ``--accept`` it exports the held folder anyway after the usual
allow-list/pickle checks, and records the accepted findings in the manifest.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

from local.errors import LocalError
from local.scan import Finding

log = logging.getLogger(__name__)

HELD_NAME = "held-export.tar.enc"
_HELD_INFO = "HELD.json"


def work_area(out: Path) -> Path:
    """The run's private work area beside ``--out``: held exports and encrypted checkpoints."""
    out = Path(out)
    return out.parent / f".{out.name}.work"


def held_path(out: Path) -> Path:
    return work_area(out) / HELD_NAME


def hold(
    staging: Path, out: Path, key: bytes, findings: list[Finding], metadata: dict[str, Any]
) -> Path:
    """Pack the staged export (without ``merged/``: it can be rebuilt) and encrypt it to disk."""
    from local.crypto_files import encrypt_file

    buf = io.BytesIO()
    info = {"findings": [f.__dict__ for f in findings], "metadata": metadata}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in Path(staging).iterdir() if p.is_file()):
            tar.add(str(path), arcname=path.name, recursive=False)
        blob = json.dumps(info, indent=2).encode()
        member = tarfile.TarInfo(_HELD_INFO)
        member.size = len(blob)
        tar.addfile(member, io.BytesIO(blob))
    dest = held_path(out)
    dest.parent.mkdir(mode=0o700, exist_ok=True)
    buf.seek(0)
    encrypt_file(buf, dest, key)
    log.warning("export refused; the trained adapter is kept encrypted at %s", dest)
    return dest


def refusal_message(reason: str, held: Path, key_file: Path, out: Path) -> str:
    """The one-line error of a refused export, saying where the adapter is and what to do."""
    return (
        f"{reason}; the trained adapter is kept encrypted with the dataset key at {held} "
        f"(review: `invoke export-held --held {held} --key-file {key_file} --out {out}`; "
        "add --accept to export it as it is)"
    )


def _open_held(held: Path, key: bytes) -> tuple[dict[str, bytes], dict[str, Any]]:
    from local.crypto import decrypt_stream

    blob = b"".join(decrypt_stream(Path(held), key))
    files: dict[str, bytes] = {}
    info: dict[str, Any] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        for member in tar.getmembers():
            if not member.isfile() or "/" in member.name or member.name.startswith("."):
                raise LocalError(f"{held}: unexpected entry {member.name!r} in a held export")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == _HELD_INFO:
                info = json.loads(data)
            else:
                files[member.name] = data
    return files, info


def export_held(held: Path, key: bytes, out: Path, *, accept: bool = False) -> Any:
    """Show a held export's findings, or (``accept``) export it; the held file goes on success."""
    from local import export

    held = Path(held)
    if not held.is_file():
        raise LocalError(f"--held {held}: no such file")
    files, info = _open_held(held, key)
    findings = info.get("findings", [])
    listing = "; ".join(f"{f['file']}: {f['label']}" for f in findings) or "none recorded"
    if not accept:
        raise LocalError(
            f"{held} was refused by the export scan ({listing}); inspect the run's inputs, then "
            "pass --accept to export it as it is, or fix the cause and fine-tune again"
        )
    with export.staging_dir(Path(out)) as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        metadata = dict(info.get("metadata", {}))
        metadata["accepted_findings"] = findings
        result = export.finalize(staging, Path(out), forbidden=[], metadata=metadata)
    held.unlink()
    return result
