"""Bootstrap scripts: env file contract, bundle hash check, install steps, services, bash syntax."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import zipfile

import pytest

from infra.userdata import (
    DLAMI_PYTHON,
    ENV_FILE,
    SCRATCH_DIR,
    VENV_PYTHON,
    Bootstrap,
    render_env_file,
    render_user_data,
    systemd_unit,
)

SHA = "ab" * 32
WHEELS_SHA = "ef" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WHEELS = {
    "wheelhouse_uri": "s3://twostage-abc/bootstrap/wheelhouse.tar",
    "wheelhouse_sha256": WHEELS_SHA,
}
BOOT = Bootstrap(
    role="node",
    cluster="twostage-dev",
    bucket="twostage-abc",
    run_prefix="s3://twostage-abc/runs",
    region="us-east-1",
    group_name="twostage-dev-nodes",
    source_uri="s3://twostage-abc/bootstrap/twostage-src.zip",
    source_sha256=SHA,
    **WHEELS,
)
GIT = Bootstrap(
    role="controller",
    cluster="twostage-dev",
    bucket="twostage-abc",
    run_prefix="s3://twostage-abc/runs",
    region="eu-west-1",
    group_name="twostage-dev-nodes",
    repo_url="https://github.com/example/twostage.git",
    repo_ref=COMMIT,
    **WHEELS,
    extra_env=(
        ("TWOSTAGE_NODE_COUNT", "4"),
        ("TWOSTAGE_INSTANCE_TYPES", "p4d.24xlarge,p5.48xlarge"),
    ),
)


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_env_file_has_the_contract_keys_and_no_node_index():
    env = _env(render_env_file(BOOT))
    assert env["TWOSTAGE_CLUSTER"] == "twostage-dev"
    assert env["TWOSTAGE_ROLE"] == "node"
    assert env["TWOSTAGE_BUCKET"] == "twostage-abc"
    assert env["TWOSTAGE_RUN_PREFIX"] == "s3://twostage-abc/runs"
    assert env["TWOSTAGE_GROUP"] == "twostage-dev-nodes"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert "TWOSTAGE_NODE_INDEX" not in env  # one script for the whole group
    assert _env(render_env_file(GIT))["TWOSTAGE_INSTANCE_TYPES"] == "p4d.24xlarge,p5.48xlarge"


def test_user_data_writes_the_env_file_and_instance_id_before_installing():
    script = render_user_data(BOOT)
    assert script.startswith("#!/bin/bash\n")
    assert f"cat > {ENV_FILE} <<'ENV'\n{render_env_file(BOOT)}ENV\n" in script
    assert script.index(ENV_FILE) < script.index("pip install")
    assert 'echo "TWOSTAGE_INSTANCE_ID=$iid" >>' in script
    assert "X-aws-ec2-metadata-token" in script  # IMDSv2
    assert f"install -d -m 0755 {SCRATCH_DIR}" in script
    assert "amazon-ssm-agent" in script and "enable --now" in script


def test_install_reuses_the_dlami_torch_and_asks_no_index():
    script = render_user_data(BOOT)
    assert f"{DLAMI_PYTHON} -m venv --system-site-packages /opt/twostage/.venv" in script
    pip_lines = [line for line in script.splitlines() if "-m pip install" in line]
    assert len(pip_lines) == 2 and all("--no-index" in line for line in pip_lines)
    flat = " ".join(script.replace("\\\n", " ").split())
    assert (
        f"{VENV_PYTHON} -m pip install --no-input --quiet --no-index --find-links "
        "/opt/twostage-wheelhouse --require-hashes --no-deps -r "
        "/opt/twostage-wheelhouse/requirements.txt"
    ) in flat
    assert "--no-deps --no-build-isolation -e /opt/twostage" in flat
    assert "pip install torch" not in script and "index-url" not in script
    # The wheelhouse is fetched and hash-checked before anything is installed.
    assert script.index(f"if digest != {WHEELS_SHA!r}") < script.index(pip_lines[0])


def _bundle_check_program(script: str) -> str:
    return script.split(f"{DLAMI_PYTHON} - <<'PY'\n", 1)[1].split("\nPY", 1)[0]


class _FakeS3:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def get_object(self, Bucket: str, Key: str):  # noqa: N803 - boto3's spelling
        return {"Body": io.BytesIO(self.body)}


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("matches", [True, False])
def test_the_bundle_is_unpacked_only_when_its_hash_matches(tmp_path, monkeypatch, matches):
    """Run the script's own Python snippet against a fake S3 (boto3 stubbed)."""
    import sys
    import types

    body = _zip({"pyproject.toml": b"[project]\n"})
    sha = hashlib.sha256(body).hexdigest() if matches else "cd" * 32
    boot = Bootstrap(**{**BOOT.__dict__, "source_sha256": sha})
    program = _bundle_check_program(render_user_data(boot)).replace(
        "'/opt/twostage'", repr(str(tmp_path))
    )
    fake = types.ModuleType("boto3")
    fake.client = lambda name: _FakeS3(body)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "boto3", fake)
    if matches:
        exec(compile(program, "user-data", "exec"), {})
        assert (tmp_path / "pyproject.toml").read_bytes() == b"[project]\n"
    else:
        with pytest.raises(SystemExit, match="refusing to run it"):
            exec(compile(program, "user-data", "exec"), {})
        assert not (tmp_path / "pyproject.toml").exists()


def test_the_wheelhouse_is_unpacked_only_when_its_hash_matches(tmp_path, monkeypatch):
    import sys
    import tarfile
    import types

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("requirements.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x\n\n"))
    body = buf.getvalue()
    for sha, ok in ((hashlib.sha256(body).hexdigest(), True), ("cd" * 32, False)):
        script = render_user_data(Bootstrap(**{**BOOT.__dict__, "wheelhouse_sha256": sha}))
        program = script.split(f"{DLAMI_PYTHON} - <<'PY'\n")[2].split("\nPY", 1)[0]
        program = program.replace("'/opt/twostage-wheelhouse'", repr(str(tmp_path)))
        fake = types.ModuleType("boto3")
        fake.client = lambda name: _FakeS3(body)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "boto3", fake)
        if ok:
            exec(compile(program, "user-data", "exec"), {})
            assert (tmp_path / "requirements.txt").read_bytes() == b"x\n\n"
        else:
            (tmp_path / "requirements.txt").unlink()
            with pytest.raises(SystemExit, match="wheelhouse sha256 .* refusing to run it"):
                exec(compile(program, "user-data", "exec"), {})
            assert not (tmp_path / "requirements.txt").exists()


def test_a_wheelhouse_without_its_hash_is_refused():
    with pytest.raises(ValueError, match="wheelhouse needs its sha256"):
        Bootstrap(**{**BOOT.__dict__, "wheelhouse_sha256": ""})


def test_a_bundle_without_its_hash_is_refused():
    with pytest.raises(ValueError, match="sha256"):
        render_user_data(Bootstrap(**{**BOOT.__dict__, "source_sha256": None}))


def test_git_source_fetches_a_pinned_commit_never_a_branch():
    script = render_user_data(GIT)
    assert "remote add origin https://github.com/example/twostage.git" in script
    assert f"fetch --depth 1 origin {COMMIT}" in script
    assert f"checkout --force {COMMIT}" in script
    with pytest.raises(ValueError, match="40-hex commit SHA"):
        Bootstrap(**{**GIT.__dict__, "repo_ref": "main"})
    assert "AWS_DEFAULT_REGION=eu-west-1\n" in script


def test_each_role_starts_its_service():
    node, controller = render_user_data(BOOT), render_user_data(GIT)
    assert "systemctl enable --now twostage-node-agent.service" in node
    assert "systemctl enable --now twostage-controller.service" in controller
    unit = systemd_unit(GIT)
    assert f"ExecStart={VENV_PYTHON} -m trainer.launch.controller" in unit
    assert f"EnvironmentFile={ENV_FILE}" in unit and "Restart=always" in unit


def test_a_node_whose_bootstrap_fails_leaves_its_group():
    script = render_user_data(BOOT)
    assert "trap leave ERR" in script
    assert "ShouldDecrementDesiredCapacity=True" in script
    assert "trap leave ERR" not in render_user_data(GIT)


def test_a_source_is_required():
    with pytest.raises(ValueError, match="source"):
        render_user_data(
            Bootstrap("node", "c", "b", "s3://b/runs", "us-east-1", "c-nodes", **WHEELS)
        )


def test_shell_metacharacters_never_reach_the_env_file():
    evil = Bootstrap(**{**BOOT.__dict__, "cluster": "c$(reboot)"})
    with pytest.raises(ValueError, match="TWOSTAGE_CLUSTER"):
        render_user_data(evil)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("boot", [BOOT, GIT], ids=["node-bundle", "controller-git"])
def test_bash_parses_the_script(boot, tmp_path):
    path = tmp_path / "user-data.sh"
    path.write_text(render_user_data(boot))
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
