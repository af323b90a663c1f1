"""End-to-end supervision on a simulated cluster (moto Auto Scaling + S3, fake clock, fake SSM).

The issue's "done when" scenarios: (a) the laptop gone right after submit, (b) a node lost
mid-run, (c) the controller killed, (d) a stalled run, (e) destroy over the mock Pulumi graph.
Every scenario ends with 0 running instances.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifacts.run import Run, RunState
from trainer.launch.outputs import load_outputs
from trainer.launch.submit import Context, submit

from .sim import MIN, ControllerKilled, World

TINY = Path("configs/pretrain-tiny.toml")
# Minutes of fake time over moto: about 30 s each on a 2-core machine.
pytestmark = pytest.mark.slow


def _submit(world: World, tmp_path: Path, name: str = "exp1"):
    ctx = Context(load_outputs(outputs_file=world.c["file"]), world.ec2, world.group, world.control)
    lines: list[str] = []
    request = submit(
        ctx, config=TINY, run=name, state_path=tmp_path / "last-run", clock=world.clock,
        say=lines.append,
    )  # fmt: skip
    return request, lines


def test_a_laptop_killed_right_after_submit_still_converges_and_ends_at_zero(cluster, tmp_path):
    world = World(cluster, n=2, converge_at_step=90)
    request, lines = _submit(world, tmp_path)
    # The laptop is gone now: nothing of `invoke pretrain` runs any more. Only the controller.
    assert any("price per node" in line for line in lines)
    assert world.control.state().phase == "idle"

    world.serve_until_done()

    run = Run(request.run_uri)
    status = run.read_status()
    assert status.state is RunState.CONVERGED and status.global_step == 90
    assert status.extra["supervision"]["state"] == "converged"
    assert world.live() == []  # 0 running instances
    assert world.group.desired() == 0
    cost = json.loads(run.store.get_bytes(Run.COST))
    assert cost["by_type"][0]["instance_type"] == "p4d.24xlarge"
    assert cost["by_type"][0]["price_source"] == "sim spot"
    state = world.control.state()
    assert state.done and state.outcome["download_command"].startswith("invoke download")
    assert world.control.heartbeat_at() == pytest.approx(world.clock.now(), abs=MIN)


def test_a_node_terminated_mid_run_is_replaced_relaunched_and_converges_at_zero(cluster, tmp_path):
    world = World(cluster, n=2, converge_at_step=150)
    request, _ = _submit(world, tmp_path)
    first: list[str] = []

    def reclaim():
        nodes = sorted({iid for iid, c, _ in world.sim.launches() if c.endswith("launch 1")})
        first.extend(nodes)
        world.terminate(nodes[1])

    world.at(40 * MIN, reclaim)

    world.serve_until_done()

    assert world.sim.attempts() == 2
    second = {iid for iid, c, _ in world.sim.launches() if c.endswith("launch 2")}
    assert first[0] in second and first[1] not in second  # the group's replacement joined
    assert len(second) == 2
    status = Run(request.run_uri).read_status()
    assert status.state is RunState.CONVERGED
    assert world.live() == []


def test_a_killed_controller_leaves_nodes_that_terminate_themselves(cluster, tmp_path):
    world = World(cluster, n=2, converge_at_step=10**6)
    world.agents_on = True
    _submit(world, tmp_path)

    def kill():
        raise ControllerKilled

    world.at(60 * MIN, kill)
    with pytest.raises(ControllerKilled):
        world.serve_until_done()
    assert len(world.live()) == 2  # the trainers still run: the nodes stay while they do
    killed_at = world.clock.now()
    # An hour later the trainers exit (a collective time-out after a peer died, say).
    world.at(2 * 60 * MIN, lambda: [world.sim.lose(i) for i in list(world.sim.running.values())])
    for _ in range(4 * 60):
        if not world.live():
            break
        world.clock.sleep(MIN)
    gone_at = world.clock.now()
    assert world.live() == []
    assert world.group.desired() == 0  # they left (desired - 1 each): nothing replaced them
    # Heartbeat stale for more than the idle timeout: they left right after their trainer ended.
    assert gone_at - (world.clock.start + 2 * 60 * MIN) <= 2 * MIN
    assert gone_at - killed_at > 15 * MIN


def test_idle_nodes_without_any_launch_leave_within_the_idle_timeout(cluster):
    world = World(cluster, n=2)
    world.agents_on = True
    world.control.beat(world.clock.now())  # the controller is alive, but nobody submits
    start = world.clock.now()
    for _ in range(60):
        world.control.beat(world.clock.now())
        if not world.live():
            break
        world.clock.sleep(MIN)
    assert world.live() == []
    assert 15 * MIN <= world.clock.now() - start <= 17 * MIN


def test_a_stalled_run_is_scaled_to_zero(cluster, tmp_path):
    # run.stall_timeout_minutes of the recipe (default 60) reaches the controller in the request.
    world = World(cluster, n=2, converge_at_step=10**6)
    request, _ = _submit(world, tmp_path)
    world.at(45 * MIN, lambda: setattr(world.sim, "stalled", True))

    world.serve_until_done()

    status = Run(request.run_uri).read_status()
    assert status.state is RunState.FAILED
    assert "global step has not moved for 60 min (step 45" in status.reason
    assert world.live() == []
    # The stuck trainers were asked to commit first (SIGTERM), then the group went to 0.
    assert any("stop" in c for _, c, _ in world.sim.sent)
