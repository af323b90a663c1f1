"""The demo's end report from canned histories: table rows, strict summary JSON, a real PNG."""

from __future__ import annotations

import json
import math
import struct

import pytest

from demo import report


def canned_summary() -> dict:
    val = [[1.0, 4.2], [2.0, 3.1], [3.0, 2.9], [4.0, 2.895], [5.0, 2.894], [6.0, 2.9]]
    train = [[e / 4, 5.5 - e * 0.1] for e in range(1, 25)]
    return {
        "pretrain": {
            "global_step": 240,
            "epochs": 6.0,
            "converged": True,
            "converged_epoch": 6.0,
            "converged_step": 240,
            "patience": 3,
            "min_rel_improvement": 0.005,
            "first_val_loss": 4.2,
            "best_val_loss": 2.894,
            "final_val_loss": 2.9,
            "val_history": val,
            "train_history": train,
            "checkpoints": 2,
        },
        "download": {"files": 9, "bytes_verified": 1_572_864, "signature_verified": True},
        "private_data": {"records": 160, "ciphertext_bytes": 20_480},
        "finetune": {
            "steps": 12,
            "loss_before": 6.1,
            "loss_after": 4.3,
            "export_bytes": 3 * 1024 * 1024,
            "export_files": 5,
            "train_history": [[4, 6.0], [8, 5.0], [12, 4.4]],
            "data": {"packing": True, "train_on_prompt": False},
            "privacy_audit": {
                "train_exposure": 0.125,
                "heldout_exposure": 0.0,
                "verbatim_tokens": 4,
                "loss_gap": 0.21,
            },
        },
        "wall_seconds": 181.4,
        "stage_seconds": {"setup": 0.1, "pretrain": 150.2, "download": 0.3, "finetune": 27.6},
    }


def test_table_shows_the_fine_tune_data_forms_and_the_privacy_audit():
    rows = dict(report.summary_rows(canned_summary()))
    assert rows["fine-tune data"] == (
        "prompt/response + chat, loss on responses / assistant turns only, "
        "packed (per-record positions) batches"
    )
    assert rows["privacy audit (before export)"] == (
        "12% of training vs 0% of held-out records reproduce 4 tokens verbatim; loss gap 0.2100"
    )


def test_table_shows_every_number_a_user_reads():
    table = report.format_table(canned_summary())
    lines = table.splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) <= {"+", "-"}
    assert len({len(line) for line in lines}) == 1, "ragged table"
    rows = dict(report.summary_rows(canned_summary()))
    assert rows["pretrain steps"] == "240"
    assert rows["pretrain epochs"] == "6"
    assert rows["convergence declared"].startswith("epoch 6 (step 240)")
    assert "3 epochs improving < 0.5%" in rows["convergence declared"]
    assert rows["val loss first → best → last"] == "4.2000 → 2.8940 → 2.9000"
    assert rows["committed checkpoints kept"] == "2"
    assert rows["bytes verified (download)"] == "1.5 MiB in 9 files, signature ok"
    assert rows["fine-tune eval loss before → after"] == "6.1000 → 4.3000"
    assert rows["export size"] == "3.0 MiB in 5 files"
    assert rows["wall time"] == "181 s (pretraining 150 s, fine-tune 28 s)"


def test_table_says_when_the_epoch_limit_stopped_the_run():
    s = canned_summary()
    s["pretrain"]["converged"] = False
    assert (
        dict(report.summary_rows(s))["convergence declared"]
        == "not converged (epoch limit reached)"
    )


def test_missing_values_show_a_dash_not_a_crash():
    rows = dict(report.summary_rows({"pretrain": {"converged": False}}))
    assert rows["pretrain steps"] == "—"
    assert rows["fine-tune eval loss before → after"] == "— → —"


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB")]
)
def test_human_bytes(n, text):
    assert report.human_bytes(n) == text


def test_summary_json_is_strict(tmp_path):
    path = report.write_summary_json(canned_summary(), tmp_path / "summary.json")
    assert json.loads(path.read_text())["pretrain"]["converged_step"] == 240
    bad = canned_summary()
    bad["finetune"]["loss_after"] = math.nan
    with pytest.raises(ValueError):
        report.write_summary_json(bad, tmp_path / "bad.json")


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_of_sensible_size(tmp_path):
    path = report.plot_losses(canned_summary(), tmp_path / "loss.png")
    width, height = png_size(path)
    assert 800 <= width <= 2000 and 300 <= height <= 1000
    assert (
        path.stat().st_size > 20_000
    )  # two panels with lines, markers and legends, not a blank canvas


def test_plot_marks_convergence_and_both_stages(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    report.plot_losses(canned_summary(), tmp_path / "loss.png")
    (fig,) = saved
    pre, ft = fig.axes
    labels = [line.get_label() for line in pre.get_lines()]
    assert "train loss" in labels and "val loss (per epoch)" in labels
    assert any(lbl.startswith("converged: epoch 6 (step 240)") for lbl in labels)
    (vline,) = [ln for ln in pre.get_lines() if ln.get_label().startswith("converged")]
    assert list(vline.get_xdata()) == [6.0, 6.0]
    (best,) = [ln for ln in pre.get_lines() if ln.get_label().startswith("best val")]
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (5.0, 2.894)
    ft_labels = [line.get_label() for line in ft.get_lines()]
    assert "train loss" in ft_labels and any(
        lbl.startswith("eval loss 6.100 → 4.300") for lbl in ft_labels
    )


def test_plot_without_fine_tune_history_still_shows_eval_before_after(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    s = canned_summary()
    s["finetune"]["train_history"] = []
    report.plot_losses(s, tmp_path / "loss.png")
    (line,) = saved[0].axes[1].get_lines()
    assert list(line.get_xdata()) == [0, 12] and list(line.get_ydata()) == [6.1, 4.3]


def with_interruption() -> dict:
    s = canned_summary()
    s["pretrain"]["interruption"] = {
        "at_step": 72,
        "at_epoch": 3.0,
        "from_world_size": 2,
        "to_world_size": 1,
        "resumed_at_step": 72,
        "steps_lost": 0,
    }
    return s


def test_table_shows_the_interruption_and_the_steps_lost():
    rows = dict(report.summary_rows(with_interruption()))
    assert rows["spot interruption"] == "at step 72 on 2 ranks → resumed on 1 at step 72: 0 steps lost"
    assert dict(report.summary_rows(canned_summary()))["spot interruption"] == "none"


def test_plot_marks_the_interruption_and_the_world_size_change(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    report.plot_losses(with_interruption(), tmp_path / "loss.png")
    pre = saved[0].axes[0]
    (cut,) = [ln for ln in pre.get_lines() if ln.get_label().startswith("spot interruption")]
    assert list(cut.get_xdata()) == [3.0, 3.0]
    assert "2 → 1 rank(s)" in cut.get_label() and "0 steps lost" in cut.get_label()
    assert "2 → 1 CPU rank(s)" in pre.get_title()
