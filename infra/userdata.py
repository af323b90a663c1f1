"""Bootstrap scripts (EC2 user data) of the nodes and the controller, rendered as text by pure functions.

cloud-init runs one once, as root, on first boot. Nodes all share one script (it lives in the
launch template of the Auto Scaling group, so it names no node index: ranks are assigned per
launch from the group's InService instances). The script writes the machine's environment first
(so SSM commands can read it even if the install fails), records the instance id from IMDSv2,
prepares local scratch, makes sure the SSM agent runs, fetches the project (the source bundle,
**verified against the SHA-256 that ``pulumi up`` computed**, or a pinned git commit) and the
hash-locked wheelhouse (**verified the same way**), installs the wheelhouse with
``pip install --no-index --require-hashes --no-deps`` into a venv on the DLAMI's own PyTorch —
no package index is ever asked — and starts the machine's service:

- a node runs ``python -m trainer.launch.node_agent``, the dead-man switch that takes the node out
  of its group when nothing uses it (see docs/operations.md);
- the controller runs ``python -m trainer.launch.controller``, the watch loop in the cloud.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from artifacts.node import BOOT_LOG as LOG_FILE
from artifacts.node import (
    DLAMI_PYTHON,
    ENV_BUCKET,
    ENV_CLUSTER,
    ENV_FILE,
    ENV_GROUP,
    ENV_INSTANCE_ID,
    ENV_PYTHON,
    ENV_ROLE,
    ENV_RUN_PREFIX,
    ENV_SCRATCH,
    PROJECT_DIR,
    READY_MARKER,
    ROLE_CONTROLLER,
    ROLE_NODE,
    SCRATCH_DIR,
    VENV_PYTHON,
)

__all__ = [
    "DLAMI_PYTHON",
    "ENV_FILE",
    "LOG_FILE",
    "READY_MARKER",
    "ROLE_CONTROLLER",
    "ROLE_NODE",
    "SCRATCH_DIR",
    "VENV_PYTHON",
    "Bootstrap",
    "render_env_file",
    "render_user_data",
    "systemd_unit",
]
#: The systemd service each role runs once installed (module, unit name).
SERVICES = {
    ROLE_NODE: ("trainer.launch.node_agent", "twostage-node-agent"),
    ROLE_CONTROLLER: ("trainer.launch.controller", "twostage-controller"),
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA = re.compile(r"^[0-9a-f]{40}$")
#: Where the verified wheelhouse is unpacked on a machine.
WHEELHOUSE_DIR = "/opt/twostage-wheelhouse"
# Values go into an env file read both by systemd and by `source`; keep them shell-inert.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._:/@+=,-]*$")


@dataclass(frozen=True)
class Bootstrap:
    """What a machine of the cluster needs to know at boot (the same for every node)."""

    role: str
    """``node`` or ``controller``."""
    cluster: str
    bucket: str
    run_prefix: str
    region: str
    group_name: str
    """The nodes' Auto Scaling group (a node leaves it; the controller scales it)."""
    repo_url: str | None = None
    """Git HTTPS URL to clone; when None the source bundle at ``source_uri`` is used."""
    repo_ref: str | None = None
    """The full commit SHA to check out (git mode never follows a branch)."""
    source_uri: str | None = None
    """``s3://bucket/key`` of the zipped checkout uploaded by ``pulumi up``."""
    source_sha256: str | None = None
    """SHA-256 of that zip: a bundle that does not match is never unpacked."""
    wheelhouse_uri: str = ""
    """``s3://bucket/key`` of the wheelhouse tar (wheels + requirements.txt with their hashes)."""
    wheelhouse_sha256: str = ""
    """Its SHA-256: a wheelhouse that does not match is never installed."""
    extra_env: tuple[tuple[str, str], ...] = ()
    """More ``KEY=value`` lines (the controller's node count, types, prices)."""

    def __post_init__(self) -> None:
        if self.role not in SERVICES:
            raise ValueError(f"unknown role {self.role!r}")
        if not self.wheelhouse_uri.startswith("s3://"):
            raise ValueError("the wheelhouse needs an s3:// URI")
        if not _SHA256.match(self.wheelhouse_sha256):
            raise ValueError("the wheelhouse needs its sha256 (64 lowercase hex digits)")
        if self.repo_url and not (self.repo_ref and _GIT_SHA.match(self.repo_ref)):
            raise ValueError("git mode needs a full 40-hex commit SHA, never a branch")

    def env(self) -> dict[str, str]:
        """The ``/etc/twostage/node.env`` contents (contract keys first)."""
        return {
            ENV_CLUSTER: self.cluster,
            ENV_ROLE: self.role,
            ENV_BUCKET: self.bucket,
            ENV_RUN_PREFIX: self.run_prefix,
            ENV_GROUP: self.group_name,
            "AWS_DEFAULT_REGION": self.region,
            ENV_SCRATCH: SCRATCH_DIR,
            ENV_PYTHON: VENV_PYTHON,
            **dict(self.extra_env),
        }


def render_env_file(boot: Bootstrap) -> str:
    """``KEY=value`` lines; refuses a value that a shell would interpret."""
    lines = []
    for key, value in boot.env().items():
        if not _SAFE_VALUE.match(value):
            raise ValueError(f"unsafe value for {key}: {value!r}")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _fetch_source(boot: Bootstrap) -> str:
    if boot.repo_url:
        url, ref = shlex.quote(boot.repo_url), shlex.quote(boot.repo_ref)
        return f"""\
if [ ! -d {PROJECT_DIR}/.git ]; then
  git init -q {PROJECT_DIR}
  git -C {PROJECT_DIR} remote add origin {url}
fi
git -C {PROJECT_DIR} fetch --depth 1 origin {ref}
git -C {PROJECT_DIR} checkout --force {ref}
test "$(git -C {PROJECT_DIR} rev-parse HEAD)" = {ref}"""
    if not boot.source_uri or not boot.source_uri.startswith("s3://"):
        raise ValueError("either repo_url or an s3:// source_uri is required")
    if not boot.source_sha256 or not _SHA256.match(boot.source_sha256):
        raise ValueError("the source bundle needs its sha256 (64 lowercase hex digits)")
    return _fetch_verified(boot.source_uri, boot.source_sha256, "source bundle", "zip", PROJECT_DIR)


def _fetch_verified(uri: str, sha256: str, what: str, kind: str, dest: str) -> str:
    """Python (boto3 from the DLAMI) that downloads ``uri``, checks its hash, unpacks to ``dest``.

    The role may read this bucket but never write ``bootstrap/``; the hash pins the object to
    what ``pulumi up`` uploaded.
    """
    bucket, _, key = uri[len("s3://") :].partition("/")
    opener = (
        "zipfile.ZipFile(io.BytesIO(body)).extractall"
        if kind == "zip"
        else "tarfile.open(fileobj=io.BytesIO(body)).extractall"
    )
    safe = ", filter='data'" if kind == "tar" else ""  # no links or absolute paths out of dest
    return f"""\
mkdir -p {dest}
{DLAMI_PYTHON} - <<'PY'
import hashlib, io, sys, tarfile, zipfile, boto3
body = boto3.client("s3").get_object(Bucket={bucket!r}, Key={key!r})["Body"].read()
digest = hashlib.sha256(body).hexdigest()
if digest != {sha256!r}:
    sys.exit(f"{what} sha256 {{digest}} != {sha256} (expected): refusing to run it")
{opener}({dest!r}{safe})
PY"""


def _on_failure(boot: Bootstrap) -> str:
    if boot.role != ROLE_NODE:
        return "# A controller that fails here has no heartbeat: the nodes leave by themselves."
    # A node whose bootstrap failed would bill idle forever: it leaves its group (desired - 1,
    # so a deterministic failure does not loop through replacements), or powers off.
    return f"""\
leave() {{
  echo "twostage: bootstrap failed; leaving the group" >&2
  {DLAMI_PYTHON} -c "import boto3; boto3.client('autoscaling').terminate_instance_in_auto_scaling_group(InstanceId='$iid', ShouldDecrementDesiredCapacity=True)" || shutdown -h now
}}
trap leave ERR"""


def systemd_unit(boot: Bootstrap) -> str:
    """The role's service: restarted on failure, environment from the env file."""
    module, unit = SERVICES[boot.role]
    return f"""\
[Unit]
Description=twostage {boot.role} ({module})
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile={ENV_FILE}
WorkingDirectory={PROJECT_DIR}
ExecStart={VENV_PYTHON} -m {module}
Restart=always
RestartSec=30

[Install]
WantedBy=multi-user.target
"""


def render_user_data(boot: Bootstrap) -> str:
    """The complete bash user-data script."""
    env_file = render_env_file(boot)
    _, unit = SERVICES[boot.role]
    return f"""\
#!/bin/bash
# twostage {boot.role} bootstrap ({boot.cluster}); log: {LOG_FILE}
set -euxo pipefail
exec > >(tee -a {LOG_FILE}) 2>&1

# 1. The machine's identity, written before anything can fail.
install -d -m 0755 /etc/twostage
cat > {ENV_FILE} <<'ENV'
{env_file}ENV
token=$(curl -sS -X PUT http://169.254.169.254/latest/api/token \\
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
iid=$(curl -sS -H "X-aws-ec2-metadata-token: $token" \\
  http://169.254.169.254/latest/meta-data/instance-id)
echo "{ENV_INSTANCE_ID}=$iid" >> {ENV_FILE}
chmod 0644 {ENV_FILE}
set -a; . {ENV_FILE}; set +a
{_on_failure(boot)}

# 2. Local scratch (instance NVMe on GPU nodes; the DLAMI mounts it at /opt/dlami/nvme).
install -d -m 0755 {SCRATCH_DIR}

# 3. SSM agent: the only way in (no SSH by default). DLAMI Ubuntu ships it as a snap.
for unit in snap.amazon-ssm-agent.amazon-ssm-agent.service amazon-ssm-agent.service; do
  if systemctl list-unit-files "$unit" >/dev/null 2>&1; then
    systemctl enable --now "$unit" && break
  fi
done

# 4. The project, in a venv on the DLAMI's PyTorch (reuses its CUDA torch).
{_fetch_source(boot)}
if [ ! -x {VENV_PYTHON} ]; then
  {DLAMI_PYTHON} -m venv --system-site-packages {PROJECT_DIR}/.venv
fi
{_fetch_verified(boot.wheelhouse_uri, boot.wheelhouse_sha256, "wheelhouse", "tar", WHEELHOUSE_DIR)}
# Exactly the locked wheels, by hash, from the verified wheelhouse: no index, no resolution.
{VENV_PYTHON} -m pip install --no-input --quiet --no-index --find-links {WHEELHOUSE_DIR} \\
  --require-hashes --no-deps -r {WHEELHOUSE_DIR}/requirements.txt
{VENV_PYTHON} -m pip install --no-input --quiet --no-index --no-deps --no-build-isolation \\
  -e {PROJECT_DIR}
{VENV_PYTHON} -c "import importlib.metadata as m; print('twostage', m.version('twostage'))"

# 5. The {boot.role}'s service.
cat > /etc/systemd/system/{unit}.service <<'UNIT'
{systemd_unit(boot)}UNIT
systemctl daemon-reload
systemctl enable --now {unit}.service

date -u +%Y-%m-%dT%H:%M:%SZ > {READY_MARKER}
"""
