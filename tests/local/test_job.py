"""A fine-tune's job crosses the pipe to the sandboxed child as JSON (``local.job``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from local.config import FinetuneConfig
from local.errors import LocalError
from local.job import FinetuneResult, Job


def _job(**kw) -> Job:
    base = dict(
        model_dir=Path("/models/base"), data=Path("data.enc"), key_file=Path("/keys/k.key"),
        out=Path("/exports/a"), cfg=FinetuneConfig(target_modules=("c_attn",), lora_r=4),
        airgapped=True, verify=True, merge=False, steps=3, public_key=None, free_bytes=None,
        resume=False, max_exposure=0.25, started=12.5, isolation="x", key=bytes(range(32)),
    )  # fmt: skip
    return Job(**{**base, **kw})


def test_a_job_survives_the_pipe_unchanged_and_hides_its_key():
    job = _job()
    back = Job.from_dict(json.loads(json.dumps(job.to_dict())))
    assert back == job and back.key == bytes(range(32))
    assert bytes(range(32)).hex() not in repr(job)
    assert Job.from_dict(_job(public_key=Path("/k.pub")).to_dict()).public_key == Path("/k.pub")


def test_a_bad_job_field_is_named():
    doc = _job().to_dict()
    doc["cfg"]["lora_r"] = "eight"
    with pytest.raises(LocalError, match="cfg.lora_r"):
        Job.from_dict(doc)
    with pytest.raises(LocalError, match="unknown key"):
        Job.from_dict({**_job().to_dict(), "stray": 1})


def test_a_result_survives_the_pipe_unchanged():
    result = FinetuneResult(
        steps=2, loss_before=2.0, loss_after=1.5, export_path=Path("/exports/a"),
        export_bytes=10, export_files=3, train_records=8, eval_records=2, device="cpu",
        merged=False, seconds=1.0, privacy_audit={"train_exposure": 0.5},
    )  # fmt: skip
    assert FinetuneResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert dataclasses.asdict(result)["export_path"] == Path("/exports/a")


def test_in_the_sandbox_the_key_travels_apart_and_stays_a_wipeable_bytearray():
    job = _job(staging=Path("/exports/.a.partial-1"), swap="off")
    doc = json.loads(json.dumps(job.to_dict(with_key=False)))
    assert "key" not in doc and bytes(range(32)).hex() not in json.dumps(doc)
    secret = bytearray(range(32))
    back = Job.from_dict({**doc, "secret": secret})
    assert back.key is secret  # not copied into an immutable bytes: the child can wipe it
    assert back.staging == Path("/exports/.a.partial-1") and back.swap == "off"
    secret[:] = bytes(32)
    assert back.key == bytes(32)
