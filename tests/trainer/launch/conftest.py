"""Fixtures for the launch tests (fakes live in fakes.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .fakes import outputs_dict


@pytest.fixture
def outputs_file(tmp_path):
    def write(data: Any = None, name: str = "outputs.json") -> str:
        p = tmp_path / name
        p.write_text(json.dumps(outputs_dict() if data is None else data))
        return str(p)

    return write
