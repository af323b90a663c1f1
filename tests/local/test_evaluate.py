"""``invoke evaluate``: base vs adapter on held-out encrypted data, masked like training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from local import evaluate as ev
from local import offline
from local.keys import load_key

REPO = Path(__file__).resolve().parents[2]


def test_table_lines_up():
    text = ev.table([ev.Row("base (4-bit)", 2.5, 12.182, 10, 80)])
    assert text.splitlines()[1].split() == ["base", "(4-bit)", "2.5000", "12.182", "10", "80"]


def test_adapter_loss_below_base_on_the_held_out_split(finetuned):
    request = {
        "model": str(finetuned.model), "adapter": str(finetuned.adapter),
        "data": str(finetuned.data), "key": load_key(finetuned.key_file).hex(),
        "config": str(finetuned.config), "heldout_only": True,
    }  # fmt: skip
    rows = offline.run(ev.TARGET, request, airgapped=False)["rows"]
    base, tuned = rows
    assert base["model"] == "base (4-bit)" and tuned["model"] == "base + adapter"
    assert tuned["loss"] < base["loss"]
    assert base["records"] == tuned["records"] < 48  # only the held-out slice
    # the fine-tune measured the same numbers on the same slice (its manifest)
    meta = json.loads((finetuned.adapter / "MANIFEST.json").read_text())["metadata"]
    assert tuned["loss"] == pytest.approx(meta["eval_loss_after"], rel=1e-3)
    assert base["loss"] == pytest.approx(meta["eval_loss_before"], rel=1e-3)


@pytest.mark.slow
def test_cli_air_gapped_table_and_json(finetuned, tmp_path):
    report = tmp_path / "eval.json"
    argv = [
        "evaluate", "--model", str(finetuned.model), "--adapter", str(finetuned.adapter),
        "--data", str(finetuned.data), "--key-file", str(finetuned.key_file),
        "--config", str(finetuned.config), "--json", str(report),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO), *argv],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "base + adapter" in done.stdout and "perplexity" in done.stdout
    rows = json.loads(report.read_text())["rows"]
    assert rows[1]["loss"] < rows[0]["loss"]
