"""Fixtures for the infra tests; the mock engine harness lives in ``infra_mocks``."""

from __future__ import annotations

import warnings

import pytest
from infra_mocks import StackRun, run_stack


@pytest.fixture(scope="module")
def default_stack() -> StackRun:
    """The stack planned with only ``aws:region`` set."""
    return run_stack({})


@pytest.fixture(autouse=True)
def _quiet_pulumi_aws():
    # pulumi_aws.s3 raises many DeprecationWarnings on import; they say nothing about our code.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield
