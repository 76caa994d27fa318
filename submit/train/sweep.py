"""Sweeps: a YAML spec expanded into trials, run by a local executor, evaluated and collected.

Layout (`WORKDIR/train/NAME/`): `spec.json` (the resolved spec), `trials.json` (trial id ->
hyperparameters), `dataset.parquet` (see `data.py`; with `condor.data_url` also published
there as `dataset-HASH.parquet`), `trials/tNNN/` (one per trial, see `trial.py`),
`evaluation.json` (the latest early-abort decision), `results.json` (the ranking) and
`best.json` + `best-model.pt` (the best trial's head, for `predictions.kind: head`).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from inference.workdir import Workdir, atomic_path, write_json_atomic

from ..datasource import stage
from . import TrainError
from .data import DATASET, object_name, read_workdir, save_dataset
from .spec import CondorSettings, build_spec, load_spec_file
from .trial import CHECKPOINT_EXIT_CODE, MODEL, PARAMS, check_params, read_metrics

METRICS = {"val_accuracy": "max", "val_loss": "min"}
FINISHED = ("completed", "diverged")  # trial statuses that running the sweep again leaves alone
# Exit codes of `train-models evaluate` (a DAG POST script): ABORT-DAG-ON acts on them.
EVAL_CONTINUE, EVAL_TARGET_REACHED, EVAL_DIVERGED = 0, 3, 4


@dataclass
class EarlyStop:
    target: float | None = None  # stop once a trial's final metric reaches this
    max_diverged: int | None = None  # stop once this many trials diverged
    diverge_factor: float = 10.0  # a final train loss this many times the first one diverged


@dataclass
class SweepSpec:
    name: str
    metric: str = "val_accuracy"
    method: str = "grid"  # grid | random
    samples: int = 0  # random search: how many draws
    search_seed: int = 0
    base: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    ablations: list[dict[str, Any]] = field(default_factory=list)
    val_fraction: float = 0.25
    parallel: int = 0  # local executor: trials at once (0 = CPU cores)
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    condor: CondorSettings = field(default_factory=CondorSettings)

    def validate(self) -> None:
        """What the types alone do not say; every trial's hyperparameters too, so that no
        mistake surfaces after trials have started."""
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise TrainError("name may hold only letters, digits, '-' and '_'")
        if self.metric not in METRICS:
            raise TrainError(f"metric must be one of {', '.join(METRICS)}")
        if self.method not in ("grid", "random"):
            raise TrainError("method must be grid or random")
        if self.method == "random" and self.samples < 1:
            raise TrainError("method random needs samples >= 1")
        for key, values in self.params.items():
            if isinstance(values, dict):
                if self.method != "random" or set(values) - {"low", "high", "log"} or \
                        not {"low", "high"} <= set(values):
                    raise TrainError(f"params.{key}: a range {{low, high, log}} needs "
                                     "method random")
            elif not isinstance(values, list) or not values:
                raise TrainError(f"params.{key} must be a non-empty list of values")
        if not self.seeds:
            raise TrainError("seeds must be a non-empty list of integers")
        for i, ablation in enumerate(self.ablations):
            if set(ablation) != {"name", "set"} or not isinstance(ablation["set"], dict):
                raise TrainError(f"ablations[{i}] must be {{name: ..., set: {{param: value}}}}")
        if not 0.0 < self.val_fraction < 1.0:
            raise TrainError("val_fraction must be between 0 and 1")
        if self.early_stop.diverge_factor <= 1:
            raise TrainError("early_stop.diverge_factor must be > 1")
        for trial in expand_trials(self):
            check_params(trial["params"])


def load_spec(path: Path) -> SweepSpec:
    """Read and check a sweep spec; every problem is reported with the key that caused it."""
    return load_spec_file(SweepSpec, path, "sweep spec")


def _draw(values: Any, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    low, high = float(values["low"]), float(values["high"])
    if values.get("log"):
        return float(10 ** rng.uniform(math.log10(low), math.log10(high)))
    return rng.uniform(low, high)


def expand_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """Configurations (grid or random draws) x seeds, then each ablation x seeds.

    Trials of one configuration with different seeds form an ensemble `group`.
    """
    names = sorted(spec.params)
    if spec.method == "grid":
        configs = [dict(zip(names, combo))
                   for combo in itertools.product(*(spec.params[n] for n in names))]
    else:
        rng = random.Random(spec.search_seed)
        configs = [{n: _draw(spec.params[n], rng) for n in names} for _ in range(spec.samples)]
    groups = [(f"c{i}", None, {**spec.base, **c}) for i, c in enumerate(configs)]
    groups += [(f"ablation-{a['name']}", a["name"], {**spec.base, **a["set"]})
               for a in spec.ablations]
    trials = []
    for group, ablation, params in groups:
        for seed in spec.seeds:
            trials.append({"trial": f"t{len(trials):03d}", "group": group, "ablation": ablation,
                           "params": {**params, "seed": seed}})
    return trials


class Sweep:
    """A sweep's directory and the steps that read and write it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def in_workdir(cls, workdir: Path, name: str) -> Sweep:
        return cls(Path(workdir) / "train" / name)

    @property
    def dataset(self) -> Path:
        return self.root / DATASET

    @cached_property
    def dataset_object(self) -> str:
        """The dataset's name under `condor.data_url` (keyed by its content)."""
        return object_name(self.dataset)

    def dataset_url(self, settings: CondorSettings) -> str | None:
        """Where the dataset is published (`condor.data_url`), or None."""
        if not settings.data_url:
            return None
        return f"{settings.data_url.rstrip('/')}/{self.dataset_object}"

    def trial_dir(self, trial: str) -> Path:
        return self.root / "trials" / trial

    def spec(self) -> SweepSpec:
        return build_spec(SweepSpec, self._json("spec.json"), f"{self.root / 'spec.json'}")

    def trials(self) -> list[dict[str, Any]]:
        return self._json("trials.json")

    def _json(self, name: str) -> Any:
        try:
            return json.loads((self.root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise TrainError(f"{self.root} is not a prepared sweep (no readable {name})") from None

    def prepare(self, spec: SweepSpec, workdir: Path, force: bool = False) -> list[dict[str, Any]]:
        """Write the spec, the trial list and the dataset; an existing sweep must match."""
        trials = expand_trials(spec)
        if (self.root / "trials.json").is_file() and not force:
            if self.trials() != trials:
                raise TrainError(f"{self.root} holds a sweep made from a different spec: "
                                 f"rename the sweep or pass --force to start it over")
        elif self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / "spec.json", asdict(spec))
        write_json_atomic(self.root / "trials.json", trials)
        if not self.dataset.is_file():
            save_dataset(read_workdir(Workdir(workdir), spec.val_fraction), self.dataset)
        if spec.condor.stage_dir:
            stage(self.dataset, Path(spec.condor.stage_dir) / self.dataset_object)
        for trial in trials:
            path = self.trial_dir(trial["trial"]) / PARAMS
            if not path.is_file():
                write_json_atomic(path, check_params(trial["params"]))
        return trials


def unfinished_trials(sweep: Sweep) -> list[str]:
    """Trials still to run: not started, or stopped before their last epoch."""
    return [t["trial"] for t in sweep.trials()
            if (read_metrics(sweep.trial_dir(t["trial"])) or {}).get("status") not in FINISHED]


def trial_arguments(trial_dir: str, dataset: str, data_source: str) -> list[str]:
    """Python's arguments for one trial, here and in a job: `dataset` is the dataset file
    (transfer) or its URL (stream, cache)."""
    return ["-m", "submit.train.cli", "trial", "--trial-dir", trial_dir, "--dataset", dataset,
            "--data-source", data_source]


def trial_command(sweep: Sweep, trial: str) -> list[str]:
    """The command a local trial runs: the one an HTCondor trial job runs, with the sweep's
    dataset file (transfer) or its published URL."""
    settings = sweep.spec().condor
    dataset = (str(sweep.dataset) if settings.data_source == "transfer"
               else sweep.dataset_url(settings))
    return [sys.executable, *trial_arguments(str(sweep.trial_dir(trial)), str(dataset),
                                             settings.data_source)]


def diverged(metrics: dict[str, Any], factor: float) -> bool:
    if metrics.get("status") == "diverged":
        return True
    history = metrics.get("history") or []
    return len(history) > 1 and history[-1]["train_loss"] > factor * history[0]["train_loss"]


def evaluate(sweep: Sweep) -> dict[str, Any]:
    """The early-abort decision over the trials that have metrics so far (also written out)."""
    spec = sweep.spec()
    rule = spec.early_stop
    better = max if METRICS[spec.metric] == "max" else min
    finals, n_diverged = [], 0
    for trial in sweep.trials():
        metrics = read_metrics(sweep.trial_dir(trial["trial"]))
        if metrics is None:
            continue
        if diverged(metrics, rule.diverge_factor):
            n_diverged += 1
        elif metrics["status"] == "completed":
            finals.append(metrics["final"][spec.metric])
    best = better(finals) if finals else None
    decision = {"action": "continue", "code": EVAL_CONTINUE, "best": best,
                "diverged": n_diverged, "reason": None}
    if rule.target is not None and best is not None and \
            (best >= rule.target if METRICS[spec.metric] == "max" else best <= rule.target):
        decision.update(action="stop", code=EVAL_TARGET_REACHED,
                        reason=f"{spec.metric} {best:.4g} reached the target {rule.target:g}")
    elif rule.max_diverged is not None and n_diverged >= rule.max_diverged:
        decision.update(action="stop", code=EVAL_DIVERGED,
                        reason=f"{n_diverged} trials diverged (limit {rule.max_diverged})")
    write_json_atomic(sweep.root / "evaluation.json", decision)
    return decision


def collect(sweep: Sweep) -> dict[str, Any]:
    """Rank the finished trials by the sweep's metric and record the best one."""
    spec = sweep.spec()
    sign = -1.0 if METRICS[spec.metric] == "max" else 1.0
    rows = []
    for trial in sweep.trials():
        metrics = read_metrics(sweep.trial_dir(trial["trial"])) or {"status": "pending"}
        status = "diverged" if metrics["status"] != "pending" and \
            diverged(metrics, spec.early_stop.diverge_factor) else metrics["status"]
        value = metrics["final"][spec.metric] if status == "completed" else None
        rows.append({"trial": trial["trial"], "group": trial["group"], "status": status,
                     "value": value, "params": trial["params"]})
    ranked = sorted((r for r in rows if r["value"] is not None),
                    key=lambda r: (sign * r["value"], r["trial"]))
    summary: dict[str, Any] = {
        "sweep": spec.name, "trials": len(rows),
        "completed": sum(r["status"] == "completed" for r in rows),
        "diverged": sum(r["status"] == "diverged" for r in rows),
        "pending": sum(r["status"] in ("pending", "running") for r in rows),
        "metric": spec.metric, "best": None, "groups": _groups(ranked),
    }
    if ranked:
        top = ranked[0]
        model = sweep.root / "best-model.pt"
        with atomic_path(model) as tmp:
            shutil.copyfile(sweep.trial_dir(top["trial"]) / MODEL, tmp)
        summary["best"] = {"trial": top["trial"], "metric": spec.metric, "value": top["value"],
                           "params": top["params"], "model": str(model)}
    write_json_atomic(sweep.root / "results.json", {**summary, "ranking": ranked})
    write_json_atomic(sweep.root / "best.json", summary["best"])
    return summary


def _groups(ranked: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per configuration: mean and spread of the metric over its seeds (the ensemble)."""
    values: dict[str, list[float]] = {}
    for row in ranked:
        values.setdefault(row["group"], []).append(row["value"])
    out = {}
    for group, vals in sorted(values.items()):
        mean = sum(vals) / len(vals)
        spread = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        out[group] = {"seeds": len(vals), "mean": mean, "std": spread}
    return out


def run_local(sweep: Sweep, parallel: int = 0, log=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Run every unfinished trial as a subprocess, a few at a time; stop early when told to.

    A trial that exits with the checkpoint exit code is started again, as HTCondor would.
    """
    spec = sweep.spec()
    parallel = parallel or spec.parallel or os.cpu_count() or 1
    pending = unfinished_trials(sweep)
    running: dict[str, subprocess.Popen] = {}
    failed: list[str] = []
    decision = evaluate(sweep)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        while (pending or running) and decision["action"] == "continue":
            while pending and len(running) < parallel:
                trial = pending.pop(0)
                log_file = open(sweep.trial_dir(trial) / "trial.log", "ab")
                running[trial] = subprocess.Popen(trial_command(sweep, trial), env=env,
                                                  stdout=log_file, stderr=subprocess.STDOUT)
                log_file.close()
            time.sleep(0.05)
            for trial, proc in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[trial]
                if code == CHECKPOINT_EXIT_CODE:
                    pending.insert(0, trial)
                    continue
                if code != 0:
                    failed.append(trial)
                    log(f"trial {trial} failed (exit {code}); see "
                        f"{sweep.trial_dir(trial) / 'trial.log'}")
                decision = evaluate(sweep)
    finally:
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            proc.wait()
    if decision["action"] == "stop":
        log(f"sweep stopped early: {decision['reason']}")
    summary = collect(sweep)
    summary["failed"] = len(failed)
    summary["stopped_early"] = decision["reason"]
    return summary
