"""``invoke evaluate``: held-out loss and perplexity of the base and the base + adapter.

The encrypted dataset is decrypted in memory and encoded exactly as the fine-tune encodes it
(``local.tokens.tokenize_records``: the same record forms, chat template, truncation and loss
masks — loss on responses and assistant turns only), and the loss is the fine-tune's own
held-out loss (``local.training.evaluate``: mean per supervised token). The base is loaded in
4-bit as the adapter runs on it, measured, then the adapter is put on the same weights and
measured again: one table, one JSON file. ``heldout_only`` re-draws the fine-tune's held-out
split (the recipe's seed and fraction) so the training file itself can be evaluated fairly.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from local.errors import LocalError

log = logging.getLogger(__name__)

TARGET = "local.evaluate:evaluate_request"


@dataclass(frozen=True)
class Row:
    model: str
    loss: float
    perplexity: float
    records: int
    tokens: int


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table (pure)."""
    lines = [f"{'model':<16}{'loss':>10}{'perplexity':>14}{'records':>10}{'tokens':>10}"]
    for r in rows:
        lines.append(
            f"{r.model:<16}{r.loss:>10.4f}{r.perplexity:>14.3f}{r.records:>10d}{r.tokens:>10d}"
        )
    return "\n".join(lines)


def evaluate_request(request: dict[str, Any]) -> dict[str, Any]:
    """The sandboxed side: decrypt + encode, measure base (and adapter); rows back as JSON."""
    import torch

    from local.config import load_config
    from local.dataset import iter_records
    from local.inference import load, with_adapter
    from local.offline import guarded
    from local.tokens import split_eval, tokenize_records
    from local.training import evaluate

    model_dir = Path(request["model"])
    adapter = Path(request["adapter"]) if request.get("adapter") else None
    cfg = load_config(Path(request["config"]) if request.get("config") else None)
    key = bytes.fromhex(request["key"])
    with guarded(request["airgapped"]):
        torch.manual_seed(cfg.seed)
        loaded = load(model_dir, adapter, base_only=True)
        examples, _stats = tokenize_records(iter_records(Path(request["data"]), key), loaded.tokenizer, cfg)
        if request.get("heldout_only"):
            _train, examples = split_eval(examples, cfg.eval_fraction, cfg.eval_max_records, cfg.seed)
        if not examples:
            raise LocalError(f"--data {request['data']}: no usable records to evaluate")
        tok = loaded.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        tokens = sum(sum(1 for t in e.labels[1:] if t != -100) for e in examples)

        def row(name: str, model: Any) -> Row:
            loss = evaluate(model, examples, cfg, device=loaded.device, compute_dtype=loaded.compute_dtype, pad_id=pad)
            return Row(name, loss, math.exp(min(loss, 700.0)), len(examples), tokens)

        rows = [row("base (4-bit)" if adapter else "model", loaded.model)]
        if adapter is not None:
            rows.append(row("base + adapter", with_adapter(loaded.model, adapter)))
    return {"rows": [asdict(r) for r in rows]}


def write_report(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    """The JSON file: the rows and what was measured (paths named by the user, no contents)."""
    path.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
