"""IAM and bucket policy documents, and per-type EFA facts (pure functions, no engine)."""

from __future__ import annotations

import json

import pytest

from infra.policies import (
    assume_role_policy,
    bucket_access_policy,
    efa_interface_count,
    tls_only_bucket_policy,
    to_json,
)

ARN = "arn:aws:s3:::twostage-abc123"


def _statements(doc):
    return json.loads(to_json(doc))["Statement"]


def test_bucket_access_names_only_the_bucket_and_its_objects():
    stmts = _statements(bucket_access_policy(ARN))
    resources = {r for s in stmts for r in s["Resource"]}
    assert resources == {ARN, f"{ARN}/*"}
    assert all(s["Effect"] == "Allow" for s in stmts)
    actions = {a for s in stmts for a in s["Action"]}
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    # What checkpointing, retention and SSM output upload need.
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= actions


def test_object_actions_are_not_granted_on_the_bucket_arn_and_vice_versa():
    by_resource = {
        tuple(s["Resource"]): set(s["Action"]) for s in _statements(bucket_access_policy(ARN))
    }
    assert "s3:GetObject" in by_resource[(f"{ARN}/*",)]
    assert "s3:ListBucket" in by_resource[(ARN,)]
    assert "s3:GetObject" not in by_resource[(ARN,)]


@pytest.mark.parametrize("bad", ["*", "arn:aws:s3:::*", "twostage-abc", "", "arn:aws:s3:::b*"])
def test_wildcard_or_non_arn_bucket_is_refused(bad):
    with pytest.raises(ValueError):
        bucket_access_policy(bad)
    with pytest.raises(ValueError):
        tls_only_bucket_policy(bad)


def test_tls_only_policy_denies_insecure_transport_on_bucket_and_objects():
    stmts = _statements(tls_only_bucket_policy(ARN))
    insecure = [
        s for s in stmts if s.get("Condition", {}).get("Bool") == {"aws:SecureTransport": "false"}
    ]
    assert len(insecure) == 1
    assert insecure[0]["Effect"] == "Deny" and insecure[0]["Principal"] == "*"
    assert set(insecure[0]["Resource"]) == {ARN, f"{ARN}/*"}
    assert all(s["Effect"] == "Deny" for s in stmts)


def test_only_ec2_may_assume_the_node_role():
    (stmt,) = _statements(assume_role_policy())
    assert stmt["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert stmt["Action"] == "sts:AssumeRole"


def test_policy_json_is_stable():
    assert to_json(bucket_access_policy(ARN)) == to_json(bucket_access_policy(ARN))
    assert to_json({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'


def test_efa_interfaces_per_instance_type():
    assert efa_interface_count("p4d.24xlarge") == 4
    assert efa_interface_count("p5.48xlarge") == 32
    assert efa_interface_count("g5.12xlarge") == 0
    assert efa_interface_count("p4d.24xlarge", override=1) == 1
    assert efa_interface_count("p4d.24xlarge", override=0) == 0
