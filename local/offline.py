"""Run a stage-2 command (``generate``, ``evaluate``) cut off from the network, like ``finetune``.

The air gap of ``docs/airgap.md``: the HF offline switches, then the command's function in the
bubblewrap sandbox (``local.netns.run_isolated``, a ``module:function`` target with a JSON
request; it may read only the files the request names), the in-process guard up inside it too.
No sandbox here fails closed, as ``invoke finetune --airgapped`` does. A blocked attempt aborts
the command with one line. The function runs in this process when not air-gapped.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from local.errors import LocalError


@contextlib.contextmanager
def guarded(
    airgapped: bool,
    *,
    aborted: str = "the command was aborted",
    on_violation: Callable[[], None] | None = None,
) -> Iterator[None]:
    """The in-process network guard (when ``airgapped``): an attempt ends the command with one
    line (``aborted`` says what that means), after ``on_violation`` (e.g. drop checkpoints)."""
    if not airgapped:
        yield
        return
    from local.airgap import AirgapViolation
    from local.airgap import airgapped as network_guard

    try:
        with network_guard():
            yield
    except AirgapViolation as err:
        if on_violation is not None:
            on_violation()
        raise LocalError(f"{err}; {aborted}") from None


#: Request keys that name files the command reads (bound read-only into the sandbox).
READ_KEYS = ("model", "adapter", "prompts_file", "data", "config")


def run(
    target: str, request: dict[str, Any], *, airgapped: bool, isolate: bool = True,
    pass_fds: tuple[int, ...] = (),
) -> Any:  # fmt: skip
    """``target(request)`` air-gapped (in the sandbox) or here; its result.

    ``request["airgapped"]`` is set, so the target knows to put up the guard (:func:`guarded`)
    wherever it runs. ``isolate=False`` (tests) keeps an air-gapped run in this process, guarded.
    """
    request = {**request, "airgapped": airgapped}
    if airgapped:
        from pathlib import Path

        from local import netns, sandbox
        from local.airgap import enable_offline_env

        enable_offline_env()
        if netns.choose(airgapped=True, allowed=isolate) == sandbox.SANDBOX:
            readable = tuple(
                Path(request[k]).resolve() for k in READ_KEYS if request.get(k) is not None
            )
            plan = sandbox.Plan(readable=readable)
            return netns.run_isolated(target, request, plan=plan, pass_fds=pass_fds)
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(request)
