"""What a person watching a days-long run plots: TensorBoard event files and sample generations.

Global rank 0 writes event files (``tensorboardX``: the event-file writer alone, protobuf and
numpy, no TensorFlow or TensorBoard server) into the scratch folder — train loss, learning rate,
grad norm, val loss, tokens/s, an MFU estimate where the device's peak is known, each
checkpoint's save / upload / submit→commit seconds, interruptions, world size, launches — and a
background thread commits them to ``<run>/logs/tensorboard/`` every ``[eval] tensorboard_sync_s``
and at the end (never on the training path, like ``STATUS.json``). ``invoke tensorboard --run
URI`` fetches them (``trainer.launch.tensorboard``).

Sample generations (``[eval] sample_prompts``): at each evaluation every rank calls
``generate`` (greedy; ``synced_gpus`` under ZeRO-3 so each forward gathers the sharded weights
on all ranks together); rank 0 writes the texts to the log, TensorBoard (text) and the status's
``latest_sample``. Only at evaluations, so training steps pay nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from artifacts.run import Run

log = logging.getLogger(__name__)

#: Dense bf16/fp16 peak FLOP/s per device where known (vendor data sheets), for the MFU estimate.
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(device_name: str) -> float | None:
    """The peak of a device named like ``NVIDIA A100-SXM4-40GB``; None when unknown (CPU)."""
    for key, value in PEAK_FLOPS.items():
        if key in device_name:
            return value
    return None


def mfu(n_params: int, tokens_per_s: float, world: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: 6 N FLOPs per token (forward + backward) over the peak (pure)."""
    if not peak or world < 1:
        return None
    return 6.0 * n_params * tokens_per_s / (peak * world)


class EventSync:
    """Commits the local event files to the run's store in the background (changed ones only)."""

    def __init__(self, local_dir: Path, store: Any, interval: float) -> None:
        self.local_dir, self.store, self.interval = local_dir, store, interval
        self.sizes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tensorboard-sync", daemon=True)
        self._thread.start()

    def sync(self) -> int:
        """Upload every event file that grew since the last sync; how many were uploaded."""
        n = 0
        for path in sorted(p for p in self.local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local_dir).as_posix()
            size = path.stat().st_size
            if self.sizes.get(rel) != size:
                self.store.upload_file(path, f"{Run.TENSORBOARD}/{rel}")
                self.sizes[rel] = size
                n += 1
        return n

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception as err:  # noqa: BLE001 - metrics must never stop training; next round retries
                log.warning("tensorboard: commit of the event files failed (%s); retrying later", err)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        try:
            self.sync()
        except Exception as err:  # noqa: BLE001 - the run's result does not depend on its plots
            log.warning("tensorboard: final commit of the event files failed: %s", err)


class MetricsCallback(TrainerCallback):
    """Event files and sample generations (see the module doc); all ranks join ``generate``."""

    def __init__(
        self, *, local_dir: Path | None, store: Any, eval_cfg: Any, tokenizer: Any,
        tokens_per_step: int, n_params: int, report: Any = None, launches: int = 1,
    ) -> None:  # fmt: skip
        self.local_dir, self.store, self.cfg, self.tokenizer = local_dir, store, eval_cfg, tokenizer
        self.tokens_per_step, self.n_params = tokens_per_step, n_params
        self.report, self.launches = report, launches
        self.writer: Any = None
        self.sync: EventSync | None = None
        self.peak: float | None = None
        self._last: float | None = None
        self.tokens_per_s: float | None = None
        self.written_checkpoints: set[int] = set()
        self.sample_seconds: list[float] = []
        self.latest_sample: dict[str, Any] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if state.is_world_process_zero and self.local_dir is not None and self.cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self.local_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(logdir=str(self.local_dir), flush_secs=30)
            self.writer.add_scalar("run/world_size", args.world_size, state.global_step)
            self.writer.add_scalar("run/launches", self.launches, state.global_step)
            if self.store is not None:
                self.sync = EventSync(self.local_dir, self.store, self.cfg.tensorboard_sync_s)
            import torch

            if torch.cuda.is_available():
                self.peak = peak_flops(torch.cuda.get_device_name(0))
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        now = time.perf_counter()
        if self._last is not None:
            self.tokens_per_s = self.tokens_per_step / (now - self._last)
        self._last = now
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> Any:
        if self.writer is None:
            return control
        step = state.global_step
        names = {"loss": "train/loss", "learning_rate": "train/learning_rate",
                 "grad_norm": "train/grad_norm", "eval_loss": "eval/loss"}  # fmt: skip
        for key, tag in names.items():
            if key in (logs or {}):
                self.writer.add_scalar(tag, float(logs[key]), step)
        if self.tokens_per_s is not None:
            self.writer.add_scalar("perf/tokens_per_s", self.tokens_per_s, step)
            util = mfu(self.n_params, self.tokens_per_s, args.world_size, self.peak)
            if util is not None:
                self.writer.add_scalar("perf/mfu", util, step)
        self._checkpoint_scalars()
        return control

    def _checkpoint_scalars(self) -> None:
        if self.report is None:
            return
        for entry in self.report.checkpoints():
            step = entry["step"]
            if step in self.written_checkpoints or entry.get("committed_at") is None:
                continue
            for key in ("save_s", "upload_s", "submit_to_commit_s"):
                if entry.get(key) is not None:
                    self.writer.add_scalar(f"checkpoint/{key}", entry[key], step)
            self.written_checkpoints.add(step)
        self.writer.add_scalar("run/interruptions", len(self.report.interruptions), max(self.written_checkpoints, default=0))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self._last = None  # the evaluation is not a training step
        model = kw.get("model")
        if not self.cfg.sample_prompts or model is None:
            return control
        started = time.perf_counter()
        texts = generate_samples(model, self.tokenizer, self.cfg.sample_prompts,
                                 self.cfg.sample_max_new_tokens, synced=args.world_size > 1)  # fmt: skip
        seconds = time.perf_counter() - started
        if not state.is_world_process_zero:
            return control
        self.sample_seconds.append(seconds)
        self.latest_sample = {"step": state.global_step, "prompt": self.cfg.sample_prompts[0],
                              "text": texts[0], "seconds": round(seconds, 3)}  # fmt: skip
        for prompt, text in zip(self.cfg.sample_prompts, texts, strict=True):
            log.info("sample at step %d: %r -> %r", state.global_step, prompt, text)
        if self.writer is not None:
            body = "\n\n".join(f"**{p}** → {t}" for p, t in zip(self.cfg.sample_prompts, texts, strict=True))
            self.writer.add_text("samples", body, state.global_step)
            self.writer.add_scalar("eval/sample_s", seconds, state.global_step)
        return control

    def status_fields(self) -> dict[str, Any]:
        """Merged into every status write (``invoke status`` shows the newest sample)."""
        return {"latest_sample": self.latest_sample} if self.latest_sample else {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.sync is not None:
            self.sync.close()


def generate_samples(model: Any, tokenizer: Any, prompts: tuple[str, ...], max_new: int, synced: bool) -> list[str]:
    """Greedy continuations of ``prompts`` (every rank calls it; ``synced`` for ZeRO-3)."""
    import torch

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = []
    try:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                    do_sample=False, synced_gpus=synced, pad_token_id=tokenizer.eos_token_id,
                )  # fmt: skip
            texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    finally:
        model.train(was)
    return texts
