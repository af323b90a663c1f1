"""Check mock-recorded resource inputs against the pulumi-aws SDK's own ``*Args`` classes.

The mock engine accepts any key and any shape; the real provider does not (an unknown key or a
bool where the schema says string fails or warns at ``pulumi up``). The SDK's ``*Args`` classes
are generated from the provider schema: every input is a property with its camelCase name
(``@pulumi.getter(name=...)``) and a type annotation, nested inputs included. This walks the
recorded (camelCase) inputs against them.
"""

from __future__ import annotations

import collections.abc
import enum
import importlib
import sys
import typing
from functools import cache
from typing import Any

import pulumi
import pulumi.output


def args_class(token: str) -> type | None:
    """``aws:autoscaling/group:Group`` → ``pulumi_aws.autoscaling.GroupArgs`` (None: not aws)."""
    pkg, _, rest = token.partition(":")
    if pkg != "aws":
        return None
    module, _, name = rest.partition(":")
    mod = importlib.import_module(f"pulumi_aws.{module.split('/')[0]}")
    # The Args class beside the resource class; where a nested input type already has the name
    # ``<Name>Args`` the generator calls the resource's own ``<Name>InitArgs``.
    home = sys.modules[getattr(mod, name).__module__]
    return getattr(home, f"{name}InitArgs", None) or getattr(home, f"{name}Args")


@cache
def _properties(cls: type) -> dict[str, Any]:
    """camelCase input name → resolved type annotation."""
    ns = {**vars(pulumi.output), **vars(pulumi), **vars(sys.modules[cls.__module__])}
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attr in vars(klass).values():
            if isinstance(attr, property) and hasattr(attr.fget, "_pulumi_name"):
                out[attr.fget._pulumi_name] = typing.get_type_hints(attr.fget, ns)["return"]
    return out


def _alternatives(tp: Any) -> list[Any]:
    """Strip Optional / Input (Awaitable, Output) wrappers; return the concrete alternatives."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out += _alternatives(arg)
        return out
    if tp is type(None) or origin is collections.abc.Awaitable or origin is pulumi.Output:
        return []
    if tp is pulumi.Output:
        return []
    return [tp]


def _check(value: Any, tp: Any, path: str) -> list[str]:
    alts = _alternatives(tp)
    errors_per_alt = [_check_one(value, alt, path) for alt in alts]
    if not alts or any(not e for e in errors_per_alt):
        return []
    return min(errors_per_alt, key=len)


def _check_one(value: Any, tp: Any, path: str) -> list[str]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return []
    if origin in (collections.abc.Sequence, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        (item,) = typing.get_args(tp)
        return [e for i, v in enumerate(value) for e in _check(v, item, f"{path}[{i}]")]
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {value!r}"]
        _, item = typing.get_args(tp)
        return [e for k, v in value.items() for e in _check(v, item, f"{path}.{k}")]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [] if value in {m.value for m in tp} else [f"{path}: {value!r} not in {tp}"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected bool, got {value!r}"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected str, got {value!r}"]
    if tp is int:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value == int(value)
        return [] if ok else [f"{path}: expected int, got {value!r}"]
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected number, got {value!r}"]
    if isinstance(tp, type) and hasattr(tp, "_pulumi_input_type") or _is_input_type(tp):
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({tp.__name__}), got {value!r}"]
        return check_object(value, tp, path)
    return []  # assets, archives, unions we cannot tell apart: the engine checks those


def _is_input_type(tp: Any) -> bool:
    return isinstance(tp, type) and tp.__name__.endswith("Args") and bool(_properties(tp))


def check_object(value: dict[str, Any], cls: type, path: str = "") -> list[str]:
    """Every key must be an input of ``cls`` and every value of its declared type."""
    props = _properties(cls)
    errors = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in props:
            errors.append(f"{where}: not an input of {cls.__name__}")
            continue
        errors += _check(item, props[key], where)
    return errors


def check_resource(token: str, inputs: dict[str, Any]) -> list[str]:
    """Errors for one recorded resource (empty when the SDK's types accept every input)."""
    cls = args_class(token)
    if cls is None:
        return []
    return [f"{token}: {e}" for e in check_object(inputs, cls)]
