"""Promotion: the model an embedder sweep fine-tuned becomes the one a workdir embeds with.

The chosen trial's `model/` (the best completed trial, or one named; or the sweep's soup,
`soup.py`, named as the trial `soup`) is copied to `WORKDIR/models/SWEEP-TRIAL/` whole or not
at all, with `promotion.json` inside it saying where it came from (sweep, trial,
hyperparameters, metric; for a soup its members and the best single trial) and how it runs
on a CPU: the encoder runs a model there in int8 through ONNX Runtime only where its int8
embeddings agree with its float32 PyTorch ones on reference texts, so the same check runs
here, once, before any corpus is embedded with it. A model that fails it is promoted all the
same (it runs in float32 on PyTorch, slower), and the record says so. `infer-corpus run` with
`--set model.name=FOLDER` then embeds the corpus again and rebuilds the index, which records
the model it was built with, so searches embed their queries with this model too.

A head sweep needs no promotion: its best head is already `best-model.pt`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from inference.config import ModelConfig
from inference.demo import demo_corpus_path
from inference.workdir import Workdir, write_json_atomic

from . import TrainError
from .embedder import MODEL_DIR, fsync_tree, replace_folder
from .report import trial_labels
from .soup import SOUP, read_soup, soup_dir
from .sweep import Sweep, collect
from .trial import MODEL, read_metrics

PROMOTION = "promotion.json"  # inside the promoted model folder
MODELS_DIR = "models"  # in the workdir: promoted models


def promote(workdir: Path, sweep: Sweep, trial: str | None = None,
            out: Path | None = None) -> dict[str, Any]:
    """Promote a trial's model (default: the best), or the sweep's soup (`trial` "soup");
    returns what `promotion.json` records plus `next`, the command that puts it to use."""
    spec = sweep.spec()
    manifest = Workdir(workdir).manifest()
    if trial == SOUP:
        if spec.kind == "head":
            raise TrainError(f"sweep {spec.name} trains topic heads: it has no soup (a soup "
                             "averages fine-tuned embedders)")
        soup = read_soup(sweep)
        record: dict[str, Any] = {
            "sweep": spec.name, "kind": spec.kind, "trial": SOUP,
            "label": f"soup of {' + '.join(soup['members'])}", "best": False, "params": None,
            "metric": soup["metric"], "value": soup["value"],
            "soup": {key: soup[key] for key in ("members", "labels", "start", "best_single")}}
        source = soup_dir(sweep) / MODEL_DIR
    else:
        best = collect(sweep)["best"]
        chosen = _chosen(sweep, trial, best)
        labels = trial_labels(sweep.trials(), spec.kind)
        record = {
            "sweep": spec.name, "kind": spec.kind, "trial": chosen["trial"],
            "label": labels[chosen["trial"]], "best": chosen["trial"] == best["trial"],
            "params": chosen["params"], "metric": spec.metric, "value": chosen["value"]}
        if spec.kind == "head":
            if out is not None:
                raise TrainError("--out is for embedder sweeps: a head sweep's best head is "
                                 "already best-model.pt")
            model = sweep.root / "best-model.pt" if record["best"] else \
                sweep.trial_dir(chosen["trial"]) / MODEL
            return {**record, "model": str(model), "next": rerun_command(
                workdir, manifest, ["predictions.kind=head", f"predictions.model={model}"])}
        source = sweep.trial_dir(chosen["trial"]) / MODEL_DIR
    if not (source / "modules.json").is_file():
        raise TrainError(f"{source} holds no sentence-transformers model")
    target = Path(out or Path(workdir) / MODELS_DIR / f"{spec.name}-{record['trial']}")
    if target.exists() and not (target / PROMOTION).is_file():
        raise TrainError(f"{target} exists and holds no promoted model: choose another --out")
    target = target.resolve()  # the index records model.name: valid from any directory
    record["source"] = str(source.resolve())
    record["model"] = str(target)
    record["next"] = rerun_command(workdir, manifest, [f"model.name={target}"])
    staged = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        shutil.copytree(source, staged)
        record["int8"] = check_int8(staged, manifest.config.model)
        write_json_atomic(staged / PROMOTION, record)
        fsync_tree(staged)
        replace_folder(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return record


def _chosen(sweep: Sweep, trial: str | None,
            best: dict[str, Any] | None) -> dict[str, Any]:
    """The ranked row of `trial` (default: the best); one-line errors for any other."""
    ranking = json.loads((sweep.root / "results.json").read_text(encoding="utf-8"))["ranking"]
    if trial is None:
        if best is None:
            raise TrainError(f"sweep {sweep.root.name} has no completed trial yet")
        return ranking[0]
    ids = [t["trial"] for t in sweep.trials()]
    if trial not in ids:
        raise TrainError(f"sweep {sweep.root.name} has no trial {trial!r} "
                         f"(its trials: {ids[0]} to {ids[-1]})")
    row = next((r for r in ranking if r["trial"] == trial), None)
    if row is None:
        status = (read_metrics(sweep.trial_dir(trial)) or {}).get("status", "not started")
        status = "diverged" if status == "completed" else status  # collect's verdict
        raise TrainError(f"trial {trial} of sweep {sweep.root.name} is not completed "
                         f"({status})")
    return row


def check_int8(folder: Path, settings: ModelConfig) -> dict[str, Any]:
    """The encoder's own check of the model in `folder` on a CPU: does its ONNX int8
    export agree with its float32 PyTorch output on the reference texts?"""
    from inference.embed import INT8_MIN_COSINE, INT8_REFERENCE_TEXTS, Encoder

    model = dataclasses.replace(settings, name=str(folder), device="cpu")
    encoder = Encoder(model, device="cpu", tokenize_processes=0, runtime="onnx-int8")
    encoder.close()
    cosine = None if encoder.agreement is None else round(encoder.agreement, 6)
    return {"agrees": encoder.runtime == "onnx-int8", "cosine": cosine,
            "min_cosine": INT8_MIN_COSINE, "reference_texts": INT8_REFERENCE_TEXTS,
            "why_not": encoder.fallback}


def rerun_command(workdir: Path, manifest: Any, settings: list[str]) -> str:
    """`infer-corpus run` on the workdir's own inputs with `settings` (key=value) added."""
    inputs = [entry["path"] for entry in manifest.inputs]
    demo = str(demo_corpus_path())
    args = ["--demo"] if demo in inputs else []
    others = [path for path in inputs if path != demo]
    args += ["--input", *others] if others else []
    for setting in settings:
        args += ["--set", setting]
    return shlex.join(["infer-corpus", "run", "--workdir", str(workdir), *args])


def describe(record: dict[str, Any]) -> str:
    """What `train-models promote` prints: what was promoted, the int8 check, the next
    command."""
    where = f"{record['metric']} {record['value']:.4f}; {record['label']}"
    if record["kind"] == "head":
        return (f"sweep {record['sweep']} trains topic heads: the head of trial "
                f"{record['trial']} ({where}) is {record['model']}, no promotion needed; "
                f"use it with: {record['next']}")
    check = record["int8"]
    if check["agrees"]:
        verdict = (f"int8 check passed: its ONNX int8 embeddings agree with float32 "
                   f"(lowest cosine {check['cosine']:.4f} >= {check['min_cosine']:g} on "
                   f"{check['reference_texts']} reference texts): CPUs run it in int8")
    else:
        verdict = (f"int8 check failed: {check['why_not']}; CPUs will run it in float32 on "
                   "PyTorch (slower)")
    what = f"trial {record['trial']}"
    if "soup" in record:
        single = record["soup"]["best_single"]
        what = "the soup"
        where += f"; best single trial {single['trial']}: {single['value']:.4f}"
    return "\n".join([f"promoted {what} of {record['sweep']} ({where}) to "
                      f"{record['model']}", verdict,
                      f"next (re-embeds the corpus and rebuilds the index): {record['next']}"])
