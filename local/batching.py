"""Batches: padded (one record per row, right-padded) or packed (several records per row).

Packed rows: ``local.training.epoch_units`` packs records into sequences of at most
``max_seq_len`` tokens; each sequence is flattened by transformers' ``DataCollatorWithFlattening``
(records concatenated, position ids restarting at 0 for each record, the first label of each
record ignored), and the rows of a micro-batch are padded to the longest one, the padding being a
pseudo-record of its own (its own position ids, label ignored). No attention mask is passed:
models built on transformers' ``create_causal_mask`` (Llama, GPT-2, Mistral, Qwen, … in
transformers 5) derive a block-diagonal causal mask from the restarting position ids, so each
record attends only to itself. :func:`packing_works` checks that on the loaded model itself
(packed logits == separate logits) before a run relies on it.
"""

from __future__ import annotations

import logging
from typing import Any

from local.records import IGNORE, Example

log = logging.getLogger(__name__)


def pad_collate(batch: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad; padding gets attention 0 and label ``IGNORE``."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_collate(units: list[list[Example]], pad_id: int) -> dict[str, Any]:
    """One row per unit (its records flattened), rows padded with a separate pseudo-record."""
    import torch
    from transformers import DataCollatorWithFlattening

    flatten = DataCollatorWithFlattening(return_tensors="pt", separator_id=IGNORE)
    rows = [flatten([{"input_ids": e.input_ids, "labels": e.labels} for e in u]) for u in units]
    width = max(r["input_ids"].shape[1] for r in rows)
    out = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for i, r in enumerate(rows):
        n = r["input_ids"].shape[1]
        for key in out:
            out[key][i, :n] = r[key][0]
        out["position_ids"][i, n:] = torch.arange(width - n)
    return out


def collate(units: list[list[Example]], pad_id: int, packed: bool) -> dict[str, Any]:
    """A micro-batch of units (lists of records: one each unless packed) as model inputs."""
    if packed:
        return pack_collate(units, pad_id)
    return pad_collate([e for u in units for e in u], pad_id)


def non_pad_fraction(batches: list[list[list[Example]]]) -> float:
    """Fraction of computed positions that hold real tokens, for micro-batches of units (pure)."""
    real = sum(len(e.input_ids) for b in batches for u in b for e in u)
    width = sum(len(b) * max(sum(len(e.input_ids) for e in u) for u in b) for b in batches)
    return real / width if width else 1.0


def packing_works(model: Any, device: str, vocab: int) -> bool:
    """Do records packed into rows (with a padded row) give the same logits as each alone?"""
    import torch

    a = [(7 * i + 3) % vocab for i in range(6)]
    b = [(5 * i + 1) % vocab for i in range(5)]
    c = [(3 * i + 2) % vocab for i in range(4)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [
                model(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0].float()
                for s in (a, b, c)
            ]
            batch = pack_collate([[Example(a, a), Example(b, b)], [Example(c, c)]], 0)
            out = model(
                input_ids=batch["input_ids"].to(device),
                position_ids=batch["position_ids"].to(device),
                use_cache=False,  # with a cache, transformers does not look for packing
            ).logits.float()
    except (TypeError, ValueError, RuntimeError) as err:
        log.info("packing check failed on this model (%s)", type(err).__name__)
        return False
    finally:
        model.train(was_training)
    got = torch.cat([out[0, :11], out[1, :4]])
    ref = torch.cat(alone)
    scale = float(ref.abs().max()) or 1.0
    return float((got - ref).abs().max()) <= 1e-3 * scale + 1e-4
