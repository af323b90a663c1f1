"""The dataset as token ids in memory (``local.tokens``): the held-out split."""

from __future__ import annotations

import pytest

from local import tokens
from local.errors import LocalError


def test_eval_slice_is_held_out_and_seeded():
    examples = [[i] for i in range(20)]
    train, evals = tokens.split_eval(examples, 0.2, 100, seed=0)
    assert len(evals) == 4 and len(train) == 16
    assert not {tuple(e) for e in evals} & {tuple(t) for t in train}
    assert tokens.split_eval(examples, 0.2, 100, seed=0) == (train, evals)
    assert len(tokens.split_eval(examples, 0.5, 3, seed=0)[1]) == 3
    with pytest.raises(LocalError, match="at least 2"):
        tokens.split_eval([[1]], 0.2, 10, seed=0)
