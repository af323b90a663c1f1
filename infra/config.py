"""Typed stack config: every ``twostage:*`` key, parsed and validated before any resource exists.

Values come from the stack file (``Pulumi.<stack>.yaml``, set with ``pulumi config set``). The
parse is a pure function over a ``{key: str}`` mapping (:func:`parse_config`) so it is tested
without the engine; :func:`load_config` only gathers that mapping from Pulumi. A bad or unknown
key raises :class:`~infra.errors.InfraError` naming the key, so ``pulumi up`` stops before planning.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from infra.errors import InfraError

PROJECT = "twostage"
#: Current PyTorch DLAMI with the open-source NVIDIA driver; its release notes list P4 instances,
#: Python at /opt/pytorch/bin/python and instance NVMe mounted at /opt/dlami/nvme.
DEFAULT_AMI_TYPE = "oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04"
MAX_NODES = 64

_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_AZ = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d[a-z](-[a-z0-9]+)*$")
_CLUSTER = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_BUCKET_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,36}$")
_AMI_TYPE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_SSM_PARAM = re.compile(r"^/[A-Za-z0-9_.\-/]+$")
_VPC = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_GIT_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")
_REPO_URL = re.compile(r"^https://[A-Za-z0-9.-]+(:\d+)?/[A-Za-z0-9._~/-]+$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9 ._:/()#,@\[\]+=&;{}!$*-]{1,255}$")


@dataclass(frozen=True)
class StackConfig:
    """Everything ``infra/__main__.py`` needs, typed. Field ``foo_bar`` is stack key ``twostage:fooBar``."""

    cluster_name: str
    """Names every resource and the ``twostage:cluster`` tag. Default ``twostage-<stack>``."""
    node_count: int = 1
    """Number of GPU nodes (1..64); node 0 is the head node."""
    instance_type: str = "p4d.24xlarge"
    """EC2 instance type of every node (8x A100 40 GB by default)."""
    spot: bool = True
    """Request spot capacity (one-time, terminate on interruption); false for on-demand."""
    spot_max_price: str | None = None
    """Highest USD/hour to pay for spot; unset means up to the on-demand price."""
    root_volume_gb: int = 1000
    """Size of each node's encrypted gp3 root volume in GiB."""
    ami_id: str | None = None
    """Explicit AMI; unset means the latest DLAMI named by ``amiSsmParameter``/``amiType``."""
    ami_type: str = DEFAULT_AMI_TYPE
    """DLAMI type in ``/aws/service/deeplearning/ami/x86_64/<amiType>/latest/ami-id``."""
    ami_ssm_parameter: str | None = None
    """Full public SSM parameter holding the AMI id; overrides ``amiType``."""
    availability_zone: str | None = None
    """AZ for subnet, nodes and placement group; unset picks one that offers the instance type."""
    vpc_id: str | None = None
    """Existing VPC to use (with ``subnetId``); unset creates a dedicated VPC."""
    subnet_id: str | None = None
    """Existing subnet for the nodes (with ``vpcId``); it must already reach S3, SSM and the internet."""
    admin_cidr: str | None = None
    """CIDR allowed to SSH (port 22); unset means no SSH rule. World-open ranges are refused."""
    key_name: str | None = None
    """EC2 key pair for SSH; only useful together with ``adminCidr``."""
    bucket_prefix: str = "twostage-"
    """Prefix of the generated bucket name (AWS appends a unique suffix); at most 37 chars."""
    bucket_force_destroy: bool = False
    """Let ``pulumi destroy`` delete a non-empty bucket (all checkpoints and models)."""
    checkpoint_retention_days: int = 30
    """Days a deleted or overwritten object's old version is kept before S3 expires it."""
    repo_url: str | None = None
    """HTTPS git URL the nodes clone; unset uploads this checkout's source to the bucket instead."""
    repo_ref: str = "main"
    """Branch, tag or commit the nodes check out when ``repoUrl`` is set."""
    efa_interfaces: int | None = None
    """EFA interfaces per node; unset uses the instance type's maximum (4 on p4d.24xlarge)."""

    @property
    def ami_parameter_name(self) -> str:
        """The public SSM parameter that holds the default AMI id."""
        if self.ami_ssm_parameter:
            return self.ami_ssm_parameter
        return f"/aws/service/deeplearning/ami/x86_64/{self.ami_type}/latest/ami-id"

    @property
    def uses_existing_network(self) -> bool:
        return self.subnet_id is not None


def key_of(field_name: str) -> str:
    """``node_count`` -> ``nodeCount`` (the stack key spelling)."""
    head, *rest = field_name.split("_")
    return head + "".join(part.capitalize() for part in rest)


#: Stack keys in declaration order, e.g. ``nodeCount``; the documented set in Pulumi.yaml.
KEYS: tuple[str, ...] = tuple(key_of(f.name) for f in fields(StackConfig))


def _fail(key: str, message: str) -> InfraError:
    return InfraError(
        f"{PROJECT}:{key}: {message} (fix it with `pulumi config set {PROJECT}:{key} ...` "
        f"or in Pulumi.<stack>.yaml)"
    )


def _int(values: Mapping[str, str], key: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = values.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise _fail(key, f"must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise _fail(key, f"must be between {lo} and {hi}, got {value}")
    return value


def _bool(values: Mapping[str, str], key: str, default: bool) -> bool:
    raw = values.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise _fail(key, f"must be true or false, got {raw!r}")


def _str(values: Mapping[str, str], key: str, pattern: re.Pattern[str], what: str) -> str | None:
    raw = values.get(key)
    if raw is None or str(raw).strip() == "":
        return None
    text = str(raw).strip()
    if not pattern.match(text):
        raise _fail(key, f"must be {what}, got {text!r}")
    return text


def _admin_cidr(values: Mapping[str, str]) -> str | None:
    raw = values.get("adminCidr")
    if raw is None or str(raw).strip() == "":
        return None
    try:
        net = ipaddress.ip_network(str(raw).strip(), strict=False)
    except ValueError:
        raise _fail("adminCidr", f"must be a CIDR such as 203.0.113.7/32, got {raw!r}") from None
    if net.prefixlen == 0:
        raise _fail("adminCidr", f"{net} opens SSH to the whole internet; use your own /32")
    widest = 8 if net.version == 4 else 32
    if net.prefixlen < widest:
        raise _fail("adminCidr", f"{net} is too broad (wider than /{widest}); use your own /32")
    return str(net)


def default_cluster_name(stack: str) -> str:
    """``twostage-<stack>`` squeezed into the cluster-name alphabet."""
    slug = re.sub(r"[^a-z0-9-]+", "-", stack.lower()).strip("-") or "dev"
    return f"{PROJECT}-{slug}"[:32].rstrip("-")


def parse_config(values: Mapping[str, str], *, stack: str) -> StackConfig:
    """Build a :class:`StackConfig` from raw ``{key: value}`` strings (keys without namespace).

    Unknown keys are errors (with a suggestion), as are out-of-range or malformed values.
    """
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, KEYS, n=1)
        hint = (
            f"; did you mean {PROJECT}:{close[0]}?" if close else f"; known keys: {', '.join(KEYS)}"
        )
        raise InfraError(f"{PROJECT}:{key}: unknown config key{hint}")

    cluster = _str(values, "clusterName", _CLUSTER, "2-32 chars of a-z, 0-9 and '-'")
    spot_max = values.get("spotMaxPrice")
    if spot_max is not None and str(spot_max).strip() != "":
        try:
            price = float(spot_max)
        except ValueError:
            raise _fail("spotMaxPrice", f"must be a USD/hour number, got {spot_max!r}") from None
        if not price > 0:
            raise _fail("spotMaxPrice", f"must be greater than 0, got {spot_max!r}")
        spot_max = f"{price:g}"
    else:
        spot_max = None

    cfg = StackConfig(
        cluster_name=cluster or default_cluster_name(stack),
        node_count=_int(values, "nodeCount", 1, 1, MAX_NODES),
        instance_type=_str(values, "instanceType", _INSTANCE_TYPE, "an EC2 instance type")
        or "p4d.24xlarge",
        spot=_bool(values, "spot", True),
        spot_max_price=spot_max,
        root_volume_gb=_int(values, "rootVolumeGb", 1000, 100, 16384),
        ami_id=_str(values, "amiId", _AMI_ID, "an AMI id like ami-0123456789abcdef0"),
        ami_type=_str(values, "amiType", _AMI_TYPE, "a DLAMI type") or DEFAULT_AMI_TYPE,
        ami_ssm_parameter=_str(values, "amiSsmParameter", _SSM_PARAM, "an SSM parameter path"),
        availability_zone=_str(values, "availabilityZone", _AZ, "an AZ name like us-east-1a"),
        vpc_id=_str(values, "vpcId", _VPC, "a VPC id like vpc-0123abcd"),
        subnet_id=_str(values, "subnetId", _SUBNET, "a subnet id like subnet-0123abcd"),
        admin_cidr=_admin_cidr(values),
        key_name=_str(values, "keyName", _KEY_NAME, "an EC2 key pair name"),
        bucket_prefix=_str(values, "bucketPrefix", _BUCKET_PREFIX, "1-37 chars of a-z, 0-9, '-'")
        or "twostage-",
        bucket_force_destroy=_bool(values, "bucketForceDestroy", False),
        checkpoint_retention_days=_int(values, "checkpointRetentionDays", 30, 1, 3650),
        repo_url=_str(values, "repoUrl", _REPO_URL, "an https:// git URL"),
        repo_ref=_str(values, "repoRef", _GIT_REF, "a branch, tag or commit") or "main",
        efa_interfaces=_int(values, "efaInterfaces", None, 0, 32),
    )
    if (cfg.vpc_id is None) != (cfg.subnet_id is None):
        missing = "subnetId" if cfg.subnet_id is None else "vpcId"
        raise _fail(missing, "vpcId and subnetId must be set together (an existing network)")
    if cfg.spot_max_price is not None and not cfg.spot:
        raise _fail("spotMaxPrice", "only applies with twostage:spot true")
    if cfg.key_name is not None and cfg.admin_cidr is None:
        raise _fail("keyName", "a key pair is only useful with twostage:adminCidr (SSH ingress)")
    return cfg


def load_config() -> StackConfig:
    """Read the ``twostage:*`` keys of the running stack and parse them (needs the Pulumi engine)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    prefix = f"{PROJECT}:"
    # The engine hands config over as PULUMI_CONFIG (JSON); tests and the SDK may set it directly.
    merged = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    values = {key[len(prefix) :]: value for key, value in merged.items() if key.startswith(prefix)}
    # Values set as `pulumi config set --path` or objects arrive JSON-encoded; every key here is a
    # scalar, so a plain str() of anything else is reported by the validators above.
    return parse_config(values, stack=pulumi.get_stack())
