"""``[eval] report_to``: which HF Trainer integrations a recipe may turn on, where they send data,
and which Python packages they need.

The names are those of ``transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK``
(a test keeps this table equal to it). Each integration is classed once, here, from its HF
callback and its own documentation: *offline* ones write files on the machine that trains;
*off-node* ones send data to a service (or can, by a setting outside the recipe: an environment
variable, a config file, a token), so they need internet egress. Its packages are those that
transformers' ``is_<name>_available`` looks for (a test holds the two equal): the HF Trainer
raises at start when one is missing, which on the cluster is after the nodes are paid for, so
``invoke pretrain`` checks them first (in the nodes' lock, or in this environment with --local).

Pure: no transformers import (the recipe is loaded on the laptop and on every rank).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from artifacts.node import NODE_LOCK, NODE_REQUIREMENTS

#: How the refusals name the nodes' requirement files (relative to the project's root).
_IN, _LOCK = (
    p.relative_to(NODE_LOCK.parents[1]).as_posix() for p in (NODE_REQUIREMENTS, NODE_LOCK)
)


@dataclass(frozen=True)
class Package:
    """A Python package an integration imports, by both of its names."""

    module: str
    """What transformers looks for (``importlib.util.find_spec``): checked here for a local run."""
    distribution: str
    """What pip installs, PEP 503-normalised as a lock spells it: checked in the nodes' lock."""


def _any(*packages: str | tuple[str, str]) -> tuple[Package, ...]:
    """One need met by any of ``packages`` (a module name, or (module, distribution))."""
    return tuple(Package(p, p) if isinstance(p, str) else Package(*p) for p in packages)


@dataclass(frozen=True)
class Integration:
    """One HF ``report_to`` integration as this project classes it."""

    off_node: bool
    """Sends (or may send) data off the machine: refused on a stack without internet egress."""
    reason: str
    """Where its data goes, in one phrase (the refusal message quotes it)."""
    needs: tuple[tuple[Package, ...], ...] = ()
    """What it imports: every need must be met, each by any one of its packages."""


_MLFLOW = _any("mlflow", ("mlflow", "mlflow-skinny"))

INTEGRATIONS: dict[str, Integration] = {
    "tensorboard": Integration(
        False,
        "HF's event files under the trainer's output folder (<output_dir>/runs/)",
        (_any("tensorboard", ("tensorboardX", "tensorboardx")),),
    ),
    "trackio": Integration(
        False,
        "a local SQLite database (~/.cache/huggingface/trackio); no Space unless one is set",
        (_any("trackio"),),
    ),
    "wandb": Integration(True, "Weights & Biases' servers (api.wandb.ai)", (_any("wandb"),)),
    "comet_ml": Integration(True, "Comet's servers (comet.com)", (_any(("comet_ml", "comet-ml")),)),
    "neptune": Integration(
        True, "neptune.ai's servers", (_any("neptune", ("neptune", "neptune-client")),)
    ),
    "clearml": Integration(True, "a ClearML server (app.clear.ml by default)", (_any("clearml"),)),
    "dagshub": Integration(
        True, "DagsHub's hosted MLflow server and repository", (_any("dagshub"), _MLFLOW)
    ),
    "azure_ml": Integration(
        True,
        "an Azure Machine Learning workspace",
        (_any(("azureml.core.run", "azureml-core")),),
    ),
    "swanlab": Integration(True, "SwanLab's cloud (its default mode)", (_any("swanlab"),)),
    "mlflow": Integration(
        True,
        "an MLflow tracking server (MLFLOW_TRACKING_URI; unset: ./mlruns, lost with the node)",
        (_MLFLOW,),
    ),
    "dvclive": Integration(
        True,
        "DVC Studio (live metrics when a Studio token is configured) and DVC remotes",
        (_any("dvclive"),),
    ),
    "codecarbon": Integration(
        True,
        "codecarbon's online tracker, which looks up the machine's location at get.geojs.io",
        (_any("codecarbon"),),
    ),
    "flyte": Integration(
        True,
        "Flyte's task context and blob store (only inside a Flyte task)",
        (_any("flytekit"),),
    ),
    "kubeflow": Integration(  # no package: HF's callback needs KUBEFLOW_TRAINER_SERVER_URL only
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


_CREDENTIALS = (
    "the credentials and settings it needs (an API key, a server URL) are yours to put on the "
    "nodes, and this project has no supported way to yet (docs/trainer.md)"
)


def egress_refusal(names: Sequence[str], *, source: str) -> str | None:
    """The one-line refusal for a cluster without internet egress, or None when all are offline."""
    remote = off_node(names)
    if not remote:
        return None
    where = "; ".join(f"{n} sends to {INTEGRATIONS[n].reason}" for n in remote)
    return (
        f"{source}: eval.report_to: {where}, and this stack has no internet egress: remove "
        f"{'it' if len(remote) == 1 else 'them'}, use an offline one ({', '.join(OFFLINE)}), "
        f"or `pulumi config set twostage:allowInternetEgress true` and `pulumi up`; {_CREDENTIALS}"
    )


def missing(
    names: Sequence[str], installed: Callable[[Package], bool]
) -> list[tuple[str, tuple[Package, ...]]]:
    """Each unmet need as (integration, the packages any one of which would meet it), in order."""
    return [
        (name, need)
        for name in names
        for need in INTEGRATIONS[name].needs
        if not any(installed(p) for p in need)
    ]


def _gaps(gaps: list[tuple[str, tuple[Package, ...]]], attr: str) -> str:
    """``wandb needs the package wandb; ...`` (``attr``: "distribution" or "module")."""
    what = "package" if attr == "distribution" else "module"
    return "; ".join(
        f"{name} needs the {what} {' or '.join(dict.fromkeys(getattr(p, attr) for p in need))}"
        for name, need in gaps
    )


def lock_refusal(names: Sequence[str], locked: Collection[str], *, source: str) -> str | None:
    """The one-line refusal when the nodes would not have a package (``locked``: the normalised
    distribution names of the nodes' lock), or None. The HF Trainer would raise on every rank at
    start, after the nodes are paid for."""
    gaps = missing(names, lambda p: p.distribution in locked)
    if not gaps:
        return None
    return (
        f"{source}: eval.report_to: {_gaps(gaps, 'distribution')}, which the nodes do not "
        f"install (not in {_LOCK}): add {'it' if len(gaps) == 1 else 'them'} to {_IN}, run "
        "`invoke lock-node` and `invoke wheelhouse`, then `pulumi up` so the nodes get "
        f"{'it' if len(gaps) == 1 else 'them'} (or remove the integration)"
    )


def importable(module: str) -> bool:
    """Whether this environment can import ``module`` (a dotted name whose parent is missing
    counts as missing: ``find_spec`` raises for it instead of answering)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def local_refusal(
    names: Sequence[str], *, source: str, installed: Callable[[str], bool] = importable
) -> str | None:
    """The one-line refusal for ``invoke pretrain --local`` when this environment lacks a
    package (``installed`` answers per module name), or None: said before data preparation."""
    gaps = missing(names, lambda p: installed(p.module))
    if not gaps:
        return None
    fix = " ".join(dict.fromkeys(need[0].distribution for _, need in gaps))
    return (
        f"{source}: eval.report_to: {_gaps(gaps, 'module')}, which this Python environment "
        f"cannot import: `pip install {fix}` here, or remove the integration"
    )


def local_notes(names: Sequence[str]) -> list[str]:
    """What ``invoke pretrain --local`` says (and allows) for each off-node integration."""
    return [
        f"note: eval.report_to: {n} sends to {INTEGRATIONS[n].reason}: a local run allows what "
        "this machine allows, with this machine's credentials (the cluster needs "
        "twostage:allowInternetEgress, and credentials you put on the nodes yourself)"
        for n in off_node(names)
    ]


def cluster_notes(names: Sequence[str]) -> list[str]:
    """What ``invoke pretrain`` says for each off-node integration a stack with egress allows."""
    return [
        f"note: eval.report_to: {n} sends to {INTEGRATIONS[n].reason}: {_CREDENTIALS}"
        for n in off_node(names)
    ]


def report_to_argument(names: Sequence[str]) -> str | list[str]:
    """``TrainingArguments(report_to=...)``: the list, or ``"none"`` for an empty one."""
    return list(names) if names else "none"
