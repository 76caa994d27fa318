"""The preemption simulator against closed forms and hand-worked schedules."""

from __future__ import annotations

import math

import pytest

from submit.preemption import (
    ClassCosts,
    Interruptions,
    PolicyError,
    auto_units,
    daly_interval,
    simulate,
)

A100 = ClassCosts(unit_seconds=60, checkpoint_seconds=10, restart_seconds=30, queue_seconds=100)


def test_no_evictions_is_the_work_plus_its_checkpoints() -> None:
    out = simulate(10, 3, {"A100": A100}, Interruptions(), runs=3)
    # restart 30 + three checkpointed cycles of 3 units (190 s each) + the last unit
    assert out.wall.tolist() == [30 + 3 * 190 + 60] * 3
    assert out.goodput[0] == 600 and out.badput[0] == 30 + 30 and out.claims[0] == 1


def test_a_replayed_schedule() -> None:
    """Claim 1 lasts 300 s: restart 30, one cycle (190) kept, 80 s into the next lost;
    claim 2 (after 100 s of queue) does the other 7 units: restart, two cycles, one unit."""
    out = simulate(10, 3, {"A100": A100}, Interruptions(lives=(300, None)), runs=5)
    assert out.wall[0] == 300 + 100 + 30 + 2 * 190 + 60
    assert out.goodput[0] == 600 and out.claims[0] == 2
    assert out.gpu_hours[0] == pytest.approx((300 + 470) / 3600)


def test_exponential_evictions_match_the_closed_form() -> None:
    """A job of one piece, L = restart + work: claims succeed with p = exp(-L/M), so the
    expected wall time is (1/p - 1)(M + queue) + ... = (exp(L/M) - 1)(M + queue)."""
    cost = ClassCosts(unit_seconds=600, restart_seconds=60, queue_seconds=120)
    mean = 1800.0
    out = simulate(1, 1, {"g": cost}, Interruptions(mean_seconds={"g": mean}), runs=40000)
    expected = (math.exp(660 / mean) - 1) * (mean + 120)
    assert out.wall.mean() == pytest.approx(expected, rel=0.03)


def test_weibull_has_the_mean_it_is_given() -> None:
    import numpy as np

    model = Interruptions(kind="weibull", mean_seconds={"g": 1000.0}, shape=0.6)
    rng = np.random.default_rng(1)
    draws = [model.draw(rng, "g") for _ in range(40000)]
    assert sum(draws) / len(draws) == pytest.approx(1000, rel=0.03)


def test_restarts_may_land_on_a_slower_class() -> None:
    slow = ClassCosts(unit_seconds=180, checkpoint_seconds=10, restart_seconds=30)
    model = Interruptions(mean_seconds={"A100": 600.0, "P100": 600.0}, change_class=1.0,
                          weights={"A100": 0.0, "P100": 1.0})
    mixed = simulate(20, 2, {"A100": A100, "P100": slow}, model, runs=500)
    alone = simulate(20, 2, {"A100": A100}, Interruptions(mean_seconds={"A100": 600.0}),
                     runs=500)
    assert mixed.wall.mean() > 1.5 * alone.wall.mean()


def test_daly_interval() -> None:
    assert daly_interval(60, 3600) == pytest.approx(617.9, abs=0.1)
    assert daly_interval(60, math.inf) == math.inf
    assert daly_interval(5000, 1000) == 1000  # checkpoints cost more than claims last
    assert auto_units(60, 60, 3600) == 10
    assert auto_units(600, 60, 3600) == 1
    assert auto_units(60, 60, math.inf) == 0


def test_the_daly_interval_is_near_the_simulated_best() -> None:
    cost = ClassCosts(unit_seconds=30, checkpoint_seconds=45, restart_seconds=60,
                      queue_seconds=60)
    model = Interruptions(mean_seconds={"g": 1800.0})
    walls = {k: simulate(400, k, {"g": cost}, model, runs=400, seed=3).wall.mean()
             for k in (1, 2, 4, 8, 12, 16, 32, 64)}
    best = min(walls, key=walls.get)
    auto = auto_units(30, 45, 1800)
    assert walls[auto] <= 1.05 * walls[best]
    assert walls[auto] < walls[1]  # checkpointing every unit costs more


@pytest.mark.parametrize("make", [
    lambda: simulate(10, 1, {}, Interruptions()),
    lambda: simulate(10, 0, {"g": A100}, Interruptions()),
    lambda: simulate(10, 1, {"g": ClassCosts(unit_seconds=0)}, Interruptions()),
    lambda: simulate(10, 1, {"g": A100}, Interruptions(kind="gamma")),
    lambda: simulate(10, 1, {"g": A100}, Interruptions(mean_seconds={"g": -5})),
    lambda: simulate(10, 1, {"g": A100}, Interruptions(kind="weibull", shape=0,
                                                       mean_seconds={"g": 100})),
    lambda: simulate(10, 1, {"g": A100}, Interruptions(change_class=1.5)),
    lambda: daly_interval(10, 0),
])
def test_impossible_parameters_are_refused(make) -> None:
    with pytest.raises(PolicyError):
        make()


def test_gpu_policy_requires_new_classes_only_when_it_pays() -> None:
    from submit.preemption import GpuClass, choose_gpus

    def pool(old_queue: float, mtbe: float) -> dict[str, GpuClass]:
        fast = ClassCosts(unit_seconds=60, checkpoint_seconds=30, restart_seconds=60,
                          queue_seconds=3600)
        slow = ClassCosts(unit_seconds=400, checkpoint_seconds=30, restart_seconds=60,
                          queue_seconds=old_queue)
        return {"H100": GpuClass(9.0, fast, mtbe, 0.5), "P100": GpuClass(6.0, slow, mtbe, 0.5)}

    # the old class waits as long: requiring the new one is faster and cheaper
    floor, rows = choose_gpus("fastest", pool(3600, 7200), 100, "auto")
    assert floor == 9.0 and [r["min_capability"] for r in rows] == [6.0, 9.0]
    assert choose_gpus("cost", pool(3600, 7200), 100, "auto")[0] == 9.0
    # a short job on a pool whose new class waits a day: admitting the old one is faster
    floor, rows = choose_gpus("fastest", pool(60, 7200) | {"H100": GpuClass(
        9.0, ClassCosts(60, 30, 60, 86400), 7200, 0.5)}, 5, 1)
    assert floor is None, rows
    assert choose_gpus("any", pool(60, 7200), 100, 1) == (None, [])
    with pytest.raises(PolicyError, match="needs measured costs"):
        choose_gpus("fastest", {}, 100, 1)
    with pytest.raises(PolicyError, match="gpu policy"):
        choose_gpus("newest", pool(60, 7200), 100, 1)


def test_a_sweep_waits_for_the_slowest_job_of_each_wave() -> None:
    from submit.preemption import simulate_sweep

    quiet = simulate_sweep(8, 4, 10, 3, {"A100": A100}, Interruptions(), runs=3)
    one = 30 + 3 * 190 + 60
    assert quiet.wall.tolist() == [2 * one] * 3  # two waves, every job alike
    assert quiet.gpu_hours[0] == pytest.approx(8 * one / 3600)
    evicted = simulate_sweep(8, 4, 10, 3, {"A100": A100},
                             Interruptions(mean_seconds={"A100": 900.0}), runs=200)
    alone = simulate(10, 3, {"A100": A100}, Interruptions(mean_seconds={"A100": 900.0}),
                     runs=1600)
    # the slowest of four is slower than the average job
    assert evicted.wall.mean() > 2 * alone.wall.mean() * 1.1
    with pytest.raises(PolicyError):
        simulate_sweep(0, 4, 10, 3, {"A100": A100}, Interruptions())
