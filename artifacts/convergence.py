"""Convergence on validation loss: a pure decision over plain numbers (no torch import).

An evaluation *stalls* when it improves on the best (lowest) validation loss of all earlier
evaluations by less than ``min_rel_improvement`` of that best; an increase or a NaN (or an
infinite loss) is a stall, and the first evaluation only sets the best. The run has converged on the evaluation that completes
``patience`` consecutive stalls; any evaluation that is not a stall resets the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ConvergenceCriterion:
    """Stateful stall counter fed one validation loss per evaluation (per epoch)."""

    min_rel_improvement: float = 0.005
    """Smallest relative improvement on the best loss that still counts as progress (0.005 = 0.5%)."""
    patience: int = 5
    """Consecutive stalls after which the run has converged."""
    best: float | None = field(default=None, init=False)
    """Lowest finite validation loss seen so far (None before the first finite one)."""
    stalls: int = field(default=0, init=False)
    """Consecutive stalls so far."""
    evaluations: int = field(default=0, init=False)
    """Number of validation losses seen."""
    converged: bool = field(default=False, init=False)
    """True once ``patience`` consecutive stalls have been seen (stays True)."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_rel_improvement < 1.0):
            raise ValueError(
                f"min_rel_improvement must be in [0, 1), got {self.min_rel_improvement}"
            )
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def is_stall(self, val_loss: float) -> bool:
        """Whether ``val_loss`` would be a stall against the current best (pure, no update)."""
        if val_loss is None or not math.isfinite(val_loss):
            return True
        if self.best is None:
            return False
        return val_loss > self.best - self.min_rel_improvement * abs(self.best)

    def update(self, val_loss: float | None) -> bool:
        """Record one evaluation; return True once the run has converged."""
        val_loss = float("nan") if val_loss is None else float(val_loss)
        self.evaluations += 1
        if not math.isfinite(val_loss):
            self.stalls += 1  # NaN (or an infinite loss) is a stall
        elif self.best is None:
            self.best = val_loss  # the first evaluation only sets the best
            self.stalls = 0
        else:
            self.stalls = self.stalls + 1 if self.is_stall(val_loss) else 0
            # "Best" is the lowest loss of all earlier evaluations, small improvements included.
            self.best = min(self.best, val_loss)
        if self.stalls >= self.patience:
            self.converged = True
        return self.converged

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON-able state, saved in every checkpoint."""
        return {
            "min_rel_improvement": self.min_rel_improvement,
            "patience": self.patience,
            "best": self.best,
            "stalls": self.stalls,
            "evaluations": self.evaluations,
            "converged": self.converged,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counting from :meth:`state_dict` (thresholds stay those of this instance)."""
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.stalls = int(state.get("stalls", 0))
        self.evaluations = int(state.get("evaluations", 0))
        self.converged = bool(state.get("converged", False)) or self.stalls >= self.patience
