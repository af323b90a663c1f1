"""``[eval] report_to``: recipe validation, the offline/off-node table, and TrainingArguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.errors import TrainerError
from trainer.loop.reporting import INTEGRATIONS, OFFLINE, egress_refusal, local_notes

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
