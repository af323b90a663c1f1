"""GGUF export: transformers' own GGUF loader reads the file back with matching logits; the export
scan refuses a GGUF that carries private text; bad flags are one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import qlora_helpers as h

from local.errors import LocalError
from local.gguf_export import permute_rotary
from local.gguf_release import MODELFILE, export_gguf, manifest_path

REPO = Path(__file__).resolve().parents[2]
#: Tolerances on the logits of a tiny random model (values of order 1): the dtype's rounding.
TOLERANCE = {"f16": 5e-3, "bf16": 5e-2, "q8_0": 5e-2}


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return h.build_tiny_llama(tmp_path_factory.mktemp("llama"))


def test_permute_rotary_interleaves_each_heads_halves():
    import numpy as np

    w = np.arange(8).reshape(8, 1)  # 2 heads of 4 rows: halves [0,1] [2,3] → 0,2,1,3
    assert permute_rotary(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_llama_gguf_reads_back_in_transformers_with_matching_logits(llama, tmp_path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny.gguf"
    info = export_gguf(llama, out, dtype=dtype)
    assert info.readback_max_abs_diff is not None and info.readback_max_abs_diff < TOLERANCE[dtype]
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name)
    src = AutoModelForCausalLM.from_pretrained(str(llama))
    ids = [1, 5, 9, 42, 77, 100]
    assert float((_logits(back, ids) - _logits(src, ids)).abs().max()) < TOLERANCE[dtype]
    tok_back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    tok_src = AutoTokenizer.from_pretrained(str(llama))
    text = "the cat sat on the mat, the dog ran to the park"
    assert tok_back(text)["input_ids"] == tok_src(text)["input_ids"]
    assert (tmp_path / MODELFILE).read_text().startswith(f"FROM ./{out.name}\n")
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["metadata"]["dtype"] == dtype
    assert {f["path"] for f in manifest["files"]} == {out.name, MODELFILE}


def test_adapter_is_merged_into_the_exported_weights(finetuned, tmp_path):
    from transformers import AutoModelForCausalLM

    from local.model import load_full_precision

    out = tmp_path / "ft.gguf"
    info = export_gguf(finetuned.model, out, adapter=finetuned.adapter, dtype="f16")
    assert info.readback_max_abs_diff < TOLERANCE["f16"]
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name)
    ids = [3, 14, 15, 92, 65]
    merged = _logits(load_full_precision(finetuned.model, finetuned.adapter), ids)
    base = _logits(load_full_precision(finetuned.model), ids)
    got = _logits(back, ids)
    assert float((got - merged).abs().max()) < TOLERANCE["f16"]
    assert float((got - base).abs().max()) > 10 * TOLERANCE["f16"]  # the adapter is in there
    meta = json.loads(manifest_path(out).read_text())["metadata"]
    assert meta["adapter_merged"] is True


def test_gpt2_family_reads_back(tmp_path):
    from transformers import AutoModelForCausalLM

    model = h.build_tiny_gpt2(tmp_path / "gpt2")
    out = tmp_path / "g" / "g.gguf"
    out.parent.mkdir()
    info = export_gguf(model, out, dtype="f16")
    assert info.readback_max_abs_diff < TOLERANCE["f16"]
    # transformers' GGUF loader drops gpt2.context_length (see readback_overrides)
    back = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name, n_positions=128)
    src = AutoModelForCausalLM.from_pretrained(str(model))
    ids = [2, 7, 1, 8, 28]
    assert float((_logits(back, ids) - _logits(src, ids)).abs().max()) < TOLERANCE["f16"]


def test_a_gguf_carrying_private_text_is_refused_and_nothing_is_written(finetuned, tmp_path):
    import random
    import shutil

    from local.crypto import encrypt_bytes
    from local.keys import load_key

    words = "alpha bravo charlie delta foxtrot juliet kilo lima oscar sierra tango victor".split()
    rng = random.Random(3)
    texts = [" ".join(rng.choice(words) for _ in range(16)) for _ in range(6)]
    data = tmp_path / "notes.enc"
    plain = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    data.write_bytes(encrypt_bytes(plain, load_key(finetuned.key_file)))
    adapter = tmp_path / "adapter"
    shutil.copytree(finetuned.adapter, adapter)
    # A chat template that quotes a training record: it would travel in the GGUF's metadata.
    (adapter / "chat_template.jinja").write_text(
        "{% for m in messages %}" + texts[2] + " {{ m['content'] }}{% endfor %}"
    )
    out = tmp_path / "out" / "leak.gguf"
    out.parent.mkdir()
    with pytest.raises(LocalError, match=r"leak\.gguf contains the private content"):
        export_gguf(
            finetuned.model, out, adapter=adapter, data=data, key_file=finetuned.key_file,
            verify=False,
        )  # fmt: skip
    assert list(out.parent.iterdir()) == []
    # the same export without the quote passes the same scan
    (adapter / "chat_template.jinja").unlink()
    export_gguf(finetuned.model, out, adapter=adapter, data=data, key_file=finetuned.key_file, verify=False)
    assert out.is_file()


def test_the_gguf_metadata_is_scanned_for_paths(llama, tmp_path, monkeypatch):
    from local import exposure

    monkeypatch.setattr(exposure, "base_label", lambda d, verified: str(Path(d).resolve()))
    with pytest.raises(LocalError, match="contains the model folder path"):
        export_gguf(llama, tmp_path / "named.gguf", verify=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "q4_k"], "--dtype must be one of f16, bf16, q8_0"),
        (["--out", "x.bin"], "must end in .gguf"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(llama, tmp_path, args, message):
    out = [] if "--out" in args else ["--out", str(tmp_path / "m.gguf")]  # invoke takes one --out
    argv = ["--model", str(llama), *out, *args]
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO), "export-gguf", *argv],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
