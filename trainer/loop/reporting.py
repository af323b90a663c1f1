"""``[eval] report_to``: which HF Trainer integrations a recipe may turn on, and where they send data.

The names are those of ``transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK``
(a test keeps this table equal to it). Each integration is classed once, here, from its HF
callback and its own documentation: *offline* ones write files on the machine that trains;
*off-node* ones send data to a service (or can, by a setting outside the recipe: an environment
variable, a config file, a token), so they need internet egress.

Pure: no transformers import (the recipe is loaded on the laptop and on every rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Integration:
    """One HF ``report_to`` integration as this project classes it."""

    off_node: bool
    """Sends (or may send) data off the machine: refused on a stack without internet egress."""
    reason: str
    """Where its data goes, in one phrase (the refusal message quotes it)."""


INTEGRATIONS: dict[str, Integration] = {
    "tensorboard": Integration(
        False, "HF's event files under the trainer's output folder (<output_dir>/runs/)"
    ),
    "trackio": Integration(
        False, "a local SQLite database (~/.cache/huggingface/trackio); no Space unless one is set"
    ),
    "wandb": Integration(True, "Weights & Biases' servers (api.wandb.ai)"),
    "comet_ml": Integration(True, "Comet's servers (comet.com)"),
    "neptune": Integration(True, "neptune.ai's servers"),
    "clearml": Integration(True, "a ClearML server (app.clear.ml by default)"),
    "dagshub": Integration(True, "DagsHub's hosted MLflow server and repository"),
    "azure_ml": Integration(True, "an Azure Machine Learning workspace"),
    "swanlab": Integration(True, "SwanLab's cloud (its default mode)"),
    "mlflow": Integration(
        True, "an MLflow tracking server (MLFLOW_TRACKING_URI; unset: ./mlruns, lost with the node)"
    ),
    "dvclive": Integration(
        True, "DVC Studio (live metrics when a Studio token is configured) and DVC remotes"
    ),
    "codecarbon": Integration(
        True, "codecarbon's online tracker, which looks up the machine's location at get.geojs.io"
    ),
    "flyte": Integration(True, "Flyte's task context and blob store (only inside a Flyte task)"),
    "kubeflow": Integration(
        True, "HTTPS status updates to a Kubeflow Trainer controller (KUBEFLOW_TRAINER_SERVER_URL)"
    ),
}
"""Every name ``report_to`` accepts; ``off_node`` decides whether a stack must allow egress."""

OFFLINE = tuple(name for name, i in INTEGRATIONS.items() if not i.off_node)
"""The integrations allowed everywhere."""


def unknown_names(names: Sequence[str]) -> str | None:
    """Why ``names`` is not a valid ``report_to`` list (one phrase), or None when it is."""
    for name in names:
        if name in ("all", "none"):
            return (
                f"{name!r} is not accepted: name the integrations (an empty list reports to none; "
                "'all' would turn on whatever happens to be installed)"
            )
        if name not in INTEGRATIONS:
            return f"unknown integration {name!r}; known: {', '.join(sorted(INTEGRATIONS))}"
    if len(set(names)) != len(names):
        return "names an integration twice"
    return None


def off_node(names: Sequence[str]) -> list[str]:
    """The names among ``names`` that send data off the machine, in the recipe's order."""
    return [n for n in names if INTEGRATIONS[n].off_node]


def egress_refusal(names: Sequence[str], *, source: str) -> str | None:
    """The one-line refusal for a cluster without internet egress, or None when all are offline."""
    remote = off_node(names)
    if not remote:
        return None
    where = "; ".join(f"{n} sends to {INTEGRATIONS[n].reason}" for n in remote)
    return (
        f"{source}: eval.report_to: {where}, and this stack has no internet egress: remove "
        f"{'it' if len(remote) == 1 else 'them'}, use an offline one ({', '.join(OFFLINE)}), "
        "or `pulumi config set twostage:allowInternetEgress true` and `pulumi up`"
    )


def local_notes(names: Sequence[str]) -> list[str]:
    """What ``invoke pretrain --local`` says (and allows) for each off-node integration."""
    return [
        f"note: eval.report_to: {n} sends to {INTEGRATIONS[n].reason}: a local run allows what "
        "this machine allows (the cluster needs twostage:allowInternetEgress)"
        for n in off_node(names)
    ]


def report_to_argument(names: Sequence[str]) -> str | list[str]:
    """``TrainingArguments(report_to=...)``: the list, or ``"none"`` for an empty one."""
    return list(names) if names else "none"
