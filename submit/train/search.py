"""Optuna sweeps (`method: optuna`): trials asked for wave by wave, pruned by successive halving.

The study lives in the sweep directory, in Optuna's journal file `study.journal` (no database
server), created when the sweep is prepared. Its steps run one after another, each in its own
process: here, or on HTCondor on the access point (the DAG's PRE and POST scripts). A wave
is the same three steps locally and on the pool:

1. `ask` (`train-models ask --sweep-dir D --wave N`, the wave node's PRE script) tells the
   study what the trials wrote, asks it for the wave's new trials (`condor.wave_size` of them,
   until `samples` in all; TPE) and lists them with the survivors that go on, each with the
   rung it runs to, in `waves/wave-NNN.json` (on the pool also the wave's submit file and item
   data). A wave with nothing to run exits ASK_NOTHING, which the DAG's PRE_SKIP counts as done.
2. Each trial runs from its checkpoint to its rung's end and exits with the checkpoint exit
   code (`--checkpoint-exit-every` the epochs or checkpoints left to the rung), or 0 when it
   has used its whole budget.
3. `evaluate` (the wave's POST script, `sweep.evaluate`) reports each trial's new rows to the
   study as intermediate values and asks the successive-halving pruner about each trial at a
   rung: pruned trials are told PRUNED and marked `pruned` in their metrics.json, so they never
   run again; finished trials are told their final value; then the early-abort decision.

Under `metric: ndcg@10` the rungs judge a trial's validation loss (reported negated, since the
study maximizes nDCG): scoring each checkpoint by search would embed the whole collection once
per trial and rung, and a LoRA checkpoint holds adapters, not a model search can load. The
finished trials are told their model's nDCG@10 on the dev queries, which TPE learns from.

Rungs are min_resource x reduction_factor^k epochs (heads) or checkpoints (embedders) below a
trial's budget, then the budget itself. A trial asked in wave w runs rung k in wave w + k, so
a sweep has ceil(samples / wave_size) + len(rungs) - 1 waves, known when its DAG is written.
Trial `tNNN` is the study's trial number NNN.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from inference.workdir import write_json_atomic

from . import TrainError
from .embedder import CHECKPOINTS_DIR
from .sweep import (
    CHECK_PARAMS,
    METRICS,
    Sweep,
    SweepSpec,
    budget_units,
    diverged,
    evaluate,
    final_value,
    finish_run,
    progress_metric,
    run_trials,
)
from .trial import CHECKPOINT, PARAMS, read_metrics
from .trial import METRICS as METRICS_FILE

JOURNAL = "study.journal"
WAVES_DIR = "waves"
ASK_NOTHING = 5  # exit code of `train-models ask` for a wave with nothing to run (PRE_SKIP)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the steps print their own summaries


def rungs(spec: SweepSpec) -> list[int]:
    """Where trials stop to be judged, in epochs or checkpoints; the last is the whole budget."""
    total = budget_units(spec.kind, CHECK_PARAMS[spec.kind](dict(spec.base)))
    marks, step = [], spec.optuna.min_resource
    while step < total:
        marks.append(step)
        step *= spec.optuna.reduction_factor
    return marks + [total]


def wave_count(spec: SweepSpec) -> int:
    return math.ceil(spec.samples / spec.condor.wave_size) + len(rungs(spec)) - 1


def _storage(sweep: Sweep) -> optuna.storages.JournalStorage:
    backend = optuna.storages.journal.JournalFileBackend(str(sweep.root / JOURNAL))
    return optuna.storages.JournalStorage(backend)


def create_study(sweep: Sweep, spec: SweepSpec) -> None:
    """The sweep's study, in its journal file (kept when it exists)."""
    direction = "maximize" if METRICS[spec.metric] == "max" else "minimize"
    optuna.create_study(storage=_storage(sweep), study_name=spec.name, direction=direction,
                        load_if_exists=True)


def _study(sweep: Sweep, spec: SweepSpec) -> optuna.Study:
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=spec.optuna.min_resource, reduction_factor=spec.optuna.reduction_factor)
    return optuna.load_study(study_name=spec.name, storage=_storage(sweep), pruner=pruner)


def _sampler(spec: SweepSpec, number: int) -> optuna.samplers.TPESampler:
    """TPE seeded from (search_seed, trial number): every process that asks gets a sampler
    of its own, and two trials never draw from the same random sequence."""
    seed = int(np.random.SeedSequence([spec.search_seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.optuna.startup_trials)


def _distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """A list: a choice among its values; {low, high, log}: a range, of integers when both
    ends are integers."""
    out: dict[str, BaseDistribution] = {}
    for name, values in sorted(spec.params.items()):
        if isinstance(values, list):
            out[name] = CategoricalDistribution(values)
        elif isinstance(values["low"], int) and isinstance(values["high"], int):
            out[name] = IntDistribution(values["low"], values["high"],
                                        log=bool(values.get("log")))
        else:
            out[name] = FloatDistribution(float(values["low"]), float(values["high"]),
                                          log=bool(values.get("log")))
    return out


def _unit(spec: SweepSpec, row: dict[str, Any]) -> int:
    """A history row's place in the budget: its epoch, or its checkpoint's number."""
    if spec.kind == "embedder":
        return row["step"] // CHECK_PARAMS["embedder"](dict(spec.base))["save_steps"]
    return row["epoch"]


def _progress(spec: SweepSpec, trial_dir: Path) -> int:
    history = (read_metrics(trial_dir) or {}).get("history") or []
    return _unit(spec, history[-1]) if history else 0


def _mark_pruned(trial_dir: Path, metrics: dict[str, Any], step: int) -> None:
    """Pruned for good: the metrics say so, and the checkpoints are spent."""
    write_json_atomic(trial_dir / METRICS_FILE, {**metrics, "status": "pruned",
                                                 "pruned_at": step})
    (trial_dir / CHECKPOINT).unlink(missing_ok=True)
    shutil.rmtree(trial_dir / CHECKPOINTS_DIR, ignore_errors=True)


def tell_progress(sweep: Sweep) -> None:
    """Report every unfinished trial's new rows to the study, prune at rungs, and tell the
    finished ones. Trials are judged in trial order (the pruner compares each with those
    judged at that rung before it); running this again changes nothing."""
    spec = sweep.spec()
    study = _study(sweep, spec)
    known = {t.number: t for t in study.get_trials(deepcopy=False)}
    marks = set(rungs(spec)[:-1])
    progress = progress_metric(spec)
    # the rows' metric as the study's direction wants it (val_loss under ndcg@10: negated)
    sign = 1.0 if METRICS[progress] == METRICS[spec.metric] else -1.0
    for entry in sweep.trials():
        number = int(entry["trial"].removeprefix("t"))
        frozen = known.get(number)
        trial_dir = sweep.trial_dir(entry["trial"])
        metrics = read_metrics(trial_dir)
        if frozen is None or frozen.state.is_finished() or metrics is None:
            continue
        if diverged(metrics, spec.early_stop.diverge_factor):
            study.tell(number, state=TrialState.FAIL)
            continue
        trial = optuna.trial.Trial(study, frozen._trial_id)  # the asked trial, by its number
        for row in metrics["history"]:
            step, value = _unit(spec, row), row.get(progress)
            if step in frozen.intermediate_values or value is None:
                continue
            trial.report(sign * value, step)
            if step in marks and trial.should_prune():
                study.tell(number, state=TrialState.PRUNED)
                _mark_pruned(trial_dir, metrics, step)
                break
        else:
            if metrics["status"] == "completed":
                final = final_value(sweep, spec, entry["trial"], metrics)
                if final is not None and math.isfinite(final):
                    study.tell(number, final)
                else:
                    study.tell(number, state=TrialState.FAIL)
                # an embedder's checkpoints as the job before its last one sent them back
                shutil.rmtree(trial_dir / CHECKPOINTS_DIR, ignore_errors=True)


def _wave_record(sweep: Sweep, wave: int) -> Path:
    return sweep.root / WAVES_DIR / f"wave-{wave:03d}.json"


def _ask_new(sweep: Sweep, spec: SweepSpec, study: optuna.Study, wave: int) -> list[str]:
    """The wave's new trials, asked of the study (or adopted, when an earlier try at this wave
    asked them and stopped before it was recorded), each with its params.json."""
    size = spec.condor.wave_size
    numbers = range(size * wave, min(spec.samples, size * (wave + 1)))
    distributions = _distributions(spec)
    while len(study.get_trials(deepcopy=False)) < numbers.stop:
        study.sampler = _sampler(spec, len(study.get_trials(deepcopy=False)))
        study.ask(distributions)
    trials = sweep.trials()
    listed = {t["trial"] for t in trials}
    new = []
    for frozen in study.get_trials(deepcopy=False)[numbers.start:numbers.stop]:
        name = f"t{frozen.number:03d}"
        params = {**spec.base, **frozen.params, "seed": spec.seeds[0]}
        path = sweep.trial_dir(name) / PARAMS
        if not path.is_file():
            write_json_atomic(path, CHECK_PARAMS[spec.kind](params))
        if name not in listed:
            trials.append({"trial": name, "group": f"c{frozen.number}", "ablation": None,
                           "params": params})
        new.append(name)
    write_json_atomic(sweep.root / "trials.json", trials)
    return new


def _to_run(sweep: Sweep, spec: SweepSpec, study: optuna.Study,
            plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The wave's trials that the study still runs and that are short of their rung, each
    with its budget for this run."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    items = []
    for entry in plan:
        done = _progress(spec, sweep.trial_dir(entry["trial"]))
        if int(entry["trial"].removeprefix("t")) in running and done < entry["until"]:
            items.append({**entry, "budget": entry["until"] - done})
    return items


def ask(sweep: Sweep, wave: int) -> list[dict[str, Any]]:
    """The wave's trials to run now, as {trial, until, budget}: asked (and recorded) the first
    time, the recorded ones that are still short of their rung after that."""
    spec = sweep.spec()
    count = wave_count(spec)
    if not 0 <= wave < count:
        raise TrainError(f"--wave: sweep {spec.name} has waves 0 to {count - 1}")
    if wave and not _wave_record(sweep, wave - 1).is_file():
        raise TrainError(f"wave {wave - 1} of {spec.name} has not been asked yet")
    tell_progress(sweep)
    study = _study(sweep, spec)
    record = _wave_record(sweep, wave)
    if not record.is_file():
        marks = rungs(spec)
        first_new = spec.condor.wave_size * wave
        running = {t.number for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.RUNNING,))}
        plan = []
        for entry in sweep.trials():  # survivors: asked in an earlier wave, not yet done
            number = int(entry["trial"].removeprefix("t"))
            done = _progress(spec, sweep.trial_dir(entry["trial"]))
            if number < first_new and number in running and done < marks[-1]:
                plan.append({"trial": entry["trial"], "until": min(m for m in marks if m > done)})
        plan += [{"trial": name, "until": marks[0]}
                 for name in _ask_new(sweep, spec, study, wave)]
        write_json_atomic(record, {"wave": wave, "trials": plan})
    plan = json.loads(record.read_text(encoding="utf-8"))["trials"]
    return _to_run(sweep, spec, study, plan)


def open_waves(sweep: Sweep) -> range:
    """The waves still to run: from the first one not asked yet, or asked with trials still
    short of their rung, to the last."""
    spec = sweep.spec()
    count = wave_count(spec)
    study = _study(sweep, spec)
    for wave in range(count):
        record = _wave_record(sweep, wave)
        if not record.is_file() or _to_run(
                sweep, spec, study, json.loads(record.read_text(encoding="utf-8"))["trials"]):
            return range(wave, count)
    return range(count, count)


def evaluate_study(sweep: Sweep, wave: int | None = None) -> dict[str, Any]:
    """An optuna sweep's evaluation: the study hears of the trials' progress (and prunes),
    then the early-stop decision is made as for any sweep. `wave`: the wave a DAG node just
    ran, whose trials the study still runs must have reached their rung (else their jobs
    failed, and so does the node)."""
    tell_progress(sweep)
    record = _wave_record(sweep, wave) if wave is not None else None
    failed = []
    if record is not None and record.is_file():
        spec = sweep.spec()
        plan = json.loads(record.read_text(encoding="utf-8"))["trials"]
        failed = [item["trial"] for item in _to_run(sweep, spec, _study(sweep, spec), plan)]
    return evaluate(sweep, failed)


def run_waves(sweep: Sweep, parallel: int,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """The local executor: each wave asked, its trials run as processes (a few at a time) to
    their rung's end, then evaluated; as on the pool, a stop decision ends the sweep."""
    decision = evaluate_study(sweep)
    failed: list[str] = []
    for wave in open_waves(sweep):
        if decision["action"] != "continue":
            break
        items = ask(sweep, wave)
        if not items:
            continue
        failed += run_trials(sweep, {item["trial"]: ["--checkpoint-exit-every",
                                                     str(item["budget"])] for item in items},
                             parallel, log, restart=False)
        decision = evaluate_study(sweep)
    return finish_run(sweep, failed, decision, log)

