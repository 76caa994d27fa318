"""Sweeps: a YAML spec expanded into trials, run by a local executor, evaluated and collected.

A sweep trains one `kind` of trial: `head` (a topic head over the stored embeddings,
`trial.py`) or `embedder` (the embedding model itself fine-tuned on pairs of the workdir's
passages, `embedder.py`). `method: grid | random` expands every trial up front;
`method: optuna` asks Optuna for them wave by wave and prunes them at rungs (`search.py`).

Layout (`WORKDIR/train/NAME/`): `spec.json` (the resolved spec), `trials.json` (trial id ->
hyperparameters), `dataset.parquet` (see `data.py`; with `condor.data_url` also published
there as `dataset-HASH.parquet`), `trials/tNNN/` (one per trial, see `trial.py`),
`evaluation.json` (the latest early-abort decision), `results.json` (the ranking) and
`best.json` + `best-model.pt` (the best trial's head, for `predictions.kind: head`); optuna
sweeps add `study.journal` and `waves/` (`search.py`). With `metric: ndcg@10` each completed
trial's `model/` is judged by search on a collection's dev queries (`model-dev-eval.json`
beside it), the best one's on the test queries, against the base model's
`base-dev-eval.json` and `base-test-eval.json` in the sweep directory (`retrieval_metric.py`).
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
from collections.abc import Callable
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
from .retrieval_metric import NDCG, check_collection, compare_on_test, ndcg_on_dev
from .spec import CondorSettings, build_spec, load_spec_file
from .trial import CHECKPOINT_EXIT_CODE, MODEL, PARAMS, check_params, read_metrics

METRICS = {"val_accuracy": "max", "val_loss": "min", "val_recall@1": "max", NDCG: "max"}
KIND_METRICS = {"head": ("val_accuracy", "val_loss"),
                "embedder": ("val_recall@1", "val_loss", NDCG)}
CHECK_PARAMS = {"head": check_params, "embedder": embedder.check_params}
# trial statuses that running the sweep again leaves alone (pruned: by an optuna sweep's pruner)
FINISHED = ("completed", "diverged", "pruned")
SEARCH_METHODS = ("grid", "random", "optuna")
# hyperparameters that set a trial's budget, which an optuna sweep's pruner shares out
BUDGETS = {"head": ("epochs",), "embedder": ("max_steps", "save_steps")}
# Exit codes of `train-models evaluate` (a DAG POST script): ABORT-DAG-ON acts on 3 and 4;
# 1 fails the wave's node when one of its trial jobs failed (a rescue DAG runs it again)
EVAL_CONTINUE, EVAL_FAILED, EVAL_TARGET_REACHED, EVAL_DIVERGED = 0, 1, 3, 4


@dataclass
class EarlyStop:
    target: float | None = None  # stop once a trial's final metric reaches this
    max_diverged: int | None = None  # stop once this many trials diverged
    diverge_factor: float = 10.0  # a final train loss this many times the first one diverged


@dataclass
class PairSettings:
    """Embedder sweeps: which pairs of the workdir's passages train the model."""

    source: str = "title"  # title: the article's title for each passage; ict: inverse cloze;
    # generated: the queries an `infer-corpus generate` run over the passages wrote
    max_pairs: int = 0  # a seeded choice of at most this many (0: all), for CPU budgets
    generation: str | None = None  # generated: the generation model (its generation.models
    # key) whose queries are used; null: the workdir's generation run's only model


@dataclass
class RetrievalSettings:
    """`metric: ndcg@10`: the BEIR-layout collection (corpus.jsonl, queries.jsonl, qrels.tsv)
    whose judged queries score each trial's model with the project's own search."""

    collection: str | None = None  # a folder; a relative path is taken from where you run

    def validate(self) -> None:
        if self.collection is not None:  # absolute from here on: DAG scripts run elsewhere
            self.collection = str(check_collection(self.collection))


@dataclass
class OptunaSettings:
    """`method: optuna`: Optuna's TPE sampler asks for `samples` trials, `condor.wave_size`
    new ones per wave, and successive halving prunes them at rungs of `min_resource` x
    `reduction_factor`^k epochs (heads) or checkpoints (embedders)."""

    startup_trials: int = 10  # random draws before TPE models the results (TPE's default)
    min_resource: int = 1  # the first rung: what every trial runs before it can be pruned
    reduction_factor: int = 3  # a rung keeps about 1/this of its trials; the next is this x longer


@dataclass
class SweepSpec:
    name: str
    kind: str = "head"  # head | embedder
    # default: val_accuracy for heads, val_recall@1 for embedders; ndcg@10: embedders judged
    # by search on retrieval.collection's dev queries
    metric: str = ""
    method: str = "grid"  # grid | random | optuna
    samples: int = 0  # random search: how many draws; optuna: how many trials in all
    search_seed: int = 0
    base: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    ablations: list[dict[str, Any]] = field(default_factory=list)
    val_fraction: float = 0.25
    parallel: int = 0  # local executor: trials at once (0 = CPU cores)
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    pairs: PairSettings = field(default_factory=PairSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    optuna: OptunaSettings = field(default_factory=OptunaSettings)
    condor: CondorSettings = field(default_factory=CondorSettings)

    def validate(self) -> None:
        """What the types alone do not say; every trial's hyperparameters too, so that no
        mistake surfaces after trials have started."""
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise TrainError("name may hold only letters, digits, '-' and '_'")
        if self.kind not in KIND_METRICS:
            raise TrainError(f"kind must be one of {', '.join(KIND_METRICS)}, got {self.kind!r}")
        self.metric = self.metric or KIND_METRICS[self.kind][0]
        if self.metric == NDCG and self.kind != "embedder":
            raise TrainError(f"metric {NDCG} judges a fine-tuned embedding model by search: "
                             f"it needs kind: embedder (a {self.kind} sweep ranks by "
                             f"{' or '.join(KIND_METRICS[self.kind])})")
        if self.metric not in KIND_METRICS[self.kind]:
            raise TrainError(f"metric of {self.kind} trials must be one of "
                             f"{', '.join(KIND_METRICS[self.kind])}, got {self.metric!r}")
        if self.method not in SEARCH_METHODS:
            raise TrainError("method must be grid, random or optuna")
        if self.method == "random" and self.samples < 1:
            raise TrainError("method random needs samples >= 1")
        if self.method == "optuna" and self.samples < 1:
            raise TrainError("method optuna needs samples >= 1 (how many trials in all)")
        for key, values in self.params.items():
            if isinstance(values, dict):
                if self.method == "grid" or set(values) - {"low", "high", "log"} or \
                        not {"low", "high"} <= set(values):
                    raise TrainError(f"params.{key}: a range {{low, high, log}} needs "
                                     "method random or optuna")
                _check_range(key, values)
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
        if self.metric == NDCG and self.retrieval.collection is None:
            raise TrainError(f"metric {NDCG} needs retrieval.collection: a BEIR-layout folder "
                             "(corpus.jsonl, queries.jsonl, qrels.tsv) whose judged queries "
                             "score the trials")
        if self.metric != NDCG and self.retrieval != RetrievalSettings():
            raise TrainError(f"retrieval: these settings are for metric {NDCG}")
        if self.method == "optuna":
            self._validate_optuna()
        elif self.optuna != OptunaSettings():
            raise TrainError("optuna: these settings are for method optuna")
        if self.kind == "embedder":
            self._validate_embedder()
        for params in candidate_params(self):
            CHECK_PARAMS[self.kind](params)

    def _validate_optuna(self) -> None:
        settings = self.optuna
        if settings.startup_trials < 0 or settings.min_resource < 1 or \
                settings.reduction_factor < 2:
            raise TrainError("optuna: startup_trials must be >= 0, min_resource >= 1 and "
                             "reduction_factor >= 2")
        if len(self.seeds) != 1:
            raise TrainError("seeds: an optuna sweep runs each configuration once: give one "
                             "seed (e.g. seeds: [0])")
        if self.ablations:
            raise TrainError("ablations: an optuna sweep asks for its trials; run ablations "
                             "in a grid sweep")
        for name in BUDGETS[self.kind]:
            if name in self.params:
                raise TrainError(f"params.{name}: every trial of an optuna sweep has the same "
                                 f"budget (base.{name}), which the pruner shares out")
        for key, values in self.params.items():
            if isinstance(values, list) and not all(
                    v is None or isinstance(v, bool | int | float | str) for v in values):
                raise TrainError(f"params.{key}: optuna chooses among plain values (numbers, "
                                 "strings, booleans)")
        if not self.condor.wave_size:
            raise TrainError("condor.wave_size: an optuna sweep asks for this many new trials "
                             "per wave (>= 1)")
        if self.condor.checkpoint_every != 0:
            raise TrainError("condor.checkpoint_every: an optuna sweep's jobs stop at each "
                             "rung's end (optuna.min_resource, reduction_factor); set it to 0")
        budget = CHECK_PARAMS[self.kind](dict(self.base))
        if self.kind == "embedder" and budget["max_steps"] % budget["save_steps"]:
            raise TrainError("base.max_steps: an optuna sweep's rungs count checkpoints, so "
                             "max_steps must be a multiple of save_steps")
        total = budget_units(self.kind, budget)
        if settings.min_resource >= total:
            raise TrainError(f"optuna.min_resource ({settings.min_resource}) must be below a "
                             f"trial's budget ({total} {RESOURCE[self.kind]}), or nothing is "
                             "pruned")

    def _validate_embedder(self) -> None:
        if self.pairs.source not in SOURCES:
            raise TrainError(f"pairs.source must be one of {', '.join(SOURCES)}, got "
                             f"{self.pairs.source!r}")
        if self.pairs.max_pairs < 0:
            raise TrainError("pairs.max_pairs must be >= 0 (0: all)")
        if self.pairs.generation is not None and self.pairs.source != "generated":
            raise TrainError(f"pairs.generation names the generation model of pairs.source "
                             f"generated; this sweep's source is {self.pairs.source}")
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
        models = {params.get("model", embedder.DEFAULTS["model"])
                  for params in candidate_params(self)}
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


RESOURCE = {"head": "epochs", "embedder": "checkpoints"}  # what a rung counts


def budget_units(kind: str, params: dict[str, Any]) -> int:
    """A trial's whole budget in the units rungs count (checked params)."""
    if kind == "embedder":
        return params["max_steps"] // params["save_steps"]
    return params["epochs"]


def _check_range(key: str, values: dict[str, Any]) -> None:
    low, high = values["low"], values["high"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise TrainError(f"params.{key}: low and high must be numbers")
    if low >= high:
        raise TrainError(f"params.{key}: low ({low}) must be below high ({high})")
    if values.get("log") and low <= 0:
        raise TrainError(f"params.{key}: a log range needs low > 0")


def candidate_params(spec: SweepSpec) -> list[dict[str, Any]]:
    """Hyperparameters to check before anything runs: every trial (grid, random), or for
    optuna each listed value and each range's ends, the other parameters at their first."""
    if spec.method != "optuna":
        return [trial["params"] for trial in expand_trials(spec)]
    ends = {n: v if isinstance(v, list) else [v["low"], v["high"]]
            for n, v in spec.params.items()}
    first = {n: values[0] for n, values in ends.items()}
    return [{**spec.base, **first, n: value, "seed": spec.seeds[0]}
            for n, values in ends.items() for value in values] or \
        [{**spec.base, "seed": spec.seeds[0]}]


def expand_trials(spec: SweepSpec) -> list[dict[str, Any]]:
    """Configurations (grid or random draws) x seeds, then each ablation x seeds; none for
    optuna, whose trials are asked for wave by wave (`search.ask`).

    Trials of one configuration with different seeds form an ensemble `group`.
    """
    if spec.method == "optuna":
        return []
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
        """Write the spec, the trial list and the dataset; an existing sweep must match.
        An optuna sweep's trial list starts empty and its study is created here."""
        trials = expand_trials(spec)
        kept = (self.root / "trials.json").is_file() and not force
        if kept:
            same = (_search_of(self.spec()) == _search_of(spec) if spec.method == "optuna"
                    else self.trials() == trials)
            if not same:
                raise TrainError(f"{self.root} holds a sweep made from a different spec: "
                                 f"rename the sweep or pass --force to start it over")
            trials = self.trials()
        pairs = None
        if spec.kind == "embedder" and not (kept and (self.root / PAIRS).is_file()):
            # made before anything is written: a workdir that cannot give them (no titles,
            # no finished generation run) is refused with nothing left behind
            pairs = make_pairs(workdir, spec.pairs.source, spec.val_fraction,
                               spec.pairs.max_pairs, spec.search_seed, spec.pairs.generation)
        if not kept and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / "spec.json", asdict(spec))
        write_json_atomic(self.root / "trials.json", trials)
        if pairs is not None:
            save_pairs(pairs, self.dataset)
        elif not self.dataset.is_file():
            save_dataset(read_workdir(Workdir(workdir), spec.val_fraction), self.dataset)
        if spec.condor.stage_dir:
            stage(self.dataset, Path(spec.condor.stage_dir) / self.dataset_object)
        for trial in trials:
            path = self.trial_dir(trial["trial"]) / PARAMS
            if not path.is_file():
                write_json_atomic(path, CHECK_PARAMS[spec.kind](trial["params"]))
        return trials


def _search_of(spec: SweepSpec) -> dict[str, Any]:
    """What an optuna sweep's asked trials (and their waves) depend on: a change here needs
    a new sweep."""
    return {**{k: v for k, v in asdict(spec).items()
               if k not in ("parallel", "early_stop", "condor")},
            "wave_size": spec.condor.wave_size}


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


def progress_metric(spec: SweepSpec) -> str:
    """What a trial's rows hold as it trains (learning curves, optuna's rungs): the sweep's
    metric, or val_loss under ndcg@10, which judges a finished model only."""
    return "val_loss" if spec.metric == NDCG else spec.metric


def judged_collection(spec: SweepSpec) -> Path:
    """The collection whose judged queries score models (`retrieval.collection`)."""
    if spec.retrieval.collection is None:
        raise TrainError(f"sweep {spec.name} has no retrieval.collection to judge models on")
    return Path(spec.retrieval.collection)


def dev_ndcg(sweep: Sweep, model_dir: Path) -> float:
    """A model folder's nDCG@10 (default search mode) on the dev queries of the sweep's
    `retrieval.collection`: what `metric: ndcg@10` ranks by; judged once, then read back
    from beside the folder."""
    return ndcg_on_dev(judged_collection(sweep.spec()), model_dir)


def final_value(sweep: Sweep, spec: SweepSpec, trial: str, metrics: dict[str, Any]) -> float:
    """A completed trial's value of the sweep's metric: its last row's, or under ndcg@10 its
    model's on the dev queries."""
    if spec.metric == NDCG:
        return ndcg_on_dev(judged_collection(spec), sweep.trial_dir(trial) / embedder.MODEL_DIR)
    return metrics["final"][spec.metric]


def diverged(metrics: dict[str, Any], factor: float) -> bool:
    if metrics.get("status") == "diverged":
        return True
    losses = [row["train_loss"] for row in metrics.get("history") or []
              if row.get("train_loss") is not None]
    return len(losses) > 1 and losses[-1] > factor * losses[0]


def evaluate(sweep: Sweep, failed: list[str] | None = None) -> dict[str, Any]:
    """The early-abort decision over the trials that have metrics so far (also written out).
    An optuna sweep's study hears of the trials' progress first (`search.evaluate_study`).
    `failed`: trials a DAG node ran whose jobs did not take them where they should have: the
    node fails (exit EVAL_FAILED), unless the sweep stops anyway, so that the DAG does not
    report success and a rescue DAG runs them again."""
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
            finals.append(final_value(sweep, spec, trial["trial"], metrics))
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
    elif failed:
        logs = ", ".join(str(sweep.trial_dir(t) / "trial.err") for t in failed)
        decision.update(action="failed", code=EVAL_FAILED,
                        reason=f"trial job(s) {', '.join(failed)} failed: see {logs}")
    write_json_atomic(sweep.root / "evaluation.json", decision)
    return decision


def unfinished_of(sweep: Sweep, trials: list[str]) -> list[str]:
    """Those of `trials` that have not finished (a grid or random wave's trials all have,
    once their jobs end well: a checkpoint exit restarts the job until the trial is done)."""
    return [t for t in trials
            if (read_metrics(sweep.trial_dir(t)) or {}).get("status") not in FINISHED]


def collect(sweep: Sweep) -> dict[str, Any]:
    """Rank the finished trials by the sweep's metric and record the best one; under
    ndcg@10 the best is also judged on the test queries against its base model."""
    spec = sweep.spec()
    sign = -1.0 if METRICS[spec.metric] == "max" else 1.0
    rows = []
    for trial in sweep.trials():
        metrics = read_metrics(sweep.trial_dir(trial["trial"])) or {"status": "pending"}
        status = "diverged" if metrics["status"] != "pending" and \
            diverged(metrics, spec.early_stop.diverge_factor) else metrics["status"]
        value = (final_value(sweep, spec, trial["trial"], metrics) if status == "completed"
                 else None)
        row = {"trial": trial["trial"], "group": trial["group"], "status": status,
               "value": value, "params": trial["params"]}
        if status == "pruned":  # where, and how far it had got
            row["pruned_at"] = metrics["pruned_at"]
            row["last_value"] = metrics["history"][-1][progress_metric(spec)]
        rows.append(row)
    ranked = sorted((r for r in rows if r["value"] is not None),
                    key=lambda r: (sign * r["value"], r["trial"]))
    summary: dict[str, Any] = {
        "sweep": spec.name, "trials": len(rows),
        "completed": sum(r["status"] == "completed" for r in rows),
        "diverged": sum(r["status"] == "diverged" for r in rows),
        "pending": sum(r["status"] in ("pending", "running") for r in rows),
        "metric": spec.metric, "best": None, "groups": _groups(ranked),
    }
    pruned = [r for r in rows if r["status"] == "pruned"]
    if spec.method == "optuna":
        summary["pruned"] = len(pruned)
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
        if spec.metric == NDCG:
            summary["retrieval"] = compare_on_test(
                judged_collection(spec), embedder.check_params(top["params"])["model"], model,
                sweep.root)
    listed = {"pruned_trials": pruned} if spec.method == "optuna" else {}
    write_json_atomic(sweep.root / "results.json", {**summary, "ranking": ranked, **listed})
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
    An optuna sweep runs its waves instead (`search.run_waves`).
    """
    spec = sweep.spec()
    parallel = parallel or spec.parallel or os.cpu_count() or 1
    decision = evaluate(sweep)

    def judge() -> bool:
        nonlocal decision
        decision = evaluate(sweep)
        return decision["action"] == "continue"

    failed = (run_trials(sweep, {t: [] for t in unfinished_trials(sweep)}, parallel, log,
                         after=judge) if decision["action"] == "continue" else [])
    return finish_run(sweep, failed, decision, log)


def finish_run(sweep: Sweep, failed: list[str], decision: dict[str, Any],
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """The end of a local run: the trials ranked, with the failures and the stop reason."""
    if decision["action"] == "stop":
        log(f"sweep stopped early: {decision['reason']}")
    summary = collect(sweep)
    summary["failed"] = len(failed)
    summary["stopped_early"] = decision["reason"]
    return summary


def run_trials(sweep: Sweep, runs: dict[str, list[str]], parallel: int,
               log: Callable[[str], None] = print, *, restart: bool = True,
               after: Callable[[], bool] | None = None) -> list[str]:
    """Run trials as processes (each its command plus `runs[trial]`), `parallel` at a time;
    the trials that failed. A trial that exits with the checkpoint exit code is started
    again, as HTCondor would (`restart`), or else has reached its rung and is done. `after`,
    called as each trial ends, returns False to stop the others (they get SIGTERM)."""
    pending = list(runs)
    running: dict[str, subprocess.Popen] = {}
    failed: list[str] = []
    going = True
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        while (pending or running) and going:
            while pending and len(running) < parallel:
                trial = pending.pop(0)
                with open(sweep.trial_dir(trial) / "trial.log", "ab") as log_file:
                    running[trial] = subprocess.Popen(
                        trial_command(sweep, trial) + runs[trial], env=env, stdout=log_file,
                        stderr=subprocess.STDOUT)
            time.sleep(0.05)
            for trial, proc in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[trial]
                if code == CHECKPOINT_EXIT_CODE and restart:
                    pending.insert(0, trial)
                    continue
                if code not in (0, CHECKPOINT_EXIT_CODE):
                    failed.append(trial)
                    log(f"trial {trial} failed (exit {code}); see "
                        f"{sweep.trial_dir(trial) / 'trial.log'}")
                if after is not None:
                    going = after()
    finally:
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        for proc in running.values():
            proc.wait()
    return failed
