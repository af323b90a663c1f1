"""Rank assignment, the shared launch spec and the network environment: pure checks."""

from __future__ import annotations

import pytest

from trainer.launch import LaunchError
from trainer.launch.node_script import node_scripts
from trainer.launch.ranks import LaunchSpec, Node, assign_ranks, make_spec, network_env

from .fakes import nodes

RUN = "s3://bucket/runs/r1"


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_every_node_gets_a_distinct_rank_and_exactly_one_head(n):
    assignments = assign_ranks(list(reversed(nodes(n))))
    assert sorted(a.node_rank for a in assignments) == list(range(n))
    heads = [a for a in assignments if a.is_head]
    assert len(heads) == 1 and heads[0].node_rank == 0 and heads[0].private_ip == "10.0.0.10"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ([Node(0, "i-0", "10.0.0.1"), Node(2, "i-2", "10.0.0.2")], "indices"),
        ([Node(0, "i-0", "10.0.0.1"), Node(0, "i-1", "10.0.0.2")], "indices"),
        ([Node(0, "i-0", "10.0.0.1"), Node(1, "i-1", "10.0.0.1")], "share a private IP"),
        ([Node(0, "i-0", "")], "no private IP"),
        ([], "no nodes"),
    ],
)
def test_bad_node_sets_are_rejected(bad, reason):
    with pytest.raises(LaunchError, match=reason):
        assign_ranks(bad)


def test_p4d_gets_efa_and_nccl_environment_and_g5_no_efa():
    env = network_env("p4d.24xlarge")
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    script = node_scripts(make_spec(RUN, assign_ranks(nodes(2))), assign_ranks(nodes(2)))[1]
    assert 'export FI_PROVIDER="efa"' in script and 'export FI_EFA_USE_DEVICE_RDMA="1"' in script
    assert "FI_PROVIDER" not in network_env("g5.12xlarge")


def test_spec_rejects_an_inconsistent_rendezvous():
    with pytest.raises(LaunchError, match="launcher"):
        LaunchSpec(RUN, 1, "10.0.0.1", hosts=("10.0.0.1",), launcher="mpirun")
    with pytest.raises(LaunchError, match="first host"):
        LaunchSpec(RUN, 2, "10.0.0.2", hosts=("10.0.0.1", "10.0.0.2"))
    with pytest.raises(LaunchError, match="hostfile needs 2"):
        LaunchSpec(RUN, 2, "10.0.0.1", hosts=("10.0.0.1",))
    with pytest.raises(LaunchError, match="unknown GPU count"):
        _ = LaunchSpec(RUN, 1, "10.0.0.1", hosts=("10.0.0.1",), instance_type="x9.huge").gpus
