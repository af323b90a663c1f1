"""One typed config loader for every TOML/stack config of the project (trainer, fine-tune, infra).

Each config is a frozen dataclass next to the code that owns it (one docstring per field,
``__post_init__`` for cross-field rules). This module turns plain data into such a dataclass:
unknown keys are errors (with a close-match suggestion), every value is checked against the
field's type hint (``bool``, ``int``, ``float``, ``str``, ``X | None``, ``tuple[str, ...]``,
nested dataclasses for TOML tables), and optional field metadata adds the checks a type cannot
say (``min``/``max``, ``choices``, ``pattern``). Errors are one line that names the file and the
key, raised as the owning package's user-error type, so each entry point still catches one type.

Why not pydantic/cattrs: the rules above are all the three configs need (~150 lines, no
dependency beside the torch pin to keep satisfiable), and the messages must name the key exactly
as the user spells it (``training.lr``, ``twostage:nodeCount``).

``strings=True`` is for Pulumi stack config, whose values arrive as strings (``"true"``, ``"4"``).
TOML is written with ``tomli-w`` (:func:`dump_toml`), read with ``tomllib`` (:func:`read_toml`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ErrorType = Callable[[str], Exception]


class ConfigValueError(ValueError):
    """A bad value at ``key``; the loader prefixes the file (``source: key: message``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def check(ok: bool, key: str, message: str) -> None:
    """For ``__post_init__``: raise a :class:`ConfigValueError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigValueError(key, message)


def read_toml(path: Path | str, error: ErrorType) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is one ``error`` line naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read the config file ({err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise error(f"{path}: not valid TOML: {err}") from None


def dump_toml(raw: Mapping[str, Any], header: str = "") -> str:
    """A config dict as TOML (tomli-w), with ``header`` as leading comment lines; round-trips."""
    import tomli_w

    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + tomli_w.dumps(_plain(raw))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _suggest(key: str, known: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return f"known: {', '.join(known)}"


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, key: str, *, strings: bool = False) -> Any:
    """``value`` checked against (and converted to) the type ``hint``; ConfigValueError names ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (strings and isinstance(value, str) and not value.strip()):
            if len(args) < len(typing.get_args(hint)):
                return None
            raise ConfigValueError(key, "must not be empty")
        errors = []
        for arg in args:
            try:
                return coerce(value, arg, key, strings=strings)
            except ConfigValueError as err:
                errors.append(err.message)
        raise ConfigValueError(key, " or ".join(errors))
    if value is None:
        raise ConfigValueError(key, "must not be empty")
    if origin in (tuple, list):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        if isinstance(value, str) and strings:  # a stack value: "a,b,c"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigValueError(key, f"must be a list of {_type_name(item)}, got {value!r}")
        items = [coerce(v, item, f"{key}[{i}]", strings=strings) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if strings and isinstance(value, str):
            text = value.strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
        if not isinstance(value, bool):
            raise ConfigValueError(key, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if strings and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigValueError(key, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if strings and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigValueError(key, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if strings and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigValueError(key, f"must be a string, got {value!r}")
        return value.strip() if strings else value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigValueError(key, f"must be a path (a string), got {value!r}")
        return Path(value).expanduser()
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigValueError(key, "must be a table ([section])")
        return _build(hint, value, prefix=f"{key}.", strings=strings, key_of=None)
    raise AssertionError(f"config loader: unsupported type {hint!r} for {key}")


def _meta_checks(f: dataclasses.Field, key: str, value: Any) -> None:
    meta = f.metadata
    if value is None or not meta:
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ConfigValueError(key, f"must be between {lo} and {hi}, got {value}")
    if lo is not None and hi is None and value < lo:
        raise ConfigValueError(key, f"must be >= {lo}, got {value}")
    if hi is not None and lo is None and value > hi:
        raise ConfigValueError(key, f"must be <= {hi}, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigValueError(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    pattern = meta.get("pattern")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise ConfigValueError(key, f"must be {meta.get('what', pattern)}, got {value!r}")


def _build(
    cls: type[T],
    table: Mapping[str, Any],
    *,
    prefix: str,
    strings: bool,
    key_of: Callable[[str], str] | None,
    skip: frozenset[str] = frozenset(),
) -> T:
    hints = typing.get_type_hints(cls)
    spelled = {
        (key_of(f.name) if key_of else f.name): f
        for f in dataclasses.fields(cls)
        if f.init and f.name not in skip
    }
    sections = all(dataclasses.is_dataclass(hints[f.name]) for f in spelled.values())
    for key in table:
        if key not in spelled:
            what = "section" if sections else "key"
            hint = _suggest(key, list(spelled), prefix)
            raise ConfigValueError(f"{prefix}{key}", f"unknown {what} ({hint})")
    values = {}
    for key, value in table.items():
        f = spelled[key]
        where = f"{prefix}{key}"
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        if strings and has_default and (value is None or str(value).strip() == ""):
            continue  # an empty stack value means "the default"
        coerced = coerce(value, hints[f.name], where, strings=strings)
        _meta_checks(f, where, coerced)
        values[f.name] = coerced
    return cls(**values)


def build(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    source: str,
    error: ErrorType,
    prefix: str = "",
    strings: bool = False,
    key_of: Callable[[str], str] | None = None,
    skip: frozenset[str] = frozenset(),
    extra: Mapping[str, Any] | None = None,
    message: Callable[[str, str], str] | None = None,
) -> T:
    """``cls`` built from ``data``; every problem is ``error("<source>: <key>: <what is wrong>")``.

    ``message(key, what)`` replaces that wording (Pulumi stack keys read ``twostage:key: …``).

    ``key_of`` maps a field name to the key users write (``node_count`` → ``nodeCount``);
    ``skip`` lists fields that never come from the file; ``extra`` is passed to ``cls`` as is.
    ``__post_init__`` may raise :class:`ConfigValueError` (see :func:`check`) or ``error`` itself.
    """
    if not isinstance(data, Mapping):
        raise error(f"{source}: must be a table of keys")
    try:
        obj = _build(cls, data, prefix=prefix, strings=strings, key_of=key_of, skip=skip)
        if extra:
            obj = dataclasses.replace(obj, **extra)
        return obj
    except ConfigValueError as err:
        if message is not None:
            raise error(message(err.key, err.message)) from None
        raise error(f"{source}: {err}") from None
