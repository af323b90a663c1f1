"""EFA interfaces per instance type: the launch template's count fits every allowed type."""

from __future__ import annotations

import pytest

from infra.efa import efa_interface_count, efa_interfaces_for
from infra.errors import InfraError


def test_efa_interfaces_per_instance_type():
    assert efa_interface_count("p4d.24xlarge") == 4
    assert efa_interface_count("p5.48xlarge") == 32
    assert efa_interface_count("g5.12xlarge") == 0
    assert efa_interface_count("p4d.24xlarge", override=1) == 1
    assert efa_interface_count("p4d.24xlarge", override=0) == 0
    assert efa_interfaces_for(["p5.48xlarge", "p4de.24xlarge"]) == 4


@pytest.mark.parametrize(
    ("types", "override"),
    [(["p4d.24xlarge"], 8), (["p5.48xlarge", "p4d.24xlarge"], 32), (["g5.12xlarge"], 1)],
)
def test_efa_count_beyond_the_type_is_refused(types, override):
    with pytest.raises(InfraError, match="^twostage:efaInterfaces:"):
        efa_interfaces_for(types, override)
