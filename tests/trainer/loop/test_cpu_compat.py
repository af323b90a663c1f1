"""The CPU adaptations: each one fixes its trap, and none of them runs when an accelerator exists.

Every check runs in a fresh interpreter: the adaptations patch library modules process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

TWO_RANKS = textwrap.dedent(
    """
    import json, os, pathlib, sys
    from trainer.loop import cpu_compat
    from trainer.config import config_from_dict
    from trainer.loop.dsconfig import build_ds_config
    extra = {}
    if sys.argv[1] == "compat":
        extra = cpu_compat.apply(precision="fp32").training_kwargs
    from transformers import TrainingArguments
    ds = build_ds_config(config_from_dict({"data": {"generated_corpus": True}}).deepspeed, accelerator=False)
    args = TrainingArguments(output_dir=sys.argv[2], deepspeed=ds, report_to="none", **extra)
    # One file per rank: lines two ranks print into one shared pipe can interleave mid-line.
    result = {"rank": args.process_index, "world": args.world_size}
    pathlib.Path(sys.argv[3], f"result-{os.environ['RANK']}.json").write_text(json.dumps(result))
    """
)


def run_py(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def torchrun_two(mode: str, tmp_path: Path) -> list[dict]:
    import json

    script = tmp_path / "two.py"
    script.write_text(TWO_RANKS)
    results_dir = tmp_path / f"results-{mode}"
    results_dir.mkdir()
    out = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(script), mode, str(tmp_path / "out"), str(results_dir),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("result-*.json"))]
    assert len(results) == 2, out.stdout[-2000:] + out.stderr[-4000:]
    return sorted(results, key=lambda r: r["rank"])


@pytest.mark.slow
def test_two_cpu_ranks_see_one_world_of_two_only_with_the_adaptation(tmp_path: Path) -> None:
    # The trap: without the adaptation each rank believes it is rank 0 of 1 (two separate models).
    assert torchrun_two("plain", tmp_path) == [{"rank": 0, "world": 1}, {"rank": 0, "world": 1}]
    assert torchrun_two("compat", tmp_path) == [{"rank": 0, "world": 2}, {"rank": 1, "world": 2}]


def test_shm_comm_op_is_not_built_on_cpu() -> None:
    code = textwrap.dedent(
        """
        import importlib
        from trainer.loop import cpu_compat
        print(cpu_compat.apply(precision="fp32").applied)
        print(importlib.import_module("deepspeed.comm.torch").build_shm_op())
        """
    )
    out = run_py(code, env={"LOCAL_RANK": "-1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "no-shm-comm-op" in lines[-2] and "threads" in lines[-2]
    assert (
        lines[-1] == "None"
    )  # DeepSpeed falls back to the gloo group: no g++ compile, no /dev/shm buffer


def test_shm_comm_op_can_be_kept_on_request() -> None:
    code = "from trainer.loop import cpu_compat; print(cpu_compat.disable_shm_comm_op())"
    out = run_py(code, env={"TWOSTAGE_CPU_SHM_COMM": "1"})
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.skipif(
    not __import__("trainer.loop.cpu_compat").loop.cpu_compat.cpu_bf16_supported(), reason="CPU has no bf16"
)
def test_bf16_training_arguments_accepted_on_a_bf16_cpu_only_with_the_adaptation() -> None:
    code = textwrap.dedent(
        """
        import sys
        from trainer.loop import cpu_compat
        if sys.argv[1] == "compat":
            print(cpu_compat.apply(precision="bf16").applied)
        from transformers import TrainingArguments
        try:
            TrainingArguments(output_dir="/tmp/x-bf16", bf16=True, report_to="none")
            print("ACCEPTED")
        except ValueError as err:
            print("REFUSED", err)
        """
    )
    plain = run_py(code, "plain", env={"LOCAL_RANK": "-1"})
    assert "REFUSED" in plain.stdout, plain.stderr[-2000:]
    compat = run_py(code, "compat", env={"LOCAL_RANK": "-1"})
    assert "ACCEPTED" in compat.stdout and "cpu-bf16" in compat.stdout, compat.stderr[-2000:]


def test_threads_pinned_to_omp_num_threads() -> None:
    code = "import torch; from trainer.loop import cpu_compat; cpu_compat.set_threads(); print(torch.get_num_threads())"
    assert run_py(code, env={"OMP_NUM_THREADS": "1"}).stdout.strip().splitlines()[-1] == "1"


def test_nothing_is_applied_when_an_accelerator_is_present() -> None:
    code = textwrap.dedent(
        """
        import importlib, torch
        torch.cuda.is_available = lambda: True  # pretend to be a GPU node
        from trainer.loop import cpu_compat
        result = cpu_compat.apply(precision="bf16")
        shm = importlib.import_module("deepspeed.comm.torch").build_shm_op
        print(result.applied, result.training_kwargs, shm.__name__)
        """
    )
    out = run_py(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[] {} build_shm_op"
