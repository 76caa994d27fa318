"""The job-log analyzer and the preemption simulator against replayed runs with injected
evictions (tests/support/condor_replay.py): a checkpointing job that records its start,
first useful step and checkpoints through chirp, as our jobs do, runs on a pool of an A100
and an H100 machine; the analyzer's attempts must match what was injected to the second, and
the simulator, given the costs the analyzer measured on an uninterrupted run and the claims'
lengths, must predict each replayed wall time within 10%."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from condor_replay import DagRun, Eviction, Machine, Pool

from submit.htcondor.eventlog import read_logs, summary
from submit.preemption import Interruptions, measured_costs, simulate

ROOT = Path(__file__).resolve().parents[2]
A100 = Machine("gpu-a.example.org", {"GPUs_DeviceName": "NVIDIA A100-SXM4-80GB",
                                     "GPUs_Capability": 8.0}, "10.0.0.7")
H100 = Machine("gpu-b.example.org", {"GPUs_DeviceName": "NVIDIA H100 80GB HBM3",
                                     "GPUs_Capability": 9.0}, "10.0.0.9")
UNITS, EVERY, UNIT, SETUP, WRITE = 8, 4, 0.8, 0.5, 0.2
QUEUE = 1.0  # the pool's wait between a claim's end and the next one

# Sets up for SETUP seconds, then does UNITS of work of UNIT seconds; after each EVERY
# units it writes its count (the checkpoint, WRITE seconds) and exits with 85.
WORKER = f"""\
import os, sys, time
sys.path.insert(0, {str(ROOT)!r})
from submit.chirp import JobAd
ad = JobAd("worker")
time.sleep({SETUP})
ad.record("ready")
done = int(open("state").read()) if os.path.exists("state") else 0
while done < {UNITS}:
    time.sleep({UNIT})
    done += 1
    if done % {EVERY} == 0 and done < {UNITS}:
        began = time.time()
        time.sleep({WRITE})
        with open("state.tmp", "w") as f:
            f.write(str(done))
        os.replace("state.tmp", "state")
        ad.record("checkpoint", started=round(began, 3), covers=f"unit {{done}}")
        sys.exit(85)
open("result", "w").write(str(done))
"""
SUBMIT = """\
executable = worker.py
checkpoint_exit_code = 85
transfer_checkpoint_files = state
transfer_output_files = result
want_io_proxy = true
log = worker.log
request_gpus = 1
ulog_execute_attrs = GPUs_DeviceName, GPUs_Capability
queue
"""


def replay(tmp_path: Path, name: str, evictions: list[Eviction]) -> tuple[DagRun, dict]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "worker.py").write_text(f"#!{sys.executable}\n{WORKER}")
    (folder / "worker.py").chmod(0o755)
    (folder / "worker.sub").write_text(SUBMIT)
    (folder / "run.dag").write_text("JOB work worker.sub\n")
    pool = Pool(tmp_path / f"pool-{name}", machines=[A100, H100], evictions=evictions,
                restart_delay=QUEUE)
    run = pool.submit_dag("condor_submit_dag run.dag", cwd=folder)
    assert run.status == "succeeded", run.summary()
    assert (folder / "result").read_text() == str(UNITS)
    [job] = summary(read_logs([folder / "worker.log"]))["jobs"]
    return run, job


@pytest.mark.slow
@pytest.mark.alone  # its claims last seconds: a neighbour's load would move them by one
def test_analyzer_and_simulator_against_replayed_evictions(tmp_path):
    _, baseline = replay(tmp_path, "baseline", [])
    assert [a["outcome"] for a in baseline["attempts"]] == ["done"]
    costs = measured_costs(baseline, UNITS)  # its queue: none, one claim
    print(f"measured: {costs}")
    assert costs.unit_seconds == pytest.approx(UNIT, abs=0.15)
    assert SETUP + WRITE <= costs.checkpoint_seconds <= SETUP + WRITE + 1.5  # + Python's start

    cases = {  # evicted during setup; mid-work, before any checkpoint; twice, the second
               # after a checkpoint was kept (start 2 is the second claim's first process)
        "during setup": [Eviction("work", start=0, after=0.3)],
        "mid work": [Eviction("work", start=0, after=3.0)],
        "twice": [Eviction("work", start=0, after=2.4),
                  Eviction("work", start=2, after=2.6, code=1009, reason="Owner preempted")],
    }
    for name, evictions in cases.items():
        run, job = replay(tmp_path, name.replace(" ", "-"), evictions)
        runs = run.starts("work")
        # the analyzer against the injected truth: one attempt per claim, each on the
        # machine and GPU it ran on, ended when and how it was evicted, to the second
        claims = [r for r in runs if r.input_seconds or r is runs[0]]
        attempts = job["attempts"]
        assert len(attempts) == len(evictions) + 1, name
        for attempt, eviction in zip(attempts, evictions):
            truth = next(r for r in runs if r.start == eviction.start)
            assert attempt["outcome"] == "evicted" and attempt["code"] == eviction.code
            assert abs(attempt["ended"] - (truth.started + eviction.after)) <= 1.0, name
        for attempt, claim in zip(attempts, claims):
            assert attempt["host"] == claim.machine and attempt["gpu"] == claim.gpu
            assert abs(attempt["started"] - claim.started) <= 1.0
        assert attempts[-1]["outcome"] == "done"
        assert [a["gpu"] for a in attempts][:2] == ["NVIDIA A100-SXM4-80GB",
                                                    "NVIDIA H100 80GB HBM3"]
        # work lost: from the first useful step to the eviction; nothing when evicted in
        # setup (the first claim kept no checkpoint in any case)
        first, truth = attempts[0], runs[0]
        evicted_at = truth.started + evictions[0].after
        lost = max(0.0, evicted_at - first["ready"][0]) if first["ready"] else 0.0
        assert abs(first["figures"]["lost"] - lost) <= 1.0, (name, first["figures"], lost)

        # the simulator, given the measured costs, each claim's length and the pool's wait
        # between claims. Lengths and waits come from the injected truth, to the millisecond:
        # an event log says times to the second (checked above), too coarse for claims of a
        # few seconds, which a real pool's claims of hours are not.
        began = [c.started - c.input_seconds for c in claims]
        evicted = [next(r for r in runs if r.start == e.start).started + e.after
                   for e in evictions]
        lives = tuple(end - start for start, end in zip(began, evicted))
        waits = [start - end for end, start in zip(evicted, began[1:])]
        measured = dataclasses.replace(costs, queue_seconds=sum(waits) / len(waits))
        predicted = simulate(UNITS, EVERY, {"g": measured},
                             Interruptions(lives=(*lives, None)), runs=1).wall[0]
        observed = runs[-1].ended - began[0]
        print(f"{name}: predicted {predicted:.1f} s, observed {observed:.1f} s")
        assert abs(predicted - observed) <= 0.10 * observed, (name, predicted, observed)
