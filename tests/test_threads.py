"""``--threads auto``: the governor keeps the faster thread count as the load changes."""

from __future__ import annotations

import pytest
import torch

from mmvae_bench.threads import ThreadGovernor


class Machine:
    """A fake clock whose training step costs ``cost[threads]`` seconds at torch's count."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost = cost
        self.t = 0.0

    def clock(self) -> float:
        return self.t

    def run(self, governor: ThreadGovernor, steps: int) -> list[int]:
        seen = []
        for _ in range(steps):
            self.t += self.cost[torch.get_num_threads()]
            governor.step()
            seen.append(governor.current)
        return seen


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_idle_machine_settles_on_every_core_and_a_loaded_one_back_on_one() -> None:
    machine = Machine({1: 0.2, 2: 0.12})  # idle: 2 threads 1.7x faster
    gov = ThreadGovernor(2, window=4, every_s=10.0, clock=machine.clock)
    gov.start()
    seen = machine.run(gov, 40)
    # The probe times the current count (1) for window + 1 steps, then tries 2.
    assert seen[:5] == [1, 1, 1, 1, 2]
    assert seen[-1] == 2 and torch.get_num_threads() == 2
    machine.cost = {1: 0.2, 2: 0.45}  # another job takes a core: 2 threads now 2.3x slower
    seen = machine.run(gov, 200)
    assert seen[-1] == 1 and torch.get_num_threads() == 1
    # Until the next probe (10 s) it stays at 2; that probe times 2, then 1, and switches.
    assert seen.index(1) <= 10 / 0.45 + 5 + 1
    # Later probes (every ~50 steps at 0.2 s) time 1, then lose 2 after its first step (more
    # than twice the reference): one slow step a probe.
    assert seen[-150:].count(2) <= 3
    assert sum(gov.steps.values()) == 240


def test_a_probe_restarts_at_each_stage_and_one_core_means_one_thread() -> None:
    machine = Machine({1: 0.1, 2: 0.3})
    gov = ThreadGovernor(2, window=3, every_s=1e9, clock=machine.clock)
    gov.start()
    assert machine.run(gov, 20)[-1] == 1
    machine.cost = {1: 1.0, 2: 0.4}  # the next stage's steps scale with threads
    gov.start()
    assert machine.run(gov, 20)[-1] == 2
    single = ThreadGovernor(1, clock=machine.clock)
    single.start()
    machine.run(single, 5)
    assert single.steps == {1: 5} and torch.get_num_threads() == 1


def test_a_new_loop_restarts_a_probe_and_its_gap_is_not_a_step() -> None:
    # Evaluation: HMC calls of different costs, with decoding between them.
    machine = Machine({1: 0.1, 2: 0.06})
    gov = ThreadGovernor(2, window=3, every_s=1e9, clock=machine.clock)
    gov.start()
    machine.run(gov, 2)  # a probe in progress at 1 thread...
    machine.t += 50.0  # ...then 50 s of decoding between two HMC calls
    gov.loop()
    machine.cost = {1: 0.4, 2: 0.24}  # this call's iterations cost 4x more at either count
    seen = machine.run(gov, 12)
    # The probe started over: window + 1 fresh steps at 1 thread (not the 2 it still needed),
    # so neither the 50 s gap nor the cheaper call's steps were timed as this call's.
    assert seen[:4] == [1, 1, 1, 2] and seen[-1] == 2
    assert sum(gov.steps.values()) == 14


def test_hmc_reports_its_iterations_to_the_governor_only_when_governed() -> None:
    from mmvae_bench.hmc import HMCSettings, hmc_sample
    from mmvae_bench.threads import governed

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z * z).sum(-1)

    z0 = torch.zeros(8, 2)
    settings = HMCSettings(steps=5, n_leapfrog=2, step_size=0.1)
    adaptive = HMCSettings(kind="adaptive", warmup=3, steps=4, n_leapfrog=2, step_size=0.1)
    gov = ThreadGovernor(2, window=2, every_s=1e9)
    with governed(gov):
        hmc_sample(log_prob, z0, settings)
        hmc_sample(log_prob, z0, adaptive)
    assert sum(gov.steps.values()) == 5 + 3 + 4  # one step per sampling iteration
    hmc_sample(log_prob, z0, settings)  # outside the block: nobody is told
    assert sum(gov.steps.values()) == 12
