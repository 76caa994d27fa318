"""Embedder trials on a tiny BERT: resume after a kill or a checkpoint exit ends with the same
weights as an unbroken run (full and LoRA), divergence, bad params, the exported model."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from safetensors.torch import load_file
from tiny_models import tiny_embedder

from inference.config import ModelConfig
from inference.embed import Encoder
from inference.models import ModelError, check_model
from submit.train import TrainError
from submit.train.embedder import (
    CHECKPOINT_EXIT_CODE,
    COMPLETE,
    MODEL_DIR,
    check_params,
    run_embedder_trial,
)
from submit.train.pairs import make_pairs, save_pairs

SHORT = {"max_steps": 12, "save_steps": 4, "batch_size": 8, "lr": 1e-3, "max_seq_length": 32}


@pytest.fixture(autouse=True)
def one_thread():
    """Trials here run on one CPU thread (`threads=1`, `--threads 1`): the same number in
    every run of a trial, whatever else the machine runs; torch's setting is put back after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_embedder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embedder")
    run_cli("partition", "--demo", "--workdir", str(folder / "run"),
            "--set", "shards.passages_per_shard=30", "--set", "predictions.kind=none")
    save_pairs(make_pairs(folder / "run", "ict", val_fraction=0.2), folder / "pairs.parquet")
    return folder / "pairs.parquet"


def trial(folder: Path, tiny: Path, **params) -> Path:
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"model": str(tiny), **params}))
    return folder


def train(trial_dir: Path, pairs: Path, every: int = 0) -> int:
    """One run of the trial in this process (what the job runs), on one thread."""
    return run_embedder_trial(trial_dir, pairs, checkpoint_exit_every=every, threads=1)


def weights(trial_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(trial_dir / MODEL_DIR / "model.safetensors")


def metrics(trial_dir: Path) -> dict:
    return json.loads((trial_dir / "metrics.json").read_text())


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert metrics(a)["history"] == metrics(b)["history"]


def job(trial_dir: Path, pairs: Path, *extra: str) -> subprocess.Popen:
    """The trial as a pool job runs it, in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "submit.train.embedder", "--trial-dir", str(trial_dir),
         "--pairs", str(pairs), "--threads", "1", *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_checkpoint_exits_resume_to_the_same_weights(tmp_path, tiny, pairs, adapter):
    params = {**SHORT, "adapter": adapter, "lora_r": 4}
    unbroken = trial(tmp_path / "unbroken", tiny, **params)
    assert train(unbroken, pairs) == 0
    stepped = trial(tmp_path / "stepped", tiny, **params)
    codes = []
    while not codes or codes[-1] == CHECKPOINT_EXIT_CODE:
        codes.append(train(stepped, pairs, every=1))
        if codes[-1] == CHECKPOINT_EXIT_CODE:  # stopped right after a complete checkpoint
            assert metrics(stepped)["status"] == "running"
    assert codes == [CHECKPOINT_EXIT_CODE, CHECKPOINT_EXIT_CODE, 0]
    assert_same_weights(unbroken, stepped)
    done = metrics(stepped)
    assert done["status"] == "completed" and done["resumed_at_step"] == 8
    assert [row["step"] for row in done["history"]] == [4, 8, 12]
    assert set(done["final"]) == {"step", "train_loss", "val_loss", "val_recall@1"}
    assert sorted(p.name for p in stepped.iterdir()) == ["metrics.json", "model", "params.json"]
    assert train(stepped, pairs) == 0  # a finished trial stays finished


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_a_trial_killed_at_a_random_moment_ends_with_the_same_weights(tmp_path, tiny, pairs,
                                                                      adapter):
    params = {**SHORT, "max_steps": 24, "adapter": adapter, "lora_r": 4}
    unbroken = trial(tmp_path / "unbroken", tiny, **params)
    began = time.monotonic()
    assert train(unbroken, pairs) == 0
    took = time.monotonic() - began
    killed = trial(tmp_path / "killed", tiny, **params)
    proc = job(killed, pairs)
    deadline = time.monotonic() + 120
    while not list(killed.glob("checkpoints/checkpoint-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the trial never saved a checkpoint"
        time.sleep(0.005)
    delay = random.uniform(0.0, 0.5) * took  # from inside the first save to the middle
    time.sleep(delay)
    assert proc.poll() is None, "the trial ended before it was killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in killed.glob("checkpoints/checkpoint-*"))
    assert train(killed, pairs) == 0, f"killed {delay:.3f} s in, left {left}"
    assert_same_weights(unbroken, killed)


@pytest.mark.slow
def test_a_trial_killed_between_its_last_checkpoint_and_the_export(tmp_path, tiny, pairs):
    params = {**SHORT, "adapter": "lora", "lora_r": 4}
    unbroken = trial(tmp_path / "unbroken", tiny, **params)
    assert train(unbroken, pairs) == 0
    killed = trial(tmp_path / "killed", tiny, **params)
    proc = job(killed, pairs)
    last = killed / "checkpoints" / "checkpoint-12" / COMPLETE
    while not last.is_file():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / MODEL_DIR).exists()
    assert train(killed, pairs) == 0
    assert_same_weights(unbroken, killed)


def test_a_half_written_checkpoint_is_not_resumed(tmp_path, tiny, pairs):
    params = {**SHORT, "max_steps": 8}
    unbroken = trial(tmp_path / "unbroken", tiny, **params)
    assert train(unbroken, pairs) == 0
    broken = trial(tmp_path / "broken", tiny, **params)
    assert train(broken, pairs, every=1) == CHECKPOINT_EXIT_CODE
    # what a kill during the next save leaves: no marker
    half = broken / "checkpoints" / "checkpoint-8"
    half.mkdir()
    (half / "trainer_state.json").write_text('{"global_step": 8, "log_his')
    assert (broken / "checkpoints" / "checkpoint-4" / COMPLETE).is_file()
    assert train(broken, pairs) == 0
    assert_same_weights(unbroken, broken)


def test_the_job_exits_85_after_each_checkpoint_and_2_on_bad_params(tmp_path, tiny, pairs):
    folder = trial(tmp_path / "job", tiny, **{**SHORT, "max_steps": 8})
    first = job(folder, pairs, "--checkpoint-exit-every", "1")
    assert first.wait(timeout=300) == CHECKPOINT_EXIT_CODE, first.stderr.read()
    assert [p.name for p in folder.glob("checkpoints/checkpoint-*")] == ["checkpoint-4"]
    bad = trial(tmp_path / "bad", tiny, lr=-1)
    proc = job(bad, pairs)
    assert proc.wait(timeout=300) == 2
    assert proc.stderr.read().strip().splitlines() == [
        "submit.train.embedder: error: hyperparameters lr must be > 0 and weight_decay >= 0"]


@pytest.mark.parametrize("params, message", [
    ({"epochs": 3}, "unknown hyperparameter 'epochs'"),
    ({"adapter": "qlora"}, "adapter must be one of none, lora"),
    ({"loss": "triplet"}, "loss must be one of mnrl, cached_mnrl"),
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"max_steps": 2.5}, "max_steps must be an integer"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"warmup_ratio": 1.0}, "warmup_ratio and lora_dropout must be in"),
    ({"model": ""}, "model must be a non-empty string"),
])
def test_bad_params_are_one_line(params, message):
    with pytest.raises(TrainError, match=message) as caught:
        check_params(params)
    assert "\n" not in str(caught.value)


def test_bad_pairs_and_models_are_one_line(tmp_path, tiny, pairs):
    folder = trial(tmp_path / "big-batch", tiny, **{**SHORT, "batch_size": 512})
    with pytest.raises(TrainError, match=r"training and \d+ validation pairs; a trial needs"):
        train(folder, pairs)
    folder = trial(tmp_path / "no-model", tiny, model=str(tmp_path / "nowhere" / "x"))
    with pytest.raises(ModelError, match="nowhere"):
        train(folder, pairs)


def test_a_nan_loss_ends_the_trial_as_diverged(tmp_path, tiny, pairs):
    folder = trial(tmp_path / "nan", tiny, **{**SHORT, "lr": 1e30})
    assert train(folder, pairs) == 0
    done = metrics(folder)
    assert done["status"] == "diverged" and done["steps_done"] == 4
    assert not any((folder / MODEL_DIR).iterdir())  # no model: an empty folder
    assert not list(folder.glob("checkpoints/checkpoint-*"))
    assert train(folder, pairs) == 0


def test_the_model_loads_as_the_project_embeds_with_it(tmp_path, tiny, pairs):
    folder = trial(tmp_path / "export", tiny, **{**SHORT, "max_steps": 4, "adapter": "lora"})
    assert train(folder, pairs) == 0
    model = folder / MODEL_DIR
    assert check_model(str(model))["model_type"] == "bert"
    assert not any("lora" in name for name in weights(folder))  # merged
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(model), device="cpu").encode(["a query"]).shape == (1, 32)
    encoder = Encoder(ModelConfig(name=str(model), device="cpu"), runtime="torch")
    assert encoder.encode_texts(["a query", "a passage"]).shape == (2, 32)
