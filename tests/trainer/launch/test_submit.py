"""Submit, follow, status, logs, stop against moto (the controller side is in test_simulation)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from artifacts.config import dump_toml
from artifacts.errors import UserError
from artifacts.node import NODE_LOCK
from artifacts.run import Run, RunState, Status
from artifacts.store import open_store
from trainer.launch import LaunchError
from trainer.launch.control import ControllerState, ControlPlane
from trainer.launch.group import Group
from trainer.launch.last_run import LastRun, load_last_run, pick_run, resolve_run_uri
from trainer.launch.lifecycle import node_logs, run_status, stop_run, trend
from trainer.launch.outputs import load_outputs
from trainer.launch.submit import STOP_KEY, Context, follow, submit

from .fakes import FakeClock, outputs_dict

TINY = Path("configs/pretrain-tiny.toml")


@pytest.fixture
def ctx_for(cluster):
    def build(n=2, **kw):
        c = cluster(n, **kw)
        o = load_outputs(outputs_file=c["file"])
        group = Group(c["autoscaling"], c["ec2"], None, name=c["group"])
        return c, Context(o, c["ec2"], group, ControlPlane(open_store(f"s3://{o.bucket}")))

    return build


def pretrain_remote(ctx, *, config, run, watch=False, state_path, **kw):
    """Submit (the laptop's part); returns (run URI, request)."""
    kw.setdefault("say", lambda line: None)
    request = submit(ctx, config=config, run=run, state_path=state_path, **kw)
    return request.run_uri, request


def node_lock(tmp_path: Path, *extra: str) -> Path:
    """The repository's node lock plus ``extra`` pins, as `invoke lock-node` would write them."""
    path = tmp_path / "requirements-node.lock"
    pins = "".join(f"{pin} \\\n    --hash=sha256:{'0' * 64}\n    # via -r in\n" for pin in extra)
    path.write_text(NODE_LOCK.read_text() + pins)
    return path


def reporting_to(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / f"{'-'.join(names)}.toml"
    listed = ", ".join(f'"{n}"' for n in names)
    path.write_text(TINY.read_text().replace("[eval]", f"[eval]\nreport_to = [{listed}]", 1))
    return path


def test_submit_uploads_the_config_writes_the_request_and_remembers_the_run(ctx_for, tmp_path):
    c, ctx = ctx_for(2)
    lines: list[str] = []
    request = submit(ctx, config=TINY, run="exp1", state_path=tmp_path / "s", say=lines.append)

    run = Run(request.run_uri)
    assert request.run_uri == f"s3://{c['outputs']['bucket']}/runs/exp1"
    uploaded = tomllib.loads(run.store.get_bytes(Run.CONFIG).decode())
    assert uploaded["run"]["uri"] == request.run_uri
    got = ctx.control.request()
    assert got == request and got.node_count == 2 and got.idle_timeout_s == 15 * 60
    assert got.stall_timeout_s == 60 * 60 and got.min_nodes is None
    assert load_last_run(tmp_path / "s").request_id == request.request_id
    text = "\n".join(lines)
    assert "price per node, spot:" in text and "p4d.24xlarge:" in text
    assert "controller t3.small (on-demand): $0.0208/h" in text
    assert "in all (nodes + controller)" in text


def test_the_recipes_run_policy_reaches_the_request(ctx_for, tmp_path):
    c, ctx = ctx_for(3)
    cfg = tmp_path / "recipe.toml"
    raw = tomllib.loads(TINY.read_text())
    raw["run"] = {**raw.get("run", {}), "min_nodes": 2, "idle_timeout_minutes": 20,
                  "stall_timeout_minutes": 90, "max_hours": 48, "max_dollars": 5000}  # fmt: skip
    cfg.write_text(dump_toml(raw))
    request = submit(ctx, config=cfg, run="pol", state_path=tmp_path / "s", say=lambda x: None)
    assert (request.min_nodes, request.idle_timeout_s, request.stall_timeout_s) == (2, 1200, 5400)
    assert (request.max_hours, request.max_dollars) == (48, 5000)
    raw["run"]["min_nodes"] = 4
    cfg.write_text(dump_toml(raw))
    with pytest.raises(LaunchError, match="run.min_nodes = 4 .* the cluster has 3 node"):
        submit(ctx, config=cfg, run="pol2", state_path=tmp_path / "s", say=lambda x: None)


def test_a_busy_cluster_refuses_a_second_run_until_the_first_is_done(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    first = submit(ctx, config=TINY, run="one", state_path=tmp_path / "s", say=lambda x: None)
    with pytest.raises(LaunchError, match="busy with .*/runs/one"):
        submit(ctx, config=TINY, run="two", state_path=tmp_path / "s", say=lambda x: None)
    ctx.control.write_state(ControllerState(first.request_id, first.run_uri, "done"))
    second = submit(ctx, config=TINY, run="two", state_path=tmp_path / "s", say=lambda x: None)
    assert ctx.control.request() == second


def test_follow_prints_phase_changes_and_returns_the_outcome(ctx_for):
    c, ctx = ctx_for(1)
    clock = FakeClock()
    phases = iter(["accepted", "running", "running", "done"])

    def advance(t):
        state = ControllerState("req-1", "s3://b/runs/r", next(phases), t, attempt=1)
        if state.phase == "done":
            state.outcome = {"state": "converged", "message": "ok"}
        ctx.control.write_state(state)
        ctx.control.beat(t)

    clock.hooks.append(advance)
    lines: list[str] = []
    outcome = follow(ctx, "req-1", clock=clock, say=lines.append, poll_s=30)
    assert outcome == {"state": "converged", "message": "ok"}
    assert lines == [
        "controller: accepted, attempt 1",
        "controller: running, attempt 1",
        "controller: done, attempt 1",
    ]


def test_follow_warns_when_the_controller_heartbeat_is_stale(ctx_for):
    c, ctx = ctx_for(1)
    clock = FakeClock()
    ctx.control.beat(clock.now() - 3600)
    lines: list[str] = []
    assert follow(ctx, "req-x", clock=clock, say=lines.append, timeout_s=60) is None
    assert any("heartbeat is 60 min old" in line for line in lines)


def test_a_new_launch_lifts_an_earlier_stop(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    run_uri = f"s3://{c['outputs']['bucket']}/runs/again"
    open_store(run_uri).put_bytes(STOP_KEY, b"{}")
    pretrain_remote(ctx, config=TINY, run="again", state_path=tmp_path / "s")
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

    run_uri, _ = pretrain_remote(ctx, config=cfg, run="data", state_path=tmp_path / "s")

    store = open_store(run_uri)
    assert sorted(o.key for o in store.list("data/")) == ["data/0000-a.txt", "data/0001-b.txt"]
    uploaded = tomllib.loads(store.get_bytes("config.toml").decode())
    assert uploaded["data"]["train_files"] == [f"{run_uri}/data/"]


def test_run_data_is_accepted_as_the_trainer_reads_it(ctx_for, tmp_path):
    """``train_files = ["run:data/"]`` (documented in configs/pretrain-p4d.toml) is read in place."""
    from artifacts.run import Run
    from trainer.data.prepare import config_sources
    from trainer.data.reading import fetch_local

    c, ctx = ctx_for(1)
    cfg = tmp_path / "recipe.toml"
    raw = tomllib.loads(TINY.read_text())
    raw["data"] = {**raw["data"], "generated_corpus": False, "train_files": ["run:data/"]}
    cfg.write_text(dump_toml(raw))
    run_uri = f"s3://{c['outputs']['bucket']}/runs/rundata"
    with pytest.raises(UserError, match=r"run:data/ is empty: nothing under s3://.*/rundata/data"):
        pretrain_remote(ctx, config=cfg, run="rundata", state_path=tmp_path / "s")
    assert not open_store(run_uri).exists("config.toml")  # refused before anything was written

    open_store(run_uri).put_bytes("data/corpus.txt", b"already uploaded text\n" * 50)
    got, _ = pretrain_remote(ctx, config=cfg, run="rundata", state_path=tmp_path / "s")
    assert got == run_uri
    uploaded = tomllib.loads(open_store(run_uri).get_bytes("config.toml").decode())
    assert uploaded["data"]["train_files"] == ["run:data/"]
    # ...and the trainer resolves that very entry to the uploaded corpus.
    from trainer.config import config_from_dict

    remote_cfg = config_from_dict(uploaded, source="config.toml")
    sources = config_sources(remote_cfg.data, remote_cfg.source, Run(run_uri), tmp_path / "node")
    files = [fetch_local(src, tmp_path / "node" / "sources") for src in sources]
    assert [f.read_bytes() for f in files] == [b"already uploaded text\n" * 50]


def test_invalid_config_is_refused_before_anything_is_uploaded(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("[model]", "[model]\nhiden_size = 3"))
    with pytest.raises(UserError, match="model.hiden_size"):
        pretrain_remote(ctx, config=bad, run="bad", state_path=tmp_path / "s")
    assert open_store(f"s3://{c['outputs']['bucket']}/runs/bad").list() == []


def test_a_signing_key_never_goes_to_the_nodes(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    keyed = tmp_path / "keyed.toml"
    keyed.write_text(
        TINY.read_text().replace("[run]", '[run]\nsigning_key = "/home/me/signing.key"', 1)
    )
    with pytest.raises(UserError, match="run.signing_key .*`invoke sign --run URI --signing-key"):
        pretrain_remote(ctx, config=keyed, run="keyed", state_path=tmp_path / "s")
    assert open_store(f"s3://{c['outputs']['bucket']}/runs/keyed").list() == []


def test_an_off_node_report_to_is_refused_before_anything_unless_the_stack_has_egress(
    ctx_for, tmp_path
):
    c, ctx = ctx_for(1)
    assert ctx.outputs.allow_internet_egress is False
    wandb = tmp_path / "wandb.toml"
    wandb.write_text(TINY.read_text().replace("[eval]", '[eval]\nreport_to = ["wandb"]', 1))
    with pytest.raises(UserError) as err:
        pretrain_remote(ctx, config=wandb, run="wb", state_path=tmp_path / "s")
    message = str(err.value)
    assert message.startswith(f"{wandb}: eval.report_to: wandb sends to Weights & Biases'")
    assert "no internet egress" in message and "\n" not in message
    assert open_store(f"s3://{c['outputs']['bucket']}/runs/wb").list() == []
    assert ctx.control.request() is None  # the controller starts no node

    offline = tmp_path / "offline.toml"
    offline.write_text(TINY.read_text().replace("[eval]", '[eval]\nreport_to = ["tensorboard"]', 1))
    pretrain_remote(ctx, config=offline, run="tb", state_path=tmp_path / "s")
    ctx.control.write_state(ControllerState(ctx.control.request().request_id, "", "done"))

    ctx.outputs = dataclasses.replace(ctx.outputs, allow_internet_egress=True)
    lock = node_lock(tmp_path, "wandb==0.21.0")
    run_uri, request = pretrain_remote(
        ctx, config=wandb, run="wb", state_path=tmp_path / "s", node_lock=lock
    )
    uploaded = tomllib.loads(Run(run_uri).store.get_bytes(Run.CONFIG).decode())
    assert uploaded["eval"]["report_to"] == ["wandb"] and ctx.control.request() == request


def test_an_integration_whose_package_the_nodes_lack_is_refused_before_anything(
    ctx_for, tmp_path
):
    """The HF Trainer raises at start without the package: on the cluster, after nodes boot."""
    c, ctx = ctx_for(1)
    ctx.outputs = dataclasses.replace(ctx.outputs, allow_internet_egress=True)
    wandb = reporting_to(tmp_path, "wandb")
    with pytest.raises(UserError) as err:
        pretrain_remote(ctx, config=wandb, run="wb", state_path=tmp_path / "s")  # the repo's lock
    message = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"{wandb}: eval.report_to: wandb needs the package wandb, which")
    assert "not in infra/requirements-node.lock" in message
    assert "add it to infra/requirements-node.in, run `invoke lock-node`" in message
    assert "`pulumi up` so the nodes get it" in message
    assert open_store(f"s3://{c['outputs']['bucket']}/runs/wb").list() == []
    assert ctx.control.request() is None and not (tmp_path / "s").exists()

    # An offline one is checked too: trackio is allowed everywhere but not installed on nodes.
    with pytest.raises(UserError, match="trackio needs the package trackio, which the nodes"):
        pretrain_remote(
            ctx, config=reporting_to(tmp_path, "trackio"), run="t", state_path=tmp_path / "s"
        )
    assert ctx.control.request() is None

    # A lock that pins it (any PEP 503 spelling) passes, and says the credentials are the user's.
    lines: list[str] = []
    lock = node_lock(tmp_path, "WandB==0.21.0")
    pretrain_remote(ctx, config=wandb, run="wb", state_path=tmp_path / "s", node_lock=lock,
                    say=lines.append)  # fmt: skip
    assert ctx.control.request().run_uri.endswith("/runs/wb")
    (note,) = [line for line in lines if line.startswith("note: eval.report_to: wandb")]
    assert "credentials and settings it needs (an API key, a server URL) are yours" in note


def test_an_unreadable_node_lock_is_one_line(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    missing = tmp_path / "gone.lock"
    with pytest.raises(UserError, match=f"cannot read the nodes' lock {missing} "):
        pretrain_remote(ctx, config=reporting_to(tmp_path, "tensorboard"), run="x",
                        state_path=tmp_path / "s", node_lock=missing)  # fmt: skip
    pretrain_remote(ctx, config=TINY, run="x", state_path=tmp_path / "s", node_lock=missing)


def test_missing_bucket_is_a_user_error(ctx_for, tmp_path):
    c, ctx = ctx_for(1, bucket=False)
    with pytest.raises(UserError, match="bucket"):
        pretrain_remote(ctx, config=TINY, run="x", state_path=tmp_path / "s")


def test_status_shows_state_checkpoint_trend_controller_nodes_and_cost(ctx_for, tmp_path):
    c, ctx = ctx_for(2)
    request = submit(ctx, config=TINY, run="st", state_path=tmp_path / "s", say=lambda x: None)
    run = Run(request.run_uri)
    run.write_status(
        Status(state=RunState.RUNNING, global_step=40, epoch=2.0, best_val_loss=3.0,
               val_loss_history=({"val_loss": 3.5}, {"val_loss": 3.0}),
               extra={"latest_sample": {"step": 40, "prompt": "The red fox", "text": " ran home."}})
    )  # fmt: skip
    ctx.control.write_state(ControllerState(request.request_id, request.run_uri, "running", 0, 1))
    ctx.control.beat(request.submitted_at + 60)

    text = "\n".join(run_status(ctx, request.run_uri, now=request.submitted_at + 120))

    assert "state: running at step 40, epoch 2.0, best val loss 3.0" in text
    assert "val loss: 3.5000 ↓ 3.0000" in text
    assert "sample at step 40: 'The red fox' -> 'ran home.'" in text
    assert "last committed checkpoint: none yet" in text
    assert "at risk since the start (no commit yet): " in text
    assert "controller: running, attempt 1; heartbeat 1.0 min ago" in text
    assert "nodes: 2 running in group" in text and text.count("p4d.24xlarge running/InService") == 2
    assert "so far: " in text


def test_logs_come_from_the_copy_ssm_uploads_to_the_run(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    run_uri = f"s3://{c['outputs']['bucket']}/runs/logs"
    state = ControllerState("r", run_uri, "running", 0, 1, commands={"0": ["cmd-1", "i-abc"]})
    ctx.control.write_state(state)
    store = open_store(run_uri)
    store.put_bytes("logs/cmd-1/i-abc/awsrunShellScript/0.awsrunShellScript/stdout", b"step 1\n")
    assert node_logs(ctx, run_uri, None) == {0: "step 1\n"}
    with pytest.raises(LaunchError, match="--node 3: the latest launch has ranks \\[0\\]"):
        node_logs(ctx, run_uri, 3)
    with pytest.raises(LaunchError, match="no launch of .* recorded"):
        node_logs(ctx, f"s3://{c['outputs']['bucket']}/runs/other", None)


def test_stop_writes_the_marker_and_follows_the_controller(ctx_for, tmp_path):
    c, ctx = ctx_for(1)
    request = submit(ctx, config=TINY, run="halt", state_path=tmp_path / "s", say=lambda x: None)
    clock = FakeClock()

    def controller_stops(t):  # what the controller does when it sees the marker
        if Run(request.run_uri).stop_requested():
            ctx.control.write_state(ControllerState(
                request.request_id, request.run_uri, "done", t,
                outcome={"state": "stopped", "message": "stopped on request"},
            ))  # fmt: skip

    clock.hooks.append(controller_stops)
    lines: list[str] = []
    outcome = stop_run(ctx, request.run_uri, clock=clock, say=lines.append, timeout_s=600)
    assert outcome["state"] == "stopped"
    assert lines[0] == f"stop requested for {request.run_uri}"
    # No heartbeat yet in this test: the user is told how to end the billing without it.
    assert "set-desired-capacity --auto-scaling-group-name" in lines[1]
    assert Run(request.run_uri).stop_requested()


def test_run_names_and_last_run(tmp_path):
    p = tmp_path / "o.json"
    p.write_text(json.dumps(outputs_dict()))
    o = load_outputs(outputs_file=p)
    assert resolve_run_uri(o, "exp-1") == "s3://ts-bucket/runs/exp-1"
    assert resolve_run_uri(o, "s3://ts-bucket/runs/x/") == "s3://ts-bucket/runs/x"
    with pytest.raises(LaunchError, match="lives under s3://ts-bucket/runs/"):
        resolve_run_uri(o, "s3://other/x")  # nodes may write only under runs/
    assert resolve_run_uri(o, None).startswith("s3://ts-bucket/runs/20")
    with pytest.raises(LaunchError, match="use letters"):
        resolve_run_uri(o, "a/b")
    with pytest.raises(LaunchError, match="no --run given"):
        pick_run(o, None, tmp_path / "none")
    state = tmp_path / "last-run"
    state.write_text(json.dumps(LastRun("s3://ts-bucket/runs/exp-1").__dict__))
    assert pick_run(o, None, state) == "s3://ts-bucket/runs/exp-1"


def test_dump_toml_round_trips_the_recipes():
    for path in Path("configs").glob("*.toml"):
        raw = tomllib.loads(path.read_text())
        assert tomllib.loads(dump_toml(raw, header="x")) == raw, path


def test_trend_arrows():
    assert trend([]) == "no evaluation yet"
    assert trend([2.0, 2.0, 1.0]) == "2.0000 = 2.0000 ↓ 1.0000"


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
