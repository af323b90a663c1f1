"""Node bootstrap script: env file contract, install steps, and that bash accepts it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from infra.userdata import (
    DLAMI_PYTHON,
    ENV_FILE,
    SCRATCH_DIR,
    VENV_PYTHON,
    NodeBootstrap,
    render_env_file,
    render_user_data,
)

BOOT = NodeBootstrap(
    cluster="twostage-dev",
    node_index=2,
    node_count=4,
    bucket="twostage-abc",
    run_prefix="s3://twostage-abc/runs",
    region="us-east-1",
    source_uri="s3://twostage-abc/bootstrap/twostage-src.zip",
)
GIT = NodeBootstrap(
    cluster="twostage-dev",
    node_index=0,
    node_count=1,
    bucket="twostage-abc",
    run_prefix="s3://twostage-abc/runs",
    region="eu-west-1",
    repo_url="https://github.com/example/twostage.git",
    repo_ref="release/1.0",
)


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_env_file_has_the_contract_keys():
    env = _env(render_env_file(BOOT))
    assert env["TWOSTAGE_CLUSTER"] == "twostage-dev"
    assert env["TWOSTAGE_NODE_INDEX"] == "2"
    assert env["TWOSTAGE_BUCKET"] == "twostage-abc"
    assert env["TWOSTAGE_RUN_PREFIX"] == "s3://twostage-abc/runs"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"


def test_user_data_writes_the_env_file_before_installing():
    script = render_user_data(BOOT)
    assert script.startswith("#!/bin/bash\n")
    assert f"cat > {ENV_FILE} <<'ENV'\n{render_env_file(BOOT)}ENV\n" in script
    assert script.index(ENV_FILE) < script.index("pip install")
    assert f"install -d -m 0755 {SCRATCH_DIR}" in script
    assert "amazon-ssm-agent" in script and "enable --now" in script


def test_install_reuses_the_dlami_torch():
    script = render_user_data(BOOT)
    assert f"{DLAMI_PYTHON} -m venv --system-site-packages /opt/twostage/.venv" in script
    assert f"{VENV_PYTHON} -m pip install --no-input --quiet -e /opt/twostage" in script
    assert "pip install torch" not in script


def test_source_bundle_is_read_from_the_bucket():
    script = render_user_data(BOOT)
    assert "Bucket='twostage-abc', Key='bootstrap/twostage-src.zip'" in script
    assert "git " not in script


def test_git_source_fetches_the_ref():
    script = render_user_data(GIT)
    assert "remote add origin https://github.com/example/twostage.git" in script
    assert "fetch --depth 1 origin release/1.0" in script
    assert "checkout --force FETCH_HEAD" in script
    assert "AWS_DEFAULT_REGION=eu-west-1\n" in script


def test_a_source_is_required():
    with pytest.raises(ValueError, match="source"):
        render_user_data(NodeBootstrap("c", 0, 1, "b", "s3://b/runs", "us-east-1"))


def test_shell_metacharacters_never_reach_the_env_file():
    evil = NodeBootstrap(
        cluster="c$(reboot)",
        node_index=0,
        node_count=1,
        bucket="b",
        run_prefix="s3://b/runs",
        region="us-east-1",
        source_uri="s3://b/k",
    )
    with pytest.raises(ValueError, match="TWOSTAGE_CLUSTER"):
        render_user_data(evil)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("boot", [BOOT, GIT], ids=["bundle", "git"])
def test_bash_parses_the_script(boot, tmp_path):
    path = tmp_path / "user-data.sh"
    path.write_text(render_user_data(boot))
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
