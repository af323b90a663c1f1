"""End of a run: the published ``final/`` model.

``final/`` is a normal HF folder (safetensors, config, tokenizer) plus ``training_summary.json``
and ``loss_history.json``, committed with a manifest (signed when the recipe names a key).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from artifacts.run import Run

log = logging.getLogger(__name__)


def publish_final(
    trainer: Any,
    tokenizer: Any,
    *,
    run: Run,
    out_dir: Path,
    summary: dict[str, Any],
    signing_key: Path | None,
    is_main: bool,
    outage_window: float = 900.0,
) -> str | None:
    """Every rank: gather the 16-bit weights and save; rank 0: write summary, publish ``final/``.

    Returns the published URI on rank 0 (None elsewhere). A ``final/`` committed by an earlier
    attempt of the same run is replaced (its manifest goes first, so no reader sees a mix).
    """
    import shutil

    if is_main and out_dir.exists():
        shutil.rmtree(out_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(out_dir))  # collective under ZeRO-3: gathers 16-bit weights
    if not is_main:
        return None
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "loss_history.json").write_text(
        json.dumps(summary.get("loss_history", {}), indent=2) + "\n"
    )
    # Trainer.save_model also writes training_args.bin (a pickle): not part of a model release.
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    from artifacts.publish import publish_dir

    dest = run.final_uri
    started = time.monotonic()
    metadata = {
        k: summary[k]
        for k in ("global_step", "epoch", "best_val_loss", "converged", "state")
        if k in summary
    }
    metadata["config"] = summary.get("config", {})
    from trainer.checkpoint.outage import retry_through_outage

    retry_through_outage(
        lambda: publish_dir(
            out_dir, dest, metadata=metadata, signing_key=signing_key, overwrite=True
        ),
        what="publish final/",
        window=outage_window,
    )
    log.info("published the final model to %s in %.1fs", dest, time.monotonic() - started)
    return dest
