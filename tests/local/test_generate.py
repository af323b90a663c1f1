"""``invoke generate``: same seed same text, base + adapter, encrypted prompts, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import qlora_helpers as h

from local import generate as gen
from local import offline
from local.errors import LocalError

REPO = Path(__file__).resolve().parents[2]


def _run(model, adapter=None, prompts=("the cat",), airgapped=False, **settings):
    request = {
        "model": str(model), "adapter": str(adapter) if adapter else None,
        "prompts": list(prompts), "settings": {"max_new_tokens": 12, **settings},
    }  # fmt: skip
    return offline.run(gen.TARGET, request, airgapped=airgapped, isolate=False)


def test_prompt_lines_plain_and_json():
    assert gen.parse_prompt_line("  hello  ", "f: line 1") == "hello"
    assert gen.parse_prompt_line("", "f: line 2") is None
    assert gen.parse_prompt_line('{"prompt": "hi"}', "x") == "hi"
    msgs = [{"role": "user", "content": "hi"}]
    assert gen.parse_prompt_line(json.dumps({"messages": msgs}), "x") == msgs
    with pytest.raises(LocalError, match="f: line 3: a JSON prompt needs"):
        gen.parse_prompt_line('{"text": "x"}', "f: line 3")


def test_same_seed_same_text_and_another_seed_another(finetuned):
    prompts = ["the cat sat", "dog ran to", "bird flew over"]
    a = _run(finetuned.model, prompts=prompts, temperature=1.5, seed=7)["texts"]
    b = _run(finetuned.model, prompts=prompts, temperature=1.5, seed=7)["texts"]
    c = _run(finetuned.model, prompts=prompts, temperature=1.5, seed=8)["texts"]
    assert a == b
    assert a != c
    # the seed is per prompt: a prompt alone gives what it gave among others
    assert _run(finetuned.model, prompts=prompts[1:2], temperature=1.5, seed=7)["texts"] == a[1:2]


def test_the_adapter_changes_what_the_model_writes(finetuned):
    base = _run(finetuned.model, prompts=[h.records()[0]["prompt"]])["texts"]
    tuned = _run(finetuned.model, finetuned.adapter, prompts=[h.records()[0]["prompt"]])["texts"]
    assert base != tuned


def test_a_network_attempt_during_generate_aborts_it(finetuned, monkeypatch):
    import socket

    from local import inference
    from local.airgap import OFFLINE_ENV

    for k, v in OFFLINE_ENV.items():  # restored after the test: the switches stay in this test
        monkeypatch.setenv(k, v)

    def phoning_home(*a, **k):  # a library that checks for updates while loading
        socket.create_connection(("203.0.113.9", 443), timeout=30)

    monkeypatch.setattr(inference, "load", phoning_home)
    with pytest.raises(LocalError, match=r"203\.0\.113\.9.*the command was aborted"):
        _run(finetuned.model, airgapped=True)


@pytest.mark.slow
def test_cli_streams_air_gapped_from_an_encrypted_prompts_file(finetuned, tmp_path):
    from local.crypto import encrypt_bytes
    from local.keys import load_key

    prompts = tmp_path / "prompts.enc"
    plain = "\n".join(json.dumps({"prompt": r["prompt"]}) for r in h.records(2)).encode()
    prompts.write_bytes(encrypt_bytes(plain, load_key(finetuned.key_file)))
    argv = [
        "generate", "--model", str(finetuned.model), "--adapter", str(finetuned.adapter),
        "--prompts", str(prompts), "--key-file", str(finetuned.key_file), "--max-new-tokens", "6",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO), *argv],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--- [1/2]" in done.stdout and "--- [2/2]" in done.stdout
    assert "air gap: bubblewrap sandbox" in done.stderr  # fails closed where none can be built


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --prompt TEXT, --prompts FILE or --chat"),
        (["--prompt", "x", "--chat"], "give exactly one of"),
        (["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--prompt", "x", "--temperature", "hot"], "--temperature must be a decimal number"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "config.json").write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO), "generate",
         "--model", str(tmp_path), *args],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
