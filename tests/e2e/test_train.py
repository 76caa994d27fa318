"""Training mode: sweeps, resumable trials, early abort, reports, and the trained head in use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import last_json, run_cli

from submit.train.streamed import STREAM_WORKERS

ROOT = Path(__file__).resolve().parents[2]


def train_cli(*args: str, check: bool = True, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """Run `train-models` as a user would, in a separate process."""
    proc = subprocess.run([sys.executable, "-m", "submit.train.cli", *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"train-models {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def write_spec(path: Path, **overrides) -> Path:
    spec = {"name": path.stem, "base": {"epochs": 3, "batch_size": 16},
            "params": {"head": ["linear", "mlp"], "hidden": [16]}, "seeds": [0, 1],
            "parallel": 2, **overrides}
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def dataset(demo_run, tmp_path_factory) -> Path:
    from inference.workdir import Workdir
    from submit.train.data import read_workdir, save_dataset

    path = tmp_path_factory.mktemp("data") / "dataset.parquet"
    save_dataset(read_workdir(Workdir(demo_run[0]), 0.25), path)
    return path


@pytest.fixture(scope="module")
def federation(dataset, tmp_path_factory):
    """The demo dataset in row groups of 16 rows (several row groups of training rows, so
    that each DataLoader worker reads a few) in a local Pelican federation, as
    `small.parquet`."""
    from pelican_federation import Federation

    from submit.train.data import load_dataset, save_dataset

    origin = tmp_path_factory.mktemp("origin")
    save_dataset(load_dataset(dataset), origin / "small.parquet", row_group_rows=16)
    with Federation(origin) as fed:
        yield fed


def test_sweep_runs_locally_ranks_trials_and_draws_report(demo_run, tmp_path):
    workdir = demo_run[0]
    spec = write_spec(tmp_path / "four-trials.yaml")
    summary = last_json(train_cli("sweep", str(spec), "--workdir", str(workdir), "--json").stdout)
    assert summary["trials"] == 4 and summary["completed"] == 4
    best = summary["best"]
    assert best["metric"] == "val_accuracy" and best["trial"].startswith("t")
    assert 0.8 <= best["value"] <= 1.0  # five well-separated topics
    sweep_dir = workdir / "train" / "four-trials"
    results = json.loads((sweep_dir / "results.json").read_text())
    values = [r["value"] for r in results["ranking"]]
    assert values == sorted(values, reverse=True) and values[0] == best["value"]
    assert set(results["groups"]) == {"c0", "c1"}  # two configurations x two seeds
    head = torch.load(best["model"], weights_only=True)
    assert head["format"] == "infer-corpus.head" and len(head["classes"]) == 5
    # a finished sweep run again does nothing and gives the same answer
    again = last_json(train_cli("sweep", str(spec), "--workdir", str(workdir), "--json").stdout)
    assert again["best"] == best

    lines = train_cli("report", "--workdir", str(workdir), "--sweep", "four-trials"
                      ).stdout.strip().splitlines()
    png = Path(lines[-1])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # trials named by what differs across the sweep, best first and starred, ids beside
    label = f"head={best['params']['head']} seed={best['params']['seed']}"
    assert lines[2].startswith(f"* {label} ") and lines[2].endswith(f"  {best['trial']}")
    assert sum(line.startswith("* head=") for line in lines) == 1
    report = last_json(train_cli("report", "--workdir", str(workdir), "--sweep", "four-trials",
                                 "--json").stdout)
    assert report["best"]["label"] == label and len(report["ranking"]) == 4
    assert {c["label"]: c["seeds"] for c in report["configurations"]} == {
        "head=linear": 2, "head=mlp": 2}
    # a head needs no promotion: the command says where the best one is and how to use it
    proc = train_cli("promote", "--workdir", str(workdir), "--sweep", "four-trials")
    assert proc.stdout.count("\n") == 1 and str(sweep_dir / "best-model.pt") in proc.stdout
    assert "--set predictions.kind=head --set predictions.model=" in proc.stdout


def _trial_dir(tmp_path: Path, name: str) -> Path:
    trial = tmp_path / name
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps(
        {"head": "mlp", "hidden": 16, "dropout": 0.3, "epochs": 5, "batch_size": 8, "seed": 7}))
    return trial


KILL_AFTER_EPOCH_2 = """
import os, signal, sys, contextlib, torch
from pathlib import Path
import submit.train.trial as trial

real_atomic_path = trial.atomic_path

@contextlib.contextmanager
def atomic_path_then_kill(final):
    with real_atomic_path(final) as tmp:
        yield tmp
    if final.name == "checkpoint.pt" and torch.load(final, weights_only=True)["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)

trial.atomic_path = atomic_path_then_kill
sys.exit(trial.run_trial(Path(sys.argv[1]), sys.argv[2], data_source=sys.argv[3]))
"""


@pytest.mark.parametrize("mode", ["transfer", "stream"])
def test_trial_killed_after_epoch_2_resumes_at_3_with_identical_weights(dataset, federation,
                                                                        mode, tmp_path):
    """Killed at once after a checkpoint, then restarted with exit 85 in between: the same
    weights as one unbroken run. Streamed, each epoch reads the row groups in its own order,
    and the last run's reads are cut short twice (the footer, then a row group): the reads
    start again where they were cut, and nothing changes."""
    source = str(dataset) if mode == "transfer" else federation.url("small.parquet")
    env = {"SSL_CERT_FILE": str(federation.ca_path)}
    trial_args = ["--dataset", source, "--data-source", mode]
    whole = _trial_dir(tmp_path, "whole")
    train_cli("trial", "--trial-dir", str(whole), *trial_args, env=env)

    killed = _trial_dir(tmp_path, "killed")
    with open(tmp_path / "killed.err", "wb") as err:  # not a pipe: orphaned readers keep it
        proc = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_2, str(killed), source,
                               mode], cwd=ROOT, stderr=err, timeout=300,
                              env={**os.environ, **env})
    assert proc.returncode == -9, (tmp_path / "killed.err").read_text()
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert not (killed / "model.pt").exists()
    # restarted the way HTCondor restarts a checkpointing job: exit 85 after two more epochs
    proc = train_cli("trial", "--trial-dir", str(killed), *trial_args,
                     "--checkpoint-exit-every", "2", check=False, env=env)
    assert proc.returncode == 85, proc.stderr
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["resumed_at_epoch"] == 3 and metrics["epochs_done"] == 4
    if mode == "stream":  # the last run's reads cut short: the footer's, then a row group's
        federation.log.clear()
        federation.faults.cut_body(after=1000, times=2, path="small.parquet")
    train_cli("trial", "--trial-dir", str(killed), *trial_args, env=env)
    if mode == "stream":
        gets = federation.log.gets_for("small.parquet")
        cut = [g for g in gets if g.served and g.bytes_sent < g.served[1] - g.served[0] + 1]
        assert len(cut) == 2, gets
        # one discovery per process: the trial's and its DataLoader workers'
        assert federation.log.discoveries() == 1 + STREAM_WORKERS

    metrics = json.loads((killed / "metrics.json").read_text())
    reference = json.loads((whole / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_at_epoch"] == 5
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4, 5]
    assert metrics["history"] == reference["history"]
    a = torch.load(whole / "model.pt", weights_only=True)["layers"]
    b = torch.load(killed / "model.pt", weights_only=True)["layers"]
    assert all(torch.equal(x["weight"], y["weight"]) and torch.equal(x["bias"], y["bias"])
               for x, y in zip(a, b, strict=True))


def _fake_sweep(root: Path, finals: list[dict | None], **early_stop) -> Sweep:  # noqa: F821
    from dataclasses import asdict

    from inference.workdir import write_json_atomic
    from submit.train.sweep import EarlyStop, Sweep, SweepSpec

    spec = SweepSpec(name="fake", early_stop=EarlyStop(**early_stop))
    write_json_atomic(root / "spec.json", asdict(spec))
    write_json_atomic(root / "trials.json", [
        {"trial": f"t{i:03d}", "group": f"c{i}", "ablation": None, "params": {}}
        for i in range(len(finals))])
    for i, metrics in enumerate(finals):
        if metrics is not None:
            write_json_atomic(root / "trials" / f"t{i:03d}" / "metrics.json", metrics)
    return Sweep(root)


def _metrics(status: str, losses: list[float], accuracy: float) -> dict:
    history = [{"epoch": e + 1, "train_loss": loss, "val_loss": loss, "val_accuracy": accuracy}
               for e, loss in enumerate(losses)]
    return {"status": status, "history": history, "final": history[-1]}


def test_early_abort_decisions_and_exit_codes(tmp_path):
    from submit.train.cli import main
    from submit.train.sweep import evaluate

    good = _metrics("completed", [1.5, 0.4], 0.85)
    blown = _metrics("completed", [1.0, 50.0], 0.2)  # loss grew 50x: diverged
    nan = _metrics("diverged", [1.0, float("nan")], 0.2)
    sweep = _fake_sweep(tmp_path / "a", [good, None, blown], target=0.9, max_diverged=2)
    assert evaluate(sweep)["action"] == "continue"
    assert main(["evaluate", "--sweep-dir", str(sweep.root)]) == 0

    sweep = _fake_sweep(tmp_path / "b", [good, blown, nan], target=0.9, max_diverged=2)
    decision = evaluate(sweep)
    assert decision["code"] == 4 and decision["diverged"] == 2 and "diverged" in decision["reason"]
    assert main(["evaluate", "--sweep-dir", str(sweep.root)]) == 4

    sweep = _fake_sweep(tmp_path / "c", [good, _metrics("completed", [1.0, 0.1], 0.95)],
                        target=0.9)
    assert main(["evaluate", "--sweep-dir", str(sweep.root)]) == 3
    assert json.loads((sweep.root / "evaluation.json").read_text())["best"] == 0.95
    # as a DAG's POST scripts run them, many at once on a shared access point: torch, which
    # would take 1.2 s and 190 MB more each, stays unloaded
    (sweep.root / "trials" / "t001" / "model.pt").write_bytes(b"the best trial's head")
    for command, code in (("evaluate", 3), ("collect", 0)):
        proc = subprocess.run([sys.executable, "-c", (
            "import sys; from submit.train.cli import main; "
            f"code = main([{command!r}, '--sweep-dir', {str(sweep.root)!r}]); "
            "assert 'torch' not in sys.modules, 'torch was loaded'; sys.exit(code)")],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == code, proc.stderr


def test_local_sweep_stops_early_when_the_target_is_reached(demo_run, tmp_path):
    spec = write_spec(tmp_path / "stop-early.yaml", parallel=1,
                      params={"head": ["linear", "mlp", "linear"], "lr": [0.01]}, seeds=[0],
                      early_stop={"target": 0.0})
    proc = train_cli("sweep", str(spec), "--workdir", str(demo_run[0]), "--json")
    summary = last_json(proc.stdout)
    assert summary["trials"] == 3 and summary["completed"] == 1
    assert "reached the target" in summary["stopped_early"] and summary["best"]["trial"] == "t000"


def test_bad_specs_are_one_line_errors(demo_run, tmp_path, capsys):
    from submit.train.cli import main

    cases = {"unknown key": {"name": "x", "params": {"lr": [0.1]}, "colour": 1},
             "unknown hyperparameter": {"name": "x", "params": {"learning_rate": [0.1]}},
             "random needs samples": {"name": "x", "method": "random", "params": {"lr": [0.1]}},
             "bad metric": {"name": "x", "metric": "f1"},
             "two kinds of software": {"name": "x", "condor": {
                 "container_image": "docker://example/x:1", "venv_tarball": "osdf:///x.tgz"}},
             "missing venv tarball": {"name": "x", "condor": {"venv_tarball": "no-such.tgz"}},
             "stream without a data URL": {"name": "x", "condor": {"data_source": "stream"}},
             "cache from a web URL": {"name": "x", "condor": {
                 "data_source": "cache", "data_url": "https://example.org/data"}},
             "a data URL that is a path": {"name": "x", "condor": {"data_url": "/data/x"}},
             "an unknown data source": {"name": "x", "condor": {"data_source": "rsync"}},
             "stage_dir without a data URL": {"name": "x", "condor": {"stage_dir": "/data"}}}
    for label, spec in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(json.dumps(spec))
        assert main(["sweep", str(path), "--workdir", str(demo_run[0])]) == 2, label
        err = capsys.readouterr().err
        assert err.startswith("train-models: error: ") and err.count("\n") == 1, label
        assert "data" not in label or "condor.data_url" in err or "rsync" in err, err
    assert not (demo_run[0] / "train" / "x").exists()  # refused before anything was written
    path.write_text(json.dumps({"name": "x", "condor": {
        "data_source": "stream", "data_url": "osdf:///ospool/ap40/data/u"}}))
    assert main(["multinode", str(path), "--workdir", str(demo_run[0]), "--dry-run"]) == 2
    assert "for sweeps" in capsys.readouterr().err
    spec = str(ROOT / "configs" / "sweep-demo.yaml")
    assert main(["sweep", spec, "--workdir", str(tmp_path / "no-run")]) == 2
    assert "infer-corpus" in capsys.readouterr().err


def test_shard_worker_predicts_with_a_trained_head(demo_run, dataset, tmp_path):
    from inference.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="predictions.model is required"):
        load_config(overrides=["predictions.kind=head"])
    from submit.train.data import load_dataset
    from submit.train.heads import export_head
    from submit.train.trial import (
        check_params,
        epoch_generator,
        make_model,
        make_optimizer,
        train_epoch,
    )

    data = load_dataset(dataset)  # a head trained here, as a trial would train it
    params = check_params({"head": "mlp", "hidden": 16, "epochs": 10})
    model = make_model(params, data.dim, len(data.classes))
    optimizer = make_optimizer(params, model)
    for epoch in range(1, params["epochs"] + 1):
        train_epoch(model, optimizer, data.batches(epoch_generator(params, epoch), 8))
    head = tmp_path / "head.pt"
    export_head(model, data.classes, data.embedding_model, {}, head)
    workdir = tmp_path / "work"
    shutil.copytree(demo_run[0], workdir)
    run_cli("run", "--demo", "--workdir", str(workdir), "--set", "shards.passages_per_shard=30",
            "--set", "predictions.kind=head", "--set", f"predictions.model={head}")
    labels, topics, scores = [], [], []
    for result in sorted((workdir / "results").glob("shard-*.parquet")):
        table = pq.read_table(result)
        assert table.schema.metadata[b"predictions"] == b"head"
        labels += table.column("label").to_pylist()
        scores += table.column("label_score").to_pylist()
        topics += pq.read_table(workdir / "shards" / result.name).column("topic").to_pylist()
    assert all(label is not None for label in labels)
    assert np.mean([a == b for a, b in zip(labels, topics)]) >= 0.9
    assert all(0.0 < s <= 1.0 for s in scores)

    # Retraining the head to the same path makes the results stale, so a rerun redoes them.
    from inference.workdir import Workdir

    manifest = Workdir(workdir).manifest()
    config = load_config(overrides=["predictions.kind=head", f"predictions.model={head}"])
    before = manifest.result_key(config)
    head.write_bytes(head.read_bytes() + b"\0")
    assert manifest.result_key(config) != before
