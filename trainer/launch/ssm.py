"""Thin adapter over SSM Run Command: instance targets, output to the run's ``logs/``, invocations.

A launch command targets one instance id: ranks are assigned per launch attempt from the group's
InService instances (:mod:`trainer.launch.group`), so the instance *is* the rank for that attempt.
Stopping every node targets the tags ``twostage:cluster`` + ``twostage:role=node``. The
controller's role may only send to instances its group launched (the ``aws:autoscaling:groupName``
tag, an IAM condition) and only the project's document ``<cluster>-run-script`` (``pulumi up``
creates it, see ``infra/run_document.py``), whose one typed ``script`` parameter is the script
base64-encoded; the document runs it from a temporary file with bash, stdin closed.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from artifacts.node import ROLE_NODE, TAG_CLUSTER, TAG_ROLE, run_document_name
from trainer.launch.ports import TERMINAL_COMMAND, Invocation

log = logging.getLogger(__name__)

MAX_EXECUTION_TIMEOUT_S = 172800
"""SSM's ceiling (48 h): a longer run is cut there and the watcher relaunches it (it resumes)."""


def cluster_targets(cluster: str) -> list[dict[str, Any]]:
    """SSM Targets selecting every node of the cluster (not the controller)."""
    return [
        {"Key": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
        {"Key": f"tag:{TAG_ROLE}", "Values": [ROLE_NODE]},
    ]


def encode_script(script: str) -> str:
    """The document's ``script`` parameter: the script as base64 (nothing for a shell to parse)."""
    return base64.b64encode(script.encode("utf-8")).decode("ascii")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → (``bucket``, ``a/b``)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key.strip("/")


def send_command_args(
    *,
    targets: list[dict[str, Any]] | None = None,
    instance_ids: list[str] | None = None,
    script: str,
    run_uri: str,
    comment: str,
    document: str,
    execution_timeout_s: int = MAX_EXECUTION_TIMEOUT_S,
) -> dict[str, Any]:
    """The ``send_command`` keyword arguments (pure; output goes to ``<run>/logs/``)."""
    if (targets is None) == (instance_ids is None):
        raise ValueError("give exactly one of targets and instance_ids")
    args: dict[str, Any] = {
        "DocumentName": document,
        **({"Targets": targets} if targets is not None else {"InstanceIds": instance_ids}),
        "Parameters": {
            "script": [encode_script(script)],
            "executionTimeout": [str(min(execution_timeout_s, MAX_EXECUTION_TIMEOUT_S))],
        },
        "Comment": comment[:100],
        "TimeoutSeconds": 600,  # delivery: a node that is not online within 10 min is not coming
    }
    if run_uri.startswith("s3://"):
        bucket, prefix = split_s3_uri(run_uri)
        args["OutputS3BucketName"] = bucket
        args["OutputS3KeyPrefix"] = f"{prefix}/logs".lstrip("/")
    return args


class SsmRunner:
    """The real :class:`trainer.launch.ports.CommandRunner`."""

    def __init__(self, client: Any, *, cluster: str, run_uri: str) -> None:
        self.client = client
        self.cluster = cluster
        self.run_uri = run_uri
        self.document = run_document_name(cluster)

    def send(self, instance_id: str, script: str, *, comment: str) -> str:
        resp = self.client.send_command(
            **send_command_args(
                instance_ids=[instance_id],
                script=script,
                run_uri=self.run_uri,
                comment=comment,
                document=self.document,
            )
        )
        cid = resp["Command"]["CommandId"]
        log.debug("%s: command %s", instance_id, cid)
        return cid

    def send_all(self, script: str, *, comment: str) -> str:
        """One command to every node of the cluster (e.g. the stop signal)."""
        resp = self.client.send_command(
            **send_command_args(
                targets=cluster_targets(self.cluster),
                script=script,
                run_uri=self.run_uri,
                comment=comment,
                document=self.document,
            )
        )
        return resp["Command"]["CommandId"]

    def invocation(self, command_id: str, instance_id: str) -> dict[str, Any] | None:
        """The raw invocation, or None while SSM has not registered it yet."""
        try:
            return self.client.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except self.client.exceptions.InvocationDoesNotExist:
            return None

    def poll(self, command_id: str, instance_id: str) -> Invocation:
        resp = self.invocation(command_id, instance_id)
        if resp is None:
            return Invocation("Pending")
        status = resp.get("Status", "Pending")
        code = resp.get("ResponseCode")
        if status not in TERMINAL_COMMAND or code is None or code < 0:
            code = None
        return Invocation(status, code)

    def cancel(self, command_id: str) -> None:
        try:
            self.client.cancel_command(CommandId=command_id)
        except NotImplementedError:  # moto; real SSM implements it
            log.warning("cancel_command is not available on this endpoint")


def ssm_online(client: Any, instance_ids: list[str]) -> dict[str, bool] | None:
    """instance id → SSM agent online, or None when the endpoint cannot tell (e.g. moto).

    None means "unknown": the launch goes on and an offline node shows up as an undelivered
    command instead (SSM's own delivery time-out).
    """
    from botocore.exceptions import ClientError

    try:
        pages = client.get_paginator("describe_instance_information").paginate(
            Filters=[{"Key": "InstanceIds", "Values": list(instance_ids)}]
        )
        online = {i: False for i in instance_ids}
        for page in pages:
            for info in page.get("InstanceInformationList", []):
                online[info["InstanceId"]] = info.get("PingStatus") == "Online"
        return online
    except NotImplementedError:
        log.warning(
            "cannot check SSM registration here (describe_instance_information unavailable)"
        )
        return None
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        http = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("AccessDeniedException", "NotImplemented", "InvalidAction") or http >= 500:
            # The check is advisory: an unmanaged node still shows up later as an undelivered
            # command, so an endpoint that cannot answer (moto's server: 500) must not block.
            log.warning("cannot check SSM registration (%s): continuing without the check", code)
            return None
        raise
