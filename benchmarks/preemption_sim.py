"""What evictions and mixed GPU classes cost our checkpointed jobs: the study behind
docs/preemption.md, from the simulator in `submit.preemption`.

Three questions, each printed as a table and drawn as a PNG (into --out):

1. wall time and badput against the mean time between evictions (15 minutes to 24 hours),
   for a shard job and a long training job;
2. checkpointing every epoch against the `auto` (Young/Daly) interval;
3. one GPU class against a mixed pool whose restarts may land on an older class;
4. GPU-hours per million passages against the shard size.

Every cost is either measured (and says where) or assumed (and says so): see COSTS. The
interruption model can be changed from the command line; impossible parameters are refused
in one line (exit 2).

    .venv/bin/python benchmarks/preemption_sim.py --out docs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.errors import UsageError, run_command  # noqa: E402
from submit.preemption import (  # noqa: E402
    ClassCosts,
    Interruptions,
    auto_units,
    daly_interval,
    simulate,
)

HOUR = 3600.0
MTBE_HOURS = (0.25, 0.5, 1, 2, 4, 8, 12, 24)
# Where each cost comes from. Measured: the shard worker's whole path on an H100, 13,000
# passages/s (docs/benchmarks.md, 2026-11-27); a restart after an eviction waited 30-110 s
# typically and a rescheduled exit-85 restart 374 s on CHTC's pool (a public probe of it).
# Assumed: everything else, marked so in the tables.
COSTS = {
    "shard": {
        "what": "embed one shard of 1,000,000 passages in 100 parts (H100)",
        "units": 100, "unit_seconds": 1_000_000 / 13_000 / 100,  # measured rate
        "checkpoint_seconds": 25.0,  # assumed: model reload 20 s + parts upload 5 s
        "restart_seconds": 26.0,  # assumed: shard transfer 6 s + model load 20 s
        "queue_seconds": 70.0,  # measured elsewhere: CHTC probe, typical 30-110 s
        "fixed": ("every 30 minutes (default)", 30 * 60 / (1_000_000 / 13_000 / 100)),
    },
    "short epochs": {
        "what": "fine-tune for 300 epochs of 1 minute (H100)",
        "units": 300, "unit_seconds": 60.0,  # assumed
        "checkpoint_seconds": 60.0,  # assumed: write + upload of a 1 GB checkpoint + setup
        "restart_seconds": 120.0,  # assumed: transfer of data and checkpoint + setup
        "queue_seconds": 70.0,  # measured elsewhere, as above
        "fixed": ("every epoch", 1),
    },
    "long epochs": {
        "what": "fine-tune for 30 epochs of 10 minutes (H100)",
        "units": 30, "unit_seconds": 600.0,  # assumed
        "checkpoint_seconds": 60.0,  # assumed, as above
        "restart_seconds": 120.0,  # assumed, as above
        "queue_seconds": 70.0,  # measured elsewhere, as above
        "fixed": ("every epoch", 1),
    },
}
# A mixed pool: speed relative to an H100 (assumed from public fp16 figures), and the share
# of claims each class takes when a restart changes class (assumed)
MIXED = {"NVIDIA H100": (1.0, 0.25), "NVIDIA A100": (0.6, 0.35), "NVIDIA L40S": (0.55, 0.2),
         "NVIDIA RTX 2080 Ti": (0.25, 0.1), "Tesla P100": (0.15, 0.1)}


def costs_of(work: dict, speed: float = 1.0) -> ClassCosts:
    return ClassCosts(unit_seconds=work["unit_seconds"] / speed,
                      checkpoint_seconds=work["checkpoint_seconds"],
                      restart_seconds=work["restart_seconds"],
                      queue_seconds=work["queue_seconds"])


def model(args: argparse.Namespace, mtbe_hours: float, classes: list[str],
          change_class: float = 0.0, weights: dict[str, float] | None = None
          ) -> Interruptions:
    return Interruptions(kind=args.kind, shape=args.shape, change_class=change_class,
                         mean_seconds={name: mtbe_hours * HOUR for name in classes},
                         weights=weights or {})


def against_mtbe(args: argparse.Namespace) -> dict:
    """Questions 1 and 2: per workload and MTBE, its fixed interval against auto."""
    rows = []
    for name, work in COSTS.items():
        cost = costs_of(work)
        ideal = work["units"] * cost.unit_seconds + cost.restart_seconds
        for hours in MTBE_HOURS:
            interrupts = model(args, hours, ["g"])
            auto = auto_units(cost.unit_seconds, cost.checkpoint_seconds, hours * HOUR)
            auto = auto or work["units"]
            label, fixed = work["fixed"]
            for policy, every in ((label, max(1, round(fixed))), ("auto", auto)):
                out = simulate(work["units"], every, {"g": cost}, interrupts,
                               runs=args.runs, seed=7)
                s = out.summary()
                rows.append({"workload": name, "mtbe_hours": hours, "policy": policy,
                             "interval_units": every, "ideal_hours": ideal / HOUR,
                             "wall_hours_mean": s["wall_mean"] / HOUR,
                             "wall_hours_p95": s["wall_p95"] / HOUR,
                             "badput_share": 1 - s["goodput_share"],
                             "claims_mean": s["claims_mean"],
                             "gpu_hours_mean": s["gpu_hours_mean"]})
    return {"rows": rows}


def mixed_pool(args: argparse.Namespace) -> dict:
    """Question 3: the fine-tune job on H100s only, against a pool whose restarts land on
    any class (starting on an H100), at each MTBE."""
    work = COSTS["long epochs"]
    rows = []
    for hours in MTBE_HOURS:
        single = {"NVIDIA H100": costs_of(work)}
        mixed = {name: costs_of(work, speed) for name, (speed, _) in MIXED.items()}
        weights = {name: share for name, (_, share) in MIXED.items()}
        for pool, costs, change in (("H100 only", single, 0.0), ("mixed", mixed, 0.8)):
            cost = costs["NVIDIA H100"]
            every = auto_units(cost.unit_seconds, cost.checkpoint_seconds,
                               hours * HOUR) or work["units"]
            out = simulate(work["units"], every, costs,
                           model(args, hours, list(costs), change, weights),
                           start="NVIDIA H100", runs=args.runs, seed=11)
            s = out.summary()
            rows.append({"pool": pool, "mtbe_hours": hours, "interval_units": every,
                         "wall_hours_mean": s["wall_mean"] / HOUR,
                         "wall_hours_p95": s["wall_p95"] / HOUR,
                         "gpu_hours_mean": s["gpu_hours_mean"],
                         "badput_share": 1 - s["goodput_share"]})
    return {"rows": rows}


def shard_sizes(args: argparse.Namespace) -> dict:
    """Question 4: GPU-hours per million passages against the shard size, with the auto
    interval, at each MTBE: bigger shards spread the setup, smaller ones lose less."""
    work = COSTS["shard"]
    rows = []
    for passages in (100_000, 300_000, 1_000_000, 3_000_000, 10_000_000, 30_000_000):
        units = passages / 10_000  # parts of 10,000 passages
        cost = costs_of(work)
        for hours in (0.25, 1, 4, 24):
            every = auto_units(cost.unit_seconds, cost.checkpoint_seconds,
                               hours * HOUR) or units
            out = simulate(units, every, {"g": cost}, model(args, hours, ["g"]),
                           runs=args.runs, seed=5)
            s = out.summary()
            rows.append({"passages": passages, "mtbe_hours": hours, "interval_units": every,
                         "wall_hours_mean": s["wall_mean"] / HOUR,
                         "gpu_hours_per_million": s["gpu_hours_mean"] / (passages / 1e6),
                         "badput_share": 1 - s["goodput_share"]})
    return {"rows": rows}


def draw(study: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    figure, axes = plt.subplots(1, len(COSTS), figsize=(15, 4))
    for axis, name in zip(axes, COSTS):
        for policy, style in ((COSTS[name]["fixed"][0], "o--"), ("auto", "s-")):
            rows = [r for r in study["mtbe"]["rows"]
                    if r["workload"] == name and r["policy"] == policy]
            axis.plot([r["mtbe_hours"] for r in rows],
                      [r["wall_hours_mean"] / r["ideal_hours"] for r in rows], style,
                      label=f"{policy}: wall / no-eviction wall")
            axis.plot([r["mtbe_hours"] for r in rows], [r["badput_share"] for r in rows],
                      style, alpha=0.45, label=f"{policy}: badput share")
        axis.set_xscale("log")
        axis.set_xlabel("mean time between evictions (hours)")
        axis.set_title(COSTS[name]["what"], fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    paths.append(str(out / "preemption-mtbe.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    for pool, style in (("H100 only", "s-"), ("mixed", "o--")):
        rows = [r for r in study["mixed"]["rows"] if r["pool"] == pool]
        axis.plot([r["mtbe_hours"] for r in rows], [r["wall_hours_mean"] for r in rows],
                  style, label=f"{pool}: mean wall (h)")
        axis.plot([r["mtbe_hours"] for r in rows], [r["gpu_hours_mean"] for r in rows],
                  style, alpha=0.45, label=f"{pool}: GPU-hours")
    axis.set_xscale("log")
    axis.set_xlabel("mean time between evictions (hours)")
    axis.set_title(COSTS["long epochs"]["what"] + ", auto interval", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    paths.append(str(out / "preemption-mixed.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="exponential", help="exponential or weibull")
    parser.add_argument("--shape", type=float, default=1.0, help="Weibull shape (< 1: early "
                        "evictions more likely)")
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per point")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: none)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()

    def study() -> int:
        if args.runs < 1:
            raise UsageError(f"--runs {args.runs}: at least 1")
        result = {"mtbe": against_mtbe(args), "mixed": mixed_pool(args),
                  "shard_sizes": shard_sizes(args),
                  "model": {"kind": args.kind, "shape": args.shape, "runs": args.runs},
                  "daly_seconds": {name: daly_interval(w["checkpoint_seconds"], h * HOUR)
                                   for name, w in COSTS.items() for h in (1,)}}
        print(f"{'workload':<12} {'MTBE h':>6} {'policy':<26} {'every':>5} {'wall h':>7} "
              f"{'p95 h':>7} {'/ideal':>6} {'badput':>6} {'claims':>6}")
        for r in result["mtbe"]["rows"]:
            print(f"{r['workload']:<12} {r['mtbe_hours']:>6g} {r['policy']:<26} "
                  f"{r['interval_units']:>5} {r['wall_hours_mean']:>7.2f} "
                  f"{r['wall_hours_p95']:>7.2f} {r['wall_hours_mean'] / r['ideal_hours']:>6.2f}"
                  f" {r['badput_share']:>6.1%} {r['claims_mean']:>6.1f}")
        print(f"\n{'pool':<10} {'MTBE h':>6} {'every':>5} {'wall h':>7} {'p95 h':>7} "
              f"{'GPU-h':>7} {'badput':>6}")
        for r in result["mixed"]["rows"]:
            print(f"{r['pool']:<10} {r['mtbe_hours']:>6g} {r['interval_units']:>5} "
                  f"{r['wall_hours_mean']:>7.2f} {r['wall_hours_p95']:>7.2f} "
                  f"{r['gpu_hours_mean']:>7.2f} {r['badput_share']:>6.1%}")
        print(f"\n{'passages':>10} {'MTBE h':>6} {'every':>5} {'wall h':>7} "
              f"{'GPU-h/M':>8} {'badput':>6}")
        for r in result["shard_sizes"]["rows"]:
            print(f"{r['passages']:>10,} {r['mtbe_hours']:>6g} {r['interval_units']:>5g} "
                  f"{r['wall_hours_mean']:>7.2f} {r['gpu_hours_per_million']:>8.4f} "
                  f"{r['badput_share']:>6.1%}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            result["plots"] = draw(result, args.out)
            print("\n" + "\n".join(result["plots"]))
        if args.json:
            print(json.dumps(result, default=lambda v: None if math.isinf(v) else v))
        return 0

    return run_command("preemption_sim", study)


if __name__ == "__main__":
    sys.exit(main())
