"""The job-log analyzer on logs written as HTCondor writes them (formats from HTCondor's
condor_event.cpp; the event sequences are those a real pool wrote: an exit-85 checkpoint
rescheduled to another host, an eviction before the job started, an in-place restart)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eventlog_samples import RUSAGE, T0, event, execute, record, rescheduled_log, transfer

from submit.htcondor.eventlog import EventLogError, read_logs, summary


def test_attempts_hosts_gpus_and_reasons(tmp_path: Path) -> None:
    log = tmp_path / "pipeline.log"
    log.write_text(rescheduled_log())
    reading = read_logs([log])
    assert not reading.warnings
    [job] = reading.jobs
    assert (job.id, job.node, job.state) == ("101.0", "shard-00001", "done")
    assert [(a.host, a.gpu, a.outcome, a.code) for a in job.attempts] == [
        ("gpu1", "NVIDIA A100-SXM4-80GB", "evicted", 1025),
        ("", "", "evicted", 1022),
        ("gpu3", "NVIDIA H100 80GB HBM3", "done", None)]
    assert job.attempts[0].reason.startswith("Rescheduling self-checkpoint job")
    assert job.attempts[0].capability == 8.0
    assert (job.attempts[1].code, job.attempts[1].subcode) == (1022, 0)


def test_wall_time_split(tmp_path: Path) -> None:
    log = tmp_path / "pipeline.log"
    log.write_text(rescheduled_log())
    report = summary(read_logs([log]))
    [job] = report["jobs"]
    first, second, third = (a["figures"] for a in job["attempts"])
    # first claim: 4 s input, 6 s setup, 8 s work, 2 s writing, 2 s upload, 1 s teardown
    assert first == {"wall": 23, "transfer": 6, "setup": 7, "checkpoint": 2, "lost": 0,
                     "goodput": 8}
    assert second == {"wall": 1, "transfer": 1, "setup": 0, "checkpoint": 0, "lost": 0,
                      "goodput": 0}
    assert third == {"wall": 262, "transfer": 12, "setup": 10, "checkpoint": 0, "lost": 0,
                     "goodput": 240}
    assert job["wall"] == 402 and job["checkpoints"] == 1
    assert report["gpu_classes"]["NVIDIA H100 80GB HBM3"]["goodput"] == 240
    assert report["gpu_classes"]["no GPU recorded"]["attempts"] == 1


def test_eviction_loses_the_work_since_the_last_kept_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "pipeline.log"
    log.write_text("".join([
        event(0, 0, "Job submitted from host: <10.0.0.1:9618>\n"),
        transfer(0, "Started transferring input files", "gpu1"),
        transfer(2, "Finished transferring input files"),
        execute(2, "gpu1", "Tesla P100-PCIE-16GB"),
        record(5, event="ready"),
        record(50, event="checkpoint", started=T0 + 45, covers="epoch 1"),
        transfer(50, "Started transferring output files"),
        transfer(53, "Finished transferring output files"),  # restarted in place
        record(54, event="start"),
        record(60, event="ready"),
        record(90, event="checkpoint", started=T0 + 85, covers="epoch 2"),  # not uploaded
        event(4, 100, "Job was evicted. Code 1022 Subcode 0\n" + RUSAGE
              + "\tReason: Job vacated by schedd\n"),
    ]))
    [job] = summary(read_logs([log]))["jobs"]
    [attempt] = job["attempts"]
    # 2 s input + 3 s upload; setup 3 + 6 (+1 s between upload and the restart's start
    # record is counted as its setup); writing 5 + 5; lost: 60 -> 100 minus the unkept
    # checkpoint's 5 s of writing
    assert attempt["figures"] == {"wall": 100, "transfer": 5, "setup": 9, "checkpoint": 10,
                                  "lost": 35, "goodput": 41}
    assert [c["kept"] is not None for c in attempt["checkpoints"]] == [True, False]


def test_a_log_without_job_records(tmp_path: Path) -> None:
    """Another tool's job: each upload it survives counts as a checkpoint, setup as 0."""
    log = tmp_path / "other.log"
    log.write_text("".join([
        event(0, 0, "Job submitted from host: <10.0.0.1:9618>\n"),
        execute(1, "gpu1", "NVIDIA L40S"),
        transfer(30, "Started transferring output files"),
        transfer(31, "Finished transferring output files"),
        event(6, 40, "Image size of job updated: 1000\n\t10  -  MemoryUsage of job (MB)\n"
                     "\t9000  -  ResidentSetSize of job (KB)\n"),
        event(4, 61, "Job was evicted. Code 1022 Subcode 0\n" + RUSAGE),
    ]))
    [job] = summary(read_logs([log]))["jobs"]
    [attempt] = job["attempts"]
    assert len(attempt["checkpoints"]) == 1
    assert attempt["figures"] == {"wall": 60, "transfer": 1, "setup": 0, "checkpoint": 0,
                                  "lost": 30, "goodput": 29}


def test_a_log_cut_mid_event_is_read_to_its_last_complete_event(tmp_path: Path) -> None:
    text = rescheduled_log()
    log = tmp_path / "pipeline.log"
    log.write_text(text[: text.index("Job terminated") + 20])
    reading = read_logs([log])
    assert "ends mid-event" in reading.warnings[0]
    [job] = reading.jobs
    assert job.state == "running" and len(job.attempts) == 3


def test_missing_and_foreign_logs(tmp_path: Path) -> None:
    with pytest.raises(EventLogError, match="no job event log"):
        read_logs([tmp_path / "nothing.log"])
    other = tmp_path / "notes.log"
    other.write_text("2026-12-06 10:00:00 INFO server started\n" * 5)
    with pytest.raises(EventLogError, match="not an HTCondor job event log"):
        read_logs([other])


def workdir_with_dag(tmp_path: Path, log_text: str) -> Path:
    condor = tmp_path / "work" / "condor"
    condor.mkdir(parents=True)
    (condor / "pipeline.dag").write_text("JOB shard-00000 shard.sub\nJOB shard-00001 shard.sub\n"
                                         "FINAL report report.sub\n")
    (condor / "pipeline.log").write_text(log_text)
    return tmp_path / "work"


def test_jobs_command_table_json_and_timeline(tmp_path: Path, capsys) -> None:
    from infer_corpus.cli import main

    workdir = workdir_with_dag(tmp_path, rescheduled_log())
    assert main(["jobs", "--workdir", str(workdir), "--timeline",
                 str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert "shard-00001" in out and "evicted (code 1025)" in out and "evicted (code 1022)" in out
    assert "NVIDIA H100 80GB HBM3" in out and "4m00s" in out  # its goodput
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    assert main(["jobs", "--workdir", str(workdir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["jobs"][0]["in_slots"]["goodput"] == 248


def test_jobs_command_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    from infer_corpus.cli import main

    workdir = workdir_with_dag(tmp_path, rescheduled_log().replace("shard-00001", "embed-7"))
    assert main(["jobs", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is the log of another DAG" in err and "embed-7" in err and "\n" not in err
    assert main(["jobs", "--workdir", str(workdir), "--log", str(tmp_path / "none.log")]) == 2
    assert "no job event log at" in capsys.readouterr().err
    assert main(["jobs", "--workdir", str(tmp_path / "empty")]) == 2
    assert "holds no DAG" in capsys.readouterr().err


def test_costs_measured_from_a_finished_job(tmp_path: Path) -> None:
    from submit.preemption import ClassCosts, PolicyError, measured_costs

    log = tmp_path / "pipeline.log"
    log.write_text(rescheduled_log())
    [job] = summary(read_logs([log]))["jobs"]
    # goodput 248 s over 10 units; the checkpoint: 2 s writing, 2 s upload (no restart in
    # place followed it); a claim: 4 s input + 6 s setup; queues of 67 and 39 s
    assert measured_costs(job, 10) == ClassCosts(24.8, 4.0, 10.0, 53.0)
    costs = summary(read_logs([log]))["gpu_classes"]
    assert costs["NVIDIA A100-SXM4-80GB"]["costs"] == {
        "checkpoint_seconds": 4.0, "restart_seconds": 10.0, "mean_time_between_evictions": None}
    assert costs["no GPU recorded"]["costs"]["mean_time_between_evictions"] == 1.0
    log.write_text(rescheduled_log()[: rescheduled_log().index("005 (")])
    [running] = summary(read_logs([log]))["jobs"]
    with pytest.raises(PolicyError, match="did not finish"):
        measured_costs(running, 10)
