"""Tasks for encrypted datasets: ``keygen``, ``encrypt``, ``rekey``, ``inspect-data``.

Thin on purpose: parse flags, call :mod:`local.keys` / :mod:`local.crypto` /
:mod:`local.dataset`, print a short summary. Errors are one line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import task

from artifacts.cli_support import user_errors
from local.errors import LocalError


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@task(
    help={
        "out": "Where to write the new key file (refuses to overwrite; created with mode 0600).",
        "kms_key_id": "Optional AWS KMS key id/ARN/alias: write a KMS-wrapped data key instead "
        "(envelope encryption; the plaintext key never touches disk).",
        "wrap": "With --kms-key-id: wrap this existing key file (kms:Encrypt) instead of asking "
        "KMS for a new data key; data encrypted with it stays readable.",
    }
)
@user_errors
def keygen(c, out, kms_key_id=None, wrap=None):
    """Create a random 256-bit data key for encrypting datasets.

    :param out: path of the new key file; an existing file is never overwritten.
    :param kms_key_id: wrap the key with this KMS key (needs AWS credentials) instead of writing
        it in the clear; unwrapping later needs kms:Decrypt and the network.
    :param wrap: an existing key file to wrap with --kms-key-id (local.keys.wrap_key_with_kms).
    """
    from local import keys
    from local.crypto import key_id

    if wrap and not kms_key_id:
        raise LocalError("--wrap needs --kms-key-id (the KMS key to wrap the key file with)")
    if wrap:
        path = keys.wrap_key_with_kms(Path(wrap), kms_key_id, Path(out))
        print(f"wrote KMS-wrapped copy of {wrap} to {path} (wrapped by {kms_key_id})")
        return
    if kms_key_id:
        path = keys.generate_kms_data_key(kms_key_id, Path(out))
        print(f"wrote KMS-wrapped data key {path} (wrapped by {kms_key_id})")
        return
    path = keys.generate_key_file(Path(out))
    print(f"wrote 256-bit key {path} (mode 0600, key id {key_id(keys.load_key(path)).hex()})")
    print("keep it off shared storage; anyone with this file can read the encrypted data")


@task(
    help={
        "key_file": "Key file from `invoke keygen` (or a KMS-wrapped key file).",
        "src": "Plaintext file to encrypt (JSON Lines for fine-tuning data).",
        "dest": "Encrypted output file (refuses to overwrite unless --force).",
        "force": "Replace an existing --dest.",
    }
)
@user_errors
def encrypt(c, key_file, src, dest, force=False):
    """Encrypt a file with the twostage chunked AES-256-GCM format (docs/encryption-format.md).

    :param key_file: the 256-bit key (mode 0600) or a KMS-wrapped key file.
    :param src: the plaintext file; it is left as it is.
    :param dest: the ciphertext, written to a temporary sibling and renamed when complete.
    :param force: overwrite --dest if it exists.
    """
    from tqdm import tqdm

    from local.crypto import MAGIC
    from local.crypto_files import encrypt_file
    from local.keys import load_key

    src_p, dest_p = Path(src), Path(dest)
    if not src_p.is_file():
        raise LocalError(f"{src_p}: no such file to encrypt")
    if dest_p.exists() and not force:
        raise LocalError(f"{dest_p} already exists; pass --force to replace it")
    with src_p.open("rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            raise LocalError(f"{src_p} is already a twostage encrypted file")
    key = load_key(Path(key_file))
    total = src_p.stat().st_size
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="encrypt",
        file=sys.stderr,
        disable=total < 64 * 1024 * 1024 or not sys.stderr.isatty(),
    ) as bar:
        encrypt_file(src_p, dest_p, key, on_progress=bar.update)
    print(f"encrypted {src_p} ({_size(total)}) -> {dest_p} ({_size(dest_p.stat().st_size)})")


@task(
    help={
        "key_file": "Current key file of --src (or a KMS-wrapped key file).",
        "new_key_file": "Key to re-encrypt under (from `invoke keygen`).",
        "src": "Encrypted dataset to rotate.",
        "dest": "New encrypted file (refuses to overwrite unless --force).",
        "force": "Replace an existing --dest.",
        "chunk_size": "Plaintext bytes per chunk of --dest (default: keep the source's).",
    }
)
@user_errors
def rekey(c, key_file, new_key_file, src, dest, force=False, chunk_size=None):
    """Re-encrypt a dataset under a new key (key rotation); plaintext stays in memory.

    The whole source is authenticated on the way; --dest appears only when it is complete.

    :param key_file: the key --src is encrypted with.
    :param new_key_file: the key the new file will need.
    :param src: the encrypted dataset (left as it is).
    :param dest: the re-encrypted file.
    :param force: overwrite --dest if it exists.
    :param chunk_size: chunk size of the new file in bytes; by default the source's is kept.
    """
    from local.crypto import key_id
    from local.crypto_files import reencrypt_file
    from local.keys import load_key

    dest_p = Path(dest)
    if dest_p.exists() and not force:
        raise LocalError(f"{dest_p} already exists; pass --force to replace it")
    try:
        chunk = int(chunk_size) if chunk_size is not None else None
    except ValueError:
        raise LocalError(
            f"--chunk-size must be a whole number of bytes, got {chunk_size!r}"
        ) from None
    new_key = load_key(Path(new_key_file))
    size = reencrypt_file(Path(src), dest_p, load_key(Path(key_file)), new_key, chunk_size=chunk)
    print(f"re-encrypted {src} -> {dest} ({_size(size)}, key id {key_id(new_key).hex()})")


@task(
    name="inspect-data",
    help={
        "key_file": "Key file from `invoke keygen` (or a KMS-wrapped key file).",
        "src": "Encrypted dataset to check.",
    },
)
@user_errors
def inspect_data(c, key_file, src):
    """Authenticate a whole encrypted dataset and print record count and sizes (never contents).

    Exits non-zero with a one-line reason on a wrong key, any tampering or truncation, or a
    record that is not valid JSON Lines (``text`` or ``prompt``/``response``).

    :param key_file: the 256-bit key (mode 0600) or a KMS-wrapped key file.
    :param src: the encrypted dataset.
    """
    from local.dataset import inspect
    from local.keys import load_key

    info = inspect(Path(src), load_key(Path(key_file)))
    print(
        f"{src}: authentic ({info.chunks} chunks of {_size(info.chunk_size)}, key id {info.key_id})"
    )
    print(f"records: {info.records} ({info.kind})")
    print(f"plaintext: {_size(info.plaintext_bytes)} ({info.plaintext_bytes} bytes)")
    print(f"ciphertext: {_size(info.ciphertext_bytes)} ({info.ciphertext_bytes} bytes)")


TASKS = [keygen, encrypt, rekey, inspect_data]
