"""The run recipe: one TOML file per recipe (``configs/pretrain-*.toml``), loaded once per process.

``[run]`` and ``[convergence]`` live here; every other section lives with the package that owns
it (``trainer.data.config``, ``trainer.loop.config``, ``trainer.spot.config``). Every section is a
frozen dataclass with one docstring per field. Unknown sections or keys and bad
values are errors that name the key and the file (``TrainerError``). The DeepSpeed JSON is generated
from this (``trainer.loop.dsconfig``); the HF ``TrainingArguments`` too (``trainer.loop.args``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.config import build, read_toml
from artifacts.config import check as _check
from trainer.data.config import DataConfig
from trainer.errors import TrainerError
from trainer.loop.config import DeepSpeedConfig, EvalConfig, ModelConfig, TrainingConfig
from trainer.spot.config import SpotConfig


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: where the run lives and what is kept."""

    name: str = "pretrain"
    """Run name; the default ``--run`` folder under ``runs/`` starts with it."""
    uri: str = ""
    """Run prefix (``s3://bucket/runs/NAME``, ``file://`` or a path); ``--run`` overrides it."""
    scratch_dir: str = ""
    """Local folder for checkpoints before upload and caches; default ``$TWOSTAGE_SCRATCH`` or ``runs/.scratch``."""
    seed: int = 42
    """Seed for model init, data split and shuffling (HF ``TrainingArguments.seed``)."""
    keep_last: int = 3
    """Committed checkpoints kept in the run prefix (older ones are pruned after each commit)."""
    signing_key: str | None = None
    """Ed25519 private key (PEM path) that signs the published ``final/`` manifest; None: unsigned.
    Local runs on the owner's own machine only: ``invoke pretrain`` to the cluster refuses it (no
    machine that runs training code holds a long-lived key); sign with ``invoke sign`` instead."""
    min_nodes: int | None = None
    """Cluster runs: the fewest nodes to go on with when spot capacity is short (after a capacity
    wait; the run grows back when nodes return). None: every node of the cluster."""
    idle_timeout_minutes: float = 15.0
    """Cluster runs: a node whose trainer has exited leaves (stops billing) when no new launch
    arrives within this, or when the controller's heartbeat is this old."""
    stall_timeout_minutes: float = 60.0
    """Cluster runs: the controller scales to 0 when the global step has not moved for this long."""
    max_hours: float | None = None
    """Cluster runs: stop (checkpoint, scale to 0) after this many hours; None: no cap."""
    max_dollars: float | None = None
    """Cluster runs: stop when the run has cost this many USD (nodes + controller); None: no cap."""
    store_outage_minutes: float = 15.0
    """How long a failing checkpoint upload keeps retrying (training goes on) before the run stops with exit 75."""

    def __post_init__(self) -> None:
        _check(
            bool(self.name) and "/" not in self.name,
            "run.name",
            "must be a non-empty name without '/'",
        )
        _check(self.keep_last >= 1, "run.keep_last", f"must be >= 1, got {self.keep_last}")
        _check(
            self.min_nodes is None or self.min_nodes >= 1,
            "run.min_nodes",
            f"must be >= 1, got {self.min_nodes}",
        )
        for key in ("idle_timeout_minutes", "stall_timeout_minutes"):
            value = getattr(self, key)
            _check(value >= 5, f"run.{key}", f"must be at least 5 (minutes), got {value}")
        for key in ("max_hours", "max_dollars"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"run.{key}", f"must be > 0, got {value}")
        _check(
            self.store_outage_minutes > 0,
            "run.store_outage_minutes",
            f"must be > 0, got {self.store_outage_minutes}",
        )


@dataclass(frozen=True)
class ConvergenceConfig:
    """``[convergence]``: when validation loss has stopped improving (``artifacts.convergence``)."""

    min_rel_improvement: float = 0.005
    """An epoch stalls when it improves on the best val loss by less than this fraction of it."""
    patience: int = 5
    """Consecutive stalled epochs after which the run has converged."""

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.min_rel_improvement < 1.0,
            "convergence.min_rel_improvement",
            f"must be in [0, 1), got {self.min_rel_improvement}",
        )
        _check(self.patience >= 1, "convergence.patience", f"must be >= 1, got {self.patience}")


@dataclass(frozen=True)
class TrainerConfig:
    """A whole recipe; ``source`` is the file it came from, ``raw`` its parsed TOML."""

    run: RunConfig = field(default_factory=RunConfig)
    """``[run]`` section."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """``[model]`` section."""
    data: DataConfig = field(default_factory=lambda: DataConfig(generated_corpus=True))
    """``[data]`` section."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """``[training]`` section."""
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    """``[convergence]`` section."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """``[deepspeed]`` section."""
    spot: SpotConfig = field(default_factory=SpotConfig)
    """``[spot]`` section."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """``[eval]`` section (sample generations, TensorBoard)."""
    source: str = ""
    """Path of the TOML file (for messages)."""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The parsed TOML, recorded in checkpoints and the training summary."""


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> TrainerConfig:
    """Build a :class:`TrainerConfig` from parsed TOML; errors name the key and ``source``."""
    return build(
        TrainerConfig,
        raw,
        source=source,
        error=TrainerError,
        skip=frozenset({"source", "raw"}),
        extra={"source": source, "raw": raw},
    )


def load_config(path: Path | str) -> TrainerConfig:
    """Read and validate a recipe TOML file."""
    return config_from_dict(read_toml(path, TrainerError), source=str(Path(path)))
