"""What evictions and mixed GPU classes cost a checkpointed job: a simulator, and the
checkpoint interval that minimises the expected wall time.

A job needs `units` of work (epochs, or thousands of passages). On a GPU class a unit takes
`unit_seconds`; each checkpoint costs `checkpoint_seconds` (writing it, HTCondor uploading
it, and the process restarting in place after its exit with the checkpoint code, setup
included). A new claim, after an eviction, costs `restart_seconds` in the slot (input
transfer and setup) after `queue_seconds` of waiting for it. A claim lasts until an eviction
drawn from the interruption model (exponential or Weibull, a mean time between evictions per
class; a share of restarts lands on another class) or until the job is done. Work since the
last checkpoint HTCondor kept is lost.

`simulate` returns, per run, the wall time, goodput, badput and GPU-hours of a job,
`simulate_sweep` of a sweep of such jobs in waves; `daly_interval` is the starting point of
the `auto` interval.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.errors import UsageError


class PolicyError(UsageError):
    """An interruption model or cost table that cannot describe a pool."""

    label = "preemption model"


@dataclass(frozen=True)
class ClassCosts:
    """Measured costs of one GPU class, in seconds."""

    unit_seconds: float
    checkpoint_seconds: float = 0.0
    restart_seconds: float = 0.0
    queue_seconds: float = 0.0

    def check(self, name: str) -> None:
        values = (self.unit_seconds, self.checkpoint_seconds, self.restart_seconds,
                  self.queue_seconds)
        if not all(math.isfinite(v) and v >= 0 for v in values) or self.unit_seconds <= 0:
            raise PolicyError(f"GPU class {name!r}: unit_seconds must be > 0 and the other "
                              f"costs >= 0 (got {self})")


@dataclass(frozen=True)
class Interruptions:
    """When claims end: `kind` exponential or weibull (shape `shape`: < 1, most evictions
    come early in a claim; 1 is exponential), with a mean time between evictions per class
    (`mean_seconds`, inf: never evicted); a restart lands on another class with probability
    `change_class`, drawn by `weights`. `lives`: fixed claim lengths instead of draws (a
    replayed run's), one per claim in order, None for a claim that is not evicted."""

    kind: str = "exponential"
    mean_seconds: dict[str, float] = field(default_factory=dict)
    shape: float = 1.0
    change_class: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    lives: tuple[float | None, ...] | None = None

    def check(self, classes: list[str]) -> None:
        if self.kind not in ("exponential", "weibull"):
            raise PolicyError(f"interruption kind {self.kind!r}: exponential or weibull")
        if not 0 <= self.change_class <= 1:
            raise PolicyError(f"change_class {self.change_class}: a share between 0 and 1")
        if not (self.shape > 0 and math.isfinite(self.shape)):
            raise PolicyError(f"Weibull shape {self.shape}: must be > 0")
        for name in classes:
            mean = self.mean_seconds.get(name, math.inf)
            if not mean > 0:
                raise PolicyError(f"mean time between evictions on {name!r} is {mean}: "
                                  "must be > 0 (inf: never evicted)")
        if any(w < 0 for w in self.weights.values()) or (
                self.weights and not sum(self.weights.values()) > 0):
            raise PolicyError("class weights must be >= 0 and not all 0")

    def draw(self, rng: np.random.Generator, name: str) -> float:
        mean = self.mean_seconds.get(name, math.inf)
        if math.isinf(mean):
            return math.inf
        if self.kind == "exponential":
            return float(rng.exponential(mean))
        scale = mean / math.gamma(1 + 1 / self.shape)  # Weibull with that mean
        return float(scale * rng.weibull(self.shape))


@dataclass
class Outcome:
    """Per run: seconds from submission to the end, of useful work, of everything else in
    slots, and GPU-hours (claims' time in slots)."""

    wall: np.ndarray
    goodput: np.ndarray
    badput: np.ndarray
    gpu_hours: np.ndarray
    claims: np.ndarray

    def summary(self) -> dict[str, float]:
        def q(values: np.ndarray, p: float) -> float:
            return float(np.percentile(values, p))

        return {"wall_mean": float(self.wall.mean()), "wall_p50": q(self.wall, 50),
                "wall_p95": q(self.wall, 95), "goodput_share": float(
                    (self.goodput / np.maximum(self.goodput + self.badput, 1e-12)).mean()),
                "gpu_hours_mean": float(self.gpu_hours.mean()),
                "claims_mean": float(self.claims.mean())}


def simulate(units: float, interval: float, costs: dict[str, ClassCosts],
             interruptions: Interruptions, *, start: str | None = None, runs: int = 2000,
             seed: int = 0) -> Outcome:
    """`runs` runs of a job of `units` work that checkpoints every `interval` units,
    starting on class `start` (default: the first)."""
    if not costs:
        raise PolicyError("no measured costs: give at least one GPU class's unit_seconds")
    if not (units > 0 and interval > 0):
        raise PolicyError(f"units ({units}) and interval ({interval}) must be > 0")
    for name, cost in costs.items():
        cost.check(name)
    interruptions.check(list(costs))
    names = list(costs)
    weights = np.array([interruptions.weights.get(n, 1.0) for n in names], dtype=float)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    out = np.zeros((5, runs))
    for run in range(runs if interruptions.lives is None else 1):
        out[:, run] = _one_run(units, interval, costs, interruptions, start or names[0],
                               names, weights, rng)
    if interruptions.lives is not None:  # a fixed schedule: every run is the same
        out[:, 1:] = out[:, :1]
    wall, goodput, badput, slot_seconds, claims = out
    return Outcome(wall, goodput, badput, slot_seconds / 3600, claims)


def _one_run(units: float, interval: float, costs: dict[str, ClassCosts],
             interruptions: Interruptions, name: str, names: list[str], weights: np.ndarray,
             rng: np.random.Generator) -> tuple[float, float, float, float, int]:
    t = goodput = slot = 0.0
    remaining = units
    claim = 0
    while True:
        cost = costs[name]
        if claim:
            t += cost.queue_seconds
        if interruptions.lives is not None:
            life = interruptions.lives[claim] if claim < len(interruptions.lives) else None
            life = math.inf if life is None else life
        else:
            life = interruptions.draw(rng, name)
        claim += 1
        cycle = interval * cost.unit_seconds + cost.checkpoint_seconds
        full = math.ceil(remaining / interval - 1e-9) - 1  # checkpoints before the last piece
        needed = cost.restart_seconds + full * cycle + (remaining - full * interval) \
            * cost.unit_seconds
        if life >= needed:
            t += needed
            slot += needed
            goodput += remaining * cost.unit_seconds
            return t, goodput, slot - goodput, slot, claim
        t += life
        slot += life
        done = min(full, int(max(0.0, life - cost.restart_seconds) // cycle))
        remaining -= done * interval
        goodput += done * interval * cost.unit_seconds
        if len(names) > 1 and rng.random() < interruptions.change_class:
            name = names[int(rng.choice(len(names), p=weights))]
        if claim > 100_000:
            raise PolicyError("the job never finishes: every claim ends before a checkpoint "
                              "(the mean time between evictions is too short for its costs)")


def simulate_sweep(trials: int, wave_size: int, units: float, interval: float,
                   costs: dict[str, ClassCosts], interruptions: Interruptions, *,
                   start: str | None = None, runs: int = 500, seed: int = 0) -> Outcome:
    """A sweep of `trials` alike, run in waves of `wave_size` jobs at once (the next wave
    starts when the slowest job of the last one ends, as the sweep DAG's waves do): per run,
    the sweep's wall time, and its goodput, badput and GPU-hours summed over its jobs."""
    if trials < 1 or wave_size < 1:
        raise PolicyError(f"trials ({trials}) and wave_size ({wave_size}) must be >= 1")
    jobs = simulate(units, interval, costs, interruptions, start=start, runs=runs * trials,
                    seed=seed)

    def per_run(values: np.ndarray) -> np.ndarray:
        return values.reshape(runs, trials)

    walls = per_run(jobs.wall)
    waves = [walls[:, i:i + wave_size].max(axis=1) for i in range(0, trials, wave_size)]
    return Outcome(np.sum(waves, axis=0), per_run(jobs.goodput).sum(axis=1),
                   per_run(jobs.badput).sum(axis=1), per_run(jobs.gpu_hours).sum(axis=1),
                   per_run(jobs.claims).sum(axis=1))


def daly_interval(checkpoint_seconds: float, mean_seconds: float) -> float:
    """Seconds of work between checkpoints that minimise the expected wall time.

    Young (1974): sqrt(2 C M) for checkpoint cost C and mean time between failures M; Daly
    (2006, "A higher order estimate of the optimum checkpoint interval for restart dumps",
    FGCS 22(3)) refines it to sqrt(2 C M) [1 + sqrt(C / 2M) / 3 + (C / 2M) / 9] - C for
    C < 2M, and M otherwise. Without evictions (M infinite) there is no reason to
    checkpoint: the interval is infinite."""
    if checkpoint_seconds < 0 or not mean_seconds > 0:
        raise PolicyError(f"checkpoint cost {checkpoint_seconds} s and mean time between "
                          f"evictions {mean_seconds} s: need cost >= 0 and mean > 0")
    if math.isinf(mean_seconds):
        return math.inf
    c, m = checkpoint_seconds, mean_seconds
    if c >= 2 * m:
        return m
    ratio = c / (2 * m)
    return max(0.0, math.sqrt(2 * c * m) * (1 + math.sqrt(ratio) / 3 + ratio / 9) - c)


def auto_units(unit_seconds: float, checkpoint_seconds: float, mean_seconds: float) -> int:
    """The `auto` interval in whole units (epochs, parts): Daly's, at least one unit."""
    if not unit_seconds > 0:
        raise PolicyError(f"a unit of work measured at {unit_seconds} s: must be > 0")
    seconds = daly_interval(checkpoint_seconds, mean_seconds)
    if math.isinf(seconds):
        return 0  # never: no eviction expected
    return max(1, round(seconds / unit_seconds))


def auto_checkpoint_seconds(setup_seconds: float, mean_seconds: float) -> float:
    """`checkpoint_minutes: auto` for jobs that checkpoint after a time (shard and generation
    jobs): Daly's interval for a checkpoint that costs the setup its restart repeats (their
    finished parts and rows are written as they go); 0 (never) without evictions."""
    seconds = daly_interval(max(0.0, setup_seconds), mean_seconds)
    return 0.0 if math.isinf(seconds) else max(seconds, 1e-3)  # 0 would mean never


def number_or_auto(kind: type[int] | type[float]) -> Callable[[str], int | float | str]:
    """A command-line option's parser: a number of `kind` >= 0, or auto."""
    def parse(value: str) -> int | float | str:
        if value == "auto":
            return value
        try:
            number = kind(value)
        except ValueError:
            number = -1
        if not number >= 0:
            raise argparse.ArgumentTypeError(f"a number >= 0 or auto, got {value!r}")
        return number

    return parse


def add_checkpoint_options(parser: argparse.ArgumentParser, boundary: str,
                           measured: str) -> None:
    """A job's checkpoint options, the ones `submit.config.checkpoint_arguments` writes:
    `--checkpoint-after SECONDS|auto` (at the next `boundary`; auto: from the `measured`
    setup), `--mean-time-between-evictions` and `--checkpoint-exit-code`."""
    parser.add_argument("--checkpoint-after", type=number_or_auto(float), default=0,
                        metavar="SECONDS|auto",
                        help=f"exit with the checkpoint code at the first {boundary} after "
                        "this many seconds (0: never; auto: Young/Daly's interval from the "
                        f"measured {measured})")
    parser.add_argument("--mean-time-between-evictions", type=float, default=0.0,
                        metavar="SECONDS", help="the pool's, for --checkpoint-after auto")
    parser.add_argument("--checkpoint-exit-code", type=int, default=85)


def announce_auto_checkpoint(ad: Any, label: str, boundary: str, setup_seconds: float,
                             mean_seconds: float) -> float:
    """`auto_checkpoint_seconds` for a job (`ad`: its `submit.chirp.JobAd`), said on stderr
    and recorded in its log; seconds of work before it checkpoints at the next `boundary`."""
    seconds = auto_checkpoint_seconds(setup_seconds, mean_seconds)
    ad.record("policy", checkpoint_after=round(seconds, 3),
              setup_seconds=round(setup_seconds, 3), mean_seconds=mean_seconds)
    when = f"at the first {boundary} after {seconds:.0f} s of work" if seconds else "never"
    print(f"{label}: checkpoint_minutes auto: {when} (setup {setup_seconds:.1f} s, mean time "
          f"between evictions {mean_seconds:g} s)", file=sys.stderr)
    return seconds


def measured_costs(job: dict, units: float) -> ClassCosts:
    """A class's costs as one finished job measured them (`infer-corpus jobs --json`'s job
    record; `units`: the work it did): a unit's time from its goodput; a checkpoint's from its
    writing, its upload and the setup of the restart in place that followed; a new claim's
    from the first claim's input transfer and setup; the queue from the gaps between claims.
    """
    attempts = job.get("attempts") or []
    checkpoints = sum(len(a["checkpoints"]) for a in attempts)
    if not attempts or job.get("state") != "done" or not units > 0:
        raise PolicyError(f"job {job.get('job', '?')} did not finish: no measured costs")
    first = attempts[0]
    claim_setup = (first["ready"][0] - first["process_starts"][0]
                   if first["ready"] and first["process_starts"] else 0.0)
    restart = first["input_seconds"] + claim_setup
    spent = job["in_slots"]
    # every write, every upload but the final output, every restart in place's setup
    paid = spent["checkpoint"] + sum(a["output_seconds"] - a["final_output_seconds"]
                                     + a["restart_setup_seconds"] for a in attempts)
    checkpoint = paid / checkpoints if checkpoints else 0.0
    gaps = [(later["began"] or later["started"]) - earlier["ended"]
            for earlier, later in zip(attempts, attempts[1:])
            if earlier["ended"] is not None and (later["began"] or later["started"])]
    return ClassCosts(unit_seconds=spent["goodput"] / units, checkpoint_seconds=checkpoint,
                      restart_seconds=restart,
                      queue_seconds=sum(gaps) / len(gaps) if gaps else 0.0)


@dataclass(frozen=True)
class GpuClass:
    """A GPU class of a pool: its compute capability, measured costs, mean time between
    evictions and the share of claims it takes."""

    capability: float
    costs: ClassCosts
    mean_seconds: float = math.inf
    share: float = 1.0


GPU_POLICIES = ("any", "fastest", "cost")


def choose_gpus(policy: str, classes: dict[str, GpuClass], units: float,
                interval: float | str, *, runs: int = 400, seed: int = 0
                ) -> tuple[float | None, list[dict[str, float | str]]]:
    """The lowest compute capability to require under `policy`, and the simulated figures
    of each choice: `any` requires none; `fastest` the floor whose admitted classes give the
    shortest mean wall time, `cost` the fewest GPU-hours. A job's first claim and each one
    after an eviction go to an admitted class in proportion to its share and wait that
    class's queue; `interval` is in units, or `auto` (Daly's, from the biggest admitted
    class's costs)."""
    if policy not in GPU_POLICIES:
        raise PolicyError(f"gpu policy {policy!r}: one of {', '.join(GPU_POLICIES)}")
    if policy == "any":
        return None, []
    if not classes:
        raise PolicyError(f"gpu: {policy} needs measured costs of at least one GPU class")
    rows: list[dict[str, float | str]] = []
    for floor in sorted({c.capability for c in classes.values()}):
        admitted = {n: c for n, c in classes.items() if c.capability >= floor}
        total = sum(c.share for c in admitted.values())
        if not total > 0:
            continue
        main = max(admitted.values(), key=lambda c: c.share)
        every = interval if interval != "auto" else (auto_units(
            main.costs.unit_seconds, main.costs.checkpoint_seconds, main.mean_seconds)
            or units)
        model = Interruptions(mean_seconds={n: c.mean_seconds for n, c in admitted.items()},
                              change_class=1.0,
                              weights={n: c.share for n, c in admitted.items()})
        wall = hours = 0.0
        for number, (name, gpu) in enumerate(admitted.items()):
            share = gpu.share / total
            out = simulate(units, float(every), {n: c.costs for n, c in admitted.items()},
                           model, start=name, runs=max(1, round(runs * share)),
                           seed=seed + number)
            wall += share * (gpu.costs.queue_seconds + float(out.wall.mean()))
            hours += share * float(out.gpu_hours.mean())
        rows.append({"min_capability": floor, "classes": ", ".join(admitted),
                     "wall_hours": wall / 3600, "gpu_hours": hours})
    if not rows:
        raise PolicyError("every GPU class has a share of 0")
    key = "wall_hours" if policy == "fastest" else "gpu_hours"
    best = min(rows, key=lambda row: row[key])
    lowest = min(c.capability for c in classes.values())
    floor = float(best["min_capability"])
    return (None if floor == lowest else floor), rows
