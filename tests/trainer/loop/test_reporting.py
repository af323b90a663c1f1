"""``[eval] report_to``: recipe validation, the offline/off-node table, and TrainingArguments."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.errors import TrainerError
from trainer.loop.reporting import (
    INTEGRATIONS,
    OFFLINE,
    cluster_notes,
    egress_refusal,
    importable,
    local_notes,
    local_refusal,
    lock_refusal,
)

MINIMAL = "[data]\ngenerated_corpus = true\n"


def recipe(tmp_path: Path, report_to: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(MINIMAL + f"[eval]\nreport_to = {report_to}\n")
    return path


def test_the_table_names_exactly_the_integrations_transformers_has() -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(INTEGRATIONS) == set(INTEGRATION_TO_CALLBACK)
    assert set(OFFLINE) == {"tensorboard", "trackio"}
    for name in ("wandb", "comet_ml", "neptune", "clearml", "mlflow", "codecarbon", "azure_ml"):
        assert INTEGRATIONS[name].off_node


def test_default_is_no_integration_and_offline_ones_load(tmp_path: Path) -> None:
    assert load_config(recipe(tmp_path, "[]")).eval.report_to == ()
    cfg = load_config(recipe(tmp_path, '["tensorboard", "trackio"]'))
    assert cfg.eval.report_to == ("tensorboard", "trackio")
    assert egress_refusal(cfg.eval.report_to, source="r.toml") is None
    assert local_notes(cfg.eval.report_to) == []


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ('["wandbb"]', "eval.report_to: unknown integration 'wandbb'; known: azure_ml, clearml,"),
        ('["all"]', "eval.report_to: 'all' is not accepted: name the integrations"),
        ('["none"]', "eval.report_to: 'none' is not accepted"),
        ('["wandb", "wandb"]', "eval.report_to: names an integration twice"),
        ('"wandb"', "eval.report_to: must be a list of str"),
    ],
)
def test_bad_names_are_one_line_naming_the_key_and_the_file(
    tmp_path: Path, value: str, needle: str
) -> None:
    path = recipe(tmp_path, value)
    with pytest.raises(TrainerError) as err:
        load_config(path)
    message = str(err.value)
    assert needle in message and str(path) in message and "\n" not in message


def test_unknown_name_lists_every_known_one(tmp_path: Path) -> None:
    with pytest.raises(TrainerError) as err:
        load_config(recipe(tmp_path, '["tensorbord"]'))
    assert all(name in str(err.value) for name in INTEGRATIONS)


def test_off_node_integrations_are_refused_in_one_line_naming_where_data_goes() -> None:
    message = egress_refusal(("tensorboard", "wandb", "mlflow"), source="configs/x.toml")
    assert message is not None and "\n" not in message
    assert message.startswith("configs/x.toml: eval.report_to: wandb sends to Weights & Biases'")
    assert "mlflow sends to an MLflow tracking server" in message
    assert "tensorboard sends" not in message
    assert "no internet egress" in message and "twostage:allowInternetEgress true" in message
    assert "offline one (tensorboard, trackio)" in message


def test_a_local_run_allows_them_and_says_where_the_data_goes() -> None:
    notes = local_notes(("tensorboard", "comet_ml"))
    assert len(notes) == 1 and "comet_ml sends to Comet's servers" in notes[0]


@pytest.mark.parametrize(
    ("names", "expected"),
    [((), []), (("tensorboard",), ["tensorboard"]), (("wandb", "trackio"), ["wandb", "trackio"])],
)
def test_the_recipes_list_reaches_training_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...], expected: list[str]
) -> None:
    from trainer.loop.args import training_arguments

    monkeypatch.delenv("KUBEFLOW_TRAINER_SERVER_URL", raising=False)  # HF would add kubeflow
    cfg = load_config(recipe(tmp_path, repr(list(names)).replace("'", '"')))
    args = training_arguments(
        cfg, output_dir=tmp_path / "out", ds_config=None, precision="fp32", extra={}
    )
    assert args.report_to == expected


# -- the packages each integration needs --------------------------------------------------------
#: transformers' check per integration, where it asks ``find_spec`` when called (neptune and
#: comet_ml decide at import time: their names are checked in the source below).
AVAILABLE = {
    "tensorboard": "is_tensorboard_available",
    "trackio": "is_trackio_available",
    "wandb": "is_wandb_available",
    "clearml": "is_clearml_available",
    "dagshub": "is_dagshub_available",
    "azure_ml": "is_azureml_available",
    "swanlab": "is_swanlab_available",
    "mlflow": "is_mlflow_available",
    "dvclive": "is_dvclive_available",
    "codecarbon": "is_codecarbon_available",
    "flyte": "is_flytekit_available",
    "kubeflow": "is_kubeflow_available",
}


def _only(monkeypatch: pytest.MonkeyPatch, modules: set[str]) -> None:
    """``find_spec`` finds exactly ``modules`` (and their parent packages), nothing else."""
    present = {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 2)}
    spec = importlib.util.spec_from_loader("x", loader=None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: spec if n in present else None)
    if "wandb" in present:  # transformers then imports it and looks for `wandb.run`
        monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(run=None))


@pytest.mark.parametrize("name", sorted(AVAILABLE))
def test_each_integration_needs_what_transformers_looks_for(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Met needs → transformers finds it; any need unmet → it does not (the Trainer raises)."""
    from transformers.integrations import integration_utils

    check = getattr(integration_utils, AVAILABLE[name])
    for var in ("DISABLE_MLFLOW_INTEGRATION", "DISABLE_KUBEFLOW_INTEGRATION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", "https://kubeflow.invalid")
    needs = INTEGRATIONS[name].needs
    for choice in range(max((len(need) for need in needs), default=1)):
        _only(monkeypatch, {need[min(choice, len(need) - 1)].module for need in needs})
        assert check(), (name, choice)
    for dropped in range(len(needs)):
        _only(monkeypatch, {need[0].module for i, need in enumerate(needs) if i != dropped})
        assert not check(), (name, dropped)


def test_every_integration_has_its_packages_checked() -> None:
    from transformers.integrations import integration_utils

    assert set(AVAILABLE) | {"neptune", "comet_ml"} == set(INTEGRATIONS)
    source = Path(integration_utils.__file__).read_text()
    assert 'find_spec("neptune")' in source and 'version("neptune-client")' in source
    assert {p.distribution for p in INTEGRATIONS["neptune"].needs[0]} == {"neptune", "neptune-client"}
    assert 'importlib.metadata.version("comet_ml")' in source
    assert [(p.module, p.distribution) for p in INTEGRATIONS["comet_ml"].needs[0]] == [
        ("comet_ml", "comet-ml")
    ]
    assert INTEGRATIONS["kubeflow"].needs == ()  # an environment variable, no package


def test_a_package_the_nodes_lack_is_one_line_naming_it_and_the_fix() -> None:
    locked = {"tensorboardx", "mlflow-skinny", "transformers"}
    assert lock_refusal(("tensorboard", "mlflow", "kubeflow"), locked, source="r.toml") is None
    message = lock_refusal(("tensorboard", "wandb", "dagshub"), locked, source="r.toml")
    assert message is not None and "\n" not in message
    assert message.startswith(
        "r.toml: eval.report_to: wandb needs the package wandb; dagshub needs the package dagshub, "
        "which the nodes do not install (not in infra/requirements-node.lock): add them to "
        "infra/requirements-node.in, run `invoke lock-node` and `invoke wheelhouse`, then "
        "`pulumi up` so the nodes get them"
    )


def test_a_module_this_environment_lacks_is_one_line_with_the_pip_command() -> None:
    have = {"tensorboardX", "mlflow"}.__contains__
    assert local_refusal(("tensorboard", "mlflow"), source="r.toml", installed=have) is None
    message = local_refusal(("tensorboard", "dagshub", "azure_ml"), source="r.toml", installed=have)
    assert message == (
        "r.toml: eval.report_to: dagshub needs the module dagshub; azure_ml needs the module "
        "azureml.core.run, which this Python environment cannot import: `pip install dagshub "
        "azureml-core` here, or remove the integration"
    )

    # The default asks this interpreter; a dotted name under a missing package is missing.
    assert importable("json") and not importable("twostage_no_such_package.core.run")


def test_off_node_integrations_say_their_credentials_are_the_users_to_provide() -> None:
    (note,) = cluster_notes(("tensorboard", "wandb"))
    assert note.startswith("note: eval.report_to: wandb sends to Weights & Biases'")
    assert "credentials and settings it needs (an API key, a server URL) are yours" in note
    assert "no supported way to yet (docs/trainer.md)" in note
    assert "are yours to put on the nodes" in str(egress_refusal(("wandb",), source="r.toml"))
    assert "credentials you put on the nodes yourself" in local_notes(("wandb",))[0]
