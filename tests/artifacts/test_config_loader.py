"""The shared config loader (artifacts.config): types, unknown keys, metadata checks, TOML I/O."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

import pytest

from artifacts.config import ConfigValueError, build, check, dump_toml, read_toml


class Oops(Exception):
    pass


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    names: tuple[str, ...] = ()
    mode: str = field(default="a", metadata={"choices": ("a", "b")})


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = field(default=1, metadata={"min": 1, "max": 10})
    flag: bool = False
    name: str | None = field(default=None, metadata={"pattern": "[a-z]+", "what": "lowercase"})

    def __post_init__(self) -> None:
        check(not (self.flag and self.name is None), "name", "is needed with flag")


def make(data, **kw):
    return build(Outer, data, source="f.toml", error=Oops, **kw)


def test_values_are_typed_and_nested_tables_built() -> None:
    cfg = make({"inner": {"rate": 1, "names": ["x", "y"]}, "steps": 3, "name": "abc"})
    assert cfg.inner == Inner(rate=1.0, names=("x", "y")) and isinstance(cfg.inner.rate, float)
    assert cfg.steps == 3 and cfg.name == "abc"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stpes": 2}, "f.toml: stpes: unknown key (did you mean steps?)"),
        ({"inner": {"rat": 1.0}}, "f.toml: inner.rat: unknown key (did you mean inner.rate?)"),
        ({"steps": "2"}, "f.toml: steps: must be an integer, got '2'"),
        ({"steps": True}, "f.toml: steps: must be an integer, got True"),
        ({"steps": 11}, "f.toml: steps: must be between 1 and 10, got 11"),
        ({"flag": 1}, "f.toml: flag: must be true or false, got 1"),
        ({"inner": {"names": "x"}}, "f.toml: inner.names: must be a list of str, got 'x'"),
        ({"inner": {"names": [1]}}, "f.toml: inner.names[0]: must be a string, got 1"),
        ({"inner": {"mode": "c"}}, "f.toml: inner.mode: must be one of a, b, got 'c'"),
        ({"inner": 3}, "f.toml: inner: must be a table ([section])"),
        ({"name": "ABC"}, "f.toml: name: must be lowercase, got 'ABC'"),
        ({"flag": True}, "f.toml: name: is needed with flag"),
    ],
)
def test_every_problem_is_one_line_naming_file_and_key(data, message) -> None:
    with pytest.raises(Oops) as err:
        make(data)
    assert str(err.value) == message


def test_stack_strings_are_converted_and_empty_means_default() -> None:
    cfg = make({"steps": " 4 ", "flag": "true", "name": "x", "inner": {}}, strings=True)
    assert cfg.steps == 4 and cfg.flag is True
    assert make({"steps": "", "name": ""}, strings=True) == Outer()
    with pytest.raises(Oops, match="steps: must be an integer, got 'four'"):
        make({"steps": "four"}, strings=True)


def test_custom_key_spelling_and_message() -> None:
    with pytest.raises(Oops) as err:
        build(Outer, {"Steps": 0}, source="s", error=Oops, key_of=str.capitalize, prefix="p:",
              message=lambda key, what: f"[{key}] {what}")  # fmt: skip
    assert str(err.value) == "[p:Steps] must be between 1 and 10, got 0"


def test_toml_round_trip_and_file_errors(tmp_path) -> None:
    raw = {"name": "r", "training": {"lr": 6e-05, "files": ["a", "b"], "on": True}}
    text = dump_toml(raw, header="generated\nfor a test")
    assert text.startswith("# generated\n# for a test\n")
    assert tomllib.loads(text) == raw
    with pytest.raises(Oops, match="config file not found"):
        read_toml(tmp_path / "missing.toml", Oops)
    (tmp_path / "bad.toml").write_text("a = = 1\n")
    with pytest.raises(Oops, match="bad.toml: not valid TOML"):
        read_toml(tmp_path / "bad.toml", Oops)


def test_config_value_error_carries_the_key() -> None:
    err = ConfigValueError("a.b", "is wrong")
    assert err.key == "a.b" and str(err) == "a.b: is wrong"
