"""EFA interfaces per instance type: a hardware fact the launch template and the stack config check.

Pure (tested without the Pulumi engine). It lives apart from the IAM documents
(:mod:`infra.policies`) because it is about the machines, not about who may do what: the stack
config refuses an ``efaInterfaces`` override a type cannot carry (:mod:`infra.config`), and the
compute component sizes the launch template's network interfaces with it (:mod:`infra.compute`).
"""

from __future__ import annotations

from collections.abc import Sequence

from infra.errors import InfraError

#: EFA interfaces an instance type supports (one per network card where it has several).
#: Types not listed support none. Source: EC2 "Elastic Fabric Adapter" supported instance types
#: and the "network cards" column of each type's specifications.
EFA_INTERFACES = {
    "p4d.24xlarge": 4,
    "p4de.24xlarge": 4,
    "p5.48xlarge": 32,
    "p5e.48xlarge": 32,
    "p5en.48xlarge": 16,
    "p3dn.24xlarge": 1,
    "g5.48xlarge": 1,
    "g6.48xlarge": 1,
    "g6e.48xlarge": 4,
    "trn1.32xlarge": 8,
}


def efa_interface_count(instance_type: str, override: int | None = None) -> int:
    """EFA interfaces for one type: the override when given, else the type's maximum (0 if none)."""
    return efa_interfaces_for([instance_type], override)


def efa_interfaces_for(instance_types: Sequence[str], override: int | None = None) -> int:
    """EFA interfaces for a launch template shared by ``instance_types``, validated.

    One template serves every allowed type, so the count must fit the smallest of them: 32 on a
    p5 would make every p4d launch fail at RunInstances (4 network cards). An override above what
    a type supports is refused here, before anything is planned.
    """
    if not instance_types:
        raise ValueError("no instance type")
    supported = min(EFA_INTERFACES.get(t, 0) for t in instance_types)
    if override is None:
        return supported
    if override > supported:
        worst = min(instance_types, key=lambda t: EFA_INTERFACES.get(t, 0))
        raise InfraError(
            f"twostage:efaInterfaces: {override} EFA interfaces, but {worst} supports "
            f"{EFA_INTERFACES.get(worst, 0)} (fix it with `pulumi config set "
            f"twostage:efaInterfaces {supported}` or leave it empty for the maximum)"
        )
    return override
