#!/usr/bin/env python
"""Which pair source, if any, lifts retrieval when the embedding model is fine-tuned on a
corpus's own passages? And what does a training step cost?

What it does, on the Cranfield collection (`../shared/corpora/cranfield`, BEIR layout; the
benchmark says it is skipped when that is not there):
  1. Partitions its corpus into a workdir and, for each `--source`, makes training pairs from
     its passages (`submit.train.pairs`; validation pairs held out by article):
     - `title`, `ict`: from every passage;
     - `generated`: from the questions `infer-corpus generate` writes with
       configs/generate-queries.yaml (SmolLM2-135M-Instruct on this machine's CPU) over the
       first `--generated-limit` articles, partitioned into a workdir of their own (writing
       questions for all 1,400 takes hours on 2 CPU cores). That workdir is kept between runs:
       a second run generates only what is missing.
  2. Runs one embedder trial per source (`submit.train.embedder`, the sentence-transformers
     trainer) with the same hyperparameters.
  3. Judges the base model and each fine-tuned one with `infer-corpus eval --split test` (the
     half of the queries a sweep never tunes on), the fine-tuned ones `--against` the base:
     each search mode's nDCG@10, its change and a paired randomization test's p-value. It
     prints the default mode's and dense-only's change per source.
  4. Times training steps on this machine, in this run: a full and a LoRA fine-tune step (the
     median of `--timing-steps` steps after the first, from the trainer's own step callbacks)
     beside a head trial's epoch and step (`submit.train.trial`, an MLP head over 4,096
     384-dimensional rows, batch 32), the kind of trial sweeps ran before.

The load average is printed at the start and the end: other work on the machine slows every
figure. The goal (the issue: fine-tuned default mode >= base + 0.02 nDCG@10 at p < 0.05 on the
test half) is printed as met or not per source. It exits 0 whether or not it is met; 1 when a
step fails.

    .venv/bin/python benchmarks/embedder_finetune.py                  # title, LoRA, 100 steps
    .venv/bin/python benchmarks/embedder_finetune.py --source title ict generated \\
        --generated-limit 200 --json
    .venv/bin/python benchmarks/embedder_finetune.py --adapter none --steps 200 --lr 2e-5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CRANFIELD = ROOT.parent / "shared" / "corpora" / "cranfield"
QUERY_CONFIG = ROOT / "configs" / "generate-queries.yaml"
GOAL_CHANGE, GOAL_P = 0.02, 0.05
SOURCES = ("title", "ict", "generated")


def cli(*args: str) -> dict:
    """One `infer-corpus` command's JSON line (it fails the benchmark when it fails)."""
    proc = subprocess.run([sys.executable, "-m", "infer_corpus", *args], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"infer-corpus {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def generated_workdir(collection: Path, work: Path, limit: int, threads: int) -> tuple[Path, dict]:
    """The first `limit` articles (0: all) partitioned, with a question written for each
    passage by configs/generate-queries.yaml; kept between runs (generation resumes)."""
    folder = work.parent / f"generated-{limit or 'all'}"
    folder.mkdir(parents=True, exist_ok=True)
    subset = folder / "corpus.jsonl"
    if not subset.is_file():
        with open(collection / "corpus.jsonl", encoding="utf-8") as source:
            lines = [line for i, line in enumerate(source) if not limit or i < limit]
        subset.write_text("".join(lines), encoding="utf-8")
    cli("partition", "--input", str(subset), "--workdir", str(folder / "corpus"),
        "--set", "predictions.kind=none", "--json")
    started = time.perf_counter()
    summary = cli("generate", "--workdir", str(folder / "corpus"), "--config", str(QUERY_CONFIG),
                  "--threads", str(threads), "--json")
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    return folder / "corpus", summary


def step_seconds(work: Path, pairs: Path, params: dict[str, Any], steps: int,
                 threads: int) -> float:
    """Median seconds of a training step (the first, which warms up, left out), as the
    trainer of an embedder trial runs it with `params`."""
    import torch
    from transformers import TrainerCallback

    from submit.chirp import JobAd
    from submit.train.embedder import build_trainer, check_params, read_pairs

    torch.set_num_threads(threads)
    checked = check_params({**params, "max_steps": steps + 1, "save_steps": steps + 1})
    train, validation = read_pairs(pairs, checked["batch_size"])
    trial = work / f"timing-{params['adapter']}"
    shutil.rmtree(trial, ignore_errors=True)
    trial.mkdir(parents=True)
    trainer, _, _ = build_trainer(trial, checked, train, validation, JobAd("timing"), 0, 0,
                                  time.perf_counter())

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.began = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.began)

    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    shutil.rmtree(trial, ignore_errors=True)
    return statistics.median(timer.seconds[1:])


def head_trial_seconds(work: Path, threads: int) -> dict[str, float]:
    """A head trial's (`submit.train.trial`) first epoch with its evaluation, and that per
    training step: an MLP head (hidden 64) over 4,096 random 384-dimensional rows in 8
    classes, batch 32, a quarter held out."""
    import numpy as np

    from submit.train.data import Dataset, save_dataset
    from submit.train.trial import read_metrics, run_trial

    rng = np.random.default_rng(0)
    rows, train_rows, batch = 4096, 3072, 32
    dataset = Dataset(rng.standard_normal((rows, 384), dtype=np.float32),
                      rng.integers(0, 8, rows), train_rows, [f"c{i}" for i in range(8)],
                      "all-MiniLM-L6-v2")
    trial = work / "head-trial"
    shutil.rmtree(trial, ignore_errors=True)
    trial.mkdir(parents=True)
    save_dataset(dataset, work / "head-dataset.parquet")
    (trial / "params.json").write_text(json.dumps({"head": "mlp", "hidden": 64, "epochs": 2,
                                                   "batch_size": batch}))
    run_trial(trial, work / "head-dataset.parquet", threads=threads)
    epoch = (read_metrics(trial) or {})["costs"]["epoch_seconds"]
    return {"epoch_seconds": epoch, "steps_per_epoch": -(-train_rows // batch),
            "seconds_per_step": epoch / -(-train_rows // batch)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", type=Path, default=CRANFIELD)
    parser.add_argument("--source", nargs="+", choices=SOURCES, default=["title"],
                        help="pair sources to fine-tune on, one trial each")
    parser.add_argument("--generated-limit", type=int, default=200, metavar="N",
                        help="generated: write questions for the first N articles (0: all)")
    parser.add_argument("--adapter", choices=("none", "lora"), default="lora")
    parser.add_argument("--loss", choices=("mnrl", "cached_mnrl"), default="mnrl")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads for training, timing and generation")
    parser.add_argument("--timing-steps", type=int, default=8,
                        help="steps timed for the full and LoRA cost (0: no timing)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-work" / "finetune")
    parser.add_argument("--json", action="store_true", help="one JSON line at the end")
    args = parser.parse_args()
    if not (args.collection / "corpus.jsonl").is_file():
        if args.collection == CRANFIELD:
            print(f"skipped: {CRANFIELD} is not here (../shared is absent)")
            return
        sys.exit(f"{args.collection} is not a BEIR-layout collection")
    if args.generated_limit < 0:
        sys.exit("--generated-limit must be >= 0 (0: every article)")

    from submit.train import TrainError
    from submit.train.embedder import run_embedder_trial
    from submit.train.pairs import make_pairs, save_pairs

    began, load_before = time.perf_counter(), load()
    print(f"load average at the start: {load_before}")
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli("partition", "--input", str(args.collection / "corpus.jsonl"), "--workdir",
        str(work / "corpus"), "--set", "predictions.kind=none", "--json")
    params = {"adapter": args.adapter, "loss": args.loss, "max_steps": args.steps,
              "save_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "max_seq_length": args.max_seq_length}
    base = cli("eval", "--collection", str(args.collection), "--workdir",
               str(work / "eval-base"), "--split", "test", "--set",
               "model.name=all-MiniLM-L6-v2", "--set", "predictions.kind=none", "--json")
    (work / "base.json").write_text(json.dumps(base))

    results: dict[str, dict[str, Any]] = {}
    for source in args.source:
        corpus, extra = work / "corpus", {}
        if source == "generated":
            corpus, generation = generated_workdir(args.collection, work, args.generated_limit,
                                                   args.threads)
            extra["generation"] = {k: generation[k] for k in (
                "prompts", "rows_generated", "errors", "output_tokens", "wall_seconds")}
        trial = work / f"trial-{source}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(params))
        started = time.perf_counter()
        try:  # a source this collection cannot give enough pairs is reported, not trained
            pairs = make_pairs(corpus, source, 0.1)
            save_pairs(pairs, work / f"pairs-{source}.parquet")
            run_embedder_trial(trial, work / f"pairs-{source}.parquet", threads=args.threads)
        except TrainError as exc:
            results[source] = {"not_trained": str(exc), **extra}
            print(f"{source}: not trained: {exc}")
            continue
        train_seconds = time.perf_counter() - started
        if source == "generated":
            extra["skipped"] = json.loads(pairs.schema.metadata[b"skipped"])
        held = sum(pairs.column("validation").to_pylist())
        metrics = json.loads((trial / "metrics.json").read_text())
        tuned = cli("eval", "--collection", str(args.collection), "--workdir",
                    str(work / f"eval-{source}"), "--split", "test", "--set",
                    f"model.name={trial / 'model'}", "--set", "predictions.kind=none",
                    "--against", str(work / "base.json"), "--json")
        against, default = tuned["against"]["modes"], tuned["default"]
        results[source] = {
            "pairs": pairs.num_rows, "validation_pairs": held, **extra,
            "train_seconds": round(train_seconds, 1), "status": metrics["status"],
            "val": metrics["final"], "default_mode": default, "test": against,
            "goal_met": against[default]["change"] >= GOAL_CHANGE
            and against[default]["p"] < GOAL_P}
        report_source(source, results[source], tuned["queries"], args)

    cost: dict[str, Any] = {}
    trained = [source for source in args.source if "not_trained" not in results[source]]
    if args.timing_steps and trained:
        timing_pairs = work / f"pairs-{trained[0]}.parquet"
        for adapter in ("none", "lora"):
            cost[adapter] = round(step_seconds(work, timing_pairs, {**params, "adapter": adapter},
                                               args.timing_steps, args.threads), 3)
        cost["head"] = {k: round(v, 4) for k, v in head_trial_seconds(work, args.threads).items()}
        head = cost["head"]
        print(f"cost on this machine (torch threads: {args.threads}, batch {args.batch_size}, "
              f"{args.max_seq_length} tokens, median of {args.timing_steps} steps): full "
              f"{cost['none']:.2f} s a step, LoRA {cost['lora']:.2f} s a step; a head trial "
              f"(trial.py, MLP over 384 features, batch 32): {head['epoch_seconds']:.3f} s an "
              f"epoch of {head['steps_per_epoch']} steps with its evaluation, "
              f"{head['seconds_per_step'] * 1000:.2f} ms a step")
    load_after = load()
    print(f"load average at the end: {load_after}; {time.perf_counter() - began:.0f} s in all")
    if len(results) > 1:
        print("which source helped (test half, change against the base model):")
        for source, row in results.items():
            if "not_trained" in row:
                print(f"  {source:<9} not trained: {row['not_trained']}")
                continue
            test, mode = row["test"], row["default_mode"]
            print(f"  {source:<9} {row['pairs']:>6,} pairs   default ({mode}) "
                  f"{test[mode]['change']:+.4f} (p = {test[mode]['p']:.3f})   dense "
                  f"{test['dense']['change']:+.4f} (p = {test['dense']['p']:.3f})")
    if args.json:
        print(json.dumps({"params": params, "sources": results, "cost_seconds_per_step": cost,
                          "load_before": load_before, "load_after": load_after,
                          "seconds": round(time.perf_counter() - began, 1)}))


def report_source(source: str, row: dict[str, Any], queries: int,
                  args: argparse.Namespace) -> None:
    """One source's pairs, training and test-half figures."""
    if "generation" in row:
        gen = row["generation"]
        which = (f"the first {args.generated_limit:,} articles" if args.generated_limit
                 else "every article")
        print(f"generated: {gen['prompts']:,} passages of {which}, {gen['rows_generated']:,} "
              f"questions written in this run "
              f"({gen['output_tokens']:,} tokens, {gen['wall_seconds']:.0f} s); skipped: "
              + ", ".join(f"{n} {why}" for why, n in row["skipped"].items()))
    print(f"{source}: {row['pairs']:,} pairs ({row['validation_pairs']:,} held out); "
          f"{args.adapter} {args.loss}, {args.steps} steps of {args.batch_size}, lr {args.lr:g}: "
          f"{row['train_seconds']:.0f} s with loading and evaluation; {row['status']}, "
          f"validation {row['val']}")
    print(f"  test half ({queries} queries), nDCG@10:")
    for mode, test in row["test"].items():
        mark = " (default)" if mode == row["default_mode"] else ""
        print(f"    {mode:<9} base {test['base']:.4f}  tuned {test['ndcg@10']:.4f}  "
              f"{test['change']:+.4f}  p = {test['p']:.4f}{mark}")
    print(f"  goal (default mode +{GOAL_CHANGE} at p < {GOAL_P}): "
          f"{'met' if row['goal_met'] else 'NOT MET'}")


if __name__ == "__main__":
    main()
