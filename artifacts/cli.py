"""Artifact tasks: signing keys, publish, verified download, offline verify."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from artifacts.cli_support import user_errors


@task(help={"out": "Path of the new private key (mode 0600); the public key goes to OUT.pub"})
@user_errors
def signing_keygen(c, out):
    """Create an Ed25519 key pair for signing published manifests (refuses to overwrite).

    :param out: path of the private key (mode 0600); the public key is written to OUT.pub.
    """
    from artifacts.signing import generate_keypair

    priv, pub = generate_keypair(Path(out))
    print(
        f"private key: {priv} (mode 0600, keep it secret)\npublic key:  {pub} (copy this to the machines that download)"
    )


@task(
    help={
        "src": "Local folder to publish",
        "dest": "Destination URI: s3://bucket/prefix, file:///path or a local path",
        "signing_key": "Ed25519 private key (from `invoke signing-keygen`) to sign the manifest",
        "overwrite": "Replace an artifact already committed at DEST",
    }
)
@user_errors
def publish(c, src, dest, signing_key=None, overwrite=False):
    """Upload a folder as a committed artifact: every file, then MANIFEST.json (and its signature) last.

    :param src: the local folder to publish.
    :param dest: s3://bucket/prefix, file:///path or a local path.
    :param signing_key: Ed25519 private key; the signature goes to MANIFEST.json.sig.
    :param overwrite: replace an artifact already committed at DEST (its manifest goes first).
    """
    from artifacts.publish import publish_dir

    m = publish_dir(
        Path(src),
        dest,
        signing_key=Path(signing_key) if signing_key else None,
        progress=True,
        overwrite=overwrite,
    )
    print(
        f"published {len(m.files)} files ({m.total_bytes / 1e6:.1f} MB) to {dest}{' (signed)' if signing_key else ''}"
    )


@task(
    help={
        "src": "URI of a committed artifact (s3://bucket/prefix, file:///path or a local path)",
        "dest": "Local folder to create (left untouched if anything fails)",
        "public_key": "Ed25519 public key (.pub): require and check the manifest signature",
        "force": "Replace a non-empty DEST, only after the new copy has been verified",
    }
)
@user_errors
def download(c, src, dest, public_key=None, force=False):
    """Download an artifact and verify every file's size and SHA-256 (and signature) before it lands in DEST.

    :param src: URI of a committed artifact (its MANIFEST.json must exist).
    :param dest: folder to create; on any failure it is left exactly as it was.
    :param public_key: Ed25519 public key; a missing or bad signature is then an error.
    :param force: replace a non-empty DEST, only once the new copy has been verified.
    """
    from artifacts.download import download_verified

    m = download_verified(
        src,
        Path(dest),
        public_key=Path(public_key) if public_key else None,
        force=force,
        progress=True,
    )
    print(
        f"verified {len(m.files)} files ({m.total_bytes / 1e6:.1f} MB) into {dest}{' (signature ok)' if public_key else ''}"
    )


@task(
    help={
        "dir": "A downloaded artifact folder (holds MANIFEST.json)",
        "public_key": "Ed25519 public key (.pub): also check the signature",
    }
)
@user_errors
def verify(c, dir, public_key=None):
    """Re-verify a downloaded folder offline against its manifest (and signature).

    :param dir: a folder made by `invoke download` (holds MANIFEST.json).
    :param public_key: Ed25519 public key; also check MANIFEST.json.sig.
    """
    from artifacts.verify import verify_dir

    m = verify_dir(Path(dir), public_key=Path(public_key) if public_key else None)
    print(
        f"ok: {len(m.files)} files ({m.total_bytes / 1e6:.1f} MB) match {dir}/MANIFEST.json{' (signature ok)' if public_key else ''}"
    )


@task(
    help={
        "run": "The run's URI (s3://bucket/runs/NAME or a local folder); its final/ is signed",
        "signing_key": "Ed25519 private key (from `invoke signing-keygen`), kept on this machine",
        "overwrite": "Replace a signature already there",
    }
)
@user_errors
def sign(c, run, signing_key, overwrite=False):
    """Sign a finished run's published model on this machine (the key never goes to the cloud).

    Checks that <run>/final/MANIFEST.json is committed and that the stored files are exactly its
    listing (names and sizes), prints what you are vouching for, then writes
    final/MANIFEST.json.sig (`ed25519 <base64>`). Stage 2 checks it with
    `invoke download --public-key KEY.pub`.

    :param run: the run URI; its final/ folder is signed.
    :param signing_key: Ed25519 private key from `invoke signing-keygen`.
    :param overwrite: replace an existing signature (one made with another key).
    """
    from artifacts.attest import sign_run

    m = sign_run(run, Path(signing_key), overwrite=overwrite)
    meta = ", ".join(
        f"{k} {m.metadata[k]}" for k in ("global_step", "val_loss", "converged") if k in m.metadata
    )
    print(
        f"signed {run.rstrip('/')}/final/MANIFEST.json: {len(m.files)} files "
        f"({m.total_bytes / 1e6:.1f} MB){'; ' + meta if meta else ''}"
    )


TASKS = [signing_keygen, publish, sign, download, verify]
