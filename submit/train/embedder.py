"""One embedder trial: fine-tune the embedding model on (query, passage) pairs, full or LoRA.

A trial directory holds `params.json` (input), the trainer's checkpoints
`checkpoints/checkpoint-N/` (every `save_steps` steps, the newest two kept; one folder, which
a batch system saves and sends back whole), `metrics.json` (one row per evaluation:
training loss, validation loss and `val_recall@1`; status `running`, `completed` or
`diverged`) and, once completed, `model/`: a plain sentence-transformers folder (LoRA merged
into the weights) that `SentenceTransformer(path)` and the `model.name` setting accept. A
diverged trial leaves `model/` and `checkpoints/` empty: a batch system's output transfer
names one of them (HTCondor sends back no folder it is not told of, and holds a job whose
named output is missing).

A trial killed at any moment and started again resumes from its newest complete checkpoint
and ends with the same weights as an unbroken run: the trainer stores the optimizer,
scheduler and random states with the weights, batches are drawn from the seed and the epoch,
and a checkpoint counts only once its `COMPLETE` marker is written, after every file of it
(a folder a kill left half-written, or half-deleted, is never resumed from). With
`checkpoint_exit_every` the trial stops after that many checkpoints and returns
CHECKPOINT_EXIT_CODE, so a batch system stores the directory and restarts it.

As a job: `python -m submit.train.embedder --trial-dir DIR --pairs pairs.parquet
[--data-source transfer|cache] [--checkpoint-exit-every N]` exits 0 (finished), 85
(checkpointed: restart me), 1 (the pairs' URL could not be read: worth a retry) or 2 (bad
params or pairs). With `cache`, `--pairs` is the pairs' federation URL, fetched once into
`cache/` and kept there across restarts in place.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from inference.errors import run_command
from inference.models import check_model, resolve_model
from inference.workdir import write_json_atomic

from ..chirp import JobAd
from . import TrainError
from .data import CACHE_DIR, cached, federation_source
from .pairs import load_pairs
from .trial import CHECKPOINT_EXIT_CODE, METRICS, PARAMS, read_metrics, rung_exit, typed_params

MODEL_DIR = "model"  # in the trial directory, once completed
CHECKPOINTS_DIR = "checkpoints"  # in the trial directory: the trainer's checkpoint folders
CHECKPOINT_PREFIX = "checkpoint-"  # the trainer's folders: checkpoint-<step>
COMPLETE = "COMPLETE"  # written into a checkpoint folder after all of its files
KEEP_CHECKPOINTS = 2  # the newest is complete whenever the trainer deletes an older one
LORA_TARGETS = ["query", "value"]  # attention modules of BERT-like models
LOSSES = ("mnrl", "cached_mnrl")
ADAPTERS = ("none", "lora")
PAIRS_SOURCES = ("transfer", "cache")  # the trainer reads its pairs whole: no stream

DEFAULTS: dict[str, Any] = {
    "model": "all-MiniLM-L6-v2", "loss": "mnrl", "mini_batch_size": 32, "adapter": "none",
    "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "lr": 2e-5, "max_steps": 200,
    "batch_size": 32, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_seq_length": 128,
    "save_steps": 50, "seed": 0,
}


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; unknown names and out-of-range values are errors."""
    out = typed_params(params, DEFAULTS)
    if out["loss"] not in LOSSES:
        raise TrainError(f"hyperparameter loss must be one of {', '.join(LOSSES)}")
    if out["adapter"] not in ADAPTERS:
        raise TrainError(f"hyperparameter adapter must be one of {', '.join(ADAPTERS)}")
    for name in ("max_steps", "save_steps", "mini_batch_size", "lora_r", "lora_alpha",
                 "max_seq_length"):
        if out[name] < 1:
            raise TrainError(f"hyperparameter {name} must be >= 1, got {out[name]}")
    if out["batch_size"] < 2:
        raise TrainError("hyperparameter batch_size must be >= 2 (the other pairs of a batch "
                         "are each query's negatives)")
    if not math.isfinite(out["lr"]) or out["lr"] <= 0 or out["weight_decay"] < 0:
        raise TrainError("hyperparameters lr must be > 0 and weight_decay >= 0")
    if not 0.0 <= out["warmup_ratio"] < 1.0 or not 0.0 <= out["lora_dropout"] < 1.0:
        raise TrainError("hyperparameters warmup_ratio and lora_dropout must be in [0, 1)")
    if out["seed"] < 0:
        raise TrainError(f"hyperparameter seed must be >= 0, got {out['seed']}")
    return out


def latest_checkpoint(trial_dir: Path) -> Path | None:
    """The newest checkpoint folder whose marker says it is complete (None: start afresh).
    Folders without the marker are what a kill left behind, and are removed."""
    complete: list[tuple[int, Path]] = []
    for folder in (trial_dir / CHECKPOINTS_DIR).glob(f"{CHECKPOINT_PREFIX}*"):
        step = folder.name.removeprefix(CHECKPOINT_PREFIX)
        if not (folder.is_dir() and step.isdigit()):
            continue
        if (folder / COMPLETE).is_file():
            complete.append((int(step), folder))
        else:
            shutil.rmtree(folder)
    return max(complete)[1] if complete else None


def fsync_tree(folder: Path) -> None:
    """Every file of a checkpoint on disk before its marker says it is complete."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def replace_folder(staged: Path, target: Path) -> None:
    """`staged` renamed to `target`; an earlier folder there is moved aside, then gone."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(staged, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def history_of(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per evaluation from the trainer's log: step, train_loss (the mean since the
    previous row), val_loss and val_recall@1."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        row = rows.setdefault(entry.get("step", 0), {"step": entry.get("step", 0)})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
        if "eval_loss" in entry:
            row["val_loss"] = entry["eval_loss"]
            row["val_recall@1"] = entry.get("eval_recall@1")
    return [row for _, row in sorted(rows.items()) if "val_loss" in row]


def diverged(history: list[dict[str, Any]]) -> bool:
    return any(not math.isfinite(row[name]) for row in history
               for name in ("train_loss", "val_loss") if row.get(name) is not None)


def write_metrics(trial_dir: Path, params: dict[str, Any], history: list[dict[str, Any]],
                  status: str, resumed_at: int, started: float) -> None:
    write_json_atomic(trial_dir / METRICS, {
        "status": status, "params": params,
        "steps_done": history[-1]["step"] if history else 0,
        "resumed_at_step": resumed_at, "final": history[-1] if history else None,
        "history": history, "seconds_this_run": round(time.perf_counter() - started, 3),
    })


def _read_params(trial_dir: Path) -> dict[str, Any]:
    try:
        return check_params(json.loads((trial_dir / PARAMS).read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot read {trial_dir / PARAMS}: {exc}") from None


def read_pairs(path: Path, batch_size: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Training and validation pairs as the trainer's columns (anchor, positive)."""
    table = load_pairs(path).to_pydict()
    parts: tuple[dict[str, list[str]], dict[str, list[str]]] = (
        {"anchor": [], "positive": []}, {"anchor": [], "positive": []})
    for query, positive, held in zip(table["query"], table["positive"], table["validation"]):
        parts[held]["anchor"].append(query)
        parts[held]["positive"].append(positive)
    train, validation = parts
    if len(train["anchor"]) < batch_size or len(validation["anchor"]) < 2:
        raise TrainError(f"{path}: {len(train['anchor'])} training and "
                         f"{len(validation['anchor'])} validation pairs; a trial needs at "
                         f"least batch_size ({batch_size}) and 2")
    return train, validation


def run_embedder_trial(trial_dir: Path, pairs: Path, checkpoint_exit_every: int = 0,
                       threads: int = 0) -> int:
    """Train (or resume) one embedder trial; 0 when finished, CHECKPOINT_EXIT_CODE to be
    restarted. `checkpoint_exit_every` > 0 ends the process after that many checkpoints of
    this run; `threads` > 0 sets torch's CPU threads (a restart must use the same number
    for the same weights)."""
    started = time.perf_counter()
    ad = JobAd(f"embedder trial {trial_dir.name}")  # records for the job log, on a pool
    params = _read_params(trial_dir)
    if checkpoint_exit_every < 0:
        raise TrainError(f"checkpoint_exit_every must be >= 0, got {checkpoint_exit_every}")
    done = read_metrics(trial_dir) or {}
    if done.get("status") == "diverged" or (done.get("status") == "completed"
                                            and (trial_dir / MODEL_DIR).is_dir()):
        _clean(trial_dir)  # a run killed while tidying up after it finished
        return 0
    check_model(params["model"])
    train, validation = read_pairs(pairs, params["batch_size"])
    resume = latest_checkpoint(trial_dir)
    resumed_at = int(resume.name.removeprefix(CHECKPOINT_PREFIX)) if resume else 0
    history = history_of(_trainer_log(resume)) if resume else []
    if diverged(history):
        return _finish(trial_dir, params, history, "diverged", resumed_at, started)
    import torch  # here, not at the top: a sweep's POST scripts read this module's names

    if threads > 0:
        torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    trainer, adapter, progress = build_trainer(trial_dir, params, train, validation, ad,
                                               checkpoint_exit_every, resumed_at, started)
    ad.record("ready")
    if resumed_at >= params["max_steps"]:  # trained, killed before the export
        trainer._load_from_checkpoint(str(resume))  # the trainer would take one step more
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if progress.exit:
            return CHECKPOINT_EXIT_CODE
        history = history_of(trainer.state.log_history)
    if progress.diverged or diverged(history):
        return _finish(trial_dir, params, history, "diverged", resumed_at, started)
    export_model(trainer.model, adapter, trial_dir / MODEL_DIR)
    return _finish(trial_dir, params, history, "completed", resumed_at, started)


def _trainer_log(checkpoint: Path) -> list[dict[str, Any]]:
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return state.get("log_history", [])


def _finish(trial_dir: Path, params: dict[str, Any], history: list[dict[str, Any]],
            status: str, resumed_at: int, started: float) -> int:
    write_metrics(trial_dir, params, history, status, resumed_at, started)
    _clean(trial_dir)
    if status == "diverged":  # no model, but the folders a job's output transfer may name
        for folder in (MODEL_DIR, CHECKPOINTS_DIR):
            (trial_dir / folder).mkdir(exist_ok=True)
    return 0


def _clean(trial_dir: Path) -> None:
    """A finished trial keeps params, metrics and its model; checkpoints are spent."""
    for folder in (CHECKPOINTS_DIR, CACHE_DIR, "eval"):
        shutil.rmtree(trial_dir / folder, ignore_errors=True)


def build_trainer(trial_dir: Path, params: dict[str, Any], train: dict[str, list[str]],
                  validation: dict[str, list[str]], ad: JobAd, checkpoint_exit_every: int,
                  resumed_at: int, started: float) -> tuple[Any, Any, Any]:
    """The sentence-transformers trainer of one trial, its LoRA adapter (None: full
    fine-tune), and the callback that marks its checkpoints, writes the metrics and stops the
    trainer (after a checkpoint, or on a NaN loss)."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from transformers import TrainerCallback, set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    set_seed(params["seed"])  # the LoRA matrices' initial values
    model = SentenceTransformer(resolve_model(params["model"]), device="cuda" if cuda else "cpu")
    model.max_seq_length = params["max_seq_length"]
    adapter = add_lora(model, params) if params["adapter"] == "lora" else None
    if params["loss"] == "cached_mnrl":
        loss = CachedMultipleNegativesRankingLoss(model,
                                                  mini_batch_size=params["mini_batch_size"])
    else:
        loss = MultipleNegativesRankingLoss(model)
    steps = params["save_steps"]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(trial_dir / CHECKPOINTS_DIR), max_steps=params["max_steps"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=params["batch_size"], learning_rate=params["lr"],
        warmup_steps=params["warmup_ratio"],  # below 1: a share of max_steps
        weight_decay=params["weight_decay"],
        seed=params["seed"], data_seed=params["seed"], use_cpu=not cuda, report_to=[],
        save_strategy="steps", save_steps=steps, save_total_limit=KEEP_CHECKPOINTS,
        eval_strategy="steps", eval_steps=steps, logging_steps=steps,
        logging_nan_inf_filter=False,  # a NaN loss must show, to end the trial as diverged
        # no text twice in a batch: a title shared by an article's passages is no negative
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        disable_tqdm=True, dataloader_num_workers=0)

    class Progress(TrainerCallback):
        """Marks each checkpoint complete, records it, and stops the trainer when due."""

        def __init__(self) -> None:
            self.saves = 0
            self.exit = self.diverged = False
            self.since = time.time()  # when the step's evaluation and saving began

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= state.max_steps:
                control.should_log = True  # the last row's training loss
            self.since = time.time()

        def on_log(self, args: Any, state: Any, control: Any,
                   logs: dict[str, float] | None = None, **kwargs: Any) -> None:
            if any(not math.isfinite(value) for name, value in (logs or {}).items()
                   if name in ("loss", "eval_loss")):
                self.diverged = True
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = trial_dir / CHECKPOINTS_DIR / f"{CHECKPOINT_PREFIX}{state.global_step}"
            fsync_tree(folder)
            write_json_atomic(folder / COMPLETE, {"step": state.global_step})
            ad.record("checkpoint", started=round(self.since, 3),
                      covers=f"step {state.global_step}")
            write_metrics(trial_dir, params, history_of(state.log_history), "running",
                          resumed_at, started)
            self.saves += 1
            if (checkpoint_exit_every and self.saves % checkpoint_exit_every == 0
                    and state.global_step < state.max_steps and not self.diverged):
                self.exit = True
                control.should_training_stop = True

    progress = Progress()
    trainer = _trainer_class()(
        model=model, args=args, loss=loss, train_dataset=Dataset.from_dict(train),
        eval_dataset=Dataset.from_dict(validation),
        evaluator=recall_evaluator(validation, params["batch_size"]), callbacks=[progress])
    trainer.lora = adapter is not None
    return trainer, adapter, progress


def add_lora(model: Any, params: dict[str, Any]) -> Any:
    """LoRA matrices on the attention query and value modules of the model's transformer;
    every other weight is frozen. Returns the adapter wrapper, which merges them at the end."""
    from peft import LoraConfig, get_peft_model

    for weight in model.parameters():
        weight.requires_grad_(False)
    config = LoraConfig(r=params["lora_r"], lora_alpha=params["lora_alpha"],
                        lora_dropout=params["lora_dropout"], target_modules=LORA_TARGETS)
    try:
        # adapts the transformer in place: the sentence-transformers model trains it as it is
        return get_peft_model(model[0].auto_model, config)
    except ValueError as exc:
        raise TrainError(f"adapter lora: model {params['model']!r} has no "
                         f"{'/'.join(LORA_TARGETS)} modules to adapt ({exc})") from None


def _trainer_class() -> type:
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformerTrainer

    class Trainer(SentenceTransformerTrainer):
        """Resumes a LoRA trial by loading its checkpoint's weights into the adapted model
        (the library's loader rebuilds a plain model from the folder, without the adapter)."""

        lora = False

        def _load_from_checkpoint(self, checkpoint_path: str, model: Any = None) -> None:
            if not self.lora:
                return super()._load_from_checkpoint(checkpoint_path)
            weights = load_file(Path(checkpoint_path) / "model.safetensors")
            self.model[0].auto_model.load_state_dict(weights)

    return Trainer


def recall_evaluator(validation: dict[str, list[str]], batch_size: int) -> Any:
    """`recall@1` on the validation pairs: the share of queries whose top passage, by cosine
    among all validation passages, is one of their own (a title paired with several passages
    of its article counts any of them)."""
    import torch
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

    queries = sorted(set(validation["anchor"]))
    passages = sorted(set(validation["positive"]))
    index = {text: i for i, text in enumerate(passages)}
    relevant = torch.zeros(len(queries), len(passages), dtype=torch.bool)
    row = {text: i for i, text in enumerate(queries)}
    for query, passage in zip(validation["anchor"], validation["positive"]):
        relevant[row[query], index[passage]] = True

    class RecallAtOne(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = "recall@1"

        def __call__(self, model: Any, output_path: str | None = None, epoch: float = -1,
                     steps: int = -1) -> dict[str, float]:
            encode = dict(batch_size=batch_size, convert_to_tensor=True,
                          normalize_embeddings=True, show_progress_bar=False)
            scores = model.encode(queries, **encode) @ model.encode(passages, **encode).T
            top = scores.argmax(dim=1).cpu()
            return {"recall@1": float(relevant[torch.arange(len(queries)), top].float().mean())}

    return RecallAtOne()


def export_model(model: Any, adapter: Any, folder: Path) -> None:
    """The trained model as a plain sentence-transformers folder, written whole or not at
    all (a temporary folder renamed into place); LoRA is merged into the weights first."""
    if adapter is not None:
        adapter.merge_and_unload()  # in place: the model's transformer loses its adapter
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    fsync_tree(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.train.embedder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial-dir", type=Path, required=True)
    parser.add_argument("--pairs", required=True,
                        help="the pairs file (Parquet), or its URL with --data-source cache")
    parser.add_argument("--data-source", choices=PAIRS_SOURCES, default="transfer",
                        help="transfer: the file HTCondor brought; cache: fetch the URL once "
                             "into the trial's cache/ folder")
    parser.add_argument("--checkpoint-exit-every", type=int, default=0, metavar="CHECKPOINTS",
                        help="exit with code 85 after this many checkpoints (to be restarted)")
    parser.add_argument("--stop-at-rung", action="store_true",
                        help="exit 0, not 85, after --checkpoint-exit-every checkpoints: an "
                             "optuna wave's job stops at its rung (DAGMan takes any other "
                             "exit as a failure and removes the rest of the wave)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def trial() -> int:
        pairs = Path(args.pairs)
        if args.data_source == "cache":
            pairs = cached(federation_source(args.pairs, "cache", "--pairs"), args.trial_dir)
        return rung_exit(run_embedder_trial(args.trial_dir, pairs, args.checkpoint_exit_every,
                                            args.threads), args.stop_at_rung)

    return run_command("submit.train.embedder", trial)


if __name__ == "__main__":
    sys.exit(main())
