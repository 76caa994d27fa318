"""One trial: train a head with fixed hyperparameters, checkpointing at every epoch boundary.

A trial directory holds `params.json` (input), `checkpoint.pt` (the latest finished epoch,
replaced atomically), `metrics.json` (per-epoch history and status) and, once finished,
`model.pt` (the head in `infer-corpus.head` format). A trial killed at any moment and started
again resumes after its latest checkpoint, and ends with the same weights as an uninterrupted
run: each epoch's randomness (shuffling, dropout) is seeded from the trial seed and the epoch,
whichever way the trial reads its dataset (`open_dataset`). A trial that finishes
removes its fetched copy of the dataset (`cache/`).

torch loads in the functions that train: what only reads a trial's files (a DAG's POST
scripts judging and ranking the trials) does without it, importing in 87 MB and 0.3 s against
276 MB and 1.5 s.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.workdir import atomic_path, write_json_atomic

from ..chirp import JobAd
from . import TrainError
from .data import CACHE_DIR, Batch, Dataset, cached, federation_source, load_dataset
from .heads import HEAD_KINDS, build_head, export_head

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .streamed import StreamedDataset

CHECKPOINT_EXIT_CODE = 85  # "checkpoint written, restart me": HTCondor's checkpoint_exit_code
PARAMS = "params.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
MODEL = "model.pt"

DEFAULTS: dict[str, Any] = {
    "head": "linear", "hidden": 64, "dropout": 0.0, "lr": 0.01, "weight_decay": 0.0,
    "epochs": 10, "batch_size": 32, "optimizer": "adam", "seed": 0,
}
OPTIMIZERS = ("adam", "sgd")


def rung_exit(code: int, stop_at_rung: bool) -> int:
    """A trial process's exit code: with `stop_at_rung` (an optuna wave's job, which ends at
    its rung), 0 for a stop at the checkpoint, since DAGMan takes any non-zero exit of a
    wave's job as a failure and removes the wave's other jobs."""
    return 0 if stop_at_rung and code == CHECKPOINT_EXIT_CODE else code


def typed_params(params: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`params` with `defaults` filled in, each of its default's type (an int counts as a
    float); unknown names and values of another type are errors. Every trial kind's check
    starts here."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TrainError(f"unknown hyperparameter {unknown[0]!r} "
                         f"(known: {', '.join(sorted(defaults))})")
    out = {**defaults, **params}
    for name, default in defaults.items():
        value = out[name]
        if isinstance(default, str) and not (isinstance(value, str) and value.strip()):
            raise TrainError(f"hyperparameter {name} must be a non-empty string, got {value!r}")
        if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise TrainError(f"hyperparameter {name} must be an integer, got {value!r}")
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TrainError(f"hyperparameter {name} must be a number, got {value!r}")
            out[name] = float(value)
    return out


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; unknown names and out-of-range values are errors."""
    out = typed_params(params, DEFAULTS)
    if out["head"] not in HEAD_KINDS:
        raise TrainError(f"hyperparameter head must be one of {', '.join(HEAD_KINDS)}")
    if out["optimizer"] not in OPTIMIZERS:
        raise TrainError(f"hyperparameter optimizer must be one of {', '.join(OPTIMIZERS)}")
    if out["epochs"] < 1 or out["batch_size"] < 1 or out["hidden"] < 1 or out["lr"] <= 0:
        raise TrainError("epochs, batch_size and hidden must be >= 1 and lr > 0")
    if not 0.0 <= out["dropout"] < 1.0 or out["weight_decay"] < 0:
        raise TrainError("dropout must be in [0, 1) and weight_decay >= 0")
    return out


def open_dataset(dataset: str, data_source: str, trial_dir: Path) -> Dataset | StreamedDataset:
    """A trial's dataset by its data source: `dataset` is the local file (transfer) or the
    dataset's federation URL (stream, cache)."""
    if data_source == "transfer":
        return load_dataset(Path(dataset))
    federation_source(dataset, data_source, "--dataset")
    if data_source == "stream":
        from .streamed import StreamedDataset

        return StreamedDataset(dataset)
    return load_dataset(cached(dataset, trial_dir))


def make_model(params: dict[str, Any], dim: int, classes: int) -> nn.Module:
    import torch

    torch.manual_seed(params["seed"])
    return build_head(params["head"], dim, classes, params["hidden"], params["dropout"])


def make_optimizer(params: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    import torch

    if params["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=0.9,
                               weight_decay=params["weight_decay"])
    return torch.optim.Adam(model.parameters(), lr=params["lr"],
                            weight_decay=params["weight_decay"])


def epoch_generator(params: dict[str, Any], epoch: int) -> torch.Generator:
    """Everything random in an epoch derives from (seed, epoch), so resuming changes nothing."""
    import torch

    seed = params["seed"] * 1_000_003 + epoch
    torch.manual_seed(seed)  # dropout
    return torch.Generator().manual_seed(seed)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                batches: Iterable[Batch]) -> float:
    """One pass over the epoch's batches; the mean training loss per row."""
    from torch import nn

    model.train()
    total, rows = 0.0, 0
    for x, y in batches:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        rows += len(y)
    return total / rows


def evaluate(model: nn.Module, chunks: Iterable[Batch]) -> dict[str, float]:
    """Loss and accuracy over the validation rows, given in chunks (streamed, or at once)."""
    import torch
    from torch import nn

    model.eval()
    loss, correct, rows = 0.0, 0, 0
    with torch.no_grad():
        for x, y in chunks:
            logits = model(x)
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            rows += len(y)
    return {"val_loss": loss / rows, "val_accuracy": correct / rows}


def read_metrics(trial_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((trial_dir / METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_trial(trial_dir: Path, dataset: str | Path, checkpoint_exit_every: int | str = 0,
              threads: int = 1, mean_time_between_evictions: float = 0.0,
              data_source: str = "transfer") -> int:
    """Train (or resume) one trial; returns 0 when finished, CHECKPOINT_EXIT_CODE to be restarted.

    `dataset` is the dataset file (`data_source` transfer) or its federation URL (stream,
    cache). `checkpoint_exit_every` > 0 ends the process after that many epochs of this run,
    so a batch system can store the checkpoint and restart the trial (possibly elsewhere);
    `auto` chooses that number after this run's first epoch (`auto_interval`).
    """
    import torch

    started = time.perf_counter()
    ad = JobAd(f"trial {trial_dir.name}")  # records for the job log, when run on a pool
    try:
        params = check_params(json.loads((trial_dir / PARAMS).read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot read {trial_dir / PARAMS}: {exc}") from None
    data = open_dataset(str(dataset), data_source, trial_dir)
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True)
    model = make_model(params, data.dim, len(data.classes))
    optimizer = make_optimizer(params, model)
    history: list[dict[str, float]] = []
    first_epoch = 1
    if (trial_dir / CHECKPOINT).is_file():
        state = torch.load(trial_dir / CHECKPOINT, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        first_epoch = state["epoch"] + 1
        status = state["status"]
    else:
        status = "running"
    ad.record("ready")
    setup = time.time() - ad.started  # what each restart in place pays again
    every = checkpoint_exit_every
    # what an earlier run of this trial measured (metrics.json travels with the checkpoint)
    costs = (read_metrics(trial_dir) or {}).get("costs") if first_epoch > 1 else None
    if every == "auto" and costs:
        every = auto_interval(ad, costs["epoch_seconds"], costs["checkpoint_seconds"],
                              mean_time_between_evictions, "an earlier run")
    for epoch in range(first_epoch, params["epochs"] + 1 if status == "running" else 0):
        epoch_began = time.time()
        loss = train_epoch(model, optimizer,
                           data.batches(epoch_generator(params, epoch), params["batch_size"]))
        history.append({"epoch": epoch, "train_loss": loss, **evaluate(model, data.validation())})
        finished = epoch == params["epochs"] or not math.isfinite(loss)
        if not math.isfinite(loss):
            status = "diverged"
        elif finished:
            status = "completed"
        writing = time.time()
        with atomic_path(trial_dir / CHECKPOINT) as tmp:
            torch.save({"epoch": epoch, "status": status, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "history": history}, tmp)
        ad.record("checkpoint", started=round(writing, 3), covers=f"epoch {epoch}")
        if finished:
            break
        if costs is None:  # this run's first epoch
            costs = {"epoch_seconds": round(writing - epoch_began, 3),
                     "checkpoint_seconds": round(time.time() - writing + setup, 3)}
        write_metrics(trial_dir, params, history, status, first_epoch, started, costs)
        if every == "auto":
            every = auto_interval(ad, costs["epoch_seconds"], costs["checkpoint_seconds"],
                                  mean_time_between_evictions, "the first epoch")
        if every and (epoch - first_epoch + 1) % every == 0:
            return CHECKPOINT_EXIT_CODE
    if status == "completed" and history:
        final = {k: v for k, v in history[-1].items() if k != "epoch"}
        export_head(model, data.classes, data.embedding_model, final, trial_dir / MODEL)
    write_metrics(trial_dir, params, history, status, first_epoch, started, costs)
    shutil.rmtree(trial_dir / CACHE_DIR, ignore_errors=True)
    return 0


def auto_interval(ad: JobAd, epoch_seconds: float, checkpoint_seconds: float,
                  mean_seconds: float, measured_on: str) -> int:
    """Epochs per run from an epoch's time and what a checkpoint costs (writing it plus the
    setup a restart repeats; HTCondor's upload is not seen from here), as `measured_on` (an
    earlier run of the trial, else this run's first epoch), against the pool's mean time
    between evictions (`submit.preemption.auto_units`). Without a usable measure it falls
    back to every epoch, and says so. The choice goes to stderr and into the job's log."""
    from ..preemption import PolicyError, auto_units

    try:
        every = auto_units(epoch_seconds, checkpoint_seconds, mean_seconds)
    except PolicyError as exc:
        print(f"{ad.label}: checkpoint_every auto: no usable measure ({exc}); checkpointing "
              "every epoch", file=sys.stderr)
        ad.record("policy", checkpoint_every=1, fallback=True)
        return 1
    print(f"{ad.label}: checkpoint_every auto: every {every or 'no'} epoch(s) (epoch "
          f"{epoch_seconds:.1f} s, checkpoint {checkpoint_seconds:.1f} s, measured on "
          f"{measured_on}; mean time between evictions {mean_seconds:g} s)", file=sys.stderr)
    ad.record("policy", checkpoint_every=every, epoch_seconds=round(epoch_seconds, 3),
              checkpoint_seconds=round(checkpoint_seconds, 3), mean_seconds=mean_seconds,
              measured_on=measured_on)
    return every


def write_metrics(trial_dir: Path, params: dict[str, Any], history: list[dict[str, float]],
                  status: str, resumed_at: int, started: float,
                  costs: dict[str, float] | None = None) -> None:
    """`costs`: an epoch's and a checkpoint's seconds as measured (for `auto`)."""
    write_json_atomic(trial_dir / METRICS, {
        "status": status, "params": params,
        "epochs_done": history[-1]["epoch"] if history else 0,
        "resumed_at_epoch": resumed_at, "final": history[-1] if history else None,
        "history": history, "seconds_this_run": round(time.perf_counter() - started, 3),
        "costs": costs,
    })
