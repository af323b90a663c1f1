"""`invoke demo` end to end on CPU (slow), plus the fast refusals and plumbing around it.

The slow test runs the command exactly as the README gives it, in a fresh workdir, and then checks
every artefact as a user (or an auditor) would: the final model loads and has learned the corpus,
the manifest signature verifies (and fails with another key), the download matches its manifest,
the ciphertext decrypts to the private records but holds none of their text, no plaintext is
anywhere on disk, the export verifies and holds no private text, the summary's numbers agree with
the run's own records, and the plot is a real PNG.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from demo.corpus_private import CANARY, generate_records, write_encrypted_dataset
from demo.runtime import MARKER, REPO_ROOT, DemoError, Paths, bucket, demo_recipe, prepare_workdir


def invoke_demo(*args: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), "demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# The whole pipeline


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    proc = invoke_demo("--workdir", str(base / "out"), cwd=base, timeout=600)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    workdir = base / "out"
    return proc, Paths(workdir), json.loads((workdir / "summary.json").read_text())


@pytest.mark.slow
def test_demo_prints_stages_table_and_every_artefact_path(demo_run):
    proc, paths, summary = demo_run
    out = proc.stdout
    for n in range(1, 7):
        assert f"[{n}/6]" in out
    assert out.count("done in") == 6
    assert "| pretrain steps" in out and "| export size" in out
    assert f"| {summary['pretrain']['global_step']}" in out.replace("  ", " ")
    for path in summary["artefacts"].values():
        for part in path.split(" / "):
            assert part in out
            if part.startswith("/"):
                assert Path(part).exists(), f"printed artefact path {part} does not exist"


@pytest.mark.slow
def test_pretraining_stopped_by_the_convergence_criterion(demo_run):
    _, paths, summary = demo_run
    pre = summary["pretrain"]
    status = json.loads((paths.bucket / "runs" / "demo" / "STATUS.json").read_text())
    assert status["state"] == "converged" and pre["converged"] and pre["converged_by_criterion"]
    # Stopped at the evaluation where the criterion fired, well before the epoch limit.
    assert pre["converged_epoch"] == pytest.approx(pre["epochs"])
    assert pre["converged_step"] == pre["global_step"] == status["global_step"]
    assert pre["epochs"] < 60
    vals = [v for _, v in pre["val_history"]]
    assert len(vals) >= pre["patience"] + 1 and all(math.isfinite(v) for v in vals)
    assert pre["first_val_loss"] == vals[0] and pre["best_val_loss"] == min(vals)
    assert pre["best_val_loss"] < 0.6 * pre["first_val_loss"]
    # The last `patience` evaluations each improved on the best before them by < min_rel.
    for i in range(len(vals) - pre["patience"], len(vals)):
        assert vals[i] > min(vals[:i]) * (1 - pre["min_rel_improvement"])
    train = [v for _, v in pre["train_history"]]
    assert len(train) >= 3 and all(math.isfinite(v) for v in train)
    assert train[-1] < 0.6 * train[0]
    assert pre["checkpoints"] >= 1


@pytest.mark.slow
def test_one_spot_interruption_resumed_on_one_rank_loses_no_committed_step(demo_run):
    proc, paths, summary = demo_run
    cut = summary["pretrain"]["interruption"]
    assert (cut["from_world_size"], cut["to_world_size"]) == (2, 1)
    assert cut["steps_lost"] == 0 and cut["resumed_at_step"] == cut["at_step"] > 0
    assert cut["note"] == (
        f"resumed at step {cut['at_step']} from a checkpoint of world size 2 on world size 1"
    )
    status = json.loads((paths.bucket / "runs" / "demo" / "STATUS.json").read_text())
    assert [x["world_size"] for x in status["launches"]] == [2, 1]
    assert "| spot interruption" in proc.stdout and "0 steps lost" in proc.stdout


@pytest.mark.slow
def test_final_model_is_signed_verified_and_loads(demo_run, tmp_path):
    from artifacts.errors import VerificationError
    from artifacts.signing import generate_keypair
    from artifacts.verify import verify_dir

    _, paths, summary = demo_run
    manifest = verify_dir(paths.model, public_key=paths.public_key)
    assert summary["download"]["bytes_verified"] == manifest.total_bytes > 100_000
    assert summary["download"]["files"] == len(manifest.files)
    assert manifest.metadata["converged"] is True
    published = paths.bucket / "runs" / "demo" / "final"
    assert verify_dir(published, public_key=paths.public_key).to_json() == manifest.to_json()
    # Signed afterwards by the owner (`invoke sign`): the ranks' recipe never named a key.
    assert (published / "MANIFEST.json.sig").read_text().startswith("ed25519 ")
    assert "signing_key" not in paths.config.read_text()
    _, other = generate_keypair(tmp_path / "other.key")
    with pytest.raises(VerificationError, match="bad signature"):
        verify_dir(paths.model, public_key=other)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data.corpus import generate_corpus

    tok = AutoTokenizer.from_pretrained(paths.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(paths.model, local_files_only=True).eval()
    ids = tok(generate_corpus(3000, seed=99)[:1500], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    # Fresh sentences of the grammar: the model has learned it (a random init is ~ln(vocab) ≈ 6).
    assert math.isfinite(loss) and loss < summary["pretrain"]["first_val_loss"]


@pytest.mark.slow
def test_ciphertext_holds_the_records_and_none_of_their_text(demo_run):
    from local.dataset import iter_records
    from local.keys import load_key

    _, paths, summary = demo_run
    blob = paths.data.read_bytes()
    records = generate_records()
    assert len(blob) == summary["private_data"]["ciphertext_bytes"]
    assert CANARY.encode() not in blob
    answers = [r["response"] if "response" in r else r["messages"][1]["content"] for r in records]
    assert not any(a[:20].encode() in blob for a in answers)
    assert {next(iter(r)) for r in records} == {"prompt", "messages"}  # both masked forms
    assert list(iter_records(paths.data, load_key(paths.data_key))) == records
    assert oct(paths.data_key.stat().st_mode & 0o777) == "0o600"


@pytest.mark.slow
def test_no_private_plaintext_anywhere_on_disk(demo_run):
    _, paths, summary = demo_run
    needles = [CANARY.encode(), generate_records()[0]["prompt"].encode()]
    searched = 0
    for p in paths.root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            searched += 1
            assert not any(n in data for n in needles), f"private plaintext in {p}"
    assert searched >= summary["private_data"]["plaintext_on_disk"]["files_searched"] - 1
    assert summary["private_data"]["plaintext_on_disk"]["files_with_plaintext"] == []


@pytest.mark.slow
def test_export_verifies_and_fine_tune_lowered_the_loss(demo_run):
    from artifacts.verify import verify_dir

    _, paths, summary = demo_run
    ft = summary["finetune"]
    manifest = verify_dir(paths.export)
    names = {f.path for f in manifest.files}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    size = sum(p.stat().st_size for p in paths.export.rglob("*") if p.is_file())
    assert ft["export_bytes"] == size and ft["export_files"] == len(names) + 1
    for p in paths.export.rglob("*"):
        if p.is_file():
            assert CANARY.encode() not in p.read_bytes()
    assert manifest.metadata["steps"] == ft["steps"] > 0
    assert math.isfinite(ft["loss_before"]) and math.isfinite(ft["loss_after"])
    assert ft["loss_after"] < ft["loss_before"]
    history = ft["train_history"]
    assert history == manifest.metadata["train_loss_history"] and len(history) >= 2
    assert all(math.isfinite(loss) for _, loss in history) and history[-1][1] < history[0][1]
    assert ft["data"]["packing"] is True and ft["data"]["train_on_prompt"] is False
    # The demo's fine-tune ran in the bubblewrap sandbox, and its manifest and summary say so.
    assert ft["isolation"] == manifest.metadata["isolation"] == "sandbox"
    audit = manifest.metadata["privacy_audit"]
    assert audit == ft["privacy_audit"] and 0.0 <= audit["train_exposure"] <= 1.0


@pytest.mark.slow
def test_plot_is_a_real_png(demo_run):
    _, paths, _ = demo_run
    data = paths.plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 2000 and 300 <= height <= 1000
    assert len(data) > 30_000


@pytest.mark.slow
def test_a_second_run_refuses_the_used_workdir(demo_run):
    proc, paths, _ = demo_run
    again = invoke_demo("--workdir", str(paths.root), cwd=paths.root.parent, timeout=60)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: --workdir {paths.root} holds a previous demo run; pass a fresh --workdir, or --force to replace it"
    ]


@pytest.mark.slow
def test_terminating_the_demo_stops_every_training_process(tmp_path):
    import signal
    import time

    import psutil

    workdir = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "invoke",
            "--search-root",
            str(REPO_ROOT),
            "demo",
            "--workdir",
            str(workdir),
        ],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    status = workdir / "bucket" / "runs" / "demo" / "STATUS.json"
    deadline = time.monotonic() + 300
    tree: list[psutil.Process] = []
    try:
        # Nothing to await: the ranks write STATUS.json once they are up; poll for it. (Data
        # preparation writes it first, "preparing" then "prepared", before any rank starts.)
        def ranks_up() -> bool:
            try:
                state = json.loads(status.read_text()).get("state")
                return state not in (None, "preparing", "prepared")
            except (OSError, ValueError):
                return False

        while not ranks_up() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ranks_up(), "pretraining never started"
        tree = psutil.Process(proc.pid).children(recursive=True)
        ranks = [p for p in tree if p.cmdline()[1:4] == ["-u", "-m", "trainer"]]
        assert len(ranks) == 2, [p.cmdline() for p in tree]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=120)
        for p in tree:  # never leave a failed test's processes behind
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted"
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == [], f"left running: {[p.cmdline() for p in alive]}"


# ---------------------------------------------------------------------------------------------
# Fast: refusals and plumbing


def test_refuses_a_non_empty_folder_it_did_not_make(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    proc = invoke_demo("--workdir", str(tmp_path), "--force", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --workdir {tmp_path} is not empty and was not made by the demo; pass a new or empty folder"
    ]
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_workdir_policy(tmp_path):
    fresh = prepare_workdir(tmp_path / "a" / "b")
    assert (fresh / MARKER).is_file()
    (fresh / "model").mkdir()
    with pytest.raises(DemoError, match="previous demo run"):
        prepare_workdir(fresh)
    again = prepare_workdir(fresh, force=True)
    assert again == fresh and sorted(p.name for p in fresh.iterdir()) == [MARKER]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DemoError, match="not a folder"):
        prepare_workdir(tmp_path / "file")


def test_recipe_holds_no_signing_key_and_stays_valid(tmp_path):
    from trainer.config import load_config

    paths = Paths(prepare_workdir(tmp_path / "w"))
    cfg = load_config(demo_recipe(paths, "file:///x/runs/demo"))
    tiny = load_config(REPO_ROOT / "configs" / "pretrain-tiny.toml")
    assert cfg.run.signing_key is None  # the owner signs afterwards; ranks never hold the key
    assert cfg.run.scratch_dir == str(paths.scratch) and cfg.run.uri == "file:///x/runs/demo"
    assert (cfg.model, cfg.data, cfg.training, cfg.convergence, cfg.deepspeed) == (
        tiny.model,
        tiny.data,
        tiny.training,
        tiny.convergence,
        tiny.deepspeed,
    )


def test_private_dataset_is_encrypted_from_memory(tmp_path):
    from local.dataset import iter_records

    key = os.urandom(32)
    ds = write_encrypted_dataset(tmp_path / "d.enc", key, records=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.enc"]  # no plaintext or temp file left
    assert CANARY.encode() not in ds.path.read_bytes()
    assert list(iter_records(ds.path, key)) == generate_records(30)
    assert ds.ciphertext_bytes == ds.path.stat().st_size > ds.plaintext_bytes


def test_s3_bucket_is_moto_on_loopback_and_env_is_restored(tmp_path, caplog):
    from artifacts.store import open_store

    caplog.set_level("INFO")
    before = os.environ.get("AWS_ENDPOINT_URL")
    paths = Paths(prepare_workdir(tmp_path / "w"))
    with bucket(paths, s3=True) as run_uri:
        assert run_uri == "s3://twostage-demo/runs/demo"
        assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        store = open_store(run_uri)
        store.put_bytes("STATUS.json", b"{}")
        assert [o.key for o in store.list()] == ["STATUS.json"]
    # moto's per-request log lines would drown the progress view
    assert not [r for r in caplog.records if r.name == "werkzeug"]
    assert os.environ.get("AWS_ENDPOINT_URL") == before
    assert not paths.bucket.exists()


@pytest.mark.slow
def test_the_run_is_watched_and_the_adapter_used(demo_run):
    """TensorBoard files in the run, a sample in the summary, evaluate before/after, GGUF read back."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from local.gguf_release import readback_overrides

    proc, paths, summary = demo_run
    pre, used = summary["pretrain"], summary["use"]
    assert pre["tensorboard_files"] >= 1
    assert pre["latest_sample"]["prompt"] and pre["latest_sample"]["text"].strip()
    ev = used["evaluate"]
    assert ev["base + adapter"]["loss"] < ev["base (4-bit)"]["loss"]
    assert json.loads(paths.evaluation.read_text())["heldout_only"] is True
    extra = readback_overrides(AutoConfig.from_pretrained(str(paths.model)))  # GPT-2: n_positions
    back = AutoModelForCausalLM.from_pretrained(
        str(paths.gguf.parent), gguf_file=paths.gguf.name, **extra
    )
    assert back.config.model_type == "gpt2" and used["gguf"]["readback_max_abs_diff"] < 0.1
    assert (paths.gguf.parent / "Modelfile").read_text().startswith("FROM ./model.gguf")
    assert "| evaluate (held-out): base → adapter" in proc.stdout
