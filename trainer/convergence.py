"""Stage 1's convergence criterion; it lives in :mod:`artifacts.convergence` so stage 2's early
stop uses the very same rule (neither stage imports the other)."""

from artifacts.convergence import ConvergenceCriterion

__all__ = ["ConvergenceCriterion"]
