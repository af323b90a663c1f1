"""Run a stage-2 command (``generate``, ``evaluate``) cut off from the network, like ``finetune``.

Today's air gap (``docs/airgap.md``): the HF offline switches, then the command's function in a
child in a fresh network namespace where the OS allows (``local.netns``, a ``module:function``
target with a JSON request), the in-process guard up inside it either way. A blocked attempt
aborts the command with one line. The function runs in this process when not air-gapped.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from local.errors import LocalError


@contextlib.contextmanager
def guarded(airgapped: bool) -> Iterator[None]:
    """The in-process network guard (when ``airgapped``): an attempt ends the command."""
    if not airgapped:
        yield
        return
    from local.airgap import AirgapViolation
    from local.airgap import airgapped as network_guard

    try:
        with network_guard():
            yield
    except AirgapViolation as err:
        raise LocalError(f"{err}; the command was aborted") from None


def run(
    target: str, request: dict[str, Any], *, airgapped: bool, strict: bool = False,
    isolate: bool = True, pass_fds: tuple[int, ...] = (),
) -> Any:  # fmt: skip
    """``target(request)`` air-gapped (namespace child where possible) or here; its result.

    ``request["airgapped"]`` is set, so the target knows to put up the guard (:func:`guarded`)
    wherever it runs.
    """
    request = {**request, "airgapped": airgapped}
    if airgapped:
        from local import netns
        from local.airgap import enable_offline_env

        enable_offline_env()
        if netns.choose(strict=strict, allowed=isolate) == netns.NAMESPACE:
            return netns.run_in_namespace(target, request, pass_fds)
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(request)
