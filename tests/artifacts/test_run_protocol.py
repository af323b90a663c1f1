"""The run protocol: layout, status, exit codes and the verdict, each defined once."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts.run import ExitCode, Run, RunState, Status, step_folder, step_of, verdict

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("artifacts", "trainer", "local", "infra", "demo")


@pytest.mark.parametrize(
    ("rc", "state", "expected"),
    [
        (0, "converged", ExitCode.OK),
        (0, "finished", ExitCode.OK),
        (-6, "converged", ExitCode.OK),  # a rank aborted at shutdown after everything was committed
        (134, "finished", ExitCode.OK),
        (75, "interrupted", ExitCode.INTERRUPTED),
        (75, None, ExitCode.INTERRUPTED),
        (1, "interrupted", ExitCode.INTERRUPTED),  # the launcher killed a rank that had committed
        (0, "running", ExitCode.FAILED),  # exit 0 without a final state is not success
        (0, None, ExitCode.FAILED),
        (1, "failed", ExitCode.FAILED),
        (2, None, ExitCode.USER),
        (2, "running", ExitCode.USER),
        (3, None, ExitCode.BOOT),
        (-9, None, ExitCode.FAILED),
    ],
)
def test_verdict_is_decided_by_the_status_then_the_exit_code(rc, state, expected) -> None:
    status = None if state is None else Status(state=RunState(state))
    assert verdict(rc, status) is expected


def test_exit_codes_are_the_documented_ones() -> None:
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0), ("FAILED", 1), ("USER", 2), ("BOOT", 3), ("INTERRUPTED", 75)
    ]  # fmt: skip


def test_status_round_trips_and_keeps_unknown_keys() -> None:
    st = Status(
        state=RunState.CONVERGED,
        global_step=240,
        epoch=20.0,
        best_val_loss=float("nan"),  # not JSON: stored as null
        converged=True,
        converged_at_step=240,
        val_loss_history=[{"step": 12, "epoch": 1.0, "val_loss": 4.4}],
        extra={"notice_to_commit_s": 0.7},
    )
    doc = json.loads(st.to_json())
    assert doc["state"] == "converged" and doc["best_val_loss"] is None
    assert doc["notice_to_commit_s"] == 0.7
    back = Status.from_json(st.to_json())
    assert back.done and back.converged_at_step == 240
    assert back.extra == {"notice_to_commit_s": 0.7}
    assert back.val_loss_history == ({"step": 12, "epoch": 1.0, "val_loss": 4.4},)


@pytest.mark.parametrize("text", ['{"global_step": 1}', '{"state": "exploded"}', "[]"])
def test_a_document_that_is_not_a_status_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Status.from_json(text)


def test_run_knows_every_path_of_the_layout(tmp_path: Path) -> None:
    run = Run(str(tmp_path / "r1") + "/")
    assert run.uri == str(tmp_path / "r1")
    assert run.checkpoint(40) == "checkpoints/step-0000000040"
    assert step_folder(40) == "step-0000000040" and step_of("x/checkpoints/step-0000000040/") == 40
    assert step_of("checkpoint-40") is None
    assert Run.exit_code(3) == "logs/node-3/exit_code"
    assert run.final_uri.endswith("r1/final") and run.cache_data_uri.endswith("r1/cache/data")
    assert run.resolve("run:data/") == run.data_uri and run.resolve("s3://b/x") == "s3://b/x"
    assert run.read_status() is None
    run.write_status(Status(state=RunState.RUNNING, global_step=5))
    assert (tmp_path / "r1" / "STATUS.json").exists()
    assert run.read_status().global_step == 5
    (tmp_path / "r1" / "STATUS.json").write_text("{not json")  # being rewritten
    assert run.read_status() is None


def test_verdict_cli_is_what_the_node_script_calls(tmp_path: Path) -> None:
    run = Run(str(tmp_path / "r"))

    def cli(rc: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "artifacts.run", "verdict", str(rc), run.uri],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip

    assert cli(75).returncode == 75
    assert cli(0).returncode == 1  # no status: the trainer never exits 0 without publishing
    run.write_status(Status(state=RunState.FINISHED))
    proc = cli(134)
    assert proc.returncode == 0 and "verdict ok" in proc.stdout


# -- one definition per fact --------------------------------------------------------------------
FACTS: dict[object, str] = {
    75: "artifacts/verdict.py",
    "STATUS.json": "artifacts/run.py",
    "config.toml": "artifacts/run.py",
    "cache/data": "artifacts/run.py",
    "control/stop": "artifacts/run.py",
    "twostage:cluster": "artifacts/node.py",
    "twostage:role": "artifacts/node.py",
    "/etc/twostage/node.env": "artifacts/node.py",
    "TWOSTAGE_INSTANCE_ID": "artifacts/node.py",
    "TWOSTAGE_GROUP": "artifacts/node.py",
    "heartbeat.json": "artifacts/node.py",
    "request.json": "artifacts/node.py",
    "aws:autoscaling:groupName": "artifacts/node.py",
    "requirements-node": "artifacts/node.py",
}


def _code_constants(path: Path) -> list[object]:
    """Constants in code (docstrings and attribute docstrings excluded: prose may name a fact)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and id(n) not in docstrings and not isinstance(n.value, bool)
    ]


def test_each_run_fact_is_a_literal_in_exactly_one_library_module() -> None:
    found: dict[object, set[str]] = {fact: set() for fact in FACTS}
    for package in LIBRARY:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            for value in _code_constants(path):
                for fact in FACTS:
                    if isinstance(fact, int) and type(value) is int and value == fact:
                        found[fact].add(rel)
                    elif isinstance(fact, str) and isinstance(value, str) and fact in value:
                        found[fact].add(rel)
    assert {fact: sorted(where) for fact, where in found.items()} == {
        fact: [home] for fact, home in FACTS.items()
    }


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
    return mods


def test_the_launcher_never_imports_the_node_side_entry_modules() -> None:
    node_side = {"trainer.__main__", "trainer.loop.train", "trainer.loop.publish", "trainer.status"}
    offenders = {
        path.name: sorted(_imports(path) & node_side)
        for path in (ROOT / "trainer" / "launch").glob("*.py")
        if _imports(path) & node_side
    }
    assert offenders == {}


def test_artifacts_and_infra_import_no_stage_code() -> None:
    for package, banned in (("artifacts", ("trainer", "local", "infra", "demo")),
                            ("infra", ("trainer", "local", "demo"))):  # fmt: skip
        for path in (ROOT / package).rglob("*.py"):
            bad = [m for m in _imports(path) if m.split(".")[0] in banned]
            assert not bad, (path, bad)
