"""Orchestration against moto: upload, checks, launch over SSM, watch to the end, status, logs, stop."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import boto3
import pytest

from artifacts.config import dump_toml
from artifacts.errors import UserError
from artifacts.store import open_store
from trainer.launch import LaunchError
from trainer.launch.lifecycle import node_logs, run_status, stop_run, trend
from trainer.launch.outputs import load_outputs
from trainer.launch.run import (
    STOP_KEY,
    Context,
    LastRun,
    check_nodes,
    load_last_run,
    pick_run,
    pretrain_remote,
    resolve_run_uri,
)
from trainer.launch.watch import WatchPolicy

from .fakes import FakeClock

TINY = Path("configs/pretrain-tiny.toml")


def live_states(ec2, ids):
    insts = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i["State"]["Name"] for r in insts for i in r["Instances"]}


@pytest.fixture
def ctx_for(cluster):
    def build(n=2, **kw):
        c = cluster(n, **kw)
        return c, Context.real(load_outputs(outputs_file=c["file"]))

    return build


def test_pretrain_uploads_config_launches_on_every_node_and_remembers_the_run(ctx_for, tmp_path):
    c, ctx = ctx_for(2)
    state = tmp_path / ".twostage/last-run"

    run_uri, outcome = pretrain_remote(
        ctx, config=TINY, run="r1", watch=False, outputs_file=c["file"], state_path=state
    )

    assert run_uri == f"s3://{c['outputs']['bucket']}/runs/r1" and outcome is None
    uploaded = tomllib.loads(open_store(run_uri).get_bytes("config.toml").decode())
    assert uploaded["run"]["uri"] == run_uri
    assert uploaded["model"] == tomllib.loads(TINY.read_text())["model"]
    last = load_last_run(state)
    assert last.run_uri == run_uri and last.outputs_file == c["file"]
    assert sorted(last.commands) == ["0", "1"]
    ssm = boto3.client("ssm", "us-east-1")
    for index, (cid, iid) in last.commands.items():
        cmd = ssm.list_commands(CommandId=cid)["Commands"][0]
        assert {"Key": "tag:twostage:node-index", "Values": [index]} in cmd["Targets"]
        assert cmd["InstanceIds"] == [iid] == [c["outputs"]["instance_ids"][int(index)]]
        script = "\n".join(cmd["Parameters"]["commands"])
        assert f"--node_rank={index}" in script
        assert f"--master_addr {c['outputs']['head_private_ip']}" in script


def test_pretrain_watch_ends_with_every_node_terminated_and_a_report(ctx_for, tmp_path):
    c, ctx = ctx_for(2)
    run_uri = f"s3://{c['outputs']['bucket']}/runs/done"
    # moto runs nothing: play the trainer's part by writing its final STATUS.json.
    open_store(run_uri).put_bytes(
        "STATUS.json",
        json.dumps({"state": "converged", "global_step": 900, "best_val_loss": 1.25}).encode(),
    )

    _, outcome = pretrain_remote(
        ctx, config=TINY, run="done", watch=True, state_path=tmp_path / "last-run",
        clock=FakeClock(), policy=WatchPolicy(poll_s=1),
    )  # fmt: skip

    assert outcome.state == "converged"
    states = live_states(c["ec2"], c["outputs"]["instance_ids"])
    assert set(states.values()) <= {"shutting-down", "terminated"}
    text = "\n".join(outcome.lines())
    assert "run converged at step 900, best val loss 1.2500" in text
    assert "node-hours:" in text and "spent: $" in text
    assert f"invoke download --src {run_uri}/final --dest ./model" in text


def test_a_new_launch_lifts_an_earlier_stop(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    run_uri = f"s3://{c['outputs']['bucket']}/runs/again"
    open_store(run_uri).put_bytes(STOP_KEY, b"{}")
    pretrain_remote(ctx, config=TINY, run="again", watch=False, state_path=tmp_path / "s")
    assert not open_store(run_uri).exists(STOP_KEY)


def test_local_data_is_uploaded_and_the_config_points_at_it(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus/a.txt").write_text("hello world\n" * 100)
    (tmp_path / "corpus/b.txt").write_text("more text\n" * 100)
    cfg = tmp_path / "recipe.toml"
    raw = tomllib.loads(TINY.read_text())
    raw["data"] = {**raw["data"], "generated_corpus": False, "train_files": ["corpus/*.txt"]}
    cfg.write_text(dump_toml(raw))

    run_uri, _ = pretrain_remote(
        ctx, config=cfg, run="data", watch=False, state_path=tmp_path / "s"
    )

    store = open_store(run_uri)
    assert sorted(o.key for o in store.list("data/")) == ["data/0000-a.txt", "data/0001-b.txt"]
    uploaded = tomllib.loads(store.get_bytes("config.toml").decode())
    assert uploaded["data"]["train_files"] == [f"{run_uri}/data/"]


def test_run_data_is_accepted_as_the_trainer_reads_it(ctx_for, tmp_path):
    """``train_files = ["run:data/"]`` (documented in configs/pretrain-p4d.toml) is read in place."""
    from artifacts.run import Run
    from trainer.data import resolve_sources

    c, ctx = ctx_for(1)
    cfg = tmp_path / "recipe.toml"
    raw = tomllib.loads(TINY.read_text())
    raw["data"] = {**raw["data"], "generated_corpus": False, "train_files": ["run:data/"]}
    cfg.write_text(dump_toml(raw))
    run_uri = f"s3://{c['outputs']['bucket']}/runs/rundata"
    with pytest.raises(UserError, match=r"run:data/ is empty: nothing under s3://.*/rundata/data"):
        pretrain_remote(ctx, config=cfg, run="rundata", watch=False, state_path=tmp_path / "s")
    assert not open_store(run_uri).exists("config.toml")  # refused before anything was written

    open_store(run_uri).put_bytes("data/corpus.txt", b"already uploaded text\n" * 50)
    got, _ = pretrain_remote(ctx, config=cfg, run="rundata", watch=False, state_path=tmp_path / "s")
    assert got == run_uri
    uploaded = tomllib.loads(open_store(run_uri).get_bytes("config.toml").decode())
    assert uploaded["data"]["train_files"] == ["run:data/"]
    # ...and the trainer resolves that very entry to the uploaded corpus.
    from trainer.config import config_from_dict

    remote_cfg = config_from_dict(uploaded, source="config.toml")
    files = resolve_sources(remote_cfg, tmp_path / "node", Run(run_uri))
    assert [f.read_bytes() for f in files] == [b"already uploaded text\n" * 50]


def test_invalid_config_is_refused_before_anything_is_uploaded(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("[model]", "[model]\nhiden_size = 3"))
    with pytest.raises(UserError, match="model.hiden_size"):
        pretrain_remote(ctx, config=bad, run="bad", watch=False, state_path=tmp_path / "s")
    assert open_store(f"s3://{c['outputs']['bucket']}/runs/bad").list() == []


def test_missing_bucket_is_a_user_error(ctx_for, tmp_path):
    c, ctx = ctx_for(1, bucket=False)
    with pytest.raises(UserError, match="bucket"):
        pretrain_remote(ctx, config=TINY, run="x", watch=False, state_path=tmp_path / "s")


def test_nodes_not_running_are_refused_with_the_fix(ctx_for):
    c, ctx = ctx_for(2)
    c["ec2"].terminate_instances(InstanceIds=[c["outputs"]["instance_ids"][1]])
    with pytest.raises(
        LaunchError, match=r"node 1 \(i-\w+\) is (shutting-down|terminated).*pulumi up --refresh"
    ):
        check_nodes(ctx)


def test_nodes_not_managed_by_ssm_are_refused(ctx_for, monkeypatch):
    c, ctx = ctx_for(1)
    monkeypatch.setattr(
        "trainer.launch.fleet.ssm_online", lambda client, ids: dict.fromkeys(ids, False)
    )
    with pytest.raises(LaunchError, match="not managed by SSM"):
        check_nodes(ctx)


def test_status_shows_state_checkpoint_trend_nodes_and_cost(ctx_for):
    c, ctx = ctx_for(2)
    run_uri = f"s3://{c['outputs']['bucket']}/runs/st"
    store = open_store(run_uri)
    store.put_bytes(
        "STATUS.json",
        json.dumps({"state": "running", "global_step": 300, "epoch": 3, "best_val_loss": 2.9,
                    "val_loss_history": [{"step": s, "epoch": e, "val_loss": v} for e, (s, v) in enumerate([(10, 3.5), (20, 3.1), (30, 2.9), (40, 2.95)], 1)]}).encode(),
    )  # fmt: skip
    for step in (100, 200, 300):
        store.put_bytes(f"checkpoints/step-{step:010d}/model.bin", b"x")
        if step < 300:  # the newest one is still uploading: not committed
            store.put_bytes(f"checkpoints/step-{step:010d}/MANIFEST.json", b"{}")

    text = "\n".join(run_status(ctx, run_uri))

    assert "state: running at step 300, epoch 3" in text
    assert "last committed checkpoint: checkpoints/step-0000000200" in text
    assert "val loss: 3.5000 ↓ 3.1000 ↓ 2.9000 ↑ 2.9500" in text
    for iid in c["outputs"]["instance_ids"]:
        assert f"{iid} running" in text
    assert "so far: node-hours:" in text


def test_logs_come_from_the_run_prefix_when_ssm_uploaded_them(ctx_for, tmp_path):
    c, ctx = ctx_for(2)
    run_uri, _ = pretrain_remote(ctx, config=TINY, run="lg", watch=False, state_path=tmp_path / "s")
    last = load_last_run(tmp_path / "s")
    cid, iid = last.commands["1"]
    open_store(run_uri).put_bytes(
        f"logs/{cid}/{iid}/awsrunShellScript/0.awsrunShellScript/stdout", b"step 10 loss 3.2\n"
    )
    out = node_logs(ctx, run_uri, last, None)
    assert out[1] == "step 10 loss 3.2\n"
    assert "no output yet" in out[0]  # moto keeps no output: said so, not silently empty
    with pytest.raises(LaunchError, match="--node 5: the run has nodes"):
        node_logs(ctx, run_uri, last, 5)


def test_stop_signals_waits_for_the_commit_and_terminates(ctx_for):
    c, ctx = ctx_for(2)
    run_uri = f"s3://{c['outputs']['bucket']}/runs/stopme"
    store = open_store(run_uri)
    clock = FakeClock(start=__import__("time").time())

    def trainer_exits(t):  # what the nodes do after SIGTERM: commit, exit 75, record it
        for i in range(2):
            store.put_bytes(f"logs/node-{i}/exit_code", b"75")

    clock.hooks.append(trainer_exits)
    lines = stop_run(ctx, run_uri, terminate=True, clock=clock)

    assert store.exists(STOP_KEY)  # a watcher will not relaunch
    text = "\n".join(lines)
    assert "trainer exited on every node (exit code 75)" in text
    assert "terminated 2 node(s)" in text and f"invoke pretrain --run {run_uri}" in text
    assert set(live_states(c["ec2"], c["outputs"]["instance_ids"]).values()) <= {
        "shutting-down",
        "terminated",
    }
    cmds = boto3.client("ssm", "us-east-1").list_commands()["Commands"]
    stop_cmd = next(x for x in cmds if x["Comment"] == "twostage stop" and
                    x["Targets"] == [{"Key": "tag:twostage:cluster", "Values": [c["name"]]}])  # fmt: skip
    assert any("pkill -TERM" in line for line in stop_cmd["Parameters"]["commands"])


def test_stop_without_terminate_keeps_nodes_and_says_they_bill(ctx_for):
    c, ctx = ctx_for(1)
    lines = stop_run(ctx, f"s3://{c['outputs']['bucket']}/runs/keep", terminate=False,
                     timeout_s=30, clock=FakeClock(start=__import__("time").time()))  # fmt: skip
    text = "\n".join(lines)
    assert "did not confirm its exit within 30 s" in text
    assert "billing continues" in text
    assert set(live_states(c["ec2"], c["outputs"]["instance_ids"]).values()) == {"running"}


def test_run_names_and_last_run(tmp_path):
    o = load_outputs(outputs_file=_write(tmp_path))
    assert resolve_run_uri(o, "exp-1") == "s3://ts-bucket/runs/exp-1"
    assert resolve_run_uri(o, "s3://other/x/") == "s3://other/x"
    assert resolve_run_uri(o, None).startswith("s3://ts-bucket/runs/20")
    with pytest.raises(LaunchError, match="use letters"):
        resolve_run_uri(o, "a/b")
    with pytest.raises(LaunchError, match="no --run given"):
        pick_run(o, None, tmp_path / "none")
    state = tmp_path / "last-run"
    state.write_text(json.dumps(LastRun("s3://ts-bucket/runs/exp-1").__dict__))
    assert pick_run(o, None, state)[0] == "s3://ts-bucket/runs/exp-1"


def test_dump_toml_round_trips_the_recipes():
    for path in Path("configs").glob("*.toml"):
        raw = tomllib.loads(path.read_text())
        assert tomllib.loads(dump_toml(raw, header="x")) == raw, path


def test_trend_arrows():
    assert trend([]) == "no evaluation yet"
    assert trend([2.0, 2.0, 1.0]) == "2.0000 = 2.0000 ↓ 1.0000"


def _write(tmp_path):
    from .fakes import outputs_dict

    p = tmp_path / "o.json"
    p.write_text(json.dumps(outputs_dict()))
    return p


def test_a_run_still_running_is_not_launched_twice(ctx_for, tmp_path):
    from .fakes import FakeRunner

    c, ctx = ctx_for(1)
    state = tmp_path / "s"
    run_uri = f"s3://{c['outputs']['bucket']}/runs/twice"
    (state.parent).mkdir(exist_ok=True)
    state.write_text(json.dumps(LastRun(run_uri, commands={"0": ["cmd-0", "i-x"]}).__dict__))
    ctx.runner_for = lambda uri: FakeRunner()  # the command is InProgress on the node
    with pytest.raises(LaunchError, match="still running on node 0 .*invoke stop"):
        pretrain_remote(ctx, config=TINY, run="twice", watch=False, state_path=state)


def test_local_data_that_does_not_exist_is_named(tmp_path, monkeypatch):
    from trainer.launch.upload import local_train_files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg/near.txt").write_text("x")
    (tmp_path / "here.txt").write_text("y")
    found = local_train_files(["here.txt", "near.txt", "s3://b/remote.txt"], tmp_path / "cfg")
    assert found == [tmp_path / "here.txt", tmp_path / "cfg/near.txt"]
    with pytest.raises(LaunchError, match="data.train_files: corpus/\\*.txt matches no file"):
        local_train_files(["corpus/*.txt"], tmp_path / "cfg")
