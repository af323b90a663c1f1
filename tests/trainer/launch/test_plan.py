"""`invoke plan`: the recipe checked against the hardware before any node is paid for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.launch import LaunchError
from trainer.launch.plan import (
    Knobs,
    make_plan,
    plan_recipe,
    require_fit,
    shape_of,
    survivor_fetch_files,
)

REPO = Path(__file__).resolve().parents[3]
INVOKE = str(Path(sys.executable).parent / "invoke")
P4D = REPO / "configs/pretrain-p4d.toml"

# Llama-2-70B's dimensions: the model the issue says cannot fit on 4 × p4d.24xlarge.
LLAMA_70B = """
[model]
family = "llama"
hidden_size = 8192
num_layers = 80
num_heads = 64
num_kv_heads = 8
intermediate_size = 28672
tie_word_embeddings = false
"""


def recipe_70b(tmp_path: Path) -> Path:
    text = P4D.read_text()
    start, end = text.index("[model]"), text.index("[data]")
    path = tmp_path / "pretrain-70b.toml"
    path.write_text(text[:start] + LLAMA_70B.strip() + "\n\n" + text[end:])
    return path


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [INVOKE, "--search-root", str(REPO), *args],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=120,
    )  # fmt: skip


def test_parameter_count_matches_the_model_transformers_builds():
    from trainer.loop.model import build_model_config

    cfg = load_config(REPO / "configs/pretrain-tiny.toml")
    for family in ("gpt2", "llama"):
        from dataclasses import replace

        cfg2 = replace(cfg, model=replace(cfg.model, family=family))
        hf = build_model_config(
            cfg2.model, vocab_size=cfg2.data.vocab_size, block_size=cfg2.data.block_size,
            eos_token_id=0,
        )  # fmt: skip
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(hf)
        real = sum(p.numel() for p in model.parameters())
        assert shape_of(cfg2).params == real, family


def test_the_p4d_recipe_fits_and_every_number_is_there():
    cfg = load_config(P4D)
    plan = require_fit(
        plan_recipe(cfg, nodes=2, instance_type="p4d.24xlarge", usd_per_node_hour=12.0,
                    price_source="test")  # fmt: skip
    )
    assert 1.3e9 < plan.params < 1.6e9  # "a ~1.4B-parameter Llama"
    assert plan.fits and plan.per_gpu_gb < plan.usable_gb == 36.0
    assert plan.checkpoint_gb == pytest.approx(12 * plan.params / 1e9, abs=0.1)
    assert plan.per_node_gb == pytest.approx(plan.checkpoint_gb / 2, abs=0.1)
    assert 0 < plan.notice_to_commit_s < 120
    assert plan.usd_per_hour == 24.0 and plan.usd_per_1b_tokens > 0
    text = "\n".join(plan.lines())
    assert "fits" in text and "per 1B tokens" in text and "notice -> commit" in text


def test_a_node_lost_is_priced_both_ways_going_on_with_the_survivors_and_waiting():
    cfg = load_config(P4D)
    two = plan_recipe(cfg, nodes=2, instance_type="p4d.24xlarge", usd_per_node_hour=None,
                      price_source="-")  # fmt: skip
    one = plan_recipe(cfg, nodes=1, instance_type="p4d.24xlarge", usd_per_node_hour=None,
                      price_source="-")  # fmt: skip
    assert one.recovery_fewer_s is None  # nobody survives one node
    # going on: the survivor fetches the other half (8 files) and its step takes twice as long
    assert two.recovery_fewer_s > two.recovery_s
    assert "going on with 1 node(s) (resharding load)" in "\n".join(two.lines())
    # The worst survivor lacks about one node's files (the lost node's, or its band shifted by the
    # loss): 8 files of 8 x nodes, whatever the size — not the whole checkpoint.
    assert [survivor_fetch_files(n, n - 1, 8) for n in (2, 4, 8)] == [8, 8, 8]
    assert survivor_fetch_files(4, 2, 8) == 16  # two nodes lost: two nodes' files


def test_70b_on_four_p4d_is_refused_with_the_numbers_and_what_would_fit(tmp_path):
    cfg = load_config(recipe_70b(tmp_path))
    plan = plan_recipe(cfg, nodes=4, instance_type="p4d.24xlarge", usd_per_node_hour=None,
                       price_source="none")  # fmt: skip
    assert not plan.fits
    assert plan.model_states_gb > 34  # 16 B/param over 32 GPUs, before activations
    with pytest.raises(LaunchError) as err:
        require_fit(plan)
    line = str(err.value)
    assert "\n" not in line
    assert "do not fit on 4 × p4d.24xlarge" in line and f"{plan.per_gpu_gb:.1f} GB per GPU" in line
    assert "offload_optimizer = true" in line and " nodes at micro-batch" in line
    # The suggestions are real: the named node count fits at the named micro-batch.
    import re
    from dataclasses import replace

    nodes, mb = map(int, re.search(r"(\d+) nodes at micro-batch (\d+)", line).groups())
    smaller = replace(cfg, training=replace(cfg.training, per_device_train_batch_size=mb))
    assert plan_recipe(smaller, nodes=nodes, instance_type="p4d.24xlarge",
                       usd_per_node_hour=None, price_source="none").fits  # fmt: skip
    assert not plan_recipe(smaller, nodes=nodes - 1, instance_type="p4d.24xlarge",
                           usd_per_node_hour=None, price_source="none").fits  # fmt: skip


def test_gradient_checkpointing_and_micro_batch_move_activation_memory():
    shape = shape_of(load_config(P4D))
    kw = dict(nodes=1, instance_type="p4d.24xlarge", usd_per_node_hour=None, price_source="-")
    ckpt = make_plan(shape, Knobs(micro_batch=32, accumulation=8, checkpointing=True), **kw)
    full = make_plan(shape, Knobs(micro_batch=32, accumulation=8, checkpointing=False), **kw)
    small = make_plan(shape, Knobs(micro_batch=4, accumulation=8, checkpointing=False), **kw)
    assert ckpt.activations_gb < small.activations_gb * 8 < full.activations_gb * 1.01
    assert not full.fits and "training.gradient_checkpointing = true" in full.refusal()
    # 8·N·T with checkpointing vs 6·N·T without.
    assert ckpt.micro_batch_s == pytest.approx(full.micro_batch_s * 8 / 6, rel=1e-3)


def test_invoke_plan_accepts_p4d_and_refuses_70b_with_exit_2(tmp_path):
    ok = invoke("plan", "--config", str(P4D), "--nodes", "2", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["fits"] is True

    bad = invoke("plan", "--config", str(recipe_70b(tmp_path)), "--nodes", "4")
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    err = bad.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in bad.stderr
    assert "do not fit on 4 × p4d.24xlarge" in err[0] and "would fit:" in err[0]

    unknown = invoke("plan", "--config", str(P4D), "--instance-type", "g4dn.xlarge")
    assert unknown.returncode == 2 and "the plan knows p4d.24xlarge" in unknown.stderr


def test_pretrain_refuses_before_submitting_anything(tmp_path, monkeypatch):
    import types

    from invoke import Context
    from invoke.exceptions import Exit

    import trainer.launch.submit as submit_mod
    from trainer.launch import cli
    from trainer.launch.cost import Price

    outputs = types.SimpleNamespace(instance_types=["p4d.24xlarge"], node_count=4)
    monkeypatch.setattr(cli, "_context", lambda *a: types.SimpleNamespace(outputs=outputs))
    monkeypatch.setattr(
        submit_mod, "prices", lambda ctx: ({"p4d.24xlarge": Price(9.83, "spot")}, None)
    )
    submitted = []
    monkeypatch.setattr(submit_mod, "submit", lambda *a, **k: submitted.append(k))
    with pytest.raises(Exit) as err:
        cli.pretrain(Context(), outputs="o.json", config=str(recipe_70b(tmp_path)))
    assert err.value.code == 2 and "do not fit on 4 × p4d.24xlarge" in str(err.value.message)
    assert submitted == []  # nothing uploaded, no node asked for
