"""Node bootstrap script (EC2 user data), rendered by a pure function and tested as text.

cloud-init runs it once, as root, on first boot of a DLAMI node. It writes the node's
environment first (so SSM commands can read it even if the install fails), prepares local
scratch on the instance NVMe, makes sure the SSM agent runs, then installs the project into
``/opt/twostage`` with a venv built on the DLAMI's own PyTorch (``--system-site-packages``, so
its CUDA build of torch is reused, never downloaded again).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from artifacts.node import (
    BOOT_LOG as LOG_FILE,
)
from artifacts.node import (
    DLAMI_PYTHON,
    ENV_BUCKET,
    ENV_CLUSTER,
    ENV_FILE,
    ENV_NODE_COUNT,
    ENV_NODE_INDEX,
    ENV_PYTHON,
    ENV_RUN_PREFIX,
    ENV_SCRATCH,
    PROJECT_DIR,
    READY_MARKER,
    SCRATCH_DIR,
    VENV_PYTHON,
)

__all__ = ["DLAMI_PYTHON", "ENV_FILE", "LOG_FILE", "READY_MARKER", "SCRATCH_DIR", "VENV_PYTHON"]

# Values go into an env file read both by systemd and by `source`; keep them shell-inert.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._:/@+=-]*$")


@dataclass(frozen=True)
class NodeBootstrap:
    """What one node needs to know about itself at boot."""

    cluster: str
    node_index: int
    node_count: int
    bucket: str
    run_prefix: str
    region: str
    repo_url: str | None = None
    """Git HTTPS URL to clone; when None the source bundle at ``source_uri`` is used."""
    repo_ref: str = "main"
    source_uri: str | None = None
    """``s3://bucket/key`` of the zipped checkout uploaded by ``pulumi up``."""

    def env(self) -> dict[str, str]:
        """The ``/etc/twostage/node.env`` contents (contract keys first)."""
        return {
            ENV_CLUSTER: self.cluster,
            ENV_NODE_INDEX: str(self.node_index),
            ENV_BUCKET: self.bucket,
            ENV_RUN_PREFIX: self.run_prefix,
            "AWS_DEFAULT_REGION": self.region,
            ENV_NODE_COUNT: str(self.node_count),
            ENV_SCRATCH: SCRATCH_DIR,
            ENV_PYTHON: VENV_PYTHON,
        }


def render_env_file(boot: NodeBootstrap) -> str:
    """``KEY=value`` lines; refuses a value that a shell would interpret."""
    lines = []
    for key, value in boot.env().items():
        if not _SAFE_VALUE.match(value):
            raise ValueError(f"unsafe value for {key}: {value!r}")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _fetch_source(boot: NodeBootstrap) -> str:
    if boot.repo_url:
        url, ref = shlex.quote(boot.repo_url), shlex.quote(boot.repo_ref)
        return f"""\
if [ ! -d {PROJECT_DIR}/.git ]; then
  git init -q {PROJECT_DIR}
  git -C {PROJECT_DIR} remote add origin {url}
fi
git -C {PROJECT_DIR} fetch --depth 1 origin {ref}
git -C {PROJECT_DIR} checkout --force FETCH_HEAD"""
    if not boot.source_uri or not boot.source_uri.startswith("s3://"):
        raise ValueError("either repo_url or an s3:// source_uri is required")
    bucket, _, key = boot.source_uri[len("s3://") :].partition("/")
    # boto3 ships in the DLAMI's PyTorch env; the node role may read this bucket only.
    return f"""\
mkdir -p {PROJECT_DIR}
{DLAMI_PYTHON} - <<'PY'
import io, zipfile, boto3
body = boto3.client("s3").get_object(Bucket={bucket!r}, Key={key!r})["Body"].read()
zipfile.ZipFile(io.BytesIO(body)).extractall({PROJECT_DIR!r})
PY"""


def render_user_data(boot: NodeBootstrap) -> str:
    """The complete bash user-data script for one node."""
    env_file = render_env_file(boot)
    return f"""\
#!/bin/bash
# twostage node bootstrap ({boot.cluster} node {boot.node_index}); log: {LOG_FILE}
set -euxo pipefail
exec > >(tee -a {LOG_FILE}) 2>&1

# 1. The node's identity, written before anything can fail.
install -d -m 0755 /etc/twostage
cat > {ENV_FILE} <<'ENV'
{env_file}ENV
chmod 0644 {ENV_FILE}
set -a; . {ENV_FILE}; set +a

# 2. Local scratch for checkpoint shards on the instance NVMe (DLAMI mounts it at /opt/dlami/nvme).
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
{VENV_PYTHON} -m pip install --no-input --quiet -e {PROJECT_DIR}
{VENV_PYTHON} -c "import importlib.metadata as m, torch; print('twostage', m.version('twostage'), 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

date -u +%Y-%m-%dT%H:%M:%SZ > {READY_MARKER}
"""
