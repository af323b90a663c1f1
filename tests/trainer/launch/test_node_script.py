"""The per-node command and the stop signal: rendered text, then the script really run by bash."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts.run import Run
from trainer.launch.attempt import Attempt, record_ending
from trainer.launch.node_script import WORKER_PATTERN, launcher_argv, node_scripts, stop_script
from trainer.launch.ports import Invocation
from trainer.launch.ranks import Node, assign_ranks, make_spec

from .fakes import nodes

RUN = "s3://bucket/runs/r1"


def flag(script: str, name: str) -> str:
    m = re.search(rf"{name}[= ](\S+)", script)
    assert m, f"{name} missing"
    return m.group(1)


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_per_node_commands_share_one_rendezvous(launcher):
    assignments = assign_ranks(nodes(4))
    spec = make_spec(RUN, assignments, launcher=launcher, master_port=29611)
    scripts = node_scripts(spec, assignments)
    assert sorted(scripts) == [0, 1, 2, 3]
    ranks = set()
    for i, script in scripts.items():
        assert flag(script, "--master_addr") == "10.0.0.10"
        assert flag(script, "--master_port") == "29611"
        assert flag(script, "--node_rank") == str(i)
        ranks.add(flag(script, "--node_rank"))
        nodes_flag = "--num_nodes" if launcher == "deepspeed" else "--nnodes"
        assert flag(script, nodes_flag) == "4"
        gpus_flag = "--num_gpus" if launcher == "deepspeed" else "--nproc_per_node"
        assert flag(script, gpus_flag) == "8"  # p4d.24xlarge
        assert ". /etc/twostage/node.env" in script
        assert f'"${{TWOSTAGE_INSTANCE_ID:-}}" != "i-{i}"' in script  # this attempt's instance
        # torchrun's own parser rejects "--run" (ambiguous with its --run-path): "--run-uri" there.
        run_flag = "--run" if launcher == "deepspeed" else "--run-uri"
        assert f"{run_flag} {RUN}" in script and "--module trainer --config" in script
        assert "shutdown" not in script and "launch.active" in script  # the group owns power
        assert "ssh" not in script.replace("--no_ssh", "")
    assert len(ranks) == 4
    if launcher == "deepspeed":
        assert all("--no_ssh" in s for s in scripts.values())
        hostfiles = {re.search(r"printf %s ('[^']*')", s).group(1) for s in scripts.values()}
        assert hostfiles == {shlex.quote("".join(f"10.0.0.{10 + i} slots=8\n" for i in range(4)))}


def test_stop_signal_reaches_the_workers_not_the_launchers():
    spec = make_spec(RUN, assign_ranks(nodes(2)))
    a = assign_ranks(nodes(2))[1]
    launcher_cmd = " ".join(launcher_argv(spec, a, "/x/config.toml"))
    torchrun = make_spec(RUN, assign_ranks(nodes(2)), launcher="torchrun")
    torchrun_cmd = " ".join(launcher_argv(torchrun, a, "/x/config.toml"))
    # What DeepSpeed's launch.py / torchrun start on each GPU: python -u -m trainer ...
    worker_cmd = f"/opt/twostage/.venv/bin/python -u -m trainer --config /x/config.toml --run {RUN}"
    assert re.search(WORKER_PATTERN, worker_cmd)
    assert not re.search(WORKER_PATTERN, launcher_cmd)
    assert not re.search(WORKER_PATTERN, torchrun_cmd)
    assert "pkill -TERM -f -- '-m trainer --config'" in stop_script()


# -- the script itself, run by bash with a fake launcher ----------------------------------------
FAKE_PYTHON = """#!/bin/bash
# Stands in for the node's venv python: `-c` snippets run for real, a launcher is recorded.
if [ "$1" = "-c" ] || [[ "$1 $2" == "-m artifacts."* || "$2" == trainer.launch.rank_watch ]]; then
  exec {python} "$@"
fi
printf '%s\\n' "$@" > "$REC/argv"
cp "$(dirname "$(grep -A1 -- --config "$REC/argv" | tail -1)")/config.toml" "$REC/config.seen"
exit "${{FAKE_RC:-0}}"
"""


@pytest.fixture
def node_sandbox(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[run]\nname = 'r1'\n")
    (tmp_path / "node.env").write_text("TWOSTAGE_INSTANCE_ID=i-1\nTWOSTAGE_CLUSTER=c\n")
    (tmp_path / "ready").write_text("")

    def render(**over):
        assignments = assign_ranks(nodes(2))
        kw = dict(
            instance_type="g5.12xlarge",
            node_env=str(tmp_path / "node.env"),
            repo_dir=str(Path.cwd()),
            python=str(fake),
            scratch=str(tmp_path / "nvme"),
            ready_marker=str(tmp_path / "ready"),
            agent_dir=str(tmp_path / "agent"),
            idle_timeout_s=1200,
        )
        kw.update(over)
        spec = make_spec(str(run), assignments, **kw)
        path = tmp_path / "node1.sh"
        path.write_text(node_scripts(spec, assignments)[1])
        return path

    def execute(script: Path, rc: int = 0) -> subprocess.CompletedProcess:
        env = {**os.environ, "REC": str(rec), "FAKE_RC": str(rc)}
        return subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, env=env, timeout=60
        )

    return render, execute, rec, run


def _idle_marked(run: Path) -> bool:
    """The node agent's view after a launch: not active any more, idle since the end."""
    agent = run.parent / "agent"
    return not (agent / "launch.active").exists() and (agent / "launch.ended").exists()


def test_script_fetches_config_launches_records_exit_and_marks_the_node_idle(node_sandbox):
    render, execute, rec, run = node_sandbox
    # The trainer exits 0 only after it wrote the final status; the verdict checks it.
    (run / "STATUS.json").write_text('{"state": "finished", "global_step": 10}')
    proc = execute(render(), rc=0)
    assert proc.returncode == 0, proc.stderr
    argv = (rec / "argv").read_text().split("\n")
    assert "--node_rank=1" in argv and "--no_ssh" in argv
    assert (rec / "config.seen").read_text() == (run / "config.toml").read_text()
    assert (run / "logs/node-1/exit_code").read_text() == "0"
    # Never a shutdown (the group would replace the node): the agent sees it idle instead.
    assert "shutdown" not in render().read_text()
    assert _idle_marked(run)
    assert (run.parent / "agent" / "idle_timeout_s").read_text().strip() == "1200"


def test_script_exit_0_without_a_final_status_is_a_failure(node_sandbox):
    render, execute, rec, run = node_sandbox
    proc = execute(render(), rc=0)
    assert proc.returncode == 1
    assert (run / "logs/node-1/exit_code").read_text() == "1"
    assert _status(run)["reason"] == "a rank on node 1 exited 0 but the run was never marked done"
    assert _idle_marked(run)


def test_script_after_exit_75(node_sandbox):
    render, execute, rec, run = node_sandbox
    (run / "STATUS.json").write_text('{"state": "running", "global_step": 8}')
    proc = execute(render(), rc=75)
    assert proc.returncode == 75
    assert (run / "logs/node-1/exit_code").read_text() == "75"
    assert _status(run)["state"] == "running"  # 75 reaches the controller as it is: its to record


def _status(run: Path) -> dict:
    return json.loads((run / "STATUS.json").read_text())


KILLED = (  # the fake launcher starts no ranks, so none can be named
    "a rank on node 1 was killed by signal 9 (SIGKILL; DeepSpeed's launcher exits 256 − 9 = 247)"
)


def test_a_killed_rank_reaches_the_runs_status_through_the_controller(node_sandbox):
    """kill -9 of a rank: DeepSpeed's launcher exits 247, the verdict passes on 1 — the node
    records the rank and signal in STATUS first, and the controller keeps its words."""
    render, execute, rec, run = node_sandbox
    history = [{"step": 10, "epoch": 1.0, "val_loss": 3.0}]
    running = {"state": "running", "global_step": 40, "val_loss_history": history}
    (run / "STATUS.json").write_text(json.dumps(running))
    proc = execute(render(), rc=247)
    assert proc.returncode == 1, proc.stderr  # the verdict: failed
    assert (run / "logs/node-1/exit_code").read_text() == "1"
    st = _status(run)
    assert (st["state"], st["reason"]) == ("failed", KILLED)
    assert st["global_step"] == 40 and st["val_loss_history"] == history
    # The controller sees the SSM invocation (exit 1) and records nothing over the node's words.
    attempt = Attempt({1: ("cmd-1", "i-1")}, {1: Invocation("Failed", proc.returncode)})
    kind, detail = attempt.verdict()
    assert kind == "failed" and "exit code 1" in detail
    assert record_ending(Run(str(run)), kind, f"attempt 1: {detail}") is None
    assert _status(run)["reason"] == KILLED


def test_script_refuses_to_run_on_the_wrong_instance(node_sandbox, tmp_path):
    render, execute, rec, run = node_sandbox
    (tmp_path / "node.env").write_text("TWOSTAGE_INSTANCE_ID=i-0\n")
    proc = execute(render())
    assert proc.returncode == 3
    assert "this is i-0, the command is for i-1" in proc.stderr
    assert not (rec / "argv").exists()


def test_script_waits_for_the_bootstrap_then_gives_up(node_sandbox, tmp_path):
    render, execute, rec, run = node_sandbox
    proc = execute(render(ready_marker=str(tmp_path / "never"), ready_timeout_s=0))
    assert proc.returncode == 3
    assert "bootstrap not finished" in proc.stderr
    assert not (rec / "argv").exists()


def test_script_trusts_a_converged_status_over_a_shutdown_abort(node_sandbox):
    render, execute, rec, run = node_sandbox
    script = render()
    proc = execute(script, rc=134)  # a rank aborted at interpreter shutdown
    assert proc.returncode == 1  # verdict: failed
    assert (
        "launcher exited 134 (a rank was killed by signal 6 (SIGABRT; the shell's 128 + 6 = 134)), "
        "run state failed: verdict failed (1)"
    ) in proc.stdout
    assert _status(run)["reason"].startswith("a rank on node 1 was killed by signal 6 (SIGABRT")
    (run / "STATUS.json").write_text('{"state": "converged", "global_step": 10}')
    proc = execute(script, rc=134)
    assert proc.returncode == 0, proc.stderr
    assert "run state converged: verdict ok (0)" in proc.stdout


# -- the real DeepSpeed launcher (--no_ssh) starting a stand-in trainer on two "nodes" ----------
FAKE_TRAINER = """import json, os, pathlib, signal, sys, time
rec = pathlib.Path(os.environ["REC"])
rank = os.environ["RANK"]
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "FI_PROVIDER")
info = {k: os.environ.get(k) for k in keys}
info["argv"] = sys.argv[1:]
info["pid"] = os.getpid()
(rec / f"rank{rank}.json").write_text(json.dumps(info))
if os.environ.get("FAKE_MODE") == "kill-rank-1" and rank == "1":
    # A real rank trains for a while first: die once the node's rank watch has seen this rank.
    watch_log = pathlib.Path(sys.argv[sys.argv.index("--config") + 1]).parent / "rank_watch.log"
    while "watching rank(s) 1 " not in (watch_log.read_text() if watch_log.exists() else ""):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9, the OOM killer
if os.environ.get("FAKE_MODE") in ("wait-term", "kill-rank-1"):
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))  # commit, then "resume me"
    while True:
        time.sleep(0.05)
"""


def _start_two_nodes(tmp_path: Path, mode: str) -> tuple[dict, Path, Path]:
    """Two node scripts on this machine (`--no_ssh --node_rank i`) running DeepSpeed's own runner
    with the stand-in trainer in ``mode``: (node → Popen, the ranks' records, the run folder)."""
    repo = tmp_path / "repo"
    (repo / "trainer").mkdir(parents=True)
    (repo / "trainer/__init__.py").write_text("")
    (repo / "trainer/__main__.py").write_text(FAKE_TRAINER)
    (repo / "trainer/launch").symlink_to(Path(__file__).parents[3] / "trainer/launch")  # rank_watch
    rec = tmp_path / "rec"
    rec.mkdir()
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.toml").write_text("[run]\n")
    (tmp_path / "ready").write_text("")
    nodes2 = [Node(0, "i-0", "127.0.0.1"), Node(1, "i-1", "127.0.0.2")]
    assignments = assign_ranks(nodes2)
    procs = {}
    env = {**os.environ, "REC": str(rec), "FAKE_MODE": mode,
           "PYTHONPATH": str(Path.cwd()), "OMP_NUM_THREADS": "1"}  # fmt: skip
    for a in assignments:
        (tmp_path / f"node{a.node_index}.env").write_text(f"TWOSTAGE_INSTANCE_ID={a.instance_id}\n")
        spec = make_spec(
            str(run), assignments, instance_type="p4d.24xlarge", gpus_per_node=1,
            master_port=29000 + os.getpid() % 1000, node_env=str(tmp_path / f"node{a.node_index}.env"),
            repo_dir=str(repo), python=sys.executable, scratch=str(tmp_path / f"nvme{a.node_index}"),
            ready_marker=str(tmp_path / "ready"), agent_dir=str(tmp_path / f"agent{a.node_index}"),
        )  # fmt: skip
        script = tmp_path / f"node{a.node_index}.sh"
        script.write_text(node_scripts(spec, assignments)[a.node_index])
        procs[a.node_index] = subprocess.Popen(
            ["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
    return procs, rec, run


@pytest.mark.slow
def test_real_deepspeed_launcher_gives_each_node_its_rank_and_stops_on_sigterm(tmp_path):
    """Two node scripts on this machine (`--no_ssh --node_rank i`), DeepSpeed's own runner."""
    import time

    import psutil

    procs, rec, run = _start_two_nodes(tmp_path, "wait-term")
    try:
        deadline = time.monotonic() + 120
        while len(list(rec.glob("rank*.json"))) < 2:
            assert time.monotonic() < deadline, [p.poll() for p in procs.values()]
            assert all(p.poll() is None for p in procs.values()), procs[0].communicate()[0]
            time.sleep(0.2)
        infos = {r: json.loads((rec / f"rank{r}.json").read_text()) for r in ("0", "1")}
        assert {i["WORLD_SIZE"] for i in infos.values()} == {"2"}
        assert {i["MASTER_ADDR"] for i in infos.values()} == {"127.0.0.1"}
        assert len({i["MASTER_PORT"] for i in infos.values()}) == 1
        assert infos["0"]["FI_PROVIDER"] == "efa"  # the p4d network environment reached the ranks
        assert infos["1"]["argv"] == [
            "--config",
            str(tmp_path / "nvme1/runs/run/config.toml"),
            "--run",
            str(run),
        ]
        # `invoke stop`'s pattern picks exactly the trainer workers out of each node's process tree.
        for i, proc in procs.items():
            tree = psutil.Process(proc.pid).children(recursive=True)
            workers = [p for p in tree if re.search(WORKER_PATTERN, " ".join(p.cmdline()))]
            assert [p.pid for p in workers] == [infos[str(i)]["pid"]]
            for w in workers:
                w.terminate()
        outs = {i: p.communicate(timeout=60)[0] for i, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, 9)
    assert {i: p.returncode for i, p in procs.items()} == {0: 75, 1: 75}, outs
    assert (run / "logs/node-0/exit_code").read_text() == "75"
    assert (tmp_path / "agent0" / "launch.ended").exists()  # idle now, for the node agent


@pytest.mark.slow
def test_a_sigkilled_rank_is_named_in_status_through_the_real_launcher(tmp_path):
    """kill -9 of rank 1 under DeepSpeed's runner: it exits 247 on node 1, whose script passes
    on 1 (the verdict) — and STATUS names the rank, its node and the signal, as the local
    launcher does."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "STATUS.json").write_text('{"state": "running", "global_step": 40}')
    procs, rec, run = _start_two_nodes(tmp_path, "kill-rank-1")
    try:
        out = procs[1].communicate(timeout=120)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, 9)
    assert procs[1].returncode == 1, out
    assert "launcher exited 247" in out, out
    st = _status(run)
    named = KILLED.replace("a rank on node 1", "rank 1 on node 1")
    assert (st["state"], st["reason"], st["global_step"]) == ("failed", named, 40), out
