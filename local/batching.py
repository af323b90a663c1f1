"""Batches: padded (right-padded, padding masked out of loss and attention) or packed.

Packed batches use transformers' ``DataCollatorWithFlattening``: the micro-batch's records are
concatenated into one row with position ids restarting at 0 for each record and no attention
mask; models built on transformers' ``create_causal_mask`` (Llama, GPT-2, Mistral, Qwen, … in
transformers 5) then attend only within each record. :func:`packing_works` checks that on the
loaded model itself (packed logits == separate logits) before a run relies on it.
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


def pack_collate(batch: list[Example]) -> dict[str, Any]:
    """One row: records concatenated, position ids per record, the first label of each ignored."""
    from transformers import DataCollatorWithFlattening

    collator = DataCollatorWithFlattening(return_tensors="pt", separator_id=IGNORE)
    return collator([{"input_ids": e.input_ids, "labels": e.labels} for e in batch])


def collate(batch: list[Example], pad_id: int, packed: bool) -> dict[str, Any]:
    return pack_collate(batch) if packed else pad_collate(batch, pad_id)


def non_pad_fraction(batches: list[list[Example]]) -> tuple[float, float]:
    """``(padded, packed)`` fraction of computed positions that are real tokens (pure)."""
    real = sum(len(e.input_ids) for b in batches for e in b)
    padded = sum(len(b) * max(len(e.input_ids) for e in b) for b in batches)
    return real / padded if padded else 1.0, 1.0


def packing_works(model: Any, device: str, vocab: int) -> bool:
    """Do two records packed into one row give the same logits as each run alone?"""
    import torch

    a = [(7 * i + 3) % vocab for i in range(6)]
    b = [(5 * i + 1) % vocab for i in range(5)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [
                model(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0].float()
                for s in (a, b)
            ]
            packed = pack_collate([Example(a, a), Example(b, b)])
            out = (
                model(
                    input_ids=packed["input_ids"].to(device),
                    position_ids=packed["position_ids"].to(device),
                    use_cache=False,  # with a cache, transformers does not look for packing
                )
                .logits[0]
                .float()
            )
    except (TypeError, ValueError, RuntimeError) as err:
        log.info("packing check failed on this model (%s)", type(err).__name__)
        return False
    finally:
        model.train(was_training)
    ref = torch.cat(alone)
    scale = float(ref.abs().max()) or 1.0
    return float((out - ref).abs().max()) <= 1e-3 * scale + 1e-4
