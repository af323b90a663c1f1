"""``invoke export-gguf``: merge, write GGUF + Ollama ``Modelfile``, read it back, scan, publish.

The same rules as the adapter export (``local.export``): everything is built in a hidden sibling
of ``--out``; checked (only the GGUF, the ``Modelfile`` and the manifest; the export scan of
``local.scan`` over the GGUF's metadata — names, chat template — and the ``Modelfile``); given a
manifest (``FILE.gguf.manifest.json``: sizes, SHA-256, the adapter's privacy audit, the
read-back result) written last; then moved into place. A failure leaves nothing at ``--out``.

The scan knows the paths and the host before anything heavy runs; with ``--data`` and
``--key-file`` it also looks for the dataset's private n-grams (decrypted in memory), the same
search the fine-tune's export runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.errors import LocalError
from local.gguf_export import DTYPES, architecture, check_tokenizer, modelfile, write_gguf

log = logging.getLogger(__name__)

MODELFILE = "Modelfile"


@dataclass(frozen=True)
class GGUFInfo:
    """What an export wrote (the task prints it; the demo and the benchmark read it)."""

    path: Path
    bytes: int
    tensors: int
    dtype: str
    seconds: float
    readback_max_abs_diff: float | None

    def summary(self) -> str:
        line = (
            f"exported {self.tensors} tensors ({self.dtype}, {self.bytes / 1e6:.2f} MB) to "
            f"{self.path} in {self.seconds:.1f}s; Ollama: `ollama create NAME -f "
            f"{self.path.parent / MODELFILE}`"
        )
        if self.readback_max_abs_diff is not None:
            line += f"; read back by transformers: logits max |diff| {self.readback_max_abs_diff:.2e}"
        return line


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def check_args(model_dir: Path, adapter: Path | None, out: Path, dtype: str) -> str:
    """The flags a person can get wrong, refused before anything is loaded; the architecture."""
    if dtype not in DTYPES:
        raise LocalError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not model_dir.is_dir():
        raise LocalError(f"--model {model_dir}: not a folder")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise LocalError(f"--adapter {adapter}: no adapter_config.json (an `invoke finetune` export?)")
    if out.suffix != ".gguf":
        raise LocalError(f"--out {out}: must end in .gguf")
    if not out.parent.is_dir():
        raise LocalError(f"--out {out}: its folder {out.parent} does not exist")
    for path in (out, out.parent / MODELFILE, manifest_path(out)):
        if path.exists():
            raise LocalError(f"{path} already exists; choose a new --out (exports are never overwritten)")
    tok = model_dir / "tokenizer.json"
    if not tok.is_file():
        raise LocalError(f"--model {model_dir}: no tokenizer.json to carry into the GGUF")
    check_tokenizer(json.loads(tok.read_text(encoding="utf-8")), tok)
    return architecture(model_dir)


def forbidden_list(
    model_dir: Path, adapter: Path | None, out: Path, data: Path | None, key_file: Path | None,
    key: bytes | None,
) -> list[Any]:  # fmt: skip
    """Paths and the host (always); the dataset's names, key ID and private n-grams (with data)."""
    from local.scan import CONTENT, EXACT, WORD, Forbidden, NgramSampler, drop_public

    home = os.path.expanduser("~")
    items = [
        Forbidden("model folder path", str(model_dir.resolve()), EXACT),
        Forbidden("export folder path", str(out.resolve().parent), EXACT),
        Forbidden("home folder path", home if home not in ("/", "") else "", EXACT),
    ]
    if adapter is not None:
        items.append(Forbidden("adapter folder path", str(adapter.resolve()), EXACT))
    host = socket.gethostname()
    if len(host) >= 4:
        items.append(Forbidden("hostname", host, WORD))
    if data is None or key is None or key_file is None:
        return items
    from local.dataset import iter_records
    from local.exposure import forbidden_items
    from local.records import record_fields

    items += forbidden_items(data, key_file, key, model_dir, out)
    sampler = NgramSampler(0)
    for record in iter_records(data, key):
        sampler.add(record_fields(record))
    public = [p.read_bytes() for p in model_dir.iterdir() if p.suffix in (".json", ".jinja", ".txt")]
    private = drop_public(sampler.ngrams(), public)
    return items + [Forbidden("private content (an n-gram of the dataset)", g, CONTENT) for g in private]


def readback_overrides(hf_cfg: Any) -> dict[str, Any]:
    """Config values transformers' GGUF loader does not take from the file (pure).

    GPT-2: it maps ``gpt2.context_length`` to ``n_ctx``, which transformers 5 no longer reads,
    so ``n_positions`` stays at its default 1024 and the position table fails to load. The file
    is right (llama.cpp reads ``context_length``); the reader gets the value it dropped.
    """
    if getattr(hf_cfg, "model_type", None) == "gpt2":
        return {"n_positions": hf_cfg.n_positions}
    return {}


def read_back(gguf_path: Path, source: Any, input_ids: list[int]) -> float:
    """Load the GGUF with transformers' own GGUF loader; max |logit difference| to ``source``."""
    import torch
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True,
        **readback_overrides(source.config),
    ).eval()
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        want = source.float()(ids).logits
        got = back(ids).logits
    return float((want - got).abs().max())


def export_gguf(
    model_dir: Path, out: Path, *, adapter: Path | None = None, dtype: str = "f16",
    data: Path | None = None, key_file: Path | None = None, verify: bool = True,
) -> GGUFInfo:  # fmt: skip
    """See the module doc; ``verify`` reads the file back with transformers before publishing."""
    from transformers import AutoTokenizer

    from artifacts.hashing import hash_file
    from artifacts.manifest import FileEntry, Manifest
    from local.export import ExportRefused
    from local.exposure import base_label
    from local.model import load_full_precision
    from local.scan import scan_bytes, scan_folder

    started = time.monotonic()
    model_dir, out = Path(model_dir), Path(out)
    arch = check_args(model_dir, adapter, out, dtype)
    if (data is None) != (key_file is None):
        raise LocalError("--data and --key-file go together (the private n-gram scan needs both)")
    key = None
    if key_file is not None:
        from local.keys import load_key

        key = load_key(key_file)
    forbidden = forbidden_list(model_dir, adapter, out, data, key_file, key)
    tok_dir = adapter if adapter is not None and (adapter / "tokenizer.json").is_file() else model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    template = tokenizer.chat_template
    if not template and adapter is not None and (adapter / "chat_template.jinja").is_file():
        template = (adapter / "chat_template.jinja").read_text(encoding="utf-8")
    tok_json = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = load_full_precision(model_dir, adapter)
    label = base_label(model_dir, verified=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staged = staging / out.name
        tensors = write_gguf(
            model, tokenizer, tok_json, staged, arch=arch, dtype=dtype, name=label,
            chat_template=template,
        )  # fmt: skip
        eos = tokenizer.eos_token
        (staging / MODELFILE).write_text(modelfile(out.name, template, eos), encoding="utf-8")
        diff = None
        if verify:
            probe = tokenizer("the quick brown fox jumps over the lazy dog")["input_ids"][:32]
            diff = read_back(staged, model, probe or [0])
        findings = scan_folder(staging, forbidden)
        if findings:
            f = findings[0]
            raise ExportRefused(
                f"export check: {f.file} contains the {f.label}; nothing was exported", findings
            )
        metadata: dict[str, Any] = {
            "kind": "gguf", "architecture": arch, "dtype": dtype, "base_model": label,
            "adapter_merged": adapter is not None, "tensors": tensors,
            "readback_max_abs_diff": diff,
        }  # fmt: skip
        audit = _adapter_audit(adapter)
        if audit is not None:
            metadata["privacy_audit"] = audit
        entries = [FileEntry(n, *hash_file(staging / n)) for n in (out.name, MODELFILE)]
        manifest = Manifest(files=entries, metadata=metadata).to_json()
        label_hit = scan_bytes(manifest_path(out).name, manifest, forbidden)
        if label_hit:
            raise LocalError(f"export check: the manifest contains the {label_hit}; nothing was exported")
        (staging / manifest_path(out).name).write_bytes(manifest)
        for name in (MODELFILE, out.name, manifest_path(out).name):  # the manifest last
            os.rename(staging / name, out.parent / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = out.stat().st_size
    log.info("GGUF (%s, %s) written: %s, %.2f MB", arch, dtype, out, size / 1e6)
    return GGUFInfo(out, size, tensors, dtype, time.monotonic() - started, diff)


def _adapter_audit(adapter: Path | None) -> dict | None:
    """The fine-tune's privacy audit, from the adapter export's manifest, carried along."""
    if adapter is None or not (adapter / "MANIFEST.json").is_file():
        return None
    meta = json.loads((adapter / "MANIFEST.json").read_text(encoding="utf-8")).get("metadata", {})
    return meta.get("privacy_audit")
