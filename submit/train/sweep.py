"""Sweeps: a YAML spec expanded into trials, run by a local executor, evaluated and collected.

A sweep trains one `kind` of trial: `head` (a topic head over the stored embeddings,
`trial.py`) or `embedder` (the embedding model itself fine-tuned on pairs of the workdir's
passages, `embedder.py`).

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

from inference.models import ModelError, check_model
from inference.workdir import Workdir, atomic_path, write_json_atomic

from ..datasource import stage
from . import TrainError, embedder
from .data import DATASET, object_name, read_workdir, save_dataset
from .pairs import PAIRS, SOURCES, make_pairs, save_pairs
from .spec import CondorSettings, build_spec, load_spec_file
from .trial import CHECKPOINT_EXIT_CODE, MODEL, PARAMS, check_params, read_metrics

METRICS = {"val_accuracy": "max", "val_loss": "min", "val_recall@1": "max"}
KIND_METRICS = {"head": ("val_accuracy", "val_loss"), "embedder": ("val_recall@1", "val_loss")}
CHECK_PARAMS = {"head": check_params, "embedder": embedder.check_params}
FINISHED = ("completed", "diverged")  # trial statuses that running the sweep again leaves alone
# Exit codes of `train-models evaluate` (a DAG POST script): ABORT-DAG-ON acts on them.
EVAL_CONTINUE, EVAL_TARGET_REACHED, EVAL_DIVERGED = 0, 3, 4


@dataclass
class EarlyStop:
    target: float | None = None  # stop once a trial's final metric reaches this
    max_diverged: int | None = None  # stop once this many trials diverged
    diverge_factor: float = 10.0  # a final train loss this many times the first one diverged


@dataclass
class PairSettings:
    """Embedder sweeps: which pairs of the workdir's passages train the model."""

    source: str = "title"  # title: the article's title for each passage; ict: inverse cloze
    max_pairs: int = 0  # a seeded choice of at most this many (0: all), for CPU budgets


@dataclass
class SweepSpec:
    name: str
    kind: str = "head"  # head | embedder
    metric: str = ""  # default: val_accuracy for heads, val_recall@1 for embedders
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
    pairs: PairSettings = field(default_factory=PairSettings)
    condor: CondorSettings = field(default_factory=CondorSettings)

    def validate(self) -> None:
        """What the types alone do not say; every trial's hyperparameters too, so that no
        mistake surfaces after trials have started."""
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise TrainError("name may hold only letters, digits, '-' and '_'")
        if self.kind not in KIND_METRICS:
            raise TrainError(f"kind must be one of {', '.join(KIND_METRICS)}, got {self.kind!r}")
        self.metric = self.metric or KIND_METRICS[self.kind][0]
        if self.metric not in KIND_METRICS[self.kind]:
            raise TrainError(f"metric of {self.kind} trials must be one of "
                             f"{', '.join(KIND_METRICS[self.kind])}, got {self.metric!r}")
        if self.kind == "embedder":
            self._validate_embedder()
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
            CHECK_PARAMS[self.kind](trial["params"])

    def _validate_embedder(self) -> None:
        if self.pairs.source not in SOURCES:
            raise TrainError(f"pairs.source must be one of {', '.join(SOURCES)}, got "
                             f"{self.pairs.source!r}")
        if self.pairs.max_pairs < 0:
            raise TrainError("pairs.max_pairs must be >= 0 (0: all)")
        if self.condor.data_source not in embedder.PAIRS_SOURCES:
            raise TrainError(f"condor.data_source: embedder trials read their pairs whole: "
                             f"one of {', '.join(embedder.PAIRS_SOURCES)}")
        if self.condor.checkpoint_every == "auto":
            raise TrainError("condor.checkpoint_every: embedder trials checkpoint every "
                             "save_steps steps; give how many checkpoints a job makes (>= 0)")
        if self.condor.gpu != "any":
            raise TrainError(f"condor.gpu: {self.condor.gpu} chooses GPU classes from head "
                             "trials' measured epochs; embedder trials take any (gpu: any, "
                             "or condor.requirements)")
        models = {trial["params"].get("model", embedder.DEFAULTS["model"])
                  for trial in expand_trials(self)}
        for model in sorted(models):
            try:
                check_model(model)
            except ModelError as exc:
                raise TrainError(f"params.model: {exc}") from None


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
        """What trials read: the embeddings (heads) or the pairs (embedders)."""
        return self.root / (PAIRS if self.spec().kind == "embedder" else DATASET)

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
        if not self.dataset.is_file() and spec.kind == "embedder":
            save_pairs(make_pairs(workdir, spec.pairs.source, spec.val_fraction,
                                  spec.pairs.max_pairs, spec.search_seed), self.dataset)
        elif not self.dataset.is_file():
            save_dataset(read_workdir(Workdir(workdir), spec.val_fraction), self.dataset)
        if spec.condor.stage_dir:
            stage(self.dataset, Path(spec.condor.stage_dir) / self.dataset_object)
        for trial in trials:
            path = self.trial_dir(trial["trial"]) / PARAMS
            if not path.is_file():
                write_json_atomic(path, CHECK_PARAMS[spec.kind](trial["params"]))
        return trials


def unfinished_trials(sweep: Sweep) -> list[str]:
    """Trials still to run: not started, or stopped before their last epoch."""
    return [t["trial"] for t in sweep.trials()
            if (read_metrics(sweep.trial_dir(t["trial"])) or {}).get("status") not in FINISHED]


def trial_arguments(kind: str, trial_dir: str, dataset: str, data_source: str) -> list[str]:
    """Python's arguments for one trial, here and in a job: `dataset` is the dataset (or
    pairs) file (transfer) or its URL (stream, cache)."""
    if kind == "embedder":
        return ["-m", "submit.train.embedder", "--trial-dir", trial_dir, "--pairs", dataset,
                "--data-source", data_source]
    return ["-m", "submit.train.cli", "trial", "--trial-dir", trial_dir, "--dataset", dataset,
            "--data-source", data_source]


def trial_command(sweep: Sweep, trial: str) -> list[str]:
    """The command a local trial runs: the one an HTCondor trial job runs, with the sweep's
    dataset file (transfer) or its published URL."""
    spec = sweep.spec()
    settings = spec.condor
    dataset = (str(sweep.dataset) if settings.data_source == "transfer"
               else sweep.dataset_url(settings))
    return [sys.executable, *trial_arguments(spec.kind, str(sweep.trial_dir(trial)),
                                             str(dataset), settings.data_source)]


def diverged(metrics: dict[str, Any], factor: float) -> bool:
    if metrics.get("status") == "diverged":
        return True
    losses = [row["train_loss"] for row in metrics.get("history") or []
              if row.get("train_loss") is not None]
    return len(losses) > 1 and losses[-1] > factor * losses[0]


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
        if spec.kind == "embedder":  # a model folder, which model.name accepts
            model = sweep.trial_dir(top["trial"]) / embedder.MODEL_DIR
        else:
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
