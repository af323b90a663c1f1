"""The convergence criterion: exact stall semantics, NaN/increases, state resume (no torch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from artifacts.convergence import ConvergenceCriterion


def feed(criterion: ConvergenceCriterion, losses: list[float]) -> list[bool]:
    return [criterion.update(x) for x in losses]


def test_first_evaluation_only_sets_the_best() -> None:
    c = ConvergenceCriterion(patience=1)
    assert c.update(10.0) is False
    assert c.best == 10.0 and c.stalls == 0


def test_converges_exactly_on_the_fifth_consecutive_stall() -> None:
    c = ConvergenceCriterion(min_rel_improvement=0.005, patience=5)
    # 10.0 sets the best; each later value improves by < 0.5% of the best (0.05): five stalls.
    results = feed(c, [10.0, 9.99, 9.98, 9.97, 9.96])
    assert results == [False] * 5 and c.stalls == 4
    assert c.update(9.955) is True
    assert c.converged and c.stalls == 5


def test_improvement_of_exactly_the_threshold_is_progress_and_resets() -> None:
    c = ConvergenceCriterion(min_rel_improvement=0.5, patience=3)
    feed(c, [8.0, 7.9, 7.8])  # two stalls (best drifts down to 7.8)
    assert c.stalls == 2
    assert c.update(3.9) is False  # 7.8 - 3.9 == 0.5 * 7.8: not a stall
    assert c.stalls == 0 and c.best == 3.9


def test_big_improvement_resets_the_count() -> None:
    c = ConvergenceCriterion(patience=3)
    feed(c, [5.0, 5.0, 5.0])
    assert c.stalls == 2
    c.update(4.0)
    assert c.stalls == 0
    assert feed(c, [4.0, 4.0, 4.0]) == [False, False, True]


def test_increases_and_nan_are_stalls() -> None:
    c = ConvergenceCriterion(patience=3)
    c.update(2.0)
    assert feed(c, [2.5, float("nan"), float("inf")]) == [False, False, True]
    assert c.best == 2.0  # neither NaN nor an increase moves the best


def test_nan_first_is_a_stall_and_the_next_finite_value_sets_the_best() -> None:
    c = ConvergenceCriterion(patience=2)
    assert c.update(float("nan")) is False and c.stalls == 1
    assert c.update(3.0) is False and c.best == 3.0 and c.stalls == 0
    assert c.update(None) is False and c.stalls == 1  # a missing eval loss counts as NaN


def test_small_improvements_lower_the_best_even_when_they_stall() -> None:
    c = ConvergenceCriterion(min_rel_improvement=0.1, patience=10)
    feed(c, [10.0, 9.5, 9.0])
    # 9.0 improves on 9.5 by 5% (< 10%): a stall, but the best is now 9.0, not 10.0.
    assert c.best == 9.0 and c.stalls == 2


def test_stays_converged() -> None:
    c = ConvergenceCriterion(patience=1)
    feed(c, [1.0, 1.0])
    assert c.converged
    assert c.update(0.1) is True


def test_state_round_trip_continues_counting() -> None:
    uninterrupted = ConvergenceCriterion(patience=4)
    losses = [3.0, 2.0, 1.995, 1.996, 1.993, 1.992]
    expected = feed(uninterrupted, losses)
    first = ConvergenceCriterion(patience=4)
    feed(first, losses[:3])
    saved = json.loads(json.dumps(first.state_dict()))  # what convergence.json holds
    resumed = ConvergenceCriterion(patience=4)
    resumed.load_state_dict(saved)
    assert feed(resumed, losses[3:]) == expected[3:]
    assert resumed.state_dict() == uninterrupted.state_dict()
    assert expected[-1] is True


def test_fresh_criterion_after_restart_would_not_have_converged() -> None:
    """Why the state must ride in checkpoints: without it a resumed run restarts the count."""
    losses = [3.0, 2.99, 2.99, 2.99, 2.99]
    restarted = ConvergenceCriterion(patience=3)
    feed(restarted, losses[:2])
    assert feed(ConvergenceCriterion(patience=3), losses[2:]) == [False, False, False]


@pytest.mark.parametrize(
    "kwargs", [{"min_rel_improvement": -0.1}, {"min_rel_improvement": 1.0}, {"patience": 0}]
)
def test_bad_thresholds_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ConvergenceCriterion(**kwargs)


def test_module_does_not_import_torch() -> None:
    code = "import sys, artifacts.convergence; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_is_stall_is_pure() -> None:
    c = ConvergenceCriterion()
    c.update(1.0)
    before = c.state_dict()
    assert c.is_stall(0.999) and not c.is_stall(0.9)
    assert math.isclose(c.best, 1.0) and c.state_dict() == before
