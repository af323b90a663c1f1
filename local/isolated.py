"""A fine-tune's steps 2–7 in the air-gap sandbox (``local.sandbox``, ``local.netns``).

The parent process keeps what the child must not do: it makes and holds the export's staging
folder and the run's work area (the only writable places in the sandbox), hands the child the
job and the key over a pipe, and publishes the sealed export with the final rename (``--out``'s
parent folder is read-only in there). It also states swap, since plaintext in memory could be
swapped to disk whatever the sandbox does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from local.job import FinetuneResult, Job

log = logging.getLogger("local.finetune")

#: What the sandboxed child runs (``local.netns`` imports it by name; a string, not an import,
#: so this module stays below ``local.finetune`` in the import tree).
CHILD_TARGET = "local.finetune:run_job_request"


def swap_logged(airgapped: bool) -> str:
    """Swap's state, logged; a warning when decrypted records could be swapped to disk."""
    from local.sandbox import swap_state

    state = swap_state()
    if state == "on, not encrypted" and airgapped:
        log.warning(
            "swap: %s: decrypted records in memory could be written to disk by the kernel; "
            "use encrypted swap (dm-crypt) or `swapoff -a` for the run",
            state,
        )
    else:
        log.info("swap: %s", state)
    return state


def run_sandboxed(job: Job, isolation: str | None = None) -> FinetuneResult:
    """Steps 2–7 in the sandbox: the child may read the model, the dataset and the public key
    and write only the export's staging folder (made and held here) and the run's encrypted work
    area; this process publishes the sealed export with the final rename.

    ``isolation`` (the benchmark) may name ``local.sandbox.NAMESPACE`` instead.
    """
    from local import netns, sandbox, staging
    from local.held import work_area

    work = work_area(job.out)
    work_existed = work.is_dir()
    work.mkdir(mode=0o700, exist_ok=True)
    try:
        with staging.staging_dir(job.out) as folder:
            # Absolute paths: the child starts in `/` and sees each path where it is here.
            child = dataclasses.replace(
                job, model_dir=_abs(job.model_dir), data=_abs(job.data), out=_abs(job.out),
                key_file=_abs(job.key_file), staging=_abs(folder),
                public_key=_abs(job.public_key) if job.public_key is not None else None,
            )  # fmt: skip
            readable = [child.model_dir, child.data]
            if child.public_key is not None:
                readable.append(child.public_key)
            plan = sandbox.Plan(
                readable=tuple(readable),
                writable=(_abs(folder), _abs(work)),
                gpu=job.cfg.device != "cpu",
            )
            doc = netns.run_isolated(
                CHILD_TARGET, child.to_dict(with_key=False), isolation=isolation or job.isolation,
                plan=plan, secret=job.key,
            )  # fmt: skip
            result = FinetuneResult.from_dict(doc)
            staging.publish(folder, job.out)
            return result
    finally:
        if not work_existed and work.is_dir() and not any(work.iterdir()):
            work.rmdir()


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(path))
