"""The bucket key's policy (a pure function): who may administer the key, who may use it, how.

``allowed`` is a small key-policy evaluator: a statement applies when its ``Principal`` names the
caller (``*`` names everyone), its action and resource match and every condition holds
(``StringEquals``/``StringLike``/``ArnEquals`` need the key present, ``StringNotEquals`` holds when
it is absent, as in IAM); an explicit deny wins. ``aws:PrincipalArn`` is the caller. The account
root statement is evaluated for the root principal itself (the IAM delegation it opens is for the
listed actions only).
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

import pytest

from infra.egress import bucket_key_policy
from infra.policies import to_json

ACCOUNT = "123456789012"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
BUCKET = "arn:aws:s3:::twostage-abc123"
NODE = f"arn:aws:iam::{ACCOUNT}:role/twostage-dev-node-role-1a2b3c"
CONTROLLER = f"arn:aws:iam::{ACCOUNT}:role/twostage-dev-controller-role-4d5e6f"
DEPLOYER = f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0f"
OWNER = f"arn:aws:iam::{ACCOUNT}:user/alice"
STRANGER = f"arn:aws:iam::{ACCOUNT}:role/someone-else"
VIA_S3 = {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
FOR_BUCKET = {**VIA_S3, "kms:EncryptionContext:aws:s3:arn": BUCKET}
FOR_OBJECT = {**VIA_S3, "kms:EncryptionContext:aws:s3:arn": f"{BUCKET}/runs/x/MANIFEST.json"}
USE = ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext")


def policy(owners=(DEPLOYER, OWNER)):
    return bucket_key_policy(
        account=ACCOUNT,
        partition="aws",
        region="us-east-1",
        bucket_arn=BUCKET,
        cluster_role_arns=[NODE, CONTROLLER],
        owner_arns=list(owners),
    )


def _list(value):
    return value if isinstance(value, list) else [value]


def _condition_holds(op: str, conds: dict, context: dict) -> bool:
    for key, want in conds.items():
        have = context.get(key)
        if op == "StringNotEquals":
            if have is not None and have in _list(want):
                return False
        elif op == "StringLike":
            if have is None or not any(fnmatchcase(have, w) for w in _list(want)):
                return False
        elif op in ("StringEquals", "ArnEquals"):
            if have is None or have not in _list(want):
                return False
        else:
            raise AssertionError(f"evaluator does not know {op}")
    return True


def _applies(stmt: dict, principal: str, action: str, context: dict) -> bool:
    named = _list(stmt["Principal"]["AWS"])
    if "*" not in named and principal not in named:
        return False
    if not any(fnmatchcase(action, a) for a in _list(stmt["Action"])):
        return False
    assert stmt["Resource"] == "*"  # a key policy's resource is the key itself
    context = {**context, "aws:PrincipalArn": principal}
    return all(_condition_holds(op, c, context) for op, c in stmt.get("Condition", {}).items())


def allowed(doc: dict, principal: str, action: str, context: dict | None = None) -> bool:
    stmts = json.loads(to_json(doc))["Statement"]
    hits = [s["Effect"] for s in stmts if _applies(s, principal, action, context or {})]
    return "Allow" in hits and "Deny" not in hits


def test_the_cluster_roles_use_the_key_only_as_s3_does_for_the_run_bucket():
    doc = policy()
    for role in (NODE, CONTROLLER):
        for action in USE:
            assert allowed(doc, role, action, FOR_BUCKET), (role, action)  # bucket keys on
            assert allowed(doc, role, action, FOR_OBJECT), (role, action)  # bucket keys off
            # Not for another bucket, not called directly, not through S3 in another region.
            other = {**VIA_S3, "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::elsewhere"}
            assert not allowed(doc, role, action, other)
            assert not allowed(doc, role, action, {"kms:EncryptionContext:aws:s3:arn": BUCKET})
            elsewhere = {**FOR_BUCKET, "kms:ViaService": "s3.eu-west-1.amazonaws.com"}
            assert not allowed(doc, role, action, elsewhere)
        assert allowed(doc, role, "kms:DescribeKey", VIA_S3)
        assert not allowed(doc, role, "kms:DescribeKey")


def test_the_cluster_roles_are_denied_everything_else_whatever_iam_grants():
    stmts = policy()["Statement"]
    for role in (NODE, CONTROLLER):
        for action in ("kms:CreateGrant", "kms:PutKeyPolicy", "kms:Decrypt", "kms:ReEncryptFrom"):
            denied = [
                s
                for s in stmts
                if s["Effect"] == "Deny" and _applies(s, role, action, {"kms:ViaService": "x"})
            ]
            assert denied, (role, action)
        assert not allowed(policy(), role, "kms:ScheduleKeyDeletion")


def test_the_owner_and_the_deployer_decrypt_and_upload_through_s3():
    doc = policy()
    for who in (OWNER, DEPLOYER):
        assert allowed(doc, who, "kms:Decrypt", FOR_BUCKET)  # invoke download
        assert allowed(doc, who, "kms:GenerateDataKey", FOR_BUCKET)  # pulumi up, invoke pretrain
        assert not allowed(doc, who, "kms:Decrypt")  # not a general-purpose key
        assert not allowed(
            doc,
            who,
            "kms:Decrypt",
            {**VIA_S3, "kms:EncryptionContext:aws:s3:arn": "arn:aws:s3:::b"},
        )
    assert not allowed(policy(owners=[DEPLOYER]), OWNER, "kms:Decrypt", FOR_BUCKET)
    assert not allowed(doc, STRANGER, "kms:Decrypt", FOR_BUCKET)


def test_the_account_administers_the_key_and_cannot_use_it():
    doc = policy()
    for action in (
        "kms:PutKeyPolicy",
        "kms:GetKeyPolicy",
        "kms:DescribeKey",
        "kms:EnableKeyRotation",
        "kms:ScheduleKeyDeletion",
        "kms:CancelKeyDeletion",
        "kms:TagResource",
        "kms:CreateAlias",
    ):
        assert allowed(doc, ROOT, action), action
    for action in (*USE, "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:CreateGrant", "kms:Sign"):
        assert not allowed(doc, ROOT, action, FOR_BUCKET), action


def test_nobody_may_sign_with_the_key():
    doc = policy()
    for who in (ROOT, NODE, CONTROLLER, OWNER, DEPLOYER, STRANGER):
        assert not allowed(doc, who, "kms:Sign", FOR_BUCKET)
    (deny,) = [s for s in doc["Statement"] if s["Action"] == "kms:Sign"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}


def test_every_allow_names_its_principals_and_no_wildcard():
    named = set()
    for stmt in policy()["Statement"]:
        if stmt["Effect"] == "Allow":
            principals = _list(stmt["Principal"]["AWS"])
            assert "*" not in principals and all("*" not in p for p in principals)
            named |= set(principals)
    assert named == {ROOT, NODE, CONTROLLER, DEPLOYER, OWNER}


@pytest.mark.parametrize(
    "bad",
    [
        f"arn:aws:iam::{ACCOUNT}:role/*",
        "arn:aws:iam::999999999999:role/twostage-dev-node-role",
        f"arn:aws:sts::{ACCOUNT}:assumed-role/Admin/alice",  # a session: gone at the next login
        "*",
        "",
    ],
)
def test_a_wildcard_foreign_or_session_principal_is_refused(bad):
    with pytest.raises(ValueError):
        policy(owners=[DEPLOYER, bad])


def test_both_cluster_roles_are_required():
    with pytest.raises(ValueError, match="node and the controller"):
        bucket_key_policy(
            account=ACCOUNT,
            partition="aws",
            region="us-east-1",
            bucket_arn=BUCKET,
            cluster_role_arns=[NODE],
            owner_arns=[DEPLOYER],
        )
