"""Sweeps of embedder trials (`kind: embedder`): the embedding model fine-tuned on pairs of the
workdir's passages, locally and as a sweep DAG on the replay pool, with a tiny model; specs
it cannot run are refused in one line before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from condor_replay import Pool
from tiny_models import tiny_embedder

ROOT = Path(__file__).resolve().parents[2]


def train(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "submit.train.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """A user's folder: the demo corpus partitioned into `run` (a relative workdir) and a
    tiny model to fine-tune."""
    folder = tmp_path_factory.mktemp("embedder-user")
    subprocess.run([sys.executable, "-m", "infer_corpus", "partition", "--demo", "--workdir",
                    "run"], cwd=folder, check=True, capture_output=True, timeout=300)
    tiny_embedder(folder)
    return folder


def spec(user: Path, name: str, **changes: object) -> Path:
    """The demo embedder sweep on the tiny model, shortened; `changes` as "section.key" or
    "key"."""
    data = yaml.safe_load((ROOT / "configs" / "sweep-embedder-demo.yaml").read_text())
    data["name"] = name
    data["base"].update(model=str(user / "tiny-embedder"), max_steps=4, save_steps=2,
                        batch_size=8)
    data["params"] = {"lr": [0.001, 0.0001]}
    data["condor"].update(python=sys.executable, wave_size=1)
    for key, value in changes.items():
        section, _, name_ = key.rpartition(".")
        (data[section] if section else data)[name_] = value
    path = user / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_local_embedder_sweep_ranks_its_trials_and_keeps_the_best_model(user):
    summary = json.loads(train("sweep", str(spec(user, "local")), "--workdir", "run", "--json",
                               cwd=user).stdout.strip().splitlines()[-1])
    assert summary["completed"] == 2 and summary["metric"] == "val_loss"
    best = summary["best"]
    model = user / best["model"]
    assert (model / "modules.json").is_file() and best["value"] > 0
    results = json.loads((user / "run" / "train" / "local" / "results.json").read_text())
    assert [r["value"] for r in results["ranking"]] == sorted(
        r["value"] for r in results["ranking"])  # val_loss: lower is better
    train("report", "--workdir", "run", "--sweep", "local", cwd=user)
    assert (user / "run" / "train" / "local" / "report.png").stat().st_size > 0


@pytest.mark.parametrize("changes, message", [
    ({"base.loss": "triplet"}, "hyperparameter loss must be one of mnrl, cached_mnrl"),
    ({"base.adapter": "qlora"}, "hyperparameter adapter must be one of none, lora"),
    ({"pairs.source": "abstract"}, "pairs.source must be one of title, ict, generated"),
    ({"metric": "val_accuracy"}, "metric of embedder trials must be one of val_recall@1"),
    ({"condor.data_source": "stream", "condor.data_url": "osdf:///ospool/ap40/data/u/x"},
     "embedder trials read their pairs whole"),
    ({"base.model": "no-such-model-folder"}, "params.model: model 'no-such-model-folder'"),
])
def test_specs_embedder_trials_cannot_run_are_refused_before_anything_is_written(
        user, changes, message):
    assert_refused(user, spec(user, "refused", **changes), message)


def assert_refused(user: Path, spec_file: Path, message: str) -> None:
    """A condor dry run of the sweep in `spec_file` (named "refused") exits 2 with `message`
    in one line, and writes nothing."""
    proc = train("sweep", str(spec_file), "--workdir", "run", "--executor", "condor",
                 "--dry-run", cwd=user, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (user / "run" / "train" / "refused").exists()


@pytest.mark.slow
def test_an_embedder_sweep_dag_checkpoints_resumes_and_collects_on_the_pool(user):
    """From a relative workdir: each trial's job exits 85 after its first checkpoint, is
    rescheduled to a fresh sandbox with its checkpoints/ folder, and finishes there; the
    POST script evaluates each wave and the FINAL node ranks the trials."""
    summary = json.loads(train(
        "sweep", str(spec(user, "pool", **{"condor.checkpoint_every": 1})), "--workdir", "run",
        "--executor", "condor", "--dry-run", "--json", cwd=user).stdout.strip().splitlines()[-1])
    dag = user / summary["dag"]  # absolute, or relative to where the user ran the command
    run = Pool(user / "pool", reschedule_after_checkpoint=True).submit_dag(
        "condor_submit_dag sweep.dag", cwd=dag.parent)
    assert run.status == "succeeded", run.summary()
    sweep = user / "run" / "train" / "pool"
    for wave, trial in (("WAVE0", "t000"), ("WAVE1", "t001")):
        starts = run.starts(wave)
        assert [j.exit_code for j in starts] == [85, 0], run.summary()
        assert starts[1].sandbox != starts[0].sandbox
        metrics = json.loads((sweep / "trials" / trial / "metrics.json").read_text())
        # resumed in the fresh sandbox from the checkpoints/ folder HTCondor brought along
        assert metrics["status"] == "completed" and metrics["resumed_at_step"] == 2
        assert (sweep / "trials" / trial / "model" / "modules.json").is_file()
        assert not (sweep / "trials" / trial / "checkpoints").exists()  # spent
    assert run.nodes["COLLECT"].job_return == 0
    results = json.loads((sweep / "results.json").read_text())
    assert results["completed"] == 2 and results["best"]["model"].endswith("/model")


def test_an_embedder_trial_job_caches_its_pairs_once_across_a_restart(user, tmp_path):
    """`--data-source cache`: the trial job fetches its pairs' federation URL once into its
    cache/ folder; restarted in place after its checkpoint exit it reads them from there."""
    from pelican_federation import Federation

    from submit.train.pairs import make_pairs, save_pairs

    origin = tmp_path / "origin"
    origin.mkdir()
    save_pairs(make_pairs(user / "run", "ict", 0.2), origin / "pairs.parquet")
    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps(
        {"model": str(user / "tiny-embedder"), "max_steps": 4, "save_steps": 2,
         "batch_size": 8}))
    with Federation(origin, caches=1) as fed:
        codes = []
        while not codes or codes[-1] == 85:
            codes.append(subprocess.run(
                [sys.executable, "-m", "submit.train.embedder", "--trial-dir", str(trial),
                 "--pairs", fed.url("pairs.parquet"), "--data-source", "cache",
                 "--checkpoint-exit-every", "1"], capture_output=True, text=True, timeout=300,
                env={**os.environ, "SSL_CERT_FILE": str(fed.ca_path),
                     "PYTHONPATH": str(ROOT)}).returncode)
        assert codes == [85, 0]
        assert fed.log.bytes_for("pairs.parquet") == (origin / "pairs.parquet").stat().st_size
    assert json.loads((trial / "metrics.json").read_text())["status"] == "completed"
    assert not (trial / "cache").exists()  # spent with the checkpoints
