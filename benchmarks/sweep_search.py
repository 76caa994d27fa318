#!/usr/bin/env python
"""Does an optuna sweep find what a grid sweep finds, for less training?

What it measures
  The same search space over topic heads on the demo corpus (SPACE: head, lr, hidden,
  weight_decay as lists) swept twice with `train-models sweep` on the local executor:
    - grid: every combination, each trained for the whole budget (EPOCHS epochs);
    - optuna: SAMPLES trials asked of TPE in waves of WAVE_SIZE, pruned by successive
      halving at rungs of 3 and 9 epochs (reduction factor 3).
  The optuna sweep runs once per search seed (--search-seeds), since one sweep's luck is not
  a measure. For each sweep: the best val_loss and the trial-epochs, the epochs actually
  trained by all its trials together, counted from each trial's metrics.json history. The
  metric is val_loss: on the demo every good head reaches val_accuracy 1.0, so accuracy
  cannot tell them apart.

Goal: optuna's best within 0.005 of the grid's, with at most half the grid's trial-epochs.
The script prints the figures and whether each optuna sweep meets the goal, and exits 0
either way (1 when a sweep fails).

How to run (from the repository root; the demo run is made in a temporary folder unless
--workdir names a finished `infer-corpus run --demo`)
    .venv/bin/python benchmarks/sweep_search.py
    .venv/bin/python benchmarks/sweep_search.py --workdir demo-run --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"head": ["linear", "mlp"], "lr": [0.003, 0.01, 0.03, 0.1], "hidden": [32, 64],
         "weight_decay": [0.0, 0.01]}
EPOCHS = 12
SAMPLES = 20  # of the grid's 32 configurations
WAVE_SIZE = 4
GOAL_DISTANCE, GOAL_SHARE = 0.005, 0.5


def sweep_spec(name: str, method: str, search_seed: int = 0) -> dict:
    spec = {"name": name, "metric": "val_loss", "method": method, "search_seed": search_seed,
            "base": {"epochs": EPOCHS, "batch_size": 16, "optimizer": "adam"},
            "params": SPACE, "seeds": [0]}
    if method == "optuna":
        # rungs at 3 and 9 epochs: at 1 epoch linear heads lead the MLPs that win later
        spec.update(samples=SAMPLES, optuna={"startup_trials": 4, "min_resource": 3,
                                             "reduction_factor": 3},
                    condor={"wave_size": WAVE_SIZE})
    return spec


def run_sweep(workdir: Path, folder: Path, spec: dict) -> dict:
    """One sweep from scratch; its best value, trials and trial-epochs."""
    path = folder / f"{spec['name']}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    proc = subprocess.run([sys.executable, "-m", "submit.train.cli", "sweep", str(path),
                           "--workdir", str(workdir), "--force", "--json"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sweep {spec['name']} failed ({proc.returncode}):\n{proc.stderr}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    trials = workdir / "train" / spec["name"] / "trials"
    epochs = sum(len(json.loads(p.read_text())["history"])
                 for p in trials.glob("*/metrics.json"))
    return {"trials": summary["trials"], "completed": summary["completed"],
            "pruned": summary.get("pruned", 0), "best": summary["best"]["value"],
            "best_params": {k: summary["best"]["params"][k] for k in SPACE},
            "trial_epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path,
                        help="a finished `infer-corpus run --demo` (default: made here)")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one optuna sweep per search seed (default: 0 1 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        workdir = args.workdir or folder / "demo-run"
        if args.workdir is None:
            subprocess.run([sys.executable, "-m", "infer_corpus", "run", "--demo",
                            "--workdir", str(workdir)], cwd=ROOT, check=True,
                           capture_output=True)
        grid = run_sweep(workdir, folder, sweep_spec("search-grid", "grid"))
        runs = {seed: run_sweep(workdir, folder, sweep_spec(f"search-optuna-{seed}", "optuna",
                                                            seed))
                for seed in args.search_seeds}
    configs = math.prod(len(v) for v in SPACE.values())
    assert grid["trials"] == configs == len(list(itertools.product(*SPACE.values())))
    for run in runs.values():
        run["distance"] = run["best"] - grid["best"]
        run["epoch_share"] = run["trial_epochs"] / grid["trial_epochs"]
        run["goal_met"] = run["distance"] <= GOAL_DISTANCE and run["epoch_share"] <= GOAL_SHARE
    if args.json:
        print(json.dumps({"grid": grid, "optuna": runs}))
        return
    print(f"search space: {configs} configurations, {EPOCHS} epochs each; metric val_loss; "
          f"goal: optuna's best within {GOAL_DISTANCE} of the grid's with at most "
          f"{GOAL_SHARE:.0%} of its trial-epochs")
    print(f"{'sweep':16} {'trials':>6} {'completed':>9} {'pruned':>6} {'best val_loss':>13} "
          f"{'trial-epochs':>12} {'share':>6}  goal")
    rows = [("grid", grid)] + [(f"optuna seed {seed}", run) for seed, run in runs.items()]
    for name, row in rows:
        goal = "" if name == "grid" else ("met" if row["goal_met"] else "NOT met")
        share = "" if name == "grid" else f"{row['epoch_share']:.0%}"
        print(f"{name:16} {row['trials']:6d} {row['completed']:9d} {row['pruned']:6d} "
              f"{row['best']:13.6f} {row['trial_epochs']:12d} {share:>6}  {goal}")
        print(f"{'':16} best: {row['best_params']}")

if __name__ == "__main__":
    main()
