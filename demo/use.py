"""The demo's use of the fine-tuned adapter: ``invoke evaluate`` and ``invoke export-gguf``, run as
the README gives them (child processes, logs in ``<workdir>/logs/``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from demo.runtime import FINETUNE_CONFIG, REPO_ROOT, DemoError, Paths, child, last_line


def evaluate_cmd(paths: Paths) -> list[str]:
    """``invoke evaluate``: base vs adapter on the fine-tune's held-out split (air-gapped)."""
    return [
        sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "evaluate",
        "--model", str(paths.model), "--adapter", str(paths.export), "--data", str(paths.data),
        "--key-file", str(paths.data_key), "--config", str(FINETUNE_CONFIG), "--heldout",
        "--json", str(paths.evaluation),
    ]  # fmt: skip


def export_gguf_cmd(paths: Paths) -> list[str]:
    """``invoke export-gguf``: merged, Q8_0, read back, scanned for the dataset's n-grams."""
    paths.gguf.parent.mkdir(exist_ok=True)
    return [
        sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "export-gguf",
        "--model", str(paths.model), "--adapter", str(paths.export), "--out", str(paths.gguf),
        "--dtype", "q8_0", "--data", str(paths.data), "--key-file", str(paths.data_key),
    ]  # fmt: skip


def use_adapter(paths: Paths, *, verbose: bool = False) -> dict[str, Any]:
    """The adapter used as a user would: ``invoke evaluate`` (base vs adapter on the held-out
    split, air-gapped) and ``invoke export-gguf`` (merged, Q8_0, read back by transformers)."""
    out: dict[str, Any] = {}
    for name, cmd in (("evaluate", evaluate_cmd(paths)), ("gguf", export_gguf_cmd(paths))):
        log_path = paths.logs / f"{name}.log"
        with child(cmd, log_path, cwd=paths.root, verbose=verbose) as proc:
            proc.wait()
        if proc.returncode != 0:
            raise DemoError(f"{name} failed (exit {proc.returncode}): {last_line(log_path)} — log: {log_path}")
    rows = json.loads(paths.evaluation.read_text())["rows"]
    out["evaluate"] = {r["model"]: {"loss": r["loss"], "perplexity": r["perplexity"]} for r in rows}
    meta = json.loads(paths.gguf.with_name(paths.gguf.name + ".manifest.json").read_text())["metadata"]
    out["gguf"] = {
        "path": str(paths.gguf), "bytes": paths.gguf.stat().st_size, "dtype": meta["dtype"],
        "readback_max_abs_diff": meta["readback_max_abs_diff"],
    }  # fmt: skip
    return out
