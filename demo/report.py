"""The demo's end report: a summary table for the terminal, ``summary.json`` and a loss plot (PNG).

Everything here works on the plain ``summary`` dict the pipeline assembles (see
:func:`demo.pipeline.run_demo`), so it is tested with canned histories and no training.
Shape of the parts used here::

    summary["pretrain"] = {"global_step", "epochs", "converged", "converged_epoch",
                           "converged_step", "first_val_loss", "best_val_loss", "final_val_loss",
                           "val_history": [[epoch, loss], ...], "train_history": [[epoch, loss], ...],
                           "checkpoints", "patience", "min_rel_improvement"}
    summary["download"] = {"files", "bytes_verified", "signature_verified"}
    summary["finetune"] = {"steps", "loss_before", "loss_after", "export_bytes", "export_files",
                           "data" (packing, train_on_prompt, …), "privacy_audit", "isolation",
                           "train_history": [[step, loss], ...]}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _num(value: Any, fmt: str = "{:.4f}") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value)


def human_bytes(n: int | None) -> str:
    """``1536 -> '1.5 KiB'`` (binary units, one decimal)."""
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's (label, value) rows, in reading order."""
    pre = summary.get("pretrain", {})
    dl = summary.get("download", {})
    ft = summary.get("finetune", {})
    data = summary.get("private_data", {})
    if pre.get("converged"):
        where = (
            f"epoch {_num(pre.get('converged_epoch'), '{:g}')} (step {pre.get('converged_step')}), after "
            f"{pre.get('patience')} epochs improving < {pre.get('min_rel_improvement', 0) * 100:g}%"
        )
    else:
        where = "not converged (epoch limit reached)"
    return [
        ("pretrain steps", _num(pre.get("global_step"), "{}")),
        ("pretrain epochs", _num(pre.get("epochs"), "{:g}")),
        ("convergence declared", where),
        (
            "val loss first → best → last",
            f"{_num(pre.get('first_val_loss'))} → {_num(pre.get('best_val_loss'))} → "
            f"{_num(pre.get('final_val_loss'))}",
        ),
        ("spot interruption", _interruption(pre.get("interruption"))),
        ("committed checkpoints kept", _num(pre.get("checkpoints"), "{}")),
        ("sample generation (last eval)", _sample(pre.get("latest_sample"))),
        ("TensorBoard event files", _num(pre.get("tensorboard_files"), "{}")),
        (
            "bytes verified (download)",
            f"{human_bytes(dl.get('bytes_verified'))} in {dl.get('files', '—')} files"
            + (", signature ok" if dl.get("signature_verified") else ""),
        ),
        (
            "private dataset",
            f"{data.get('records', '—')} records, {human_bytes(data.get('ciphertext_bytes'))} ciphertext",
        ),
        ("fine-tune steps", _num(ft.get("steps"), "{}")),
        ("fine-tune air gap (isolation)", ft.get("isolation") or "—"),
        (
            "fine-tune eval loss before → after",
            f"{_num(ft.get('loss_before'))} → {_num(ft.get('loss_after'))}",
        ),
        ("fine-tune data", _ft_data(ft.get("data") or {})),
        ("privacy audit (before export)", _audit(ft.get("privacy_audit"))),
        (
            "export size",
            f"{human_bytes(ft.get('export_bytes'))} in {ft.get('export_files', '—')} files",
        ),
        ("evaluate (held-out): base → adapter", _evaluate((summary.get("use") or {}).get("evaluate"))),
        ("GGUF export (read back)", _gguf((summary.get("use") or {}).get("gguf"))),
        ("wall time", _wall(summary)),
    ]


def _sample(sample: dict[str, Any] | None) -> str:
    if not sample:
        return "—"
    text = " ".join(str(sample.get("text", "")).split())[:60]
    return f"{sample.get('prompt', '')!r} → {text!r}"


def _evaluate(rows: dict[str, Any] | None) -> str:
    if not rows or len(rows) < 2:
        return "—"
    (_b, base), (_a, tuned) = list(rows.items())[:2]
    return (
        f"loss {_num(base.get('loss'))} → {_num(tuned.get('loss'))}, perplexity "
        f"{_num(base.get('perplexity'), '{:.2f}')} → {_num(tuned.get('perplexity'), '{:.2f}')}"
    )


def _gguf(info: dict[str, Any] | None) -> str:
    if not info:
        return "—"
    return (
        f"{info.get('dtype')}, {human_bytes(info.get('bytes'))}, max |logit diff| "
        f"{_num(info.get('readback_max_abs_diff'), '{:.3f}')}"
    )


def _ft_data(data: dict[str, Any]) -> str:
    if not data:
        return "—"
    loss = "every token" if data.get("train_on_prompt") else "responses / assistant turns only"
    batches = "packed (per-record positions)" if data.get("packing") else "padded"
    return f"prompt/response + chat, loss on {loss}, {batches} batches"


def _audit(audit: dict[str, Any] | None) -> str:
    if not audit:
        return "—"

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.0f}%"

    return (
        f"{pct(audit.get('train_exposure'))} of training vs {pct(audit.get('heldout_exposure'))} "
        f"of held-out records reproduce {audit.get('verbatim_tokens')} tokens verbatim; "
        f"loss gap {_num(audit.get('loss_gap'))}"
    )


def _interruption(cut: dict[str, Any] | None) -> str:
    if not cut:
        return "none"
    return (
        f"at step {_num(cut.get('at_step'), '{}')} on {cut.get('from_world_size')} ranks → "
        f"resumed on {_num(cut.get('to_world_size'), '{}')} at step "
        f"{_num(cut.get('resumed_at_step'), '{}')}: {_num(cut.get('steps_lost'), '{}')} steps lost"
    )


def _wall(summary: dict[str, Any]) -> str:
    text = _num(summary.get("wall_seconds"), "{:.0f} s")
    stages = summary.get("stage_seconds") or {}
    if "pretrain" in stages and "finetune" in stages:
        text += f" (pretraining {stages['pretrain']:.0f} s, fine-tune {stages['finetune']:.0f} s)"
    return text


def format_table(summary: dict[str, Any]) -> str:
    """A two-column text table with a border, ready to print."""
    rows = summary_rows(summary)
    left = max(len(k) for k, _ in rows)
    right = max(len(v) for _, v in rows)
    rule = f"+-{'-' * left}-+-{'-' * right}-+"
    lines = [rule]
    lines += [f"| {k.ljust(left)} | {v.ljust(right)} |" for k, v in rows]
    lines.append(rule)
    return "\n".join(lines)


def write_summary_json(summary: dict[str, Any], path: Path) -> Path:
    """Machine-readable summary (strict JSON: a NaN would be a bug upstream, so it fails here)."""
    path = Path(path)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def plot_losses(summary: dict[str, Any], path: Path) -> Path:
    """PNG: pretraining train/val loss per epoch with the convergence point marked; fine-tune loss.

    The Agg backend is selected explicitly: no display is needed (or wanted) on a server.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    pre = summary.get("pretrain", {})
    ft = summary.get("finetune", {})
    fig = Figure(figsize=(11, 4.2), dpi=110)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})

    train = pre.get("train_history") or []
    val = pre.get("val_history") or []
    if train:
        ax1.plot(*zip(*train, strict=True), color="tab:blue", alpha=0.6, lw=1, label="train loss")
    if val:
        ax1.plot(
            *zip(*val, strict=True), "o-", color="tab:orange", ms=4, label="val loss (per epoch)"
        )
        best_epoch, best = min(val, key=lambda p: p[1])
        ax1.plot([best_epoch], [best], "*", color="tab:green", ms=14, label=f"best val {best:.3f}")
    if pre.get("converged") and pre.get("converged_epoch") is not None:
        ax1.axvline(
            pre["converged_epoch"],
            color="tab:red",
            ls="--",
            label=f"converged: epoch {pre['converged_epoch']:g} (step {pre.get('converged_step')})",
        )
    cut = pre.get("interruption")
    title = "Stage 1: pretraining (ZeRO-3, 2 CPU ranks)"
    if cut and cut.get("at_epoch") is not None:
        ax1.axvline(
            cut["at_epoch"],
            color="tab:brown",
            ls=":",
            lw=2,
            label=(
                f"spot interruption at step {cut.get('at_step')}: "
                f"{cut.get('from_world_size')} → {cut.get('to_world_size')} rank(s), "
                f"{cut.get('steps_lost')} steps lost"
            ),
        )
        ax1.axvspan(cut["at_epoch"], ax1.get_xlim()[1], color="tab:brown", alpha=0.07)
        title = (
            f"Stage 1: pretraining (ZeRO-3, {cut.get('from_world_size')} → "
            f"{cut.get('to_world_size')} CPU rank(s))"
        )
    ax1.set(xlabel="epoch", ylabel="loss", title=title)
    ax1.grid(alpha=0.3)
    if train or val:
        ax1.legend(fontsize=8)

    history = ft.get("train_history") or []
    if history:
        ax2.plot(*zip(*history, strict=True), "o-", color="tab:purple", ms=3, label="train loss")
    steps = ft.get("steps")
    if ft.get("loss_before") is not None and ft.get("loss_after") is not None and steps:
        ax2.plot(
            [0, steps],
            [ft["loss_before"], ft["loss_after"]],
            "s--",
            color="tab:gray",
            label=f"eval loss {ft['loss_before']:.3f} → {ft['loss_after']:.3f}",
        )
    ax2.set(xlabel="step", ylabel="loss", title="Stage 2: air-gapped QLoRA fine-tune")
    ax2.grid(alpha=0.3)
    if history or steps:
        ax2.legend(fontsize=8)

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
