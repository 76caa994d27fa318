"""Optuna sweeps (`method: optuna`): trials asked wave by wave from a study in a journal file,
run to a rung, pruned by successive halving; locally, as separate step processes, and as a
DAG on the replay pool (PRE ask, POST evaluate, FINAL collect)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from condor_replay import Pool
from conftest import last_json

ROOT = Path(__file__).resolve().parents[2]


def optuna_spec(path: Path, **changes: object) -> Path:
    """configs/sweep-optuna-demo.yaml made small: 3 epochs (rungs at 1 and 3), 4 trials in
    waves of 2; `changes` as "section.key" or "key"."""
    data = yaml.safe_load((ROOT / "configs" / "sweep-optuna-demo.yaml").read_text())
    data.update(name=path.stem, samples=4, parallel=2)
    data["base"]["epochs"] = 3
    data["optuna"].update(startup_trials=2, min_resource=1)
    data["condor"].update(python=sys.executable, wave_size=2)
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (data[section] if section else data)[name] = value
    path.write_text(yaml.safe_dump(data))
    return path


def train(*args: str, cwd: Path = ROOT, check: bool = True) -> subprocess.CompletedProcess:
    """`train-models` in a process of its own."""
    proc = subprocess.run([sys.executable, "-m", "submit.train.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def here(capsys, *args: str) -> tuple[int, str, str]:
    """`train-models` in this process."""
    from submit.train.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def epochs_trained(sweep: Path) -> int:
    return sum(len(json.loads(p.read_text())["history"])
               for p in sweep.glob("trials/*/metrics.json"))


def test_a_local_optuna_sweep_prunes_trials_and_ranks_the_rest(demo_run, tmp_path, capsys):
    spec = optuna_spec(tmp_path / "local-optuna.yaml", samples=3, **{"condor.wave_size": 3})
    code, out, _ = here(capsys, "sweep", str(spec), "--workdir", str(demo_run[0]), "--json")
    summary = last_json(out)
    assert code == 0 and summary["trials"] == 3 and summary["failed"] == 0
    assert summary["pruned"] >= 1 and summary["completed"] >= 1
    assert summary["completed"] + summary["pruned"] == 3
    sweep = demo_run[0] / "train" / "local-optuna"
    results = json.loads((sweep / "results.json").read_text())
    values = [row["value"] for row in results["ranking"]]
    assert values == sorted(values) and results["best"]["value"] == values[0]  # val_loss
    for row in results["pruned_trials"]:
        metrics = json.loads((sweep / "trials" / row["trial"] / "metrics.json").read_text())
        assert row["status"] == metrics["status"] == "pruned" and row["pruned_at"] == 1
        assert len(metrics["history"]) == 1 and not (sweep / "trials" / row["trial"] /
                                                      "checkpoint.pt").exists()
    assert epochs_trained(sweep) == 3 * summary["completed"] + summary["pruned"]
    study = optuna.load_study(study_name="local-optuna", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "study.journal"))))
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted(["COMPLETE"] * summary["completed"] + ["PRUNED"] * summary["pruned"])
    assert study.best_value == results["best"]["value"]
    # run again: nothing left to run, the same answer
    code, out, _ = here(capsys, "sweep", str(spec), "--workdir", str(demo_run[0]), "--json")
    assert code == 0 and last_json(out)["best"] == summary["best"]


def test_the_steps_as_separate_processes_share_the_journal_and_never_draw_twice(
        demo_run, tmp_path, capsys):
    """ask in one process, evaluate in another, ask again in a third: the study is the
    journal's, and each process's sampler draws from its own sequence (TPE seeded from the
    search seed and the trial number)."""
    from submit.train.search import wave_count
    from submit.train.sweep import Sweep
    from submit.train.trial import run_trial

    spec = optuna_spec(tmp_path / "steps.yaml", **{"optuna.startup_trials": 10})
    code, out, _ = here(capsys, "sweep", str(spec), "--workdir", str(demo_run[0]),
                        "--executor", "condor", "--dry-run", "--json")
    assert code == 0 and last_json(out)["waves"] == [0, 2] and last_json(out)["pending"] == 4
    sweep = Sweep(demo_run[0] / "train" / "steps")
    assert wave_count(sweep.spec()) == 3
    assert (sweep.root / "study.journal").is_file() and sweep.trials() == []

    first = last_json(train("ask", "--sweep-dir", str(sweep.root), "--wave", "0").stdout)
    assert [(i["trial"], i["until"], i["budget"]) for i in first["trials"]] == \
        [("t000", 1, 1), ("t001", 1, 1)]
    for item in first["trials"]:  # each trial's job: its rung's end is a checkpoint exit
        assert run_trial(sweep.trial_dir(item["trial"]), sweep.dataset,
                         checkpoint_exit_every=item["budget"]) == 85
    decision = last_json(train("evaluate", "--sweep-dir", str(sweep.root)).stdout)
    assert decision["code"] == 0
    second = last_json(train("ask", "--sweep-dir", str(sweep.root), "--wave", "1").stdout)
    names = [i["trial"] for i in second["trials"]]
    assert names[-2:] == ["t002", "t003"]  # the new ones, after the survivors
    survivors = names[:-2]
    assert "t000" in survivors  # the first to reach a rung always goes on
    assert all(i["until"] == 3 and i["budget"] == 2 for i in second["trials"][:-2])
    for name in {"t000", "t001"} - set(survivors):
        assert json.loads((sweep.trial_dir(name) / "metrics.json").read_text())["status"] == \
            "pruned"
    params = [t["params"] for t in sweep.trials()]
    assert len(params) == 4
    draws = [(p["head"], p["lr"], p["hidden"], p["weight_decay"]) for p in params]
    assert len(set(draws)) == 4 and len({p["lr"] for p in params}) == 4
    # asking for the same wave again lists the same trials and asks for none
    code, out, _ = here(capsys, "ask", "--sweep-dir", str(sweep.root), "--wave", "1")
    assert code == 0 and last_json(out) == second and len(sweep.trials()) == 4
    code, _, err = here(capsys, "ask", "--sweep-dir", str(sweep.root), "--wave", "3")
    assert code == 2 and "waves 0 to 2" in err

    for item in second["trials"]:
        run_trial(sweep.trial_dir(item["trial"]), sweep.dataset,
                  checkpoint_exit_every=item["budget"])
    code, out, _ = here(capsys, "ask", "--sweep-dir", str(sweep.root), "--wave", "2")
    third = last_json(out)
    for item in third["trials"]:
        assert run_trial(sweep.trial_dir(item["trial"]), sweep.dataset,
                         checkpoint_exit_every=item["budget"]) == 0
    here(capsys, "evaluate", "--sweep-dir", str(sweep.root))
    code, out, _ = here(capsys, "ask", "--sweep-dir", str(sweep.root), "--wave", "2")
    assert code == 5 and last_json(out)["trials"] == []  # nothing left: the DAG's PRE_SKIP
    study = optuna.load_study(study_name="steps", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep.root / "study.journal"))))
    assert all(t.state.is_finished() for t in study.trials) and len(study.trials) == 4


def test_a_pre_skip_value_marks_the_node_done_without_its_job(tmp_path):
    """DAGMan's PRE_SKIP, as the optuna DAG's empty waves use it."""
    from submit.htcondor import Dag, Node, Script, dag_text

    script = tmp_path / "pre.sh"
    script.write_text("#!/bin/sh\nexit $1\n")
    script.chmod(0o755)
    (tmp_path / "job.sub").write_text("executable = /bin/false\nuniverse = local\nqueue\n")
    dag = Dag(nodes=[Node("SKIPPED", "job.sub", pre=Script(str(script), ["5"]), pre_skip=5,
                          post=Script("/bin/false")),
                     Node("FAILS", "job.sub", pre=Script(str(script), ["0"]), pre_skip=5)],
              edges=[(["SKIPPED"], ["FAILS"])])
    (tmp_path / "x.dag").write_text(dag_text(dag))
    assert "PRE_SKIP SKIPPED 5" in (tmp_path / "x.dag").read_text()
    run = Pool(tmp_path / "pool").submit_dag("condor_submit_dag x.dag", cwd=tmp_path)
    assert run.nodes["SKIPPED"].status == "done" and not run.starts("SKIPPED")
    assert [s.when for s in run.scripts if s.node == "SKIPPED"] == ["PRE"]
    assert run.nodes["FAILS"].status == "failed" and run.status == "failed"


@pytest.mark.slow
def test_an_optuna_dag_asks_prunes_and_collects_on_the_pool(demo_run, tmp_path):
    """From a relative workdir: each wave's PRE script asks for its trials and writes the
    wave's submit file, the jobs stop at their rung with exit 85 and come back, the POST
    script prunes and evaluates, survivors resume from their checkpoints in the next wave,
    and the FINAL node ranks the trials."""
    user = tmp_path / "user"
    user.mkdir()
    shutil.copytree(demo_run[0], user / "run", ignore=shutil.ignore_patterns("train"))
    spec = optuna_spec(user / "pool-optuna.yaml", samples=2, **{"base.epochs": 2,
                                                               "optuna.reduction_factor": 2})
    summary = last_json(train("sweep", spec.name, "--workdir", "run", "--executor", "condor",
                              "--dry-run", "--json", cwd=user).stdout)
    dag = Path(summary["dag"])
    text = dag.read_text()
    assert summary["waves"] == [0, 1] and "PARENT WAVE0 CHILD WAVE1" in text
    assert "PRE_SKIP WAVE1 5" in text and "ask --sweep-dir" in text and "--wave 1 --submit" in text
    assert not list(dag.parent.glob("wave-*.sub"))  # each PRE script writes its wave's
    run = Pool(user / "pool").submit_dag("condor_submit_dag sweep.dag", cwd=dag.parent)
    assert run.status == "succeeded", run.summary()
    sweep = user / "run" / "train" / "pool-optuna"
    wave0 = [s.exit_code for s in run.starts("WAVE0")]
    # both trials stopped at their first rung (1 epoch), with exit 0: DAGMan takes a non-zero
    # exit as the job's failure and removes the wave's other jobs
    assert wave0 == [0, 0]
    assert [s.exit_code for s in run.starts("WAVE1")] == [0] * len(run.starts("WAVE1"))
    pres = {s.node: s.exit_code for s in run.scripts if s.when == "PRE"}
    assert pres == {"WAVE0": 0, "WAVE1": 0}
    assert run.nodes["COLLECT"].job_return == 0
    results = json.loads((sweep / "results.json").read_text())
    assert results["completed"] + results["pruned"] == 2 and results["best"]["trial"] == "t000"
    for row in results["ranking"]:  # resumed in the next wave from its checkpoint
        metrics = json.loads((sweep / "trials" / row["trial"] / "metrics.json").read_text())
        assert metrics["resumed_at_epoch"] == 2 and len(metrics["history"]) == 2
    items = (dag.parent / "wave-001.items").read_text().splitlines()
    assert items[0].startswith("t000,1,checkpoint.pt,metrics.json,")  # budget 1 to epoch 2
    assert (sweep / "best-model.pt").is_file()


def test_embedder_rungs_count_checkpoints_and_their_jobs_send_the_right_folders_back(
        demo_run, tmp_path, capsys):
    """kind: embedder: a rung is a number of checkpoints (save_steps steps each); a wave's
    job sends back `checkpoints/` when it stops at a rung and `model/` when it ends. The
    steps run here, each trial as its job would run it."""
    import torch
    from tiny_models import tiny_embedder

    from submit.train.embedder import run_embedder_trial
    from submit.train.sweep import Sweep

    data = yaml.safe_load((ROOT / "configs" / "sweep-embedder-demo.yaml").read_text())
    data.update(name="embedder-optuna", method="optuna", samples=2, parallel=1,
                params={"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
                optuna={"startup_trials": 2, "min_resource": 1, "reduction_factor": 2})
    data["base"].update(model=str(tiny_embedder(tmp_path)), max_steps=4, save_steps=2,
                        batch_size=8, max_seq_length=32)
    data["condor"].update(python=sys.executable, wave_size=2, checkpoint_every=0)
    spec = tmp_path / "embedder-optuna.yaml"
    spec.write_text(yaml.safe_dump(data))
    code, out, err = here(capsys, "sweep", str(spec), "--workdir", str(demo_run[0]),
                          "--executor", "condor", "--dry-run", "--json")
    assert code == 0 and last_json(out)["waves"] == [0, 1], err
    sweep = Sweep(demo_run[0] / "train" / "embedder-optuna")
    condor = sweep.root / "condor"
    threads = torch.get_num_threads()
    try:
        for wave, until, folder, exit_code in ((0, 1, "checkpoints", 85), (1, 2, "model", 0)):
            code, out, _ = here(capsys, "ask", "--sweep-dir", str(sweep.root), "--wave",
                                str(wave), "--submit")
            items = last_json(out)["trials"]
            assert code == 0 and {i["until"] for i in items} == {until}
            submit = (condor / f"wave-{wave:03d}.sub").read_text()
            assert "transfer_output_files = metrics.json,$(outputs)" in submit
            assert "checkpoint_exit_code" not in submit
            rows = (condor / f"wave-{wave:03d}.items").read_text().splitlines()
            resume = "checkpoints,metrics.json," if wave else ""
            assert rows == [f"{i['trial']},1,{folder},{resume}" for i in items]
            for item in items:
                assert run_embedder_trial(sweep.trial_dir(item["trial"]), sweep.dataset,
                                          checkpoint_exit_every=item["budget"],
                                          threads=1) == exit_code
                assert (sweep.trial_dir(item["trial"]) / folder).is_dir()
            here(capsys, "evaluate", "--sweep-dir", str(sweep.root))
    finally:
        torch.set_num_threads(threads)
    code, out, _ = here(capsys, "collect", "--sweep-dir", str(sweep.root))
    results = json.loads((sweep.root / "results.json").read_text())
    assert results["completed"] >= 1 and results["completed"] + results["pruned"] == 2
    assert Path(results["best"]["model"]).name == "model"


@pytest.mark.parametrize("changes, message", [
    ({"samples": 0}, "method optuna needs samples >= 1"),
    ({"params": {"lr": {"low": 0.1, "high": 0.01}}}, "params.lr: low (0.1) must be below high"),
    ({"params": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "a log range needs low > 0"),
    ({"seeds": [0, 1]}, "give one seed"),
    ({"params": {"epochs": [2, 3]}}, "params.epochs: every trial of an optuna sweep"),
    ({"condor.checkpoint_every": 2}, "stop at each rung's end"),
    ({"condor.wave_size": 0}, "condor.wave_size: an optuna sweep asks"),
    ({"optuna.min_resource": 3}, "optuna.min_resource (3) must be below a trial's budget"),
    ({"optuna.reduction_factor": 1}, "reduction_factor >= 2"),
    ({"method": "grid", "params": {"lr": [0.1]}}, "optuna: these settings are for method"),
    ({"params": {"hidden": {"low": 16.5, "high": 64}}}, "hyperparameter hidden must be an int"),
])
def test_bad_optuna_specs_are_one_line_errors_before_anything_is_written(
        demo_run, tmp_path, capsys, changes, message):
    spec = optuna_spec(tmp_path / "refused.yaml", **changes)
    code, _, err = here(capsys, "sweep", str(spec), "--workdir", str(demo_run[0]))
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (demo_run[0] / "train" / "refused").exists()
