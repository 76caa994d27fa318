"""Model soups: the best fine-tunes of an embedder sweep averaged into one model.

A greedy soup (Wortsman et al. 2022, "Model soups"): the completed trials that start from the
same model as the best trial, ranked by the sweep's metric, at most `top` of them. The soup
starts as the best trial; each next trial's weights join the uniform average only when the dev
metric of the average is no worse than the soup's without it. Since the soup is one model of
the same shape, it costs one model's inference, however many trials went into it. Trials that
start from another model cannot be averaged with these: they are left out and named.

The dev metric is the sweep's own, looked up in `SCORERS` (metric -> scorer(sweep, model
folder)), each scoring a model folder as the sweep scored its trials, so the best trial alone
scores its recorded value: `val_loss` and `val_recall@1` through the trial's own trainer and
evaluator on the sweep's validation pairs (with the best trial's batch size, loss and seed),
`ndcg@10` by the project's own search on the dev queries of `retrieval.collection`.

Layout (`WORKDIR/train/NAME/soup/`, replaced whole when made again): `model/` (the best
trial's sentence-transformers folder with the averaged weights in place of its own; every
`*.safetensors` file of it, at the top or in a module's folder, is averaged), which
`model.name` and `train-models promote --trial soup` accept, and `soup.json` (each trial tried,
kept or not, the metric after each step, the best single trial's and the soup's; under
`ndcg@10`, `retrieval`: the soup against the model it started from on the test half of the
queries, which the greedy steps never saw, as `collect` reports the best trial).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inference.models import resolve_model
from inference.workdir import write_json_atomic

from . import TrainError, embedder
from .embedder import replace_folder
from .report import trial_labels
from .retrieval_metric import NDCG, compare_on_test
from .retrieval_metric import describe as describe_comparison
from .sweep import METRICS, Sweep, collect, dev_ndcg, judged_collection

SOUP = "soup"  # the soup's folder in the sweep, and its name where a trial id goes
SOUP_RECORD = "soup.json"  # in the soup's folder, beside model/
WEIGHTS = "*.safetensors"  # what sentence-transformers saves each module's weights as

Scorer = Callable[[Sweep, Path], float]


def validation_metrics(sweep: Sweep, model_dir: Path) -> dict[str, float]:
    """`val_loss` and `val_recall@1` of the model in `model_dir`, computed as the sweep's best
    trial computed its final ones: its trainer (batch size, loss, seed) and evaluator on the
    sweep's validation pairs."""
    from transformers.trainer_callback import PrinterCallback

    from ..chirp import JobAd

    best = json.loads((sweep.root / "results.json").read_text(encoding="utf-8"))["best"]
    # the averaged weights are plain ones: no adapter is added over them
    params = {**embedder.check_params(best["params"]), "model": str(model_dir),
              "adapter": "none"}
    train, validation = embedder.read_pairs(sweep.dataset, params["batch_size"])
    with tempfile.TemporaryDirectory(prefix=".soup-eval-", dir=sweep.root) as scratch:
        trainer, _, _ = embedder.build_trainer(Path(scratch), params, train, validation,
                                               JobAd("soup"), 0, 0, time.perf_counter())
        trainer.remove_callback(PrinterCallback)  # its lines would mix with the command's
        result = trainer.evaluate()
    return {"val_loss": result["eval_loss"], "val_recall@1": result["eval_recall@1"]}


def _validation_scorer(name: str) -> Scorer:
    def score(sweep: Sweep, model_dir: Path) -> float:
        return validation_metrics(sweep, model_dir)[name]

    return score


SCORERS: dict[str, Scorer] = {"val_loss": _validation_scorer("val_loss"),
                              "val_recall@1": _validation_scorer("val_recall@1"),
                              NDCG: dev_ndcg}


def soup_dir(sweep: Sweep) -> Path:
    return sweep.root / SOUP


def read_soup(sweep: Sweep) -> dict[str, Any]:
    """The sweep's soup record; a one-line error when no soup was made."""
    try:
        return json.loads((soup_dir(sweep) / SOUP_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise TrainError(f"sweep {sweep.root.name} has no soup yet: run `train-models soup "
                         f"--workdir WORKDIR --sweep {sweep.root.name}` first") from None


def make_soup(sweep: Sweep, top: int,
              log: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Make the sweep's greedy soup of at most `top` trials and write it (model/ and
    soup.json); returns the record."""
    if top < 1:
        raise TrainError(f"--top must be >= 1, got {top}")
    spec = sweep.spec()
    if spec.kind != "embedder":
        raise TrainError(f"sweep {spec.name} trains topic heads: a soup averages the weights "
                         "of fine-tuned embedders (kind: embedder)")
    collect(sweep)
    ranking = json.loads((sweep.root / "results.json").read_text(encoding="utf-8"))["ranking"]
    if not ranking:
        raise TrainError(f"sweep {spec.name} has no completed trial yet")
    labels = trial_labels(sweep.trials(), spec.kind)
    starts = {r["trial"]: embedder.check_params(r["params"])["model"] for r in ranking}
    start = starts[ranking[0]["trial"]]
    same = [r for r in ranking if resolve_model(starts[r["trial"]]) == resolve_model(start)]
    chosen = [{**r, "label": labels[r["trial"]]} for r in same[:top]]
    models = {r["trial"]: sweep.trial_dir(r["trial"]) / embedder.MODEL_DIR for r in chosen}
    for folder in models.values():
        if not (folder / "modules.json").is_file():
            raise TrainError(f"{folder} holds no sentence-transformers model")
    target = soup_dir(sweep)
    staged = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        steps, soup = _greedy(sweep, spec.metric, chosen, models, staged / "steps", log)
        if soup.parent == staged / "steps":
            os.replace(soup, staged / embedder.MODEL_DIR)
        else:  # nothing joined the best trial
            shutil.copytree(soup, staged / embedder.MODEL_DIR)
        shutil.rmtree(staged / "steps", ignore_errors=True)
        kept = [step for step in steps if step["kept"]]
        members = [step["trial"] for step in kept]
        record = {
            "sweep": spec.name, "metric": spec.metric, "goal": METRICS[spec.metric],
            "top": top, "start": start, "members": members,
            "labels": [labels[t] for t in members], "steps": steps,
            "best_single": {key: steps[0][key] for key in ("trial", "label", "value")},
            "value": kept[-1]["value"],
            "model": str((target / embedder.MODEL_DIR).resolve()),
            "left_out": [{"trial": r["trial"], "label": labels[r["trial"]],
                          "start": starts[r["trial"]]} for r in ranking if r not in same]}
        write_json_atomic(staged / SOUP_RECORD, record)
        embedder.fsync_tree(staged)
        replace_folder(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if spec.metric == NDCG:  # the greedy steps chose by the dev half: report the test half
        log("soup: judging the soup on the test half against the start")
        record["retrieval"] = compare_on_test(judged_collection(spec), start,
                                              target / embedder.MODEL_DIR, sweep.root)
        write_json_atomic(target / SOUP_RECORD, record)
    return record


def _greedy(sweep: Sweep, metric: str, ranked: list[dict[str, Any]],
            models: dict[str, Path], scratch: Path,
            log: Callable[[str], None]) -> tuple[list[dict[str, Any]], Path]:
    """The greedy soup over `ranked` (best first): each step's trial, its own metric, the dev
    metric of the soup with it added and whether it was kept; and the soup's folder (the
    best trial's own while nothing joined it). Each candidate gets a folder of its own, since
    a scorer may keep its judgement of a folder beside it."""
    score = SCORERS[metric]
    no_worse = ((lambda new, old: new >= old) if METRICS[metric] == "max"
                else (lambda new, old: new <= old))  # NaN is worse than anything
    best = ranked[0]["trial"]
    soup, current = models[best], score(sweep, models[best])
    log(f"soup: {best} alone (the best trial): {metric} {current:.4f}")
    steps = [{"trial": best, "label": ranked[0]["label"], "trial_value": ranked[0]["value"],
              "value": current, "kept": True}]
    members = [best]
    for n, row in enumerate(ranked[1:], start=2):
        candidate = scratch / f"soup-{n}"
        write_average(models[best], [models[t] for t in [*members, row["trial"]]], candidate)
        value = score(sweep, candidate)
        kept = no_worse(value, current)
        log(f"soup: + {row['trial']}: {metric} {value:.4f} ({'kept' if kept else 'left out'})")
        steps.append({"trial": row["trial"], "label": row["label"], "trial_value": row["value"],
                      "value": value, "kept": kept})
        if not kept:
            shutil.rmtree(candidate)
            continue
        if soup.parent == scratch:
            shutil.rmtree(soup)
        members.append(row["trial"])
        soup, current = candidate, value
    return steps, soup


def write_average(template: Path, members: list[Path], out: Path) -> None:
    """`template`'s model folder at `out`, its weights the uniform average of `members`'
    (float tensors summed in float64, stored in their own type; others kept from the
    first member)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(path.relative_to(template) for path in template.rglob(WEIGHTS))
    if not files:
        raise TrainError(f"{template} holds no {WEIGHTS} weights to average")
    shutil.copytree(template, out, ignore=shutil.ignore_patterns(WEIGHTS))
    for relative in files:
        with contextlib.ExitStack() as stack:
            handles = []
            for folder in members:
                if not (folder / relative).is_file():
                    raise TrainError(f"{folder} has no {relative}: a soup averages models of "
                                     "one architecture")
                handles.append(stack.enter_context(
                    safe_open(str(folder / relative), framework="pt")))
            keys = list(handles[0].keys())
            averaged = {}
            for key in keys:
                tensors = [_tensor(handle, key, folder / relative)
                           for handle, folder in zip(handles, members)]
                first = tensors[0]
                if any(t.shape != first.shape for t in tensors):
                    raise TrainError(f"{relative}: {key} differs in shape between the trials: "
                                     "a soup averages models of one architecture")
                averaged[key] = (torch.stack([t.double() for t in tensors]).mean(dim=0)
                                 .to(first.dtype) if first.is_floating_point() else first)
            save_file(averaged, str(out / relative), metadata=handles[0].metadata())


def _tensor(handle: Any, key: str, path: Path) -> torch.Tensor:
    if key not in handle.keys():
        raise TrainError(f"{path} has no tensor {key}: a soup averages models of one "
                         "architecture")
    return handle.get_tensor(key)


def describe(record: dict[str, Any]) -> str:
    """What `train-models soup` prints: each step, the soup against the best single trial."""
    metric, goal = record["metric"], "higher" if record["goal"] == "max" else "lower"
    best = record["best_single"]
    steps = record["steps"]
    width = max(len("trial"), *(len(s["label"]) for s in steps))
    lines = [f"soup of sweep {record['sweep']}: {len(record['members'])} of {len(steps)} "
             f"trials kept; {metric} on the dev set ({goal} is better)",
             f"  {'trial':<{width}}  id    {metric + ' after':>16}  step"]
    for i, step in enumerate(steps):
        verdict = ("the start (best single trial)" if i == 0 else
                   "kept" if step["kept"] else "left out (the soup got worse)")
        lines.append(f"  {step['label']:<{width}}  {step['trial']}  {step['value']:>16.4f}  "
                     f"{verdict}")
    if len(steps) == 1:
        lines.append(f"only one trial to average: the soup is trial {best['trial']} itself")
    lines += [f"best single trial {best['trial']}: {metric} {best['value']:.4f}",
              f"soup ({' + '.join(record['members'])}): {metric} {record['value']:.4f} "
              f"({record['value'] - best['value']:+.4f}), at one model's inference cost "
              "(one model of the same size)"]
    if "retrieval" in record:
        lines += describe_comparison(record["retrieval"])
    if record["left_out"]:
        lines.append("left out, another start: " + ", ".join(
            f"{r['trial']} ({r['start']})" for r in record["left_out"]))
    lines.append(f"model: {record['model']} (promote it with `train-models promote --trial "
                 "soup`)")
    return "\n".join(lines)
