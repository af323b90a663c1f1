"""Glue between invoke tasks and the libraries: user errors become exit 2, one line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from invoke import Task

from artifacts.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn :class:`UserError` (and a few well-known user mistakes) into ``invoke.Exit(code=2)``.

    Why: a person who typed a wrong path must see one line telling them what to fix, not a
    traceback. Anything else is a bug and propagates with its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from invoke.exceptions import Exit

        try:
            return fn(*args, **kwargs)
        except UserError as err:
            raise Exit(f"error: {err}", code=err.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper  # type: ignore[return-value]



class LetterShortFlags(Task):
    """invoke's ``Task``, whose automatic short flags are letters only (``@task(klass=...)``).

    Why: invoke takes each name's first character not yet taken; for ``max-exposure`` after
    ``model``, ``airgapped`` and ``max-steps`` that is the dash, and ``--help`` showed
    ``--=STRING`` (a flag nobody can type). Here the dash is skipped: the next free letter.
    """

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        names = opts["names"]
        if len(names) == 2 and not names[1].isalnum():
            free = [ch for ch in names[0] if ch.isalnum() and ch not in taken_names]
            opts["names"] = [names[0], *free[:1]]
        return opts
