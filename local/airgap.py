"""The air gap: offline switches for the HF stack and an in-process network guard.

:func:`enable_offline_env` sets every offline/telemetry switch the Hugging Face stack (and the
usual experiment trackers) read; call it before they are imported. :func:`airgapped` patches
the ``socket`` module so that, while it is active, any connect/send to a non-loopback address
and any DNS lookup raises :class:`AirgapViolation` at once — before a packet leaves, so nothing
ever waits on a network time-out. The error names the destination and the code that tried.

:class:`AirgapViolation` is deliberately *not* an ``OSError``: ``except OSError`` /
``except socket.error`` / requests' ``ConnectionError`` handling does not catch it. Code that
catches *every* ``Exception`` still could, so each attempt is also recorded and logged, and
leaving :func:`airgapped` raises the first recorded violation if the block swallowed it:
a blocked attempt always aborts the run. See ``docs/airgap.md``.

This module is the guard's public face: the switches, and the guard's lifetime (nesting, every
thread, a swallowed attempt raised again on the way out). What counts as loopback and the
``socket`` replacements are :mod:`local.airgap_socket`; the violation, the code it names and the
record of attempts are :mod:`local.airgap_record`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from local.airgap_record import AirgapViolation, state
from local.airgap_socket import install, is_ip_literal, is_local_name, is_loopback, uninstall

__all__ = [
    "OFFLINE_ENV",
    "AirgapViolation",
    "active",
    "airgapped",
    "enable_offline_env",
    "is_ip_literal",
    "is_local_name",
    "is_loopback",
    "violations",
]

#: Environment switches set by :func:`enable_offline_env` (values as the libraries expect them).
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "COMET_MODE": "disabled",
    "MLFLOW_TRACKING_URI": "",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "BITSANDBYTES_NOWELCOME": "1",
}


def active() -> bool:
    """True while an :func:`airgapped` block is active (in any thread)."""
    return bool(state.guards)


def violations() -> list[AirgapViolation]:
    """Every attempt blocked since the outermost active guard went up (a copy)."""
    with state.lock:
        return list(state.violations)


def enable_offline_env() -> dict[str, str]:
    """Set every offline and telemetry switch; returns what it set.

    Call it before importing transformers / huggingface_hub / peft: they read most switches at
    import time. If huggingface_hub is already imported its constants are flipped as well.
    """
    os.environ.update(OFFLINE_ENV)
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_UPDATE_CHECK"):
            if hasattr(hub_constants, name):
                setattr(hub_constants, name, True)
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None and hasattr(datasets_config, "HF_DATASETS_OFFLINE"):
        datasets_config.HF_DATASETS_OFFLINE = True
    return dict(OFFLINE_ENV)


@contextlib.contextmanager
def airgapped(allow_loopback: bool = True) -> Iterator[None]:
    """Block every non-loopback connection and every DNS lookup in this process while active.

    Loopback (127.0.0.0/8, ::1, ``localhost`` answered without DNS) stays open unless
    ``allow_loopback`` is False; Unix sockets always do. Blocked attempts raise
    :class:`AirgapViolation`; if the block swallowed one, leaving it raises it again.
    Guards nest; the patches cover every thread while any guard is active.
    """
    with state.lock:
        if not state.guards:
            state.violations.clear()
            install()
        state.guards.append(allow_loopback)
        seen = len(state.violations)
    try:
        yield
    except Exception as err:
        new = violations()[seen:]
        if new and not isinstance(err, AirgapViolation):
            raise AirgapViolation(
                f"{new[0]} (it surfaced as {type(err).__name__})",
                destination=new[0].destination,
                caller=new[0].caller,
            ) from err
        raise
    else:
        new = violations()[seen:]
        if new:
            raise AirgapViolation(
                f"{new[0]} (the code that tried caught the error; the run stops anyway)",
                destination=new[0].destination,
                caller=new[0].caller,
            )
    finally:
        with state.lock:
            state.guards.pop()
            if not state.guards:
                uninstall()
