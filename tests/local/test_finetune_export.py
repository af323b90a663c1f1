"""An export never loses a run: checks before training, a precise scan after, a held adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import qlora_helpers as h

from artifacts.verify import verify_dir
from local import export, finetune, held, tokens
from local.config import load_config
from local.errors import LocalError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return h.verified_model(tmp_path_factory.mktemp("base"))


def _data(
    tmp: Path, name: str, key_name: str = "model.key", records: list | None = None
) -> tuple[Path, Path]:
    from local.keys import generate_key_file, load_key

    tmp.mkdir(parents=True, exist_ok=True)
    key = generate_key_file(tmp / key_name)
    plain = "".join(json.dumps(r) + "\n" for r in (records or h.records(24))).encode()
    from local.crypto import encrypt_bytes

    (tmp / name).write_bytes(encrypt_bytes(plain, load_key(key), chunk_size=256))
    return tmp / name, key


def _cfg(**kw):
    import dataclasses

    return dataclasses.replace(load_config(h.TINY_CONFIG), **kw)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data_name", "key_name"), [("data.enc", "model.key"), ("train.jsonl.enc", "adapter.key")]
)
def test_ordinary_file_names_export(base, tmp_path, data_name, key_name):
    cipher, key = _data(tmp_path, data_name, key_name)
    cfg = _cfg(max_steps=2, audit_records=2, eval_steps=0, checkpoint_steps=0)
    result = finetune.run_finetune(base, cipher, key, tmp_path / "out", config=cfg)
    assert verify_dir(result.export_path).metadata["steps"] == 2


def test_max_seq_len_beyond_the_position_limit_fails_before_anything_heavy(base, tmp_path):
    cipher, key = _data(tmp_path, "data.enc")
    with pytest.raises(
        LocalError, match=r"max_seq_len=512 exceeds .*max_position_embeddings = 128"
    ):
        finetune.run_finetune(base, cipher, key, tmp_path / "out", free_bytes=1)  # default recipe


def test_a_leaking_base_file_is_refused_in_preflight_not_after_training(
    base, tmp_path, monkeypatch
):
    import shutil

    model = Path(shutil.copytree(base, tmp_path / "model"))
    cfg_path = model / "tokenizer_config.json"
    cipher, key = _data(tmp_path, "data.enc")
    from local.crypto import key_id
    from local.keys import load_key

    doc = json.loads(cfg_path.read_text())
    doc["comment"] = "made for data key " + key_id(load_key(key)).hex()
    cfg_path.write_text(json.dumps(doc))
    monkeypatch.setattr(tokens, "tokenize_records", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(
        LocalError, match="preflight: the base model's tokenizer_config.json .* key ID"
    ):
        finetune.run_finetune(model, cipher, key, tmp_path / "out", config=_cfg(), verify=False)


@pytest.mark.slow
def test_a_refusal_after_training_keeps_the_adapter_encrypted(base, tmp_path, monkeypatch):
    texts = h.corpus(24, seed=5)  # 12 words each: long enough for 8-word n-grams
    cipher, key = _data(tmp_path, "chat.enc", records=[{"text": t} for t in texts])
    real = export.save_adapter
    leaked = texts[3]

    def leaky(model, staging, label):  # a library that copies training text into a config
        real(model, staging, label)
        cfg = json.loads((staging / "adapter_config.json").read_text())
        cfg["example"] = leaked
        (staging / "adapter_config.json").write_text(json.dumps(cfg))

    monkeypatch.setattr(export, "save_adapter", leaky)
    monkeypatch.setattr("local.scan.NGRAM_SAMPLE_RECORDS", 10_000)  # sample every record
    out = tmp_path / "out"
    cfg = _cfg(max_steps=2, audit_records=2, eval_steps=0, checkpoint_steps=0)
    with pytest.raises(LocalError) as info:
        finetune.run_finetune(base, cipher, key, out, config=cfg)
    msg = str(info.value)
    assert "adapter_config.json contains the private content" in msg
    assert "kept encrypted with the dataset key" in msg and "invoke export-held" in msg
    path = held.held_path(out)
    assert path.exists() and not out.exists() and str(path) in msg
    assert leaked.encode() not in path.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "export-held", "--held", str(path), "--key-file",
         str(key), "--out", str(out), "--accept"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = verify_dir(out)
    assert manifest.metadata["accepted_findings"][0]["file"] == "adapter_config.json"
    assert (out / "adapter_model.safetensors").is_file() and not path.exists()


@pytest.mark.slow
def test_max_exposure_refuses_the_export_and_keeps_it(base, tmp_path, monkeypatch):
    import local.audit

    def leaky_audit(*a, **k):
        return {"train_exposure": 0.5, "heldout_exposure": 0.0, "verbatim_tokens": 4,
                "loss_gap": 1.0}  # fmt: skip

    monkeypatch.setattr(local.audit, "run_audit", leaky_audit)
    cipher, key = _data(tmp_path, "data.enc")
    out = tmp_path / "out"
    cfg = _cfg(max_steps=2, eval_steps=0, checkpoint_steps=0)
    with pytest.raises(LocalError, match=r"train exposure 0.5 > --max-exposure 0.1.*export-held"):
        finetune.run_finetune(base, cipher, key, out, config=cfg, max_exposure=0.1)
    assert held.held_path(out).exists() and not out.exists()
    with pytest.raises(LocalError, match=r"max-exposure must be a fraction"):
        finetune.run_finetune(base, cipher, key, tmp_path / "o2", config=cfg, max_exposure=2.0)


@pytest.mark.slow
def test_a_lone_surrogate_fails_finetune_with_one_line_naming_the_record(base, tmp_path):
    cipher, key = _data(tmp_path, "data.enc", records=[{"text": "ok"}, {"text": "bad \ud800 text"}])
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "finetune", "--model", str(base), "--data", str(cipher),
         "--key-file", str(key), "--out", str(tmp_path / "out"), "--config", str(h.TINY_CONFIG)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "line 2 (record 2)" in errors[0] and "lone surrogate" in errors[0]
    assert "Traceback" not in proc.stderr and "verified" not in proc.stderr  # before hashing
