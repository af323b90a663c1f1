"""Typed stack config: every ``twostage:*`` key, parsed and validated before any resource exists.

Values come from the stack file (``Pulumi.<stack>.yaml``, set with ``pulumi config set``). The
parse is a pure function over a ``{key: str}`` mapping (:func:`parse_config`) so it is tested
without the engine; :func:`load_config` only gathers that mapping from Pulumi. A bad or unknown
key raises :class:`~infra.errors.InfraError` naming the key, so ``pulumi up`` stops before planning.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from artifacts.config import ConfigValueError, build, check
from infra.efa import efa_interfaces_for
from infra.errors import InfraError

PROJECT = "twostage"
#: Current PyTorch DLAMI with the open-source NVIDIA driver; its release notes list P4 instances,
#: Python at /opt/pytorch/bin/python and instance NVMe mounted at /opt/dlami/nvme.
DEFAULT_AMI_TYPE = "oss-nvidia-driver-gpu-pytorch-2.9-ubuntu-24.04"
MAX_NODES = 64
DEFAULT_INSTANCE_TYPE = "p4d.24xlarge"
#: Types that may share one group (and one job): 8 GPUs each, EFA, the same DLAMI.
MIXABLE_INSTANCE_TYPES = ("p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge")

_AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_AZ = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d[a-z](-[a-z0-9]+)*$")
_CLUSTER = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_BUCKET_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,36}$")
_AMI_TYPE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_SSM_PARAM = re.compile(r"^/[A-Za-z0-9_.\-/]+$")
_VPC = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_GIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_REPO_URL = re.compile(r"^https://[A-Za-z0-9.-]+(:\d+)?/[A-Za-z0-9._~/-]+$")
_PRINCIPAL = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[A-Za-z0-9+=,.@_/-]{1,512}$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9 ._:/()#,@\[\]+=&;{}!$*-]{1,255}$")


def _key(
    lo: int | None = None,
    hi: int | None = None,
    pattern: re.Pattern[str] | None = None,
    what: str = "",
) -> dict[str, object]:
    """Field metadata the shared loader checks (:mod:`artifacts.config`)."""
    meta: dict[str, object] = {}
    if lo is not None:
        meta["min"] = lo
    if hi is not None:
        meta["max"] = hi
    if pattern is not None:
        meta.update(pattern=pattern.pattern.strip("^$"), what=what)
    return meta


@dataclass(frozen=True)
class StackConfig:
    """Everything ``infra/__main__.py`` needs, typed. Field ``foo_bar`` is stack key ``twostage:fooBar``.

    Each field's metadata carries the range or pattern the shared loader enforces; rules that
    span fields are in ``__post_init__``.
    """

    cluster_name: str = field(
        metadata=_key(pattern=_CLUSTER, what="2-32 chars of a-z, 0-9 and '-'")
    )
    """Names every resource and the ``twostage:cluster`` tag. Default ``twostage-<stack>``."""
    node_count: int = field(default=1, metadata=_key(1, MAX_NODES))
    """Number of GPU nodes (1..64); node 0 is the head node."""
    instance_type: str = field(
        default=DEFAULT_INSTANCE_TYPE,
        metadata=_key(pattern=_INSTANCE_TYPE, what="an EC2 instance type"),
    )
    """EC2 instance type of every node (8x A100 40 GB by default)."""
    spot: bool = True
    """Request spot capacity (one-time, terminate on interruption); false for on-demand."""
    spot_max_price: str | None = None
    """Highest USD/hour to pay for spot; unset means up to the on-demand price."""
    root_volume_gb: int = field(default=1000, metadata=_key(100, 16384))
    """Size of each node's encrypted gp3 root volume in GiB."""
    ami_id: str | None = field(
        default=None, metadata=_key(pattern=_AMI_ID, what="an AMI id like ami-0123456789abcdef0")
    )
    """The pinned AMI of every node and the controller (required by ``pulumi up``);
    ``python -m infra.pin_ami`` resolves the DLAMI named by ``amiSsmParameter``/``amiType``."""
    ami_type: str = field(
        default=DEFAULT_AMI_TYPE, metadata=_key(pattern=_AMI_TYPE, what="a DLAMI type")
    )
    """DLAMI type in ``/aws/service/deeplearning/ami/x86_64/<amiType>/latest/ami-id`` (for pinning)."""
    ami_ssm_parameter: str | None = field(
        default=None, metadata=_key(pattern=_SSM_PARAM, what="an SSM parameter path")
    )
    """Full public SSM parameter holding the AMI id to pin; overrides ``amiType``."""
    availability_zone: str | None = field(
        default=None, metadata=_key(pattern=_AZ, what="an AZ name like us-east-1a")
    )
    """AZ for subnet, nodes and placement group; unset picks one that offers the instance type."""
    vpc_id: str | None = field(
        default=None, metadata=_key(pattern=_VPC, what="a VPC id like vpc-0123abcd")
    )
    """Existing VPC to use (with ``subnetId``); unset creates a dedicated VPC."""
    subnet_id: str | None = field(
        default=None, metadata=_key(pattern=_SUBNET, what="a subnet id like subnet-0123abcd")
    )
    """Existing subnet for the nodes (with ``vpcId``); it must already reach S3, SSM and the internet."""
    admin_cidr: str | None = None
    """CIDR allowed to SSH (port 22); unset means no SSH rule. World-open ranges are refused."""
    key_name: str | None = field(
        default=None, metadata=_key(pattern=_KEY_NAME, what="an EC2 key pair name")
    )
    """EC2 key pair for SSH; only useful together with ``adminCidr``."""
    bucket_prefix: str = field(
        default="twostage-",
        metadata=_key(pattern=_BUCKET_PREFIX, what="1-37 chars of a-z, 0-9, '-'"),
    )
    """Prefix of the generated bucket name (AWS appends a unique suffix); at most 37 chars."""
    bucket_force_destroy: bool = False
    """Let ``pulumi destroy`` delete a non-empty bucket (all checkpoints and models)."""
    checkpoint_retention_days: int = field(default=30, metadata=_key(1, 3650))
    """Days a deleted or overwritten object's old version is kept before S3 expires it."""
    repo_url: str | None = field(
        default=None, metadata=_key(pattern=_REPO_URL, what="an https:// git URL")
    )
    """HTTPS git URL the nodes clone; unset uploads this checkout's source to the bucket instead."""
    repo_ref: str | None = field(
        default=None, metadata=_key(pattern=_GIT_SHA, what="a full 40-hex commit SHA")
    )
    """The commit the nodes check out when ``repoUrl`` is set: a full SHA, never a branch (a
    replacement node on day 3 must run what its peers run)."""
    efa_interfaces: int | None = field(default=None, metadata=_key(0, 32))
    """EFA interfaces per node; unset uses the instance type's maximum (4 on p4d.24xlarge)."""
    instance_types: tuple[str, ...] = ()
    """Allowed node types (comma-separated) for the Auto Scaling group to pick from with the
    ``price-capacity-optimized`` spot strategy; unset means ``instanceType`` only."""
    controller_instance_type: str = field(
        default="t3.small", metadata=_key(pattern=_INSTANCE_TYPE, what="an EC2 instance type")
    )
    """On-demand instance type of the controller that supervises runs in the cloud (no GPU)."""
    allow_internet_egress: bool = False
    """Opt-in: a NAT gateway and HTTPS to anywhere for nodes and controller (the older layout).
    Off: no route to the internet; S3 and the AWS APIs through VPC endpoints only."""
    allow_dirty: bool = False
    """Let ``pulumi up`` bundle uncommitted changes to tracked files (recorded in ``BUNDLE.json``)."""
    wheelhouse: str = ""
    """Folder of the hash-locked wheelhouse (``invoke wheelhouse``); empty: ``build/wheelhouse``."""
    owner_principal_arn: str | None = field(
        default=None,
        metadata=_key(
            pattern=_PRINCIPAL, what="an IAM role or user ARN (arn:aws:iam::<account>:role/...)"
        ),
    )
    """The owner's IAM role or user, named in the bucket key's policy besides whoever runs
    ``pulumi up`` (``invoke pretrain`` uploads, ``invoke download`` reads); unset: the deployer only."""

    def __post_init__(self) -> None:
        if self.spot_max_price is not None:
            try:
                price = float(self.spot_max_price)
            except ValueError:
                raise ConfigValueError(
                    "spotMaxPrice", f"must be a USD/hour number, got {self.spot_max_price!r}"
                ) from None
            check(price > 0, "spotMaxPrice", f"must be greater than 0, got {self.spot_max_price!r}")
            object.__setattr__(self, "spot_max_price", f"{price:g}")
        if self.admin_cidr is not None:
            object.__setattr__(self, "admin_cidr", _admin_cidr(self.admin_cidr))
        if (self.vpc_id is None) != (self.subnet_id is None):
            missing = "subnetId" if self.subnet_id is None else "vpcId"
            raise ConfigValueError(
                missing, "vpcId and subnetId must be set together (an existing network)"
            )
        check(
            self.spot_max_price is None or self.spot,
            "spotMaxPrice",
            "only applies with twostage:spot true",
        )
        check(
            self.key_name is None or self.admin_cidr is not None,
            "keyName",
            "a key pair is only useful with twostage:adminCidr (SSH ingress)",
        )
        if self.instance_types:
            types = tuple(dict.fromkeys(self.instance_types))
            for t in types:
                check(
                    t in MIXABLE_INSTANCE_TYPES,
                    "instanceTypes",
                    f"{t} cannot share a group; allowed: {', '.join(MIXABLE_INSTANCE_TYPES)}",
                )
            # instanceType still at its default is simply superseded by the list.
            check(
                self.instance_type in (DEFAULT_INSTANCE_TYPE, *types),
                "instanceType",
                f"{self.instance_type} is not in twostage:instanceTypes",
            )
            object.__setattr__(self, "instance_types", types)
            object.__setattr__(self, "instance_type", types[0])
        if self.repo_url is not None:
            check(
                self.repo_ref is not None,
                "repoRef",
                "repoUrl needs the full commit SHA the nodes run (git rev-parse HEAD)",
            )
            check(
                self.allow_internet_egress,
                "repoUrl",
                "nodes without internet egress cannot clone; leave repoUrl empty (the bundle is "
                "this checkout's commit) or set twostage:allowInternetEgress true",
            )
        # Raises InfraError naming twostage:efaInterfaces when a type cannot take that many.
        efa_interfaces_for(self.allowed_instance_types, self.efa_interfaces)

    @property
    def ami_parameter_name(self) -> str:
        """The public SSM parameter that holds the default AMI id."""
        if self.ami_ssm_parameter:
            return self.ami_ssm_parameter
        return f"/aws/service/deeplearning/ami/x86_64/{self.ami_type}/latest/ami-id"

    @property
    def uses_existing_network(self) -> bool:
        return self.subnet_id is not None

    @property
    def allowed_instance_types(self) -> tuple[str, ...]:
        """The node types the group may launch, ``instanceType`` first."""
        return self.instance_types or (self.instance_type,)


def key_of(field_name: str) -> str:
    """``node_count`` -> ``nodeCount`` (the stack key spelling)."""
    head, *rest = field_name.split("_")
    return head + "".join(part.capitalize() for part in rest)


#: Stack keys in declaration order, e.g. ``nodeCount``; the documented set in Pulumi.yaml.
KEYS: tuple[str, ...] = tuple(key_of(f.name) for f in fields(StackConfig))


def _message(key: str, message: str) -> str:
    return (
        f"{PROJECT}:{key}: {message} (fix it with `pulumi config set {PROJECT}:{key} ...` "
        f"or in Pulumi.<stack>.yaml)"
    )


def _admin_cidr(raw: str) -> str:
    try:
        net = ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        raise ConfigValueError(
            "adminCidr", f"must be a CIDR such as 203.0.113.7/32, got {raw!r}"
        ) from None
    if net.prefixlen == 0:
        raise ConfigValueError(
            "adminCidr", f"{net} opens SSH to the whole internet; use your own /32"
        )
    widest = 8 if net.version == 4 else 32
    if net.prefixlen < widest:
        raise ConfigValueError(
            "adminCidr", f"{net} is too broad (wider than /{widest}); use your own /32"
        )
    return str(net)


def require_pinned_ami(cfg: StackConfig) -> str:
    """The pinned AMI id, or an error saying how to pin it.

    The AMI is resolved once (``python -m infra.pin_ami``) and kept in the stack config, so a new
    DLAMI release never changes the launch template on a routine ``pulumi up``: only an explicit
    ``pulumi config set twostage:amiId`` does.
    """
    if cfg.ami_id is None:
        raise InfraError(
            _message(
                "amiId",
                f"no AMI pinned; resolve the current one from {cfg.ami_parameter_name} once with "
                "`python -m infra.pin_ami`",
            )
        )
    return cfg.ami_id


def default_cluster_name(stack: str) -> str:
    """``twostage-<stack>`` squeezed into the cluster-name alphabet."""
    slug = re.sub(r"[^a-z0-9-]+", "-", stack.lower()).strip("-") or "dev"
    return f"{PROJECT}-{slug}"[:32].rstrip("-")


def parse_config(values: Mapping[str, str], *, stack: str) -> StackConfig:
    """Build a :class:`StackConfig` from raw ``{key: value}`` strings (keys without namespace).

    Unknown keys are errors (with a suggestion), as are out-of-range or malformed values; the
    shared loader (:mod:`artifacts.config`) does the typing, the field metadata the ranges.
    """
    data = dict(values)
    if not str(data.get("clusterName") or "").strip():
        data["clusterName"] = default_cluster_name(stack)
    return build(
        StackConfig,
        data,
        source=f"stack {stack}",
        error=InfraError,
        strings=True,
        key_of=key_of,
        prefix=f"{PROJECT}:",
        message=lambda key, msg: _message(key.removeprefix(f"{PROJECT}:"), msg),
    )


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
