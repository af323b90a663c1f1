"""The invoke tasks as a user runs them: `invoke` in a subprocess, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from trainer.launch import cli

from .fakes import outputs_dict

REPO = Path(__file__).resolve().parents[3]
INVOKE = str(Path(sys.executable).parent / "invoke")


def invoke(
    *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`invoke --search-root REPO ...` from `cwd` (so .twostage/last-run lands there, not in the repo)."""
    return subprocess.run(
        [INVOKE, "--search-root", str(REPO), *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_list_shows_the_lifecycle_tasks():
    proc = invoke("--list")
    assert proc.returncode == 0
    for name in ("pretrain", "status", "logs", "stop"):
        assert f"  {name} " in proc.stdout


def test_help_pretrain_lists_every_flag():
    proc = invoke("--help", "pretrain")
    assert proc.returncode == 0
    for flag in ("--stack", "--outputs", "--config", "--run", "--detach", "--local", "--nproc"):
        assert flag in proc.stdout, flag


@pytest.mark.parametrize("task", ["pretrain", "status", "logs", "stop"])
def test_bad_outputs_file_is_one_line_exit_2(task, tmp_path):
    bad = tmp_path / "outputs.json"
    bad.write_text("not json")
    line = one_line_error(invoke(task, "--outputs", str(bad), "--run", "r1", cwd=tmp_path))
    assert line.startswith(f"error: outputs file {bad} is not JSON")


def test_outputs_missing_keys_is_one_line_exit_2(tmp_path):
    p = tmp_path / "o.json"
    p.write_text(json.dumps({"region": "us-east-1"}))
    line = one_line_error(invoke("status", "--outputs", str(p), cwd=tmp_path))
    assert "lack bucket" in line and "pulumi up" in line


def test_no_pulumi_cli_says_install_it_or_pass_outputs(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent)}  # the venv only: no pulumi on it
    line = one_line_error(invoke("status", "--stack", "dev", cwd=tmp_path, env=env))
    assert "install Pulumi" in line and "--outputs FILE" in line


def test_missing_credentials_is_one_line_exit_2(tmp_path):
    p = tmp_path / "o.json"
    p.write_text(json.dumps(outputs_dict()))
    env = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SESSION_TOKEN": "",
        "AWS_SECURITY_TOKEN": "",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    line = one_line_error(
        invoke("status", "--outputs", str(p), "--run", "r1", cwd=tmp_path, env=env)
    )
    assert "AWS credentials not found" in line


def test_status_without_a_run_names_the_state_file(tmp_path):
    p = tmp_path / "o.json"
    p.write_text(json.dumps(outputs_dict()))
    line = one_line_error(invoke("status", "--outputs", str(p), cwd=tmp_path))
    assert "no --run given and no .twostage/last-run" in line


# -- --local goes to the core trainer's launcher ------------------------------------------------
@pytest.fixture
def fake_local_run(monkeypatch):
    calls = []

    def install(rc: int):
        mod = types.ModuleType("trainer.launch.single_node")

        def launch_local(config, run, nproc=2, cfg=None):
            calls.append((config, run, nproc))
            return rc

        from trainer.launch import single_node as real

        mod.launch_local = launch_local
        mod.resume_hint = real.resume_hint
        monkeypatch.setitem(sys.modules, "trainer.launch.single_node", mod)
        return calls

    return install


def test_local_interrupted_exits_75_with_the_resume_hint(fake_local_run):
    calls = fake_local_run(75)
    with pytest.raises(Exit) as err:
        cli.pretrain(Context(), local=True, run="runs/x", nproc=3)
    assert err.value.code == 75
    assert str(err.value.message) == (
        "interrupted; resume with: "
        "invoke pretrain --local --config configs/pretrain-tiny.toml --run runs/x --nproc 3"
    )
    assert calls == [(Path("configs/pretrain-tiny.toml"), "runs/x", 3)]


def test_local_success_and_failure(fake_local_run):
    fake_local_run(0)
    cli.pretrain(Context(), local=True)  # no exit
    fake_local_run(1)
    with pytest.raises(Exit) as err:
        cli.pretrain(Context(), local=True, run="runs/y")
    assert err.value.code == 1
    assert "resume with: invoke pretrain --local" in str(err.value.message)
    assert "--run runs/y --nproc 2" in str(err.value.message)


def test_local_refuses_an_integration_it_cannot_import_before_preparing_data(
    tmp_path, monkeypatch
):
    """Else every rank's Trainer raises at start, after the data preparation (minutes to hours)."""
    prepared = []

    class Prepared(Exception):
        pass

    def prepare_run(cfg, run):
        prepared.append(run)
        raise Prepared  # the launch got as far as preparing: stop here

    monkeypatch.setattr("trainer.data.prepare.prepare_run", prepare_run)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable, whatever this venv holds
    tiny = Path("configs/pretrain-tiny.toml").read_text()
    recipe = tmp_path / "wandb.toml"
    recipe.write_text(tiny.replace("[eval]", '[eval]\nreport_to = ["wandb"]', 1))
    with pytest.raises(Exit) as err:
        cli.pretrain(Context(), local=True, config=str(recipe), run=str(tmp_path / "run"))
    assert err.value.code == 2 and prepared == []
    assert str(err.value.message) == (
        f"error: {recipe}: eval.report_to: wandb needs the module wandb, which this Python "
        "environment cannot import: `pip install wandb` here, or remove the integration"
    )

    recipe.write_text(tiny.replace("[eval]", '[eval]\nreport_to = ["tensorboard"]', 1))
    with pytest.raises(Prepared):  # tensorboardX is a project dependency: allowed, on it goes
        cli.pretrain(Context(), local=True, config=str(recipe), run=str(tmp_path / "run"))
    assert prepared == [str(tmp_path / "run")]


# -- the whole remote path through the real `invoke`, against moto's server ----------------------
@pytest.fixture
def moto_cluster(tmp_path):
    """moto's server on 127.0.0.1: a bucket and a 2-node Auto Scaling group; (env, outputs, url)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from artifacts.node import node_tags

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        ec2 = boto3.client("ec2", "us-east-1", endpoint_url=url)
        autoscaling = boto3.client("autoscaling", "us-east-1", endpoint_url=url)
        boto3.client("s3", "us-east-1", endpoint_url=url).create_bucket(Bucket="cli-bucket")
        vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
        lt = ec2.create_launch_template(
            LaunchTemplateName="cli", LaunchTemplateData={"ImageId": "ami-12345678",
                                                          "InstanceType": "p4d.24xlarge"},
        )["LaunchTemplate"]["LaunchTemplateId"]  # fmt: skip
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName="cli-nodes", MinSize=0, MaxSize=2, DesiredCapacity=2,
            VPCZoneIdentifier=subnet, LaunchTemplate={"LaunchTemplateId": lt, "Version": "$Latest"},
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True}
                  for k, v in node_tags("cli").items()],
        )  # fmt: skip
        data = outputs_dict(
            2, cluster_name="cli", bucket="cli-bucket", run_prefix="s3://cli-bucket/runs",
            autoscaling_group_name="cli-nodes",
        )  # fmt: skip
        p = tmp_path / "outputs.json"
        p.write_text(json.dumps(data))
        yield {"AWS_ENDPOINT_URL": url}, str(p), url
    finally:
        server.stop()


def test_pretrain_detach_then_status_and_stop_through_invoke(moto_cluster, tmp_path):
    env, outputs, url = moto_cluster
    tiny = str(REPO / "configs/pretrain-tiny.toml")

    proc = invoke("pretrain", "--outputs", outputs, "--config", tiny, "--run", "r1", "--detach",
                  cwd=tmp_path, env=env)  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    assert "submitted s3://cli-bucket/runs/r1 to the controller" in proc.stdout
    assert "price per node, spot:" in proc.stdout and "controller t3.small" in proc.stdout
    assert "the run goes on in the cloud" in proc.stdout
    last = json.loads((tmp_path / ".twostage/last-run").read_text())
    assert last["run_uri"] == "s3://cli-bucket/runs/r1" and last["request_id"]

    # A second submit while the first is not done is refused (one run per cluster).
    proc = invoke("pretrain", "--outputs", outputs, "--config", tiny, "--run", "r2", "--detach",
                  cwd=tmp_path, env=env)  # fmt: skip
    assert "the cluster is busy with s3://cli-bucket/runs/r1" in one_line_error(proc)

    # status from another folder (another machine): only the outputs and --run.
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = invoke("status", "--outputs", outputs, "--run", "r1", cwd=other, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "run: s3://cli-bucket/runs/r1" in proc.stdout
    assert "state: submitted (no STATUS.json yet)" in proc.stdout
    assert "nodes: 2 running in group cli-nodes" in proc.stdout

    proc = invoke("stop", "--outputs", outputs, "--run", "r1", "--timeout", "0", cwd=other, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "stop requested for s3://cli-bucket/runs/r1" in proc.stdout
    s3 = __import__("boto3").client("s3", "us-east-1", endpoint_url=url)
    assert s3.head_object(Bucket="cli-bucket", Key="runs/r1/control/stop")


def test_logs_follow_prints_only_new_output_until_the_run_is_done(monkeypatch, capsys):
    import trainer.launch.last_run as last_run
    import trainer.launch.lifecycle as lifecycle

    texts = iter(["step 1\n", "step 1\nstep 2\n", "step 1\nstep 2\ndone\n"])
    polls = iter([False, False, True])
    monkeypatch.setattr(cli, "_context", lambda stack, outputs: types.SimpleNamespace(outputs=None))
    monkeypatch.setattr(last_run, "pick_run", lambda o, run: "s3://b/runs/r")
    monkeypatch.setattr(lifecycle, "node_logs", lambda ctx, uri, rank: {1: next(texts)})
    monkeypatch.setattr(lifecycle, "launch_done", lambda ctx, uri: next(polls))
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)

    cli.logs(Context(), outputs="o.json", node="1", follow=True)

    assert capsys.readouterr().out == "[node 1] step 1\n[node 1] step 2\n[node 1] done\n"


def test_logs_node_must_be_a_rank(monkeypatch):
    monkeypatch.setattr(cli, "_context", lambda stack, outputs: types.SimpleNamespace(outputs=None))
    monkeypatch.setattr("trainer.launch.last_run.pick_run", lambda o, run: "s3://b/runs/r")
    with pytest.raises(Exit) as err:
        cli.logs(Context(), outputs="o.json", node="first")
    assert err.value.code == 2 and "--node first: give a node rank" in str(err.value.message)


def test_ctrl_c_while_following_says_the_run_goes_on(monkeypatch):
    import trainer.launch.submit as submit_mod

    outputs = types.SimpleNamespace(instance_types=["g4dn.xlarge"], node_count=1)  # not planned
    monkeypatch.setattr(cli, "_context", lambda stack, outputs_: types.SimpleNamespace(outputs=outputs))
    monkeypatch.setattr(
        submit_mod, "submit", lambda ctx, **kw: types.SimpleNamespace(request_id="r", run_uri="u")
    )

    def interrupted(ctx, request_id):
        raise KeyboardInterrupt

    monkeypatch.setattr(submit_mod, "follow", interrupted)
    with pytest.raises(Exit) as err:
        cli.pretrain(Context(), outputs="o.json")
    assert err.value.code == 130 and "the run goes on in the cloud" in str(err.value.message)


def test_the_final_report_names_types_prices_sources_and_stage_2(capsys):
    cli._print_outcome(
        {
            "state": "converged",
            "message": "run converged at step 90",
            "left_running": [],
            "cost": {
                "by_type": [{"instance_type": "p4d.24xlarge", "node_hours": 3.0,
                             "usd_per_hour": 12.0, "price_source": "EC2 spot price history, us-east-1a",
                             "dollars": 36.0}],
                "controller": {"instance_type": "t3.small", "node_hours": 1.5, "dollars": 0.03},
                "node_hours": 3.0,
                "dollars": 36.03,
            },
            "download_command": "invoke download --src s3://b/runs/r/final --dest ./model",
        },
        "s3://b/runs/r",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "p4d.24xlarge: 3.00 node-hours × $12.0000/h (EC2 spot price history, us-east-1a) = $36.0"
        in out
    )
    assert "controller t3.small: 1.50 h = $0.03" in out
    assert "total: 3.00 node-hours, $36.03" in out
    assert "no instance left running" in out and "stage 2: invoke download" in out
