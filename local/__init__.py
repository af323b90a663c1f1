"""Stage 2, local fine-tuning: verified model, encrypted data, air gap, QLoRA, export.

Kept import-light on purpose: ``invoke --list`` imports the cli modules, so nothing heavy
(torch, transformers, boto3) may be imported here.

Modules (a run goes cli → finetune → checks → tokens → model/training → audit → release):

- ``cli``: the ``finetune`` and ``export-held`` tasks (thin: flags in, summary out).
- ``use_cli``: the ``generate``, ``evaluate`` and ``export-gguf`` tasks.
- ``crypto_cli``: the ``keygen``, ``encrypt``, ``rekey``, ``inspect-data`` tasks.
- ``config``: the fine-tune recipe, a frozen dataclass loaded from TOML.
- ``job``: a run's typed inputs (``Job``) and its ``FinetuneResult``, as JSON for the pipe.
- ``finetune``: ``run_finetune`` — argument checks, key, isolation — and the run's steps in order.
- ``checks``: steps 2–3, everything checked before anything heavy is loaded.
- ``preflight``: will the run fit this device (memory estimate, device, position limit)?
- ``shape``: a model's shape from ``config.json`` on the meta device; LoRA target mapping.
- ``tokens``: step 4, the encrypted dataset decrypted into token ids, split train/held-out.
- ``records``: records → token ids and labels (loss masks, chat template, truncation).
- ``dataset``: records from an encrypted JSON Lines file, decrypted in memory only.
- ``model``: compute dtype and the 4-bit NF4 base with LoRA.
- ``batching``: padded or packed batches.
- ``training``: the training loop (masked loss, eval, early stop, encrypted checkpoints).
- ``checkpoint``: encrypted, resumable checkpoints, never plaintext on disk.
- ``audit``: the privacy audit (how much of the training data the adapter reproduces).
- ``exposure``: what must not leave the box, known before training.
- ``scan``: the forbidden items and a precise search for them in an export.
- ``release``: step 7, the export's metadata, then export or hold.
- ``export``: only what may leave, checked, with a manifest, published by one rename.
- ``held``: a refused export kept encrypted with the dataset key.
- ``inference``: base (4-bit, as trained) + adapter, or a merged model, loaded to run.
- ``generate``: prompts rendered as in training, streamed, seeded (``invoke generate``).
- ``evaluate``: held-out loss/perplexity, base vs adapter, the fine-tune's masking.
- ``gguf_export``: GGUF tensors, metadata and tokenizer via the ``gguf`` library; Modelfile.
- ``gguf_release``: ``invoke export-gguf``: merge, write, read back, scan, manifest, publish.
- ``offline``: runs ``generate``/``evaluate`` air-gapped (namespace child + guard).
- ``airgap``: the HF offline switches and the in-process network guard (``airgapped()``).
- ``airgap_socket``: what counts as loopback, and the ``socket`` replacements the guard installs.
- ``airgap_record``: a blocked attempt — ``AirgapViolation``, the code that tried, the record.
- ``sandbox``: the bubblewrap sandbox — what the isolated child may see (mounts, environment),
  fail-closed availability, no core dumps, swap state.
- ``netns``: runs a ``module:function`` target in the sandbox (job over stdin, key as raw bytes).
- ``isolated``: a fine-tune's steps 2–7 in the sandbox; the parent holds and publishes the export.
- ``staging``: the export's staging folder — held with ``flock``, swept after a killed run.
- ``crypto``: the encrypted-stream format (chunked AES-256-GCM, STREAM).
- ``crypto_files``: whole encrypted files: atomic writes, re-keying, the framing check before a run.
- ``keys``: local key files and optional AWS KMS envelope encryption.
- ``errors``: ``LocalError``, the package's user-facing error.
"""
