"""QLoRA fine-tune on CPU with a tiny Llama: the 4-bit path, the air gap, no plaintext on disk."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import qlora_helpers as h

from artifacts.errors import VerificationError
from local import airgap, finetune, tokens
from local.config import load_config
from local.errors import LocalError

REPO = Path(__file__).resolve().parents[2]
_LOOPBACK = {None, "", "localhost", "127.0.0.1", "::1"}


class NetworkAudit:
    """Counts every connect/send/DNS call that reaches the OS (a ``sys.addaudithook`` hook).

    Independent of the guard under test: the guard blocks in Python before the OS call, so a
    blocked attempt shows up in ``airgap.violations()`` and one that slipped past shows up here.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.attempts: list[str] = []
        sys.addaudithook(self._hook)  # hooks cannot be removed; `enabled` gates this one

    def _hook(self, event: str, args: tuple) -> None:
        if not self.enabled:
            return
        if event in ("socket.connect", "socket.sendto"):
            address = args[1] if event == "socket.connect" else args[-1]
            host = address[0] if isinstance(address, tuple) else None
            if host not in _LOOPBACK and not str(host).startswith("127."):
                self.attempts.append(f"{event} {address!r}")
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
            if args[0] not in _LOOPBACK:
                self.attempts.append(f"{event} {args[0]!r}")


_audit: list[NetworkAudit] = []


def network_audit() -> NetworkAudit:
    """The one audit hook of this session, installed on first use only."""
    if not _audit:
        _audit.append(NetworkAudit())
    return _audit[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qlora")
    model = h.verified_model(tmp)
    cipher, key = h.encrypted_dataset(tmp)
    return tmp, model, cipher, key


@pytest.fixture(scope="module")
def airgapped_run(tiny):
    """One `--airgapped` fine-tune, watched: network audit, guard state, logs and output."""
    tmp, model, cipher, key = tiny
    seen: dict[str, object] = {}
    real_tokenize, real_train = tokens.tokenize_records, finetune.train_model

    def tokenize(*a, **k):
        seen["guard_while_decrypting"] = airgap.active()
        seen["hf_offline"] = os.environ.get("HF_HUB_OFFLINE")
        return real_tokenize(*a, **k)

    def train(*a, **k):
        seen["guard_while_training"] = airgap.active()
        return real_train(*a, **k)

    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    started = h.now()
    out = tmp / "export"
    tokens.tokenize_records, finetune.train_model = tokenize, train
    audit = network_audit()
    audit.attempts.clear()
    audit.enabled = True
    try:
        with contextlib.redirect_stdout(logs), contextlib.redirect_stderr(logs):
            result = finetune.run_finetune(
                model,
                cipher,
                key,
                out,
                config=load_config(h.TINY_CONFIG),
                airgapped=True,
                isolate=False,  # in this process, so the seams and the audit hook see it
            )
    finally:
        audit.enabled = False
        tokens.tokenize_records, finetune.train_model = real_tokenize, real_train
        root.removeHandler(handler)
        root.setLevel(old_level)
    return {
        "result": result,
        "out": out,
        "seen": seen,
        "violations": airgap.violations(),
        "attempts": list(audit.attempts),
        "logs": logs.getvalue(),
        "started": started,
        "tmp": tmp,
        "cipher": cipher,
        "key": key,
    }


def test_the_network_audit_sees_what_reaches_the_os():
    audit = network_audit()
    audit.enabled = True
    try:
        socket.getaddrinfo("203.0.113.9", 80)  # numeric: no packet leaves, the event still fires
        socket.getaddrinfo("127.0.0.1", 80)
    finally:
        audit.enabled = False
    assert [a for a in audit.attempts if "203.0.113.9" in a]
    assert not [a for a in audit.attempts if "127.0.0.1" in a]
    audit.attempts.clear()


# --- pure pieces ------------------------------------------------------------------------------


def test_padding_is_masked_out_of_the_loss():
    from local.batching import pad_collate
    from local.records import Example

    batch = pad_collate([Example([5, 6, 7], [-100, 6, 7]), Example([8], [8])], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


# --- the airgapped end-to-end run -------------------------------------------------------------


@pytest.mark.slow
def test_airgapped_finetune_lowers_the_loss_and_exports(airgapped_run):
    result = airgapped_run["result"]
    assert result.steps == 12 and result.device == "cpu"
    assert result.loss_after < result.loss_before - 0.05
    assert result.export_path == airgapped_run["out"] and result.export_bytes > 0
    assert (airgapped_run["out"] / "adapter_model.safetensors").is_file()
    assert "eval loss" in result.summary()
    # In this process (isolate=False) the run had the guard alone, and its manifest says so.
    from artifacts.verify import verify_dir

    meta = verify_dir(airgapped_run["out"]).metadata
    assert meta["isolation"] == "guard-only" == result.isolation and meta["swap"]


@pytest.mark.slow
def test_airgapped_run_makes_zero_network_attempts(airgapped_run):
    seen = airgapped_run["seen"]
    assert seen["guard_while_decrypting"] and seen["guard_while_training"]
    assert seen["hf_offline"] == "1"
    assert airgapped_run["violations"] == []
    assert airgapped_run["attempts"] == []


@pytest.mark.slow
def test_no_plaintext_reaches_disk_or_logs(airgapped_run):
    canary = h.CANARY.encode()
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    roots = [airgapped_run["tmp"], Path(tempfile.gettempdir()), hf_home, Path.home() / ".cache"]
    assert h.files_containing(roots, canary, airgapped_run["started"]) == []
    assert h.CANARY not in airgapped_run["logs"]
    assert "decrypted in memory only" in airgapped_run["logs"]  # the capture did see the run


@pytest.mark.slow
def test_export_holds_no_private_strings(airgapped_run):
    out = airgapped_run["out"]
    cipher, key = airgapped_run["cipher"], airgapped_run["key"]
    needles = [h.CANARY, str(cipher), str(key), cipher.name, key.name, str(airgapped_run["tmp"])]
    if len(socket.gethostname()) >= 4:
        needles.append(socket.gethostname())
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == [
        "MANIFEST.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for p in out.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{p.name} contains {needle!r}"


# --- the 4-bit path itself --------------------------------------------------------------------


@pytest.mark.slow
def test_4bit_nf4_base_stays_frozen_and_the_adapter_reloads_exactly(tiny, tmp_path):
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from local import export

    _, model_dir, _, _ = tiny
    cfg = load_config(h.TINY_CONFIG)
    model = finetune.load_qlora_model(model_dir, cfg, "cpu", "float32", ["q_proj", "v_proj"])
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    assert q_proj.base_layer.weight.quant_state.nested  # double quantization
    assert model.is_loaded_in_4bit
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_b = q_proj.lora_B["default"].weight.detach().clone()

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    examples, _ = tokens.tokenize_records(h.records(40), tok, cfg)
    stats = finetune.train_model(
        model,
        examples[:32],
        examples[32:],
        cfg,
        device="cpu",
        compute_dtype="float32",
        steps=8,
        pad_id=0,
        packed=False,
    )
    assert stats.steps == 8 and stats.loss_after < stats.loss_before
    assert [step for step, _ in stats.history] == [4, 8]  # logging_steps = 4
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), frozen[n]), f"frozen weight {n} changed"
    assert not torch.equal(q_proj.lora_B["default"].weight, lora_b)

    export.save_adapter(model, tmp_path, "base")
    ids = torch.tensor([examples[0].input_ids])
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        str(model_dir), quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
    )
    from local.model import _keep_cpu_weights_trainable

    _keep_cpu_weights_trainable(base)  # same CPU kernel as the trained copy
    reloaded = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
    assert torch.equal(trained, again)


@pytest.mark.slow
def test_gpt2_fused_attention_gets_the_adapter_on_c_attn(tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoTokenizer

    from local.preflight import run_preflight

    model_dir = h.build_tiny_gpt2(tmp_path / "gpt2")
    cfg = load_config(h.TINY_CONFIG)  # asks for q_proj, v_proj
    report = run_preflight(model_dir, cfg, device="cpu", compute_dtype="float32")
    assert report.target_modules == ["c_attn"]
    model = finetune.load_qlora_model(model_dir, cfg, "cpu", "float32", report.target_modules)
    c_attn = model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn.base_layer, bnb.nn.Linear4bit)
    assert c_attn.base_layer.weight.quant_state.quant_type == "nf4"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    examples, _ = tokens.tokenize_records(h.records(24), tok, cfg)
    stats = finetune.train_model(
        model,
        examples[:20],
        examples[20:],
        cfg,
        device="cpu",
        compute_dtype="float32",
        steps=6,
        pad_id=0,
        packed=True,
    )
    assert stats.loss_after < stats.loss_before


# --- refusals ---------------------------------------------------------------------------------


def test_blocked_network_attempt_aborts_the_run_even_if_swallowed(tiny, monkeypatch):
    tmp, model, cipher, key = tiny
    real = tokens.tokenize_records

    def phone_home(*a, **k):
        try:
            socket.create_connection(("203.0.113.7", 443), timeout=5)
        except Exception:  # noqa: BLE001 - a careless library would swallow it like this
            pass
        return real(*a, **k)

    monkeypatch.setattr(tokens, "tokenize_records", phone_home)
    out = tmp / "never"
    with pytest.raises(LocalError) as info:
        finetune.run_finetune(
            model,
            cipher,
            key,
            out,
            config=load_config(h.TINY_CONFIG),
            airgapped=True,
            isolate=False,
        )
    assert "air gap" in str(info.value) and "203.0.113.7" in str(info.value)
    assert not out.exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".never")]


def test_tampered_model_is_refused_and_no_verify_skips_the_check(tiny, tmp_path):
    import shutil

    _, model, cipher, key = tiny
    bad = tmp_path / "model"
    shutil.copytree(model, bad)
    with open(bad / "config.json", "a") as f:
        f.write("\n")
    with pytest.raises(VerificationError, match="config.json"):
        finetune.run_finetune(bad, cipher, key, tmp_path / "out", config=load_config(h.TINY_CONFIG))
    # --no-verify goes past the manifest: this run stops at the (injected) memory check instead
    with pytest.raises(LocalError, match="not enough memory"):
        finetune.run_finetune(
            bad,
            cipher,
            key,
            tmp_path / "out",
            config=load_config(h.TINY_CONFIG),
            verify=False,
            free_bytes=1,
        )


def test_signed_model_needs_the_right_public_key(tmp_path):
    from artifacts.signing import generate_keypair

    signer, signer_pub = generate_keypair(tmp_path / "signer")
    _, other_pub = generate_keypair(tmp_path / "other")
    model = h.verified_model(tmp_path, signing_key=signer)
    cipher, key = h.encrypted_dataset(tmp_path, n=4)
    cfg = load_config(h.TINY_CONFIG)
    with pytest.raises(VerificationError):
        finetune.run_finetune(
            model, cipher, key, tmp_path / "out", public_key=other_pub, config=cfg
        )
    with pytest.raises(LocalError, match="--public-key"):
        finetune.run_finetune(
            model, cipher, key, tmp_path / "out", public_key=other_pub, verify=False, config=cfg
        )
    # the signer's key passes verification: the run goes on to the checkpoint lookup after it
    with pytest.raises(LocalError, match="--resume: no checkpoint"):
        finetune.run_finetune(
            model, cipher, key, tmp_path / "out", public_key=signer_pub, config=cfg, resume=True
        )
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_tampered_model_with_one_line_and_exit_2(tiny, tmp_path):
    import shutil

    _, model, cipher, key = tiny
    bad = tmp_path / "model"
    shutil.copytree(model, bad)
    (bad / "model.safetensors").write_bytes(b"\0" + (bad / "model.safetensors").read_bytes()[1:])
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "finetune", "--model", str(bad), "--data", str(cipher),
         "--key-file", str(key), "--out", str(tmp_path / "out"), "--airgapped",
         "--config", str(h.TINY_CONFIG)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.safetensors" in errors[0] and "sha256 mismatch" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
