"""The invoke tasks `keygen`, `encrypt`, `inspect-data`: exit codes, one-line errors, no leaks."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from local.crypto import decrypt_bytes, encrypt_bytes

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))
SECRET = "patient 4711 has a rare condition"


def run_task(*argv: str) -> subprocess.CompletedProcess:
    """Run `invoke ARGV` from the repository root, through the real front door (tasks.py)."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    from local.keys import generate_key_file

    return generate_key_file(tmp_path / "data.key")


def test_encrypt_task_round_trip_and_refuses_overwrite(tmp_path: Path, key_file: Path) -> None:
    src, dest = tmp_path / "train.jsonl", tmp_path / "train.enc"
    src.write_text('{"text": "private sentence"}\n')
    done = run_task("encrypt", "--key-file", str(key_file), "--src", str(src), "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    from local.keys import load_key

    assert decrypt_bytes(dest.read_bytes(), load_key(key_file)) == src.read_bytes()
    before = dest.read_bytes()
    again = run_task("encrypt", "--key-file", str(key_file), "--src", str(src), "--dest", str(dest))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {dest} already exists; pass --force to replace it"
    ]
    assert dest.read_bytes() == before
    forced = run_task(
        "encrypt", "--key-file", str(key_file), "--src", str(src), "--dest", str(dest), "--force"
    )
    assert forced.returncode == 0 and dest.read_bytes() != before


@pytest.mark.parametrize("problem", ["missing-src", "missing-key", "open-key", "encrypted-src"])
def test_encrypt_task_bad_input_is_one_line_exit_2(
    tmp_path: Path, key_file: Path, problem: str
) -> None:
    src, dest = tmp_path / "train.jsonl", tmp_path / "out" / "train.enc"
    dest.parent.mkdir()
    src.write_text('{"text": "x"}\n')
    key = key_file
    if problem == "missing-src":
        src = tmp_path / "nope.jsonl"
    elif problem == "missing-key":
        key = tmp_path / "nope.key"
    elif problem == "open-key":
        key_file.chmod(0o644)
    else:
        src.write_bytes(encrypt_bytes(b"x", KEY))
    done = run_task("encrypt", "--key-file", str(key), "--src", str(src), "--dest", str(dest))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert list(dest.parent.iterdir()) == []  # nothing half-written


def test_keygen_task(tmp_path: Path) -> None:
    out = tmp_path / "k.key"
    done = run_task("keygen", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    before = out.read_bytes()
    again = run_task("keygen", "--out", str(out))
    assert again.returncode == 2
    assert len(again.stderr.strip().splitlines()) == 1 and "refusing to overwrite" in again.stderr
    assert out.read_bytes() == before
    nowhere = run_task("keygen", "--out", str(tmp_path / "no" / "such" / "k.key"))
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr


def _encrypted_dataset(tmp_path: Path, key_file: Path, text: str) -> Path:
    src, dest = tmp_path / "train.jsonl", tmp_path / "train.enc"
    src.write_text(text)
    done = run_task("encrypt", "--key-file", str(key_file), "--src", str(src), "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    src.unlink()
    return dest


def test_inspect_data_prints_counts_never_contents(tmp_path: Path, key_file: Path) -> None:
    lines = "".join(f'{{"prompt": "{SECRET} {i}", "response": "ok {i}"}}\n' for i in range(5))
    cipher = _encrypted_dataset(tmp_path, key_file, lines)
    done = run_task("inspect-data", "--key-file", str(key_file), "--src", str(cipher))
    assert done.returncode == 0, done.stderr
    assert "records: 5 (prompt-response)" in done.stdout
    assert f"plaintext: {len(lines.encode())} B" in done.stdout
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.parametrize("problem", ["flipped", "truncated", "wrong-key", "bad-record", "missing"])
def test_inspect_data_failures_are_one_line_exit_2(
    tmp_path: Path, key_file: Path, problem: str
) -> None:
    text = (
        f'{{"text": "{SECRET}"}}\n{{"text": "{SECRET}",}}\n'
        if problem == "bad-record"
        else f'{{"text": "{SECRET}"}}\n' * 20000
    )
    cipher = _encrypted_dataset(tmp_path, key_file, text)
    key = key_file
    blob = bytearray(cipher.read_bytes())
    if problem == "flipped":
        blob[85 + 3 * (64 * 1024 + 16) + 10] ^= 0x04  # inside chunk 3
        cipher.write_bytes(bytes(blob))
    elif problem == "truncated":
        cipher.write_bytes(bytes(blob[:-1000]))
    elif problem == "wrong-key":
        from local.keys import generate_key_file

        key = generate_key_file(tmp_path / "other.key")
    elif problem == "missing":
        cipher = tmp_path / "nope.enc"
    done = run_task("inspect-data", "--key-file", str(key), "--src", str(cipher))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    expected = {
        "flipped": "chunk 3 failed authentication",
        "truncated": "failed authentication",
        "wrong-key": "wrong key",
        "bad-record": "line 2 (record 2): not valid JSON",
        "missing": "no such encrypted file",
    }[problem]
    assert expected in lines[0]
    assert SECRET not in done.stdout + done.stderr
    assert "records:" not in done.stdout  # nothing reported as fine for a bad file


def test_tasks_are_documented() -> None:
    for name in ("keygen", "encrypt", "rekey", "inspect-data"):
        done = run_task("--help", name)
        assert done.returncode == 0
        assert "--key-file" in done.stdout or "--out" in done.stdout


def test_kms_wrapped_key_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """keygen --kms-key-id writes only the wrapped key; encrypt and inspect-data use it via KMS."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        kms = boto3.client("kms", region_name="us-east-1")
        arn = kms.create_key(Description="team data keys")["KeyMetadata"]["Arn"]
        wrapped = tmp_path / "data.kms.json"
        done = run_task("keygen", "--out", str(wrapped), "--kms-key-id", arn)
        assert done.returncode == 0, done.stderr
        assert '"format": "twostage-kms-wrapped-key/v1"' in wrapped.read_text()
        src, dest = tmp_path / "train.jsonl", tmp_path / "train.enc"
        src.write_text(f'{{"text": "{SECRET}"}}\n')
        done = run_task(
            "encrypt", "--key-file", str(wrapped), "--src", str(src), "--dest", str(dest)
        )
        assert done.returncode == 0, done.stderr
        done = run_task("inspect-data", "--key-file", str(wrapped), "--src", str(dest))
        assert done.returncode == 0 and "records: 1 (text)" in done.stdout, done.stderr
    finally:
        server.stop()
    # KMS unreachable: one line, exit 2, no traceback.
    done = run_task("inspect-data", "--key-file", str(wrapped), "--src", str(dest))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "KMS" in done.stderr


def test_rekey_rotates_the_key_and_never_leaves_a_partial_file(
    tmp_path: Path, key_file: Path
) -> None:
    """Key rotation: the new file opens only with the new key; a tampered source leaves no dest."""
    from local.crypto import decrypt_stream
    from local.keys import generate_key_file, load_key

    text = "".join(f'{{"text": "record {i} ' + "x" * 900 + '"}\n' for i in range(200))  # > 1 chunk
    src = tmp_path / "data.enc"
    src.write_bytes(encrypt_bytes(text.encode(), load_key(key_file)))
    new_key = generate_key_file(tmp_path / "new.key")
    dest = tmp_path / "rotated.enc"

    def rekey(to: Path) -> subprocess.CompletedProcess:
        return run_task(
            "rekey",
            "--key-file",
            str(key_file),
            "--new-key-file",
            str(new_key),
            "--src",
            str(src),
            "--dest",
            str(to),
        )

    done = rekey(dest)
    assert done.returncode == 0, done.stderr
    assert b"".join(decrypt_stream(dest, load_key(new_key))).decode() == text
    with pytest.raises(Exception, match="wrong key"):
        b"".join(decrypt_stream(dest, load_key(key_file)))

    again = rekey(dest)
    assert again.returncode == 2 and "pass --force" in again.stderr

    blob = bytearray(src.read_bytes())
    blob[-100] ^= 1  # last chunk: everything before it was already re-encrypted
    src.write_bytes(bytes(blob))
    bad_dest = tmp_path / "bad.enc"
    done = rekey(bad_dest)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not bad_dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.enc")]
