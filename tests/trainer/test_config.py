"""Recipe loading: the shipped recipes load; unknown keys and bad values name the key and file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import TrainerConfig, TrainingConfig, load_config
from trainer.errors import TrainerError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


MINIMAL = "[data]\ngenerated_corpus = true\n"


def test_tiny_recipe_loads_with_zero3_partitioning_everything() -> None:
    cfg = load_config(ROOT / "configs/pretrain-tiny.toml")
    assert cfg.deepspeed.zero_stage == 3
    assert cfg.deepspeed.param_persistence_threshold == 0
    assert cfg.data.generated_corpus
    assert cfg.training.precision in ("auto", "bf16", "fp32")


def test_p4d_recipe_has_the_design_brief_values() -> None:
    cfg = load_config(ROOT / "configs/pretrain-p4d.toml")
    t = cfg.training
    assert (t.num_train_epochs, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (
        100,
        32,
        8,
    )
    assert t.learning_rate == 6e-5 and t.save_steps == 10_000
    assert t.precision == "auto"  # bf16 on A100, fp16 where bf16 is missing
    assert cfg.deepspeed.zero_stage == 3 and cfg.model.family == "llama"


def test_defaults_match_the_design_brief() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    assert defaults["num_train_epochs"] == 100 and defaults["learning_rate"] == 6e-5
    assert (
        defaults["per_device_train_batch_size"] == 32
        and defaults["gradient_accumulation_steps"] == 8
    )
    assert defaults["save_steps"] == 10_000 and defaults["precision"] == "auto"


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, TrainerConfig)
    assert cfg.convergence.min_rel_improvement == 0.005 and cfg.convergence.patience == 5
    assert cfg.raw == {"data": {"generated_corpus": True}}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (MINIMAL + "[training]\nlearning_rat = 1e-3\n", "training.learning_rat: unknown key"),
        (MINIMAL + "[trainng]\n", "trainng: unknown section (did you mean training?)"),
        (MINIMAL + "[training]\nlearning_rate = -1.0\n", "training.learning_rate: must be > 0"),
        (MINIMAL + '[training]\nprecision = "fp8"\n', "training.precision: must be one of"),
        (MINIMAL + '[training]\nsave_steps = "often"\n', "training.save_steps: must be an integer"),
        (MINIMAL + '[model]\nfamily = "bert"\n', "model.family: must be one of"),
        (MINIMAL + "[model]\nhidden_size = 65\n", "model.num_heads: must divide hidden_size"),
        (MINIMAL + "[deepspeed]\nzero_stage = 1\n", "deepspeed.zero_stage: must be 2 or 3"),
        (MINIMAL + "[convergence]\npatience = 0\n", "convergence.patience: must be >= 1"),
        (MINIMAL + "[convergence]\nmin_rel_improvement = 1.5\n", "convergence.min_rel_improvement"),
        ("[data]\nvocab_size = 600\n", "data.train_files: is empty"),
        (MINIMAL + "[data]\n", "not valid TOML"),
        (MINIMAL + "[run]\nkeep_last = 0\n", "run.keep_last: must be >= 1"),
        (MINIMAL + "[run]\nmin_nodes = 0\n", "run.min_nodes: must be >= 1"),
        (
            MINIMAL + "[run]\nidle_timeout_minutes = 1\n",
            "run.idle_timeout_minutes: must be at least 5",
        ),
        (
            MINIMAL + "[run]\nstall_timeout_minutes = 2\n",
            "run.stall_timeout_minutes: must be at least",
        ),
        (MINIMAL + "[run]\nmax_dollars = -5\n", "run.max_dollars: must be > 0"),
        (MINIMAL + '[run]\nmax_hours = "soon"\n', "run.max_hours: must be a number"),
        (MINIMAL + '[spot]\nenabled = "yes"\n', "spot.enabled: must be true or false"),
    ],
)
def test_bad_recipes_name_the_key_and_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TrainerError) as err:
        load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.learning_rate = 1.0  # type: ignore[misc]


def test_every_field_is_documented() -> None:
    import ast
    import inspect

    import trainer.config as module

    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if (
            isinstance(node, ast.ClassDef)
            and node.name.endswith("Config")
            and node.name != "TrainerConfig"
        ):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), (
                        f"{node.name}.{stmt.target.id} has no docstring"
                    )


def test_entry_point_reports_a_bad_config_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[training]\nwarmup = 3\n")
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "training.warmup: unknown key" in out.stderr
    assert "Traceback" not in out.stderr


def test_package_import_is_light() -> None:
    code = "import sys, trainer, trainer.config, trainer.launch.single_node, artifacts.run; print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_entry_point_takes_run_uri_as_an_alias_of_run():
    """torchrun cannot pass "--run" through (its parser takes it for --run-path); --run-uri works."""
    from trainer.__main__ import parse_args

    assert parse_args(["--config", "c.toml", "--run-uri", "s3://b/r"]).run == "s3://b/r"
    assert parse_args(["--config", "c.toml", "--run", "s3://b/r"]).run == "s3://b/r"
