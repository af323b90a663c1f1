"""Export: allow-list, no pickles, no private strings, manifest last, atomic; the CLI end to end."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import qlora_helpers as h

from artifacts.manifest import MANIFEST_NAME
from artifacts.verify import verify_dir
from local import export
from local.errors import LocalError
from local.scan import CONTENT, WORD, Forbidden

REPO = Path(__file__).resolve().parents[2]


def _staged(tmp_path: Path) -> Path:
    s = tmp_path / "staged"
    s.mkdir()
    (s / "adapter_model.safetensors").write_bytes(
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + b"\x01" * 32
    )
    (s / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": "base"}))
    (s / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"patients": 1, "the": 2}}}))
    return s


def test_allow_list():
    assert export.is_allowed("adapter_model.safetensors") and export.is_allowed("tokenizer.json")
    assert export.is_allowed("merged/model-00001-of-00002.safetensors")
    assert export.is_allowed("merged/config.json")
    for bad in (
        "optimizer.pt",
        "trainer_state.json",
        "rng_state.pth",
        "README.md",
        "data.jsonl",
        "x/adapter_config.json",
    ):
        assert not export.is_allowed(bad), bad


def test_scrub_replaces_origins_and_absolute_paths_only():
    doc = {
        "base_model_name_or_path": "/home/alice/models/llama",
        "nested": [{"_name_or_path": "meta/llama"}, "C:\\Users\\bob\\m", "file:///srv/data/x"],
        "target_modules": ["q_proj", "v_proj"],
        "eos_token": "</s>",
        "r": 8,
    }
    out = export.scrub_json(doc, "base")
    assert out["base_model_name_or_path"] == "base" and out["nested"] == [
        {"_name_or_path": "base"},
        "base",
        "base",
    ]
    assert (
        out["target_modules"] == ["q_proj", "v_proj"]
        and out["eos_token"] == "</s>"
        and out["r"] == 8
    )


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("optimizer.pt", b"anything", "pickle"),
        ("trainer_state.json", b"{}", "allow-list"),
        ("tokenizer_config.json", b"\x80\x04\x95pickled", "pickle"),
        ("tokenizer_config.json", b"PK\x03\x04torch.save", "pickle"),
    ],
)
def test_pickles_and_unlisted_files_are_refused(tmp_path, name, content, why):
    s = _staged(tmp_path)
    (s / name).write_bytes(content)
    with pytest.raises(LocalError, match=why):
        export.check_export(s, [])


def test_private_strings_are_refused_by_label(tmp_path):
    s = _staged(tmp_path)
    (s / "adapter_config.json").write_text(
        json.dumps({"note": "trained on /data/secret-patients.jsonl.enc"})
    )
    forbidden = [Forbidden("data file path", "/data/secret-patients.jsonl.enc")]
    with pytest.raises(LocalError, match="adapter_config.json contains the data file path"):
        export.check_export(s, forbidden)


def test_names_are_checked_outside_vocabularies_only(tmp_path):
    s = _staged(tmp_path)
    names = [Forbidden("data file name", "patients", WORD)]
    assert export.check_export(s, names)  # an ordinary vocab token is public base content
    (s / "adapter_config.json").write_text(json.dumps({"dataset": "Patients"}))
    with pytest.raises(LocalError, match="data file name"):
        export.check_export(s, names)


ORDINARY_NAMES = [
    "data.enc", "train.jsonl.enc", "model.key", "weights.enc", "lora.enc", "base.key",
    "config.enc", "token.enc", "eval.enc", "adapter.key", "layers.key", "chat.enc",
    "messages.enc", "data.key", "private.jsonl.enc", "team.key",
]  # fmt: skip


def _real_export(tmp_path: Path) -> Path:
    """A real adapter + tokenizer (with a chat template) as the export stages them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = h.build_tiny_llama(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(str(model_dir))
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model_dir)),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    staged = tmp_path / "staged"
    staged.mkdir()
    export.save_adapter(model, staged, "sha256:" + "0" * 64)
    export.copy_tokenizer(model_dir, staged, "sha256:" + "0" * 64)
    return staged


@pytest.fixture(scope="module")
def real_export(tmp_path_factory) -> Path:
    return _real_export(tmp_path_factory.mktemp("real-export"))


def _copy(src: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, tmp_path / "copy"))


@pytest.mark.parametrize("name", ORDINARY_NAMES)
def test_ordinary_data_and_key_file_names_never_refuse_an_export(real_export, name):
    staged = real_export
    forbidden = [Forbidden("data file name", name, WORD), Forbidden("key file name", name, WORD)]
    assert export.check_export(staged, forbidden)


def test_whole_names_paths_and_key_ids_are_still_found(real_export, tmp_path):
    staged = _copy(real_export, tmp_path)
    cfg = json.loads((staged / "adapter_config.json").read_text())
    cfg["note"] = "from /srv/private/train.jsonl.enc, key 0011223344556677, file chat.enc"
    (staged / "adapter_config.json").write_text(json.dumps(cfg))
    for needle, kind, label in [
        ("/srv/private/train.jsonl.enc", "exact", "data file path"),
        ("0011223344556677", "exact", "key ID"),
        ("CHAT.enc", WORD, "data file name"),
    ]:
        with pytest.raises(export.ExportRefused, match=label):
            export.check_export(staged, [Forbidden(label, needle, kind)])


def test_private_content_ngrams_are_found_raw_and_json_escaped(real_export, tmp_path):
    from local.scan import NgramSampler, drop_public

    staged = _copy(real_export, tmp_path)
    record = "patient Émile Zola was admitted on tuesday with a fractured left wrist and mild fever"
    sampler = NgramSampler(seed=0)
    sampler.add([record])
    grams = sampler.ngrams()
    assert grams and all(len(g.split()) == 8 for g in grams)
    forbidden = [Forbidden("private content", g, CONTENT) for g in grams]
    assert export.check_export(staged, forbidden)  # clean export: nothing found
    tok_cfg = json.loads((staged / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = "system: " + record  # json.dumps escapes the É
    (staged / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    with pytest.raises(export.ExportRefused, match="tokenizer_config.json contains the private"):
        export.check_export(staged, forbidden)
    # an n-gram the base's own public files hold (e.g. its system prompt) is not private
    public = [(staged / "tokenizer_config.json").read_bytes()]
    assert drop_public(grams, public) == set()


def test_short_common_words_are_never_ngrams():
    from local.scan import NgramSampler

    sampler = NgramSampler(seed=0)
    sampler.add(["the cat sat", "a b c d e f g h i j"])  # too few words / too few characters
    assert sampler.ngrams() == set()


def test_a_refused_export_is_held_encrypted_and_can_be_exported(tmp_path):
    from local import held
    from local.crypto import decrypt_stream
    from local.scan import Finding

    key = bytes(range(32))
    out = tmp_path / "adapter-v1"
    with export.staging_dir(out) as staging:
        for f in _staged(tmp_path).iterdir():
            (staging / f.name).write_bytes(f.read_bytes())
        path = held.hold(
            staging, out, key, [Finding("adapter_config.json", "hostname")], {"steps": 3}
        )
    assert path == held.held_path(out) and not out.exists()
    blob = b"".join(decrypt_stream(path, key))  # authentic, and no plaintext file anywhere
    assert b"adapter_model.safetensors" in blob
    assert b'"r": 8' not in path.read_bytes()
    with pytest.raises(LocalError, match="adapter_config.json: hostname.*--accept"):
        held.export_held(path, key, out)
    assert not out.exists() and path.exists()
    info = held.export_held(path, key, out, accept=True)
    manifest = verify_dir(info.path)
    assert manifest.metadata["steps"] == 3
    assert manifest.metadata["accepted_findings"] == [
        {"file": "adapter_config.json", "label": "hostname"}
    ]
    assert not path.exists()


def test_finalize_writes_the_manifest_last_and_renames(tmp_path):
    out = tmp_path / "out"
    with export.staging_dir(out) as staging:
        for f in _staged(tmp_path).iterdir():
            (staging / f.name).write_bytes(f.read_bytes())
        info = export.finalize(staging, out, forbidden=[], metadata={"steps": 3})
    assert info.path == out and info.files == 4
    manifest = verify_dir(out)
    assert manifest.metadata == {"steps": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_failure_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LocalError):
        with export.staging_dir(out) as staging:
            (staging / "optimizer.pt").write_bytes(b"x")
            export.finalize(staging, out, forbidden=[], metadata={})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_existing_out_is_never_overwritten(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(LocalError, match="already exists"):
        with export.staging_dir(tmp_path / "out"):
            pass


# --- end to end through `invoke finetune --airgapped --merge` ---------------------------------


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-export")
    model = h.verified_model(tmp)
    cipher, key = h.encrypted_dataset(tmp)
    out = tmp / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "finetune", "--model", str(model), "--data", str(cipher),
         "--key-file", str(key), "--out", str(out), "--airgapped", "--merge",
         "--config", str(h.TINY_CONFIG), "--max-steps", "6"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "model": model, "cipher": cipher, "key": key, "out": out, "proc": proc}


@pytest.mark.slow
def test_cli_prints_the_result_and_exports_a_verifiable_folder(cli_export):
    proc, out = cli_export["proc"], cli_export["out"]
    assert "fine-tuned 6 steps" in proc.stdout and "eval loss" in proc.stdout
    manifest = verify_dir(out)
    names = {f.path for f in manifest.files}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "merged/model.safetensors",
    } <= names
    assert manifest.metadata["steps"] == 6 and manifest.metadata["merged"] is True
    assert [step for step, _ in manifest.metadata["train_loss_history"]] == [4]


@pytest.mark.slow
def test_export_contains_no_private_strings_or_pickles(cli_export):
    out, cipher, key = cli_export["out"], cli_export["cipher"], cli_export["key"]
    needles = [
        h.CANARY,
        str(cipher),
        str(key),
        cipher.name,
        key.name,
        str(cli_export["tmp"]),
        str(cli_export["model"]),
    ]
    if len(socket.gethostname()) >= 4:
        needles.append(socket.gethostname())
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    for p in files:
        data = p.read_bytes()
        assert not data.startswith((b"\x80\x04", b"\x80\x02", b"PK\x03\x04")), p
        for needle in needles:
            assert needle.encode() not in data, f"{p.relative_to(out)} contains {needle!r}"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].startswith("sha256:")
    assert h.CANARY not in cli_export["proc"].stdout + cli_export["proc"].stderr


@pytest.mark.slow
def test_stock_peft_loads_the_adapter_and_the_merge_matches(cli_export):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir, out = cli_export["model"], cli_export["out"]
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(out)).eval()
    assert any(not torch.all(p == 0) for n, p in adapted.named_parameters() if "lora_B" in n)
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    with torch.no_grad():
        a, m = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(a, m, atol=1e-4)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)(
            input_ids=ids
        ).logits
    assert not torch.allclose(plain, m, atol=1e-6)  # the merge really changed the weights
    assert (out / MANIFEST_NAME).is_file()
