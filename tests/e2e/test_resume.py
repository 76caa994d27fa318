"""A worker killed with SIGKILL mid-shard and started again gives the identical result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
from conftest import run_cli

from inference.workdir import Workdir

SETTINGS = ["--set", "model.batch_size=4", "--set", "model.max_seq_length=128",
            "--set", "shards.passages_per_shard=1000"]


def shard_command(workdir) -> list[str]:
    return [sys.executable, "-m", "infer_corpus", "shard", "--workdir", str(workdir),
            "--shard", "0", "--events", "--threads", "1"]


def test_sigkill_mid_shard_then_restart_gives_the_same_result(demo_path, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for workdir in (reference, killed):
        run_cli("partition", "--input", str(demo_path), "--workdir", str(workdir), *SETTINGS)
    subprocess.run(shard_command(reference), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(shard_command(killed), stdout=subprocess.PIPE, text=True)
    done = 0
    for line in proc.stdout:  # wait until the worker is well into the shard
        event = json.loads(line)
        done += event.get("passages", 0)
        if done >= 20:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done < 75, "the shard finished before it could be killed"
    result = Workdir(killed).result_path(0)
    assert not result.exists(), "a killed worker must not leave a result file"
    status = json.loads(run_cli("status", "--workdir", str(killed), "--json").stdout)
    assert status["counts"]["done"] == 0

    subprocess.run(shard_command(killed), check=True, capture_output=True, timeout=600)
    expected = pq.read_table(Workdir(reference).result_path(0))
    got = pq.read_table(result)
    assert got.column("passage_id").to_pylist() == expected.column("passage_id").to_pylist()
    assert len(set(got.column("passage_id").to_pylist())) == got.num_rows
    assert got.equals(expected)


def test_workers_stop_when_the_run_is_killed(demo_path, tmp_path):
    """SIGKILL the executor: its workers must not run on with nobody to read them."""
    import time

    import psutil

    workdir = tmp_path / "w"
    run = subprocess.Popen([sys.executable, "-m", "infer_corpus", "run", "--input",
                            str(demo_path), "--workdir", str(workdir), *SETTINGS],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(run.pid)
    deadline = time.monotonic() + 120
    workers: list[psutil.Process] = []
    while not workers and time.monotonic() < deadline and run.poll() is None:
        workers = [p for p in parent.children() if "shard" in p.cmdline()]
        time.sleep(0.05)
    assert workers, "no worker started"
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for proc in alive:
        proc.kill()
    assert not alive, "a worker ran on after its executor was killed"
    assert not Workdir(workdir).result_path(0).exists()
