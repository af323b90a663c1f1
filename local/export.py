"""Export: only what may leave the box, checked, with a manifest, published by one rename.

What leaves: the LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``), the base
model's tokenizer files, optionally a merged model under ``merged/`` (safetensors), and
``MANIFEST.json`` (sizes, SHA-256, run metadata). Everything is written into a hidden sibling of
``--out``; the folder is checked (allow-listed names only, no pickles, no paths, hostnames, key
IDs or data/key file names in any file) and only then renamed to ``--out``. A failure at any
point leaves no ``--out`` behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.errors import LocalError
from local.scan import VOCAB_FILES, Finding, Forbidden, scan_folder
from local.staging import publish as publish_staged
from local.staging import staging_dir as staging_dir  # re-exported: held.py, tests

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
MERGED_DIR = "merged"
_MERGED_WEIGHTS = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")
_MERGED_EXTRA = frozenset({"config.json", "generation_config.json", "model.safetensors.index.json"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
#: Keys whose value names where a model came from; always replaced by the neutral base label.
_ORIGIN_KEYS = frozenset({"base_model_name_or_path", "_name_or_path", "name_or_path"})
_ABS_PATH = re.compile(r"^(?:file://|~/|/|[A-Za-z]:[\\/])\S*[/\\]\S*$")


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    files: int
    bytes: int


def is_allowed(rel: str) -> bool:
    """Allow-list of export file names (pure)."""
    parts = rel.split("/")
    if len(parts) == 1:
        return rel in ADAPTER_FILES or rel in TOKENIZER_FILES
    if len(parts) == 2 and parts[0] == MERGED_DIR:
        name = parts[1]
        return bool(_MERGED_WEIGHTS.match(name)) or name in _MERGED_EXTRA or name in TOKENIZER_FILES
    return False


def scrub_json(doc: Any, label: str) -> Any:
    """Replace origin fields and absolute-path-looking strings by ``label`` (pure)."""
    if isinstance(doc, dict):
        return {
            k: (label if k in _ORIGIN_KEYS and isinstance(v, str) else scrub_json(v, label))
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [scrub_json(v, label) for v in doc]
    if isinstance(doc, str) and _ABS_PATH.match(doc):
        return label
    return doc


def _rewrite_json(path: Path, label: str) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(
        json.dumps(scrub_json(doc, label), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def save_adapter(peft_model: Any, staging: Path, base_label: str) -> None:
    """Adapter weights (safetensors) + config with a neutral base reference; no model card."""
    peft_model.save_pretrained(str(staging), safe_serialization=True)
    (staging / "README.md").unlink(missing_ok=True)  # peft's card names the base's local path
    _rewrite_json(staging / "adapter_config.json", base_label)


def tokenizer_files(model_dir: Path, base_label: str) -> dict[str, bytes]:
    """The base's tokenizer files as the export will hold them (JSON configs scrubbed of origins).

    Pure over the folder: preflight scans these bytes before training, the export writes them.
    """
    files = {}
    for name in TOKENIZER_FILES:
        src = Path(model_dir) / name
        if src.is_file():
            data = src.read_bytes()
            if name.endswith(".json") and name not in VOCAB_FILES:
                doc = json.loads(data.decode("utf-8"))
                data = (
                    json.dumps(scrub_json(doc, base_label), indent=2, sort_keys=True) + "\n"
                ).encode()
            files[name] = data
    if not files:
        raise LocalError(
            f"{model_dir}: no tokenizer files found (expected tokenizer.json or vocab files)"
        )
    return files


def copy_tokenizer(model_dir: Path, dest: Path, base_label: str) -> list[str]:
    """Copy the base's tokenizer files (config files scrubbed of origin paths)."""
    files = tokenizer_files(model_dir, base_label)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    return list(files)


def merge_adapter(model_dir: Path, staging: Path, base_label: str) -> None:
    """Merge the staged adapter into a full-precision reload of the base; save under ``merged/``.

    The 4-bit training copy is not used: merging into dequantized NF4 weights would bake the
    quantization error into the published model. The reload uses the checkpoint's own 16-bit
    dtype (bf16/fp16) or fp32, on the CPU, so GPU memory is not needed.
    """
    from local.model import load_full_precision

    merged = load_full_precision(model_dir, staging)
    target = staging / MERGED_DIR
    merged.save_pretrained(str(target))
    for name in os.listdir(target):
        if name.endswith(".json"):
            _rewrite_json(target / name, base_label)
    copy_tokenizer(model_dir, target, base_label)
    del merged


def check_structure(staging: Path) -> list[str]:
    """Raise :class:`LocalError` unless every file is allow-listed and none is a pickle."""
    files = []
    for dirpath, _dirs, names in os.walk(staging):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(staging).as_posix()
            if rel.endswith(PICKLE_SUFFIXES):
                raise LocalError(
                    f"export check: {rel} is a pickle-format file; refusing to export it"
                )
            if not is_allowed(rel):
                raise LocalError(
                    f"export check: {rel} is not on the export allow-list; refusing to export it"
                )
            with path.open("rb") as f:
                head = f.read(4)
            if (
                head[:1] == b"\x80"
                and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
                or head == b"PK\x03\x04"
            ):
                raise LocalError(
                    f"export check: {rel} holds pickle/zip (torch.save) data; refusing to export it"
                )
            files.append(rel)
    return sorted(files)


class ExportRefused(LocalError):
    """The export scan found forbidden strings; ``findings`` says where (never the strings)."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


def check_export(staging: Path, forbidden: Iterable[Forbidden]) -> list[str]:
    """Structure checks, then the precise scan (``local.scan``); raises :class:`ExportRefused`."""
    files = check_structure(staging)
    findings = scan_folder(staging, forbidden)
    if findings:
        first = findings[0]
        more = f" (and {len(findings) - 1} more finding(s))" if len(findings) > 1 else ""
        raise ExportRefused(
            f"export check: {first.file} contains the {first.label}{more}; nothing was exported",
            findings,
        )
    return files


def finalize(
    staging: Path,
    out: Path,
    *,
    forbidden: Iterable[Forbidden],
    metadata: dict[str, Any],
    publish: bool = True,
) -> ExportInfo:
    """Check the staged folder, write ``MANIFEST.json`` last, and rename it to ``out``.

    ``publish=False`` stops before the rename (a sandboxed child: its parent publishes with
    :func:`local.staging.publish`)."""
    from artifacts.hashing import hash_file
    from artifacts.manifest import MANIFEST_NAME, FileEntry, Manifest

    forbidden = list(forbidden)
    files = check_export(staging, forbidden)
    entries = [FileEntry(rel, *hash_file(staging / rel)) for rel in files]
    manifest = Manifest(files=entries, metadata=metadata)
    data = manifest.to_json()
    from local.scan import scan_bytes

    label = scan_bytes(MANIFEST_NAME, data, forbidden)
    if label:
        raise ExportRefused(
            f"export check: the manifest metadata contains the {label}; nothing was exported",
            [Finding(MANIFEST_NAME, label)],
        )
    with open(staging / MANIFEST_NAME, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if publish:
        publish_staged(staging, out)
    total = manifest.total_bytes + len(data)
    log.info("exported %d files (%.1f MB) to %s", len(entries) + 1, total / 1e6, out)
    return ExportInfo(path=out, files=len(entries) + 1, bytes=total)
