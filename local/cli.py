"""Task ``finetune``: air-gapped QLoRA fine-tune of a verified model on an encrypted dataset.

Thin: parse flags, call :func:`local.finetune.run_finetune`, print the summary. Nothing heavy is
imported here, so ``invoke --list`` stays instant and ``--airgapped`` can set the offline switches
before transformers is imported.
"""

from __future__ import annotations

from pathlib import Path

from invoke import task

from artifacts.cli_support import LetterShortFlags, user_errors
from local.errors import LocalError


@task(
    klass=LetterShortFlags,
    help={
        "model": "Model folder from `invoke download` (HF causal LM + MANIFEST.json).",
        "data": 'Encrypted JSON Lines dataset (`invoke encrypt`) of `{"text"}`, '
        '`{"prompt", "response"}` or `{"messages": [{"role", "content"}, ...]}` records; '
        "decrypted in memory only.",
        "key_file": "The dataset's 256-bit key file (or KMS-wrapped key, unwrapped before going offline).",
        "out": "New folder for the export (adapter, tokenizer, manifest); must not exist.",
        "airgapped": "Run in the bubblewrap sandbox: no network, no host socket, no file outside "
        "the export, no secret in the environment; refuses if the sandbox cannot be built.",
        "config": "Fine-tune recipe TOML (default: the built-in values of configs/finetune-qlora.toml).",
        "verify": "Re-verify the model folder against its manifest before loading (--no-verify skips).",
        "merge": "Also export a merged full-precision model (safetensors) under OUT/merged/.",
        "max_steps": "Override the config's max_steps.",
        "public_key": "Ed25519 public key: also require a valid MANIFEST.json.sig on the model.",
        "airgap_guard_only": "With --airgapped: accept the weaker in-process network guard "
        "(no sandbox); recorded as isolation guard-only in the export manifest.",
        "airgap_strict": "Kept for old commands: --airgapped now always refuses without the "
        "sandbox, so this changes nothing.",
        "resume": "Continue an interrupted run for this --out from its last encrypted checkpoint.",
        "max_exposure": "Refuse the export (kept encrypted) when the privacy audit's train "
        "exposure exceeds this fraction, e.g. 0.05.",
    }
)
@user_errors
def finetune(
    c,
    model,
    data,
    key_file,
    out,
    airgapped=False,
    config=None,
    verify=True,
    merge=False,
    max_steps=None,
    public_key=None,
    airgap_strict=False,
    resume=False,
    max_exposure=None,
    airgap_guard_only=False,
):
    """QLoRA fine-tune (4-bit NF4 base + LoRA) on an encrypted dataset; export only the adapter.

    :param model: verified model folder; re-hashed against MANIFEST.json unless --no-verify.
    :param data: encrypted dataset (`{"text": ...}`, `{"prompt": ..., "response": ...}` or
        `{"messages": [{"role": ..., "content": ...}, ...]}` lines).
    :param key_file: key for --data.
    :param out: export folder, written via a temporary sibling and one rename.
    :param airgapped: run in the sandbox (docs/airgap.md); any network attempt aborts the run.
    :param config: TOML recipe, e.g. configs/finetune-tiny.toml for a CPU demo.
    :param verify: check the model against its manifest first (default on).
    :param merge: also write a merged model under OUT/merged/.
    :param max_steps: optimizer steps (overrides the config).
    :param public_key: require the model's manifest to be signed by this key.
    :param airgap_strict: no effect any more (failing closed is the default).
    :param airgap_guard_only: with --airgapped, run without the sandbox (guard only).
    :param resume: continue from the newest checkpoint in the work area beside --out.
    :param max_exposure: refuse the export above this privacy-audit exposure (0..1).
    """
    from artifacts.logs import init_logging
    from local.config import load_config
    from local.finetune import run_finetune

    init_logging()
    try:
        steps = int(max_steps) if max_steps is not None else None
    except ValueError:
        raise LocalError(f"--max-steps must be a whole number, got {max_steps!r}") from None
    try:
        exposure = float(max_exposure) if max_exposure is not None else None
    except ValueError:
        raise LocalError(
            f"--max-exposure must be a number in [0, 1], got {max_exposure!r}"
        ) from None
    cfg = load_config(Path(config) if config else None)
    result = run_finetune(
        Path(model),
        Path(data),
        Path(key_file),
        Path(out),
        config=cfg,
        airgapped=airgapped,
        verify=verify,
        merge=merge,
        max_steps=steps,
        public_key=Path(public_key) if public_key else None,
        airgap_guard_only=airgap_guard_only,
        resume=resume,
        max_exposure=exposure,
    )
    print(result.summary())


@task(
    name="export-held",
    help={
        "held": "The encrypted held export a refused `invoke finetune` named.",
        "key_file": "The dataset's key file (the held export is encrypted with it).",
        "out": "New folder for the export; must not exist.",
        "accept": "Export it as it is, recording the accepted findings in the manifest.",
    },
)
@user_errors
def export_held(c, held, key_file, out, accept=False):
    """Review or export an adapter whose export was refused (kept encrypted, not lost).

    :param held: path printed by the refused run (.<out>.work/held-export.tar.enc).
    :param key_file: the dataset key.
    :param out: export folder, written via a temporary sibling and one rename.
    :param accept: without it, print what the scan found and change nothing.
    """
    from artifacts.logs import init_logging
    from local.held import export_held as run
    from local.keys import load_key

    init_logging()
    info = run(Path(held), load_key(Path(key_file)), Path(out), accept=accept)
    print(f"exported {info.files} files ({info.bytes / 1e6:.2f} MB) to {info.path}")


TASKS = [finetune, export_held]
