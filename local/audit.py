"""Privacy audit before export: how much of the training data does the adapter reproduce?

Two signals, both against held-out records the model never trained on (the baseline):

* **verbatim exposure** — for up to ``audit_records`` training and held-out records, give the
  model the record up to and including its first ``audit_prefix_tokens`` supervised tokens and
  decode greedily; the record is *exposed* when the continuation reproduces its next
  ``audit_verbatim_tokens`` (K) tokens exactly. ``train_exposure`` is the exposed fraction of
  training records, ``heldout_exposure`` of held-out ones: a gap means memorisation, not just a
  predictable format;
* **loss gap** — mean loss on the probed training records minus the held-out loss
  (``heldout_loss - train_loss``; a membership-inference signal).

Written to the export manifest as ``privacy_audit``; ``--max-exposure X`` refuses the export
(kept encrypted, see ``local.held``) when ``train_exposure > X``. Only numbers leave: never a
token of a record.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from local.records import IGNORE, Example

log = logging.getLogger(__name__)


def probe(example: Example, prefix: int, k: int) -> tuple[list[int], list[int]] | None:
    """``(context, expected next k tokens)`` of a record, or None when it is too short (pure)."""
    sup = [i for i, label in enumerate(example.labels) if label != IGNORE]
    if not sup:
        return None
    cut = sup[0] + prefix
    if cut + k > len(example.input_ids):
        return None
    return example.input_ids[:cut], example.input_ids[cut : cut + k]


def _sample(examples: list[Example], n: int, seed: int, prefix: int, k: int) -> list[tuple]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        p = probe(examples[i], prefix, k)
        if p is not None:
            out.append((examples[i], *p))
            if len(out) == n:
                break
    return out


def _greedy(model: Any, context: list[int], k: int, device: str, pad_id: int) -> list[int]:
    import torch

    ids = torch.tensor([context], device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=k,
        min_new_tokens=k,
        do_sample=False,
        pad_token_id=pad_id,
    )
    return out[0, len(context) :].tolist()


def exposure(model: Any, probes: list[tuple], k: int, device: str, pad_id: int) -> float:
    if not probes:
        return float("nan")
    hits = sum(_greedy(model, ctx, k, device, pad_id) == want for _e, ctx, want in probes)
    return hits / len(probes)


def _num(x: float) -> float | None:
    """JSON-safe: NaN (no probe-able records) becomes null."""
    return round(x, 6) if math.isfinite(x) else None


def run_audit(
    model: Any,
    train: list[Example],
    evals: list[Example],
    cfg: Any,
    *,
    device: str,
    compute_dtype: str,
    pad_id: int,
    heldout_loss: float,
) -> dict[str, Any]:
    """The ``privacy_audit`` manifest entry (numbers only)."""
    from local.training import evaluate

    k, prefix = cfg.audit_verbatim_tokens, cfg.audit_prefix_tokens
    train_probes = _sample(train, cfg.audit_records, cfg.seed + 1, prefix, k)
    held_probes = _sample(evals, cfg.audit_records, cfg.seed + 2, prefix, k)
    was = model.training
    model.eval()
    use_cache = model.config.use_cache
    model.config.use_cache = True
    try:
        train_exp = exposure(model, train_probes, k, device, pad_id)
        held_exp = exposure(model, held_probes, k, device, pad_id)
    finally:
        model.config.use_cache = use_cache
        model.train(was)
    train_loss = evaluate(
        model,
        [e for e, *_ in train_probes],
        cfg,
        device=device,
        compute_dtype=compute_dtype,
        pad_id=pad_id,
    )
    result = {
        "records": {"train": len(train_probes), "heldout": len(held_probes)},
        "prefix_tokens": prefix,
        "verbatim_tokens": k,
        "train_exposure": _num(train_exp),
        "heldout_exposure": _num(held_exp),
        "train_loss": _num(train_loss),
        "heldout_loss": _num(heldout_loss),
        "loss_gap": _num(heldout_loss - train_loss),
    }
    log.info(
        "privacy audit: exposure %s of %d training records (%d tokens verbatim), held-out %s; "
        "loss gap %s",
        result["train_exposure"],
        len(train_probes),
        k,
        result["heldout_exposure"],
        result["loss_gap"],
    )
    return result
