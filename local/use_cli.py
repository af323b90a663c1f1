"""Tasks that use what a fine-tune made: ``generate``, ``evaluate``, ``export-gguf``.

Thin: parse flags, check paths, call the library (``local.generate``, ``local.evaluate``,
``local.gguf_release``). ``generate`` and ``evaluate`` run air-gapped by default, like
``finetune --airgapped`` (``local.offline``): the prompts and the evaluation data may be private.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from invoke import task

from artifacts.cli_support import user_errors
from local.errors import LocalError


def _number(value: object, flag: str, kind: type) -> object:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise LocalError(f"--{flag} must be a {'whole' if kind is int else 'decimal'} number, got {value!r}") from None


def _key(key_file: str | None) -> str | None:
    """The key, loaded here (a KMS-wrapped key needs the network) and sent over the pipe."""
    if key_file is None:
        return None
    from local.keys import load_key

    return load_key(Path(key_file)).hex()


@task(
    help={
        "model": "Model folder: a base from `invoke download`, or a merged export (OUT/merged).",
        "adapter": "Adapter export from `invoke finetune`: runs on the base loaded in 4-bit, as trained.",
        "prompt": "One prompt.",
        "prompts": "File of prompts: one per line, or JSON Lines {\"prompt\"}/{\"messages\"}; "
        "encrypted (`invoke encrypt`) with --key-file.",
        "chat": "Talk on the terminal (chat template; an empty line ends it).",
        "max_new_tokens": "Tokens to generate per prompt (default 128).",
        "temperature": "0 = greedy (default); above 0 samples, seeded by --seed.",
        "seed": "Sampling seed (same seed, same text).",
        "key_file": "Key of an encrypted --prompts file (decrypted in memory, in the sandbox).",
        "airgapped": "Cut the network off (default; --no-airgapped to run without the sandbox).",
    }
)
@user_errors
def generate(
    c, model, adapter=None, prompt=None, prompts=None, chat=False, max_new_tokens=None,
    temperature=None, seed=None, key_file=None, airgapped=True,
):  # fmt: skip
    """Generate from a model or base + adapter; tokens stream to the terminal.

    :param model: model folder (base or merged).
    :param adapter: adapter export to put on the 4-bit base.
    :param prompt: a single prompt.
    :param prompts: a prompts file (plain or encrypted).
    :param chat: interactive conversation.
    :param max_new_tokens: tokens per answer.
    :param temperature: 0 for greedy decoding.
    :param seed: sampling seed.
    :param key_file: key for an encrypted --prompts file.
    :param airgapped: run in the network sandbox (default on).
    """
    from artifacts.logs import init_logging
    from local import offline
    from local.generate import TARGET, Settings
    from local.inference import check_paths

    init_logging()
    if sum(x is not None and x is not False for x in (prompt, prompts, chat)) != 1:
        raise LocalError("give exactly one of --prompt TEXT, --prompts FILE or --chat")
    if key_file is not None and prompts is None:
        raise LocalError("--key-file decrypts a --prompts file; give one")
    if prompts is not None and not Path(prompts).is_file():
        raise LocalError(f"--prompts {prompts}: no such file")
    settings = Settings(
        max_new_tokens=_number(128 if max_new_tokens is None else max_new_tokens, "max-new-tokens", int),
        temperature=_number(0.0 if temperature is None else temperature, "temperature", float),
        seed=_number(0 if seed is None else seed, "seed", int),
    )
    check_paths(Path(model), Path(adapter) if adapter else None)
    request = {
        "model": str(Path(model).resolve()), "adapter": str(Path(adapter).resolve()) if adapter else None,
        "prompts": [prompt] if prompt is not None else [], "settings": settings.__dict__,
        "prompts_file": str(Path(prompts).resolve()) if prompts else None, "key": _key(key_file),
    }  # fmt: skip
    fds: tuple[int, ...] = ()
    if chat:
        request["chat_fd"] = os.dup(sys.stdin.fileno())
        fds = (request["chat_fd"],)
    offline.run(TARGET, request, airgapped=airgapped, pass_fds=fds)


@task(
    help={
        "model": "Base model folder (from `invoke download`).",
        "adapter": "Adapter export to compare with the base (same 4-bit weights).",
        "data": "Encrypted held-out dataset (`invoke encrypt`), decrypted in memory only.",
        "key_file": "The dataset's key file.",
        "config": "Fine-tune recipe TOML the adapter was trained with (record encoding, batch size).",
        "heldout": "Evaluate only the fine-tune's held-out split of --data (its training file).",
        "json": "Also write the table as JSON to this file.",
        "airgapped": "Cut the network off (default; --no-airgapped to run without the sandbox).",
    }
)
@user_errors
def evaluate(
    c, model, data, key_file, adapter=None, config=None, heldout=False, json=None, airgapped=True
):
    """Held-out loss and perplexity, base vs base + adapter, with the fine-tune's masking.

    :param model: base model folder.
    :param data: encrypted dataset of held-out records.
    :param key_file: key for --data.
    :param adapter: adapter export (omit to measure the model alone).
    :param config: the fine-tune recipe (default: built-in values).
    :param heldout: re-draw the fine-tune's held-out split and evaluate only it.
    :param json: path of a JSON report.
    :param airgapped: run in the network sandbox (default on).
    """
    from artifacts.logs import init_logging
    from local import offline
    from local.evaluate import TARGET, Row, table, write_report
    from local.inference import check_paths

    init_logging()
    check_paths(Path(model), Path(adapter) if adapter else None)
    if not Path(data).is_file():
        raise LocalError(f"--data {data}: no such file")
    if json is not None and Path(json).exists():
        raise LocalError(f"--json {json} already exists; choose a new file")
    if config is not None:
        from local.config import load_config

        load_config(Path(config))  # a bad recipe fails here, before the sandbox starts
    request = {
        "model": str(Path(model).resolve()), "adapter": str(Path(adapter).resolve()) if adapter else None,
        "data": str(Path(data).resolve()), "key": _key(key_file),
        "config": str(Path(config).resolve()) if config else None, "heldout_only": heldout,
    }  # fmt: skip
    rows = offline.run(TARGET, request, airgapped=airgapped)["rows"]
    print(table([Row(**r) for r in rows]))
    if json is not None:
        meta = {"model": model, "adapter": adapter, "data": data, "heldout_only": heldout}
        write_report(rows, Path(json), meta)


@task(
    name="export-gguf",
    help={
        "model": "Base model folder (full precision; Llama or GPT-2 family).",
        "adapter": "Adapter export from `invoke finetune`, merged into a full-precision base first.",
        "out": "The GGUF file to write (FILE.gguf; a Modelfile and FILE.gguf.manifest.json go beside it).",
        "dtype": "Weights: f16 (default), bf16 or q8_0.",
        "data": "Encrypted training data: also refuse the export if it carries private n-grams.",
        "key_file": "Key for --data.",
        "verify": "Read the file back with transformers' GGUF loader and compare logits (default on).",
    }
)
@user_errors
def export_gguf(c, model, out, adapter=None, dtype="f16", data=None, key_file=None, verify=True):
    """Export to GGUF (llama.cpp, Ollama) with an Ollama Modelfile, checked by the export scan.

    :param model: base model folder.
    :param out: FILE.gguf to create (never overwritten).
    :param adapter: adapter export to merge first.
    :param dtype: f16, bf16 or q8_0.
    :param data: encrypted dataset for the private-content scan.
    :param key_file: key for --data.
    :param verify: read back with transformers and report the logits difference.
    """
    from artifacts.logs import init_logging
    from local.gguf_release import export_gguf as run

    init_logging()
    info = run(
        Path(model), Path(out), adapter=Path(adapter) if adapter else None, dtype=dtype,
        data=Path(data) if data else None, key_file=Path(key_file) if key_file else None,
        verify=verify,
    )  # fmt: skip
    print(info.summary())


TASKS = [generate, evaluate, export_gguf]
