"""Training on HTCondor without a pool: generated files parsed by the real bindings, chirp
against a real chirp server on 127.0.0.1, the workers' PRE script against a stubbed condor_q,
and a real two-node torchrun rendezvous on this machine."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socketserver
import sys
import threading
from pathlib import Path

import htcondor2
import pytest
import torch
from conftest import last_json
from test_train import ROOT, train_cli, write_spec

from submit.htcondor import lint_dag
from submit.train.condor import write_workers_submit
from submit.train.multinode import read_run


def train_here(capsys, *args: str) -> tuple[int, str, str]:
    """`train-models` in this process (the steps here import nothing heavy beyond torch)."""
    from submit.train.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _parse(submit: Path) -> htcondor2.Submit:
    with contextlib.chdir(submit.parent):
        return htcondor2.Submit(submit.read_text())


def _jobs(submit: Path) -> list[tuple[dict[str, str], htcondor2.Submit]]:
    """Each job of a cluster: its item data, and the description with that item's values set,
    so `expand` gives what HTCondor would use for that job."""
    jobs = []
    with contextlib.chdir(submit.parent):
        for item in _parse(submit).itemdata():
            job = htcondor2.Submit(submit.read_text())
            for key, value in item.items():
                job[key] = value
            jobs.append((item, job))
    return jobs


def _arguments(job: htcondor2.Submit) -> list[str]:
    """The job's argv after the executable (these arguments hold no spaces or quotes)."""
    return job.expand("arguments").strip('"').split()


def test_sweep_dag_dry_run(demo_run, tmp_path, capsys):
    spec = write_spec(tmp_path / "condor-sweep.yaml", seeds=[0, 1, 2],
                      condor={"wave_size": 4, "checkpoint_every": 2, "request_gpus": 1,
                              "container_image": "docker://example/infer-corpus:1"})
    code, out, _ = train_here(capsys, "sweep", str(spec), "--workdir", str(demo_run[0]),
                              "--executor", "condor", "--dry-run", "--json")
    summary = last_json(out)
    assert code == 0
    assert summary["trials"] == 6 and summary["completed"] == 0 and summary["submitted"] is None
    assert summary["pending"] == 6
    dag = Path(summary["dag"])
    assert lint_dag(dag) == []
    text = dag.read_text()
    assert "FINAL COLLECT collect.sub" in text and "PARENT WAVE0 CHILD WAVE1" in text
    assert "ABORT-DAG-ON WAVE0 3 RETURN 0" in text and "RETURN 1" not in text
    assert "SCRIPT POST COLLECT /usr/bin/test $DAG_STATUS -eq 0 -o $DAG_STATUS -eq 3" in text
    assert "SCRIPT POST WAVE1" in text and "evaluate --sweep-dir" in text
    script = dag.parent / "run-train.sh"
    assert os.access(script, os.X_OK) and "PYTHON=python3" in script.read_text()
    trials = []
    for sub in sorted(dag.parent.glob("wave-*.sub")):
        description = _parse(sub)
        assert description["universe"] == "container"
        assert description["container_image"] == "docker://example/infer-corpus:1"
        assert description["executable"] == str(script)
        assert description["checkpoint_exit_code"] == "85"
        assert description["transfer_checkpoint_files"] == "checkpoint.pt,metrics.json"
        assert description["request_gpus"] == "1"
        for item, job in _jobs(sub):
            trials.append(item["trial"])
            assert item["resume"] == ""  # nothing ran yet: nothing to resume from
            assert _arguments(job)[:3] == ["-m", "submit.train.cli", "trial"]
            assert "--checkpoint-exit-every 2" in job["arguments"]
            assert job.expand("transfer_input_files") == \
                f"params.json,{dag.parent.parent / 'dataset.parquet'}"
            assert _arguments(job)[3:9] == ["--trial-dir", ".", "--dataset",
                                            "dataset.parquet", "--data-source", "transfer"]
    assert trials == [f"t{i:03d}" for i in range(6)]  # one cluster per wave: 4 + 2
    assert _parse(dag.parent / "collect.sub")["universe"] == "local"


RUN_TRIALS = """
import sys
from pathlib import Path
from submit.train.trial import run_trial

trials, dataset = Path(sys.argv[1]), Path(sys.argv[2])
assert run_trial(trials / "t000", dataset) == 0  # finished
assert run_trial(trials / "t001", dataset, checkpoint_exit_every=1) == 85  # epoch 1 of 3
assert run_trial(trials / "t002", dataset) == 0  # finished
"""


def test_resubmitted_sweep_skips_finished_trials_and_resumes_the_others(demo_run, tmp_path,
                                                                      capsys, monkeypatch):
    """Writing the DAG again, as a user does after a failed or removed DAG: finished trials
    are in no wave, and an unfinished trial's job takes its checkpoint along and resumes.
    The jobs run Python from a venv tarball that `run-train.sh` unpacks."""
    import subprocess
    import sys

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    tarball = tmp_path / "env.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(venv), "."], check=True)
    monkeypatch.chdir(tmp_path)  # a tarball path relative to where the command runs
    spec = write_spec(tmp_path / "resubmit.yaml", seeds=[0, 1, 2],
                      params={"head": ["linear"], "hidden": [16]},
                      condor={"wave_size": 2, "venv_tarball": tarball.name})
    sweep_args = ["sweep", str(spec), "--workdir", str(demo_run[0]), "--executor", "condor",
                  "--dry-run", "--json"]
    first = last_json(train_here(capsys, *sweep_args)[1])
    condor = Path(first["dag"]).parent
    root = condor.parent
    assert first["pending"] == 3 and len(list(condor.glob("wave-*.sub"))) == 2
    assert "VENV_TARBALL=env.tar.gz" in (condor / "run-train.sh").read_text()
    assert "PYTHON=env/bin/python" in (condor / "run-train.sh").read_text()

    proc = subprocess.run([sys.executable, "-c", RUN_TRIALS, str(root / "trials"),
                           str(root / "dataset.parquet")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (condor / "sweep.dag.rescue001").write_text("DONE WAVE0\n")  # names the old waves
    (condor / "sweep.dag.lock").write_text("")
    code, _, err = train_here(capsys, *sweep_args)
    assert code == 1 and "is running" in err
    (condor / "sweep.dag.lock").unlink()

    second = last_json(train_here(capsys, *sweep_args)[1])
    assert second["completed"] == 2 and second["pending"] == 1
    assert lint_dag(Path(second["dag"])) == []
    assert not (condor / "sweep.dag.rescue001").exists()
    waves = sorted(condor.glob("wave-*.sub"))
    assert [w.name for w in waves] == ["wave-000.sub"]
    (item, job), = _jobs(waves[0])  # t000 and t002 are finished: in no wave
    assert item == {"trial": "t001", "resume": "checkpoint.pt,metrics.json,"}
    initialdir = Path(job.expand("initialdir"))
    assert initialdir == root / "trials" / "t001"
    inputs = job.expand("transfer_input_files").split(",")
    assert inputs == ["checkpoint.pt", "metrics.json", "params.json",
                      str(root / "dataset.parquet"), str(tarball)]

    # What HTCondor does with this job: transfer the inputs, run the executable, bring back
    # the new files on exit.
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    for name in inputs:
        shutil.copy(initialdir / name, sandbox)
    proc = subprocess.run([job.expand("executable"), *_arguments(job)], cwd=sandbox,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((sandbox / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_at_epoch"] == 2
    for name in ("checkpoint.pt", "metrics.json", "model.pt"):
        shutil.copy(sandbox / name, initialdir)

    third = last_json(train_here(capsys, *sweep_args)[1])  # nothing left: ranked, no DAG
    assert third["dag"] is None and third["completed"] == 3 and third["best"]["trial"]
    text = train_here(capsys, *sweep_args[:-1])[1]  # as a person reads it
    assert "nothing to run: every trial has finished; no DAG written" in text
    assert "dag: None" not in text and "submitted: None" not in text


def test_multinode_dag_dry_run_and_pre_script_with_stubbed_condor_q(demo_run, tmp_path, capsys,
                                                                  monkeypatch):
    spec = ROOT / "configs" / "multinode-demo.yaml"
    code, out, _ = train_here(capsys, "multinode", str(spec), "--workdir", str(demo_run[0]),
                              "--nodes", "2:4", "--dry-run", "--json")
    summary = last_json(out)
    dag = Path(summary["dag"])
    assert lint_dag(dag) == []
    lines = dag.read_text().splitlines()
    assert "PROVISIONER RANK0 rank0.sub" in lines
    assert any(line.startswith("SCRIPT PRE WORKERS ") and line.endswith("--dag-id $DAGID")
               for line in lines)
    rank0 = _parse(dag.parent / "rank0.sub")
    assert rank0["want_io_proxy"] == "true" and "multinode-rank0" in rank0["arguments"]
    script = dag.parent / "run-train.sh"  # python3 from the PATH, as the demo spec says
    assert rank0["executable"] == str(script) and "PYTHON=python3" in script.read_text()
    assert rank0["universe"] == "vanilla"
    assert rank0.expand("transfer_input_files") == "dataset.parquet,params.json,run.json"

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "condor_q.args"
    ad = [{"RendezvousHost": "10.0.0.7", "RendezvousPort": 29517,
           "RemoteHost": "slot1_1@gpu-node-7.example.org", "JobStatus": 2}]
    stub = bin_dir / "condor_q"
    stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {seen}\necho '{json.dumps(ad)}'\n")
    stub.chmod(0o755)
    run_dir = dag.parent.parent
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, out, _ = train_here(capsys, "multinode-pre", "--run-dir", str(run_dir),
                              "--dag-id", "4242")
    assert code == 0 and "10.0.0.7:29517" in out
    assert 'DAGManJobId == 4242 && DAGNodeName == "RANK0"' in seen.read_text()
    workers = _parse(dag.parent / "workers.sub")
    assert workers["executable"] == str(script)
    assert _arguments(workers)[:2] == ["-m", "torch.distributed.run"]
    assert "--rdzv-endpoint=10.0.0.7:29517" in workers["arguments"]
    assert "is_host=false" in workers["arguments"] and "--nnodes=2:4" in workers["arguments"]
    assert workers["requirements"] == '(TARGET.Machine =!= "gpu-node-7.example.org")'
    spec = read_run(run_dir)  # the spec's own requirements hold for the workers too
    spec.condor.requirements = "OpSysMajorVer == 9"
    write_workers_submit(run_dir, spec, "10.0.0.7:29517", "gpu-node-7.example.org")
    assert _parse(dag.parent / "workers.sub")["requirements"] == \
        '(OpSysMajorVer == 9) && (TARGET.Machine =!= "gpu-node-7.example.org")'
    assert _parse(dag.parent / "rank0.sub").get("requirements") is None
    with contextlib.chdir(dag.parent):
        assert len(list(workers.itemdata())) == 3  # up to 4 nodes: rank 0 + 3 workers
    assert lint_dag(dag) == []

    stub.write_text("#!/bin/sh\necho '[{\"JobStatus\": 1}]'\n")  # rank 0 not published yet
    code, _, err = train_here(capsys, "multinode-pre", "--run-dir", str(run_dir),
                              "--dag-id", "4242")
    assert code == 2 and "RendezvousHost" in err


class ChirpHandler(socketserver.StreamRequestHandler):
    """The chirp protocol as the starter's proxy speaks it: cookie, then attribute updates."""

    def handle(self) -> None:
        server = self.server
        for raw in self.rfile:
            words = raw.decode().rstrip("\n").split(" ")
            if words[0] == "cookie":
                reply = "0" if words[1] == server.cookie else "-1"
            elif words[0] == "set_job_attr" and len(words) == 3:
                server.attrs[words[1]] = words[2]
                reply = "0"
            else:
                reply = "-8"
            self.wfile.write(f"{reply}\n".encode())


@pytest.fixture
def chirp_server(tmp_path, monkeypatch):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), ChirpHandler)
    server.daemon_threads = True
    server.cookie, server.attrs = "s3cret-cookie", {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / ".chirp.config"
    config.write_text(f"127.0.0.1 {server.server_address[1]} {server.cookie}\n")
    monkeypatch.setenv("_CONDOR_CHIRP_CONFIG", str(config))
    yield server
    server.shutdown()
    server.server_close()


def test_rank0_publishes_rendezvous_with_chirp(chirp_server, tmp_path):
    from submit.train import TrainError
    from submit.train.multinode import publish_rendezvous

    publish_rendezvous("10.0.0.7", 29517)
    assert chirp_server.attrs == {"RendezvousHost": '"10.0.0.7"', "RendezvousPort": "29517",
                                  "ProvisionerState": "2"}
    config = Path(os.environ["_CONDOR_CHIRP_CONFIG"])
    config.write_text(f"127.0.0.1 {chirp_server.server_address[1]} wrong-cookie\n")
    with pytest.raises(TrainError, match="want_io_proxy"):
        publish_rendezvous("10.0.0.7", 29517)


def test_two_node_local_torchrun_trains_and_saves_a_model(demo_run, tmp_path):
    spec = tmp_path / "ddp.yaml"
    spec.write_text(json.dumps({"name": "ddp-test", "nodes": "1:1", "params": {
        "head": "mlp", "hidden": 16, "epochs": 4, "batch_size": 8}}))
    summary = last_json(train_cli("multinode", str(spec), "--workdir", str(demo_run[0]),
                                  "--nodes", "2", "--local", "--json").stdout)
    assert summary["world_size"] == 2 and summary["nodes"] == 2
    head = torch.load(summary["model"], weights_only=True)
    assert head["format"] == "infer-corpus.head" and len(head["layers"]) == 2
    run_dir = Path(summary["model"]).parent
    assert run_dir == demo_run[0] / "train" / "ddp-test"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 4
    # global rank 0 alone wrote the model, and said so in its node's output
    writers = [log.name for log in sorted((run_dir / "logs").glob("node-*.log"))
               if "rank 0 of 2 on " in log.read_text()]
    assert len(writers) == 1


def test_multinode_resubmission_drops_the_last_runs_model(demo_run, capsys, monkeypatch):
    """A dry run keeps an earlier model; a real submission removes it, so a failed rerun
    cannot leave the old model looking like its own."""
    import submit.train.condor as train_condor

    spec = ROOT / "configs" / "multinode-demo.yaml"
    args = ("multinode", str(spec), "--workdir", str(demo_run[0]), "--json")
    summary = last_json(train_here(capsys, *args, "--dry-run")[1])
    run_dir = Path(summary["dag"]).parent.parent
    (run_dir / "model.pt").write_bytes(b"old")
    (run_dir / "metrics.json").write_text("{}")
    last_json(train_here(capsys, *args, "--dry-run")[1])
    assert (run_dir / "model.pt").exists()
    monkeypatch.setattr(train_condor, "submit_dag", lambda dag: 4242)  # no schedd here
    summary = last_json(train_here(capsys, *args)[1])
    assert summary["submitted"] == 4242
    assert not (run_dir / "model.pt").exists() and not (run_dir / "metrics.json").exists()


AUTO_TRIALS = """
import sys
from pathlib import Path
from submit.train.trial import run_trial

trials, dataset = Path(sys.argv[1]), Path(sys.argv[2])
# evictions every millisecond: a checkpoint costs more than a claim lasts: every epoch;
# restarted, the trial takes the costs its first run measured
assert run_trial(trials / "t000", dataset, "auto", mean_time_between_evictions=0.001) == 85
assert run_trial(trials / "t000", dataset, "auto", mean_time_between_evictions=0.001) == 85
# evictions every 30 years: never worth stopping
assert run_trial(trials / "t001", dataset, "auto", mean_time_between_evictions=1e9) == 0
"""


def test_checkpoint_every_auto(demo_run, tmp_path, capsys):
    """`auto` needs the pool's mean time between evictions; the job chooses its interval
    after its first epoch and says which on stderr."""
    import subprocess
    import sys

    spec = write_spec(tmp_path / "auto.yaml", seeds=[0], params={"head": ["linear"],
                                                               "hidden": [16]},
                      condor={"checkpoint_every": "auto"})
    args = ["sweep", str(spec), "--workdir", str(demo_run[0]), "--executor", "condor",
            "--dry-run", "--json"]
    code, _, err = train_here(capsys, *args)
    assert code == 2 and "mean_time_between_evictions" in err and err.count("\n") == 1
    write_spec(spec, seeds=[0, 1], params={"head": ["linear"], "hidden": [16]},
               condor={"checkpoint_every": "auto", "mean_time_between_evictions": 3600})
    summary = last_json(train_here(capsys, *args, "--force")[1])
    (_, job), _ = _jobs(Path(summary["dag"]).parent / "wave-000.sub")
    assert "--checkpoint-exit-every auto --mean-time-between-evictions 3600.0" in \
        job["arguments"]
    root = Path(summary["dag"]).parent.parent
    proc = subprocess.run([sys.executable, "-c", AUTO_TRIALS, str(root / "trials"),
                           str(root / "dataset.parquet")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint_every auto: every 1 epoch(s)" in proc.stderr
    assert "measured on the first epoch" in proc.stderr
    assert "measured on an earlier run" in proc.stderr
    assert re.search(r"checkpoint_every auto: every \d{4,} epoch\(s\)", proc.stderr)


def test_train_models_jobs_reads_the_sweep_log(demo_run, tmp_path, capsys):
    """`train-models jobs` finds the sweep's DAG and log, and refuses another DAG's log."""
    from eventlog_samples import rescheduled_log

    spec = write_spec(tmp_path / "jobs.yaml", seeds=[0], params={"head": ["linear"],
                                                               "hidden": [16]})
    summary = last_json(train_here(capsys, "sweep", str(spec), "--workdir", str(demo_run[0]),
                                   "--executor", "condor", "--dry-run", "--json")[1])
    condor = Path(summary["dag"]).parent
    code, _, err = train_here(capsys, "jobs", "--workdir", str(demo_run[0]), "--sweep", "jobs")
    assert code == 2 and "no job event log" in err
    (condor / "sweep.log").write_text(rescheduled_log().replace("shard-00001", "WAVE0"))
    code, out, _ = train_here(capsys, "jobs", "--workdir", str(demo_run[0]), "--sweep", "jobs")
    assert code == 0 and "WAVE0" in out and "evicted (code 1025)" in out
    (condor / "sweep.log").write_text(rescheduled_log())  # shard-00001: the pipeline's node
    code, _, err = train_here(capsys, "jobs", "--workdir", str(demo_run[0]), "--sweep", "jobs")
    assert code == 2 and "is the log of another DAG" in err


def test_gpu_policy_writes_the_requirement(demo_run, tmp_path, capsys):
    classes = {"H100": {"capability": 9.0, "epoch_seconds": 60, "checkpoint_seconds": 30,
                        "restart_seconds": 60, "queue_seconds": 600, "share": 0.5},
               "P100": {"capability": 6.0, "epoch_seconds": 400, "checkpoint_seconds": 30,
                        "restart_seconds": 60, "queue_seconds": 600, "share": 0.5}}
    spec = write_spec(tmp_path / "gpus.yaml", seeds=[0], params={"head": ["linear"],
                                                               "hidden": [16]},
                      condor={"request_gpus": 1, "gpu": "fastest", "gpu_classes": classes,
                              "mean_time_between_evictions": 7200})
    args = ["sweep", str(spec), "--workdir", str(demo_run[0]), "--executor", "condor",
            "--dry-run", "--json"]
    summary = last_json(train_here(capsys, *args)[1])
    assert summary["gpu_policy"] == {"policy": "fastest", "min_capability": 9.0}
    condor = Path(summary["dag"]).parent
    assert _parse(condor / "wave-000.sub")["gpus_minimum_capability"] == "9"
    simulated = json.loads((condor / "gpu-policy.json").read_text())["simulated"]
    assert [row["min_capability"] for row in simulated] == [6.0, 9.0]

    write_spec(spec, seeds=[0], params={"head": ["linear"], "hidden": [16]},
               condor={"request_gpus": 1, "gpu": "cost"})
    code, out, err = train_here(capsys, *args, "--force")
    assert code == 0 and "has no condor.gpu_classes" in err and err.count("\n") == 1
    assert last_json(out)["gpu_policy"]["policy"] == "any"
    assert "gpus_minimum_capability" not in _parse(condor / "wave-000.sub").keys()

    write_spec(spec, seeds=[0], condor={"gpu": "fastest"})
    code, _, err = train_here(capsys, *args, "--force")
    assert code == 2 and "set condor.request_gpus" in err


@pytest.mark.slow
def test_sweep_on_the_pool_reads_its_dataset_in_each_data_source(demo_run, tmp_path, capsys):
    """A one-trial sweep's DAG replayed on the pool once per `condor.data_source`, its
    dataset published in a local Pelican federation (`condor.stage_dir` links it there under
    its content-keyed name): transferred through the plugin, fetched once into the job's
    scratch (and kept there across the job's checkpoint restart in place), or streamed with
    no copy on scratch. Transfer and cache train the same head; every process of a job asks
    the federation for its discovery document at most once."""
    from condor_replay import Pool
    from pelican_federation import Federation

    from submit.train.streamed import STREAM_WORKERS

    origin = tmp_path / "origin"
    origin.mkdir()
    python = tmp_path / "python"  # an execute node's Python that trusts the federation's CA
    with Federation(origin) as fed:
        python.write_text(f'#!/bin/sh\nSSL_CERT_FILE={fed.ca_path} exec {sys.executable} "$@"\n')
        python.chmod(0o755)
        trials, sandboxes = {}, {}
        for mode in ("transfer", "cache", "stream"):
            spec = write_spec(tmp_path / f"pool-{mode}.yaml", seeds=[0],
                              base={"epochs": 2, "batch_size": 16, "dropout": 0.2},
                              params={"head": ["mlp"], "hidden": [16]},
                              condor={"python": str(python), "data_source": mode,
                                      "data_url": fed.url(), "stage_dir": str(origin),
                                      "checkpoint_every": 1 if mode == "cache" else 0})
            summary = last_json(train_here(capsys, "sweep", str(spec), "--workdir",
                                           str(demo_run[0]), "--executor", "condor",
                                           "--dry-run", "--json")[1])
            dag = Path(summary["dag"])
            [name] = [p.name for p in origin.iterdir()]  # the same dataset: one object
            assert re.fullmatch(r"dataset-[0-9a-f]{16}\.parquet", name)
            url = fed.url(name)
            assert summary["dataset"] == url
            (_, job), = _jobs(dag.parent / "wave-000.sub")
            assert _arguments(job)[3:9] == ["--trial-dir", ".", "--dataset",
                                            url if mode != "transfer" else name,
                                            "--data-source", mode]
            assert job.expand("transfer_input_files") == \
                "params.json" + (f",{url}" if mode == "transfer" else "")

            fed.log.clear()
            seen: list[set[str]] = []
            pool = Pool(tmp_path / f"pool-{mode}", plugins={fed.url(): origin},
                        after_exit=lambda run, sandbox, seen=seen: seen.append(
                            {str(p.relative_to(sandbox)) for p in sandbox.rglob("*.parquet")}))
            run = pool.submit_dag("condor_submit_dag sweep.dag", cwd=dag.parent)
            assert run.status == "succeeded", run.summary()
            starts = run.starts("WAVE0")
            assert [s.exit_code for s in starts] == ([85, 0] if mode == "cache" else [0])
            assert len({s.sandbox for s in starts}) == 1  # cache: restarted in place
            processes = len(starts) * (1 + (STREAM_WORKERS if mode == "stream" else 0))
            assert fed.log.discoveries() <= processes, mode
            trials[mode] = dag.parent.parent / "trials" / "t000"
            sandboxes[mode] = seen
            if mode == "cache":  # one whole read across both starts and all epochs
                assert len(fed.log.gets_for(name)) == 1
                assert fed.log.bytes_for(name) == (origin / name).stat().st_size
            if mode == "stream":  # ranged reads only
                assert fed.log.gets_for(name) and None not in fed.log.ranges_for(name)

    assert sandboxes["transfer"] == [{name}]
    assert sandboxes["cache"] == [{f"cache/{name}"}, set()]  # removed once finished
    assert sandboxes["stream"] == [set()]  # never a copy on scratch
    metrics = {mode: json.loads((trial / "metrics.json").read_text())
               for mode, trial in trials.items()}
    assert metrics["cache"]["history"] == metrics["transfer"]["history"]
    assert metrics["cache"]["resumed_at_epoch"] == 2
    a, b = (torch.load(trials[m] / "model.pt", weights_only=True)["layers"]
            for m in ("transfer", "cache"))
    assert all(torch.equal(x["weight"], y["weight"]) and torch.equal(x["bias"], y["bias"])
               for x, y in zip(a, b, strict=True))
    assert metrics["stream"]["status"] == "completed"
