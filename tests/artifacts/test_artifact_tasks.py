"""The artifact tasks as a user runs them: `invoke signing-keygen / publish / download / verify`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def inv(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_shows_the_artifact_tasks():
    out = inv("--list").stdout
    for name in ("signing-keygen", "publish", "download", "verify"):
        assert name in out


def test_keygen_publish_download_verify(tmp_path, sample_dir):
    key = tmp_path / "sign.key"
    r = inv("signing-keygen", "--out", str(key))
    assert r.returncode == 0, r.stderr
    r = inv("signing-keygen", "--out", str(key))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    dest_uri = (tmp_path / "bucket" / "model").as_uri()
    r = inv("publish", "--src", str(sample_dir), "--dest", dest_uri, "--signing-key", str(key))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "model"
    r = inv("download", "--src", dest_uri, "--dest", str(out), "--public-key", f"{key}.pub")
    assert r.returncode == 0, r.stderr
    assert "signature ok" in r.stdout
    r = inv("verify", "--dir", str(out), "--public-key", f"{key}.pub")
    assert r.returncode == 0 and "ok:" in r.stdout


def test_user_errors_are_one_line_exit_2(tmp_path, sample_dir):
    cases = [
        ("download", "--src", "gs://b/x", "--dest", str(tmp_path / "d")),
        ("download", "--src", str(tmp_path / "nothing"), "--dest", str(tmp_path / "d")),
        ("publish", "--src", str(tmp_path / "missing"), "--dest", str(tmp_path / "x")),
        (
            "publish",
            "--src",
            str(sample_dir),
            "--dest",
            str(tmp_path / "x"),
            "--signing-key",
            str(tmp_path / "nokey"),
        ),
        ("verify", "--dir", str(sample_dir)),
    ]
    for args in cases:
        r = inv(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "x").exists()


def test_sign_a_finished_run_then_download_checks_it(tmp_path, sample_dir):
    key = tmp_path / "owner.key"
    assert inv("signing-keygen", "--out", str(key)).returncode == 0
    run = tmp_path / "bucket" / "runs" / "r1"
    r = inv("sign", "--run", str(run), "--signing-key", str(key))
    assert r.returncode == 2 and "the run has not finished" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert inv("publish", "--src", str(sample_dir), "--dest", str(run / "final")).returncode == 0
    r = inv("sign", "--run", str(run), "--signing-key", str(key))
    assert r.returncode == 0, r.stderr
    assert f"signed {run}/final/MANIFEST.json" in r.stdout
    r = inv("download", "--src", str(run / "final"), "--dest", str(tmp_path / "m"),
            "--public-key", f"{key}.pub")  # fmt: skip
    assert r.returncode == 0 and "signature ok" in r.stdout, r.stderr
