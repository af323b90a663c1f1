"""The export's staging folder: held while its run lives, swept after a SIGKILL, published."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from local import staging
from local.errors import LocalError

HOLD = (
    "import sys; from pathlib import Path; from local.staging import staging_dir\n"
    "with staging_dir(Path(sys.argv[1])) as s:\n"
    "    (s / 'adapter_model.safetensors').write_bytes(b'weights')\n"
    "    print(s, flush=True)\n"
    "    sys.stdin.read()\n"
)


def test_a_killed_runs_staging_is_swept_at_the_next_start_and_a_live_one_is_not(tmp_path):
    out = tmp_path / "export"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    left = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
    assert left.is_dir() and left.name.startswith(".export.partial-")
    assert staging.sweep_stale(out) == []  # its run is alive: held, not touched
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert left.is_dir()  # a SIGKILL runs no `finally`: the unaudited weights stay...
    assert staging.sweep_stale(out) == [left]  # ...until the next start for this --out
    assert not left.exists()


def test_sweep_touches_only_this_outs_folders(tmp_path):
    other = tmp_path / ".other.partial-x"
    other.mkdir()
    mine = tmp_path / ".export.partial-y"
    mine.mkdir()
    assert staging.sweep_stale(tmp_path / "export") == [mine]
    assert other.is_dir()


def test_publish_renames_once_and_never_overwrites(tmp_path):
    out = tmp_path / "export"
    with staging.staging_dir(out) as folder:
        (folder / "MANIFEST.json").write_text("{}")
        staging.publish(folder, out)
    assert (out / "MANIFEST.json").is_file()
    with staging.staging_dir(tmp_path / "second") as folder:
        (tmp_path / "second").mkdir()
        with pytest.raises(LocalError, match="appeared while exporting"):
            staging.publish(folder, tmp_path / "second")
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_a_given_folder_is_left_to_the_parent(tmp_path):
    given = tmp_path / ".export.partial-z"
    given.mkdir()
    with staging.staging_dir(tmp_path / "export", given=given) as folder:
        assert folder == given
    assert given.is_dir()
