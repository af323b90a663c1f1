"""Step 4 of a fine-tune: the encrypted dataset decrypted chunk by chunk straight into the
tokenizer (``local.records``: loss masks, chat template, truncation), split into training and
held-out examples. Only token ids stay, in memory; the dataset's n-grams that the base's public
files do not contain join the export's forbidden list."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from local.config import FinetuneConfig
from local.errors import LocalError
from local.job import Job
from local.records import EncodeStats, Example

log = logging.getLogger("local.finetune")


@dataclass
class Examples:
    """The dataset as token ids, ready to train on."""

    tokenizer: Any
    train: list[Example]
    evals: list[Example]
    stats: EncodeStats
    pad_id: int
    forbidden: list[Any]
    """The run's forbidden list plus the dataset's private n-grams."""


def tokenize_records(
    records: Iterable[dict], tokenizer: Any, cfg: FinetuneConfig, on_record: Any = None
) -> tuple[list[Example], EncodeStats]:
    """Encode every record per ``cfg`` (masks, template, truncation); see ``local.records``."""
    from local.records import chat_template_for, encode_all

    return encode_all(
        records,
        tokenizer,
        max_len=cfg.max_seq_len,
        truncation=cfg.truncation,
        train_on_prompt=cfg.train_on_prompt,
        chat_template=chat_template_for(tokenizer),
        on_record=on_record,
    )


def split_eval(examples: list, fraction: float, max_eval: int, seed: int) -> tuple[list, list]:
    """Hold out a seeded random slice for evaluation (pure)."""
    if len(examples) < 2:
        raise LocalError(
            f"the dataset has {len(examples)} usable record(s); need at least 2 (one is held out to measure the loss)"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, round(len(examples) * fraction)), len(examples) - 1)
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    evals = [examples[i] for i in sorted(held)]
    return train, evals


def load_examples(job: Job, public: dict[str, bytes], forbidden: list[Any]) -> Examples:
    """Decrypt, tokenize and split ``job``'s dataset; see the module doc."""
    from transformers import AutoTokenizer

    from local.dataset import iter_records
    from local.records import record_fields
    from local.scan import CONTENT, Forbidden, NgramSampler, drop_public

    cfg = job.cfg
    tokenizer = AutoTokenizer.from_pretrained(str(job.model_dir), local_files_only=True)
    sampler = NgramSampler(cfg.seed)
    examples, enc = tokenize_records(
        iter_records(job.data, job.key),
        tokenizer,
        cfg,
        on_record=lambda r: sampler.add(record_fields(r)),
    )
    private = drop_public(sampler.ngrams(), public.values())
    forbidden = forbidden + [
        Forbidden("private content (an n-gram of the dataset)", g, CONTENT) for g in private
    ]
    if enc.over_long:
        log.warning(
            "%d of %d records were longer than max_seq_len=%d tokens: %s",
            enc.over_long,
            enc.records,
            cfg.max_seq_len,
            "dropped" if cfg.truncation == "drop" else "cut on the left (their ends kept)",
        )
    train, evals = split_eval(examples, cfg.eval_fraction, cfg.eval_max_records, cfg.seed)
    del examples
    log.info(
        "dataset: %d records (%s) for training, %d held out (decrypted in memory only)",
        len(train),
        ", ".join(f"{k} {v}" for k, v in sorted(enc.kinds.items())),
        len(evals),
    )
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    return Examples(tokenizer, train, evals, enc, pad_id, forbidden)
