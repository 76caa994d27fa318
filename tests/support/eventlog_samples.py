"""Job event logs written as HTCondor writes them (formats from HTCondor's condor_event.cpp;
the event sequences are those a real pool wrote), for the analyzer's tests."""

from __future__ import annotations

import json
import time

from submit.htcondor.eventlog import JOB_RECORD

RUSAGE = ("\t(0) CPU times\n\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n"
          "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n"
          "\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n")
TERMINATED = ("Job terminated.\n\t(1) Normal termination (return value {rv})\n"
              "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage\n"
              "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage\n"
              "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Remote Usage\n"
              "\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage\n"
              "\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n"
              "\t0  -  Total Bytes Sent By Job\n\t0  -  Total Bytes Received By Job\n")
T0 = 1_800_000_000


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0 + seconds))


def event(number: int, at: float, body: str, job: str = "101.000") -> str:
    return f"{number:03d} ({job}.000) {stamp(at)} {body}...\n"


def execute(at: float, host: str, gpu: str) -> str:
    return event(1, at, f"Job executing on host: <10.0.0.9:9618?addrs=10.0.0.9-9618&alias="
                        f"{host}>\n\tSlotName: slot1_1@{host}\n\tCpus = 1\n\tGPUs = 1\n"
                        f'\tGPUs_Capability = 8.0\n\tGPUs_DeviceName = "{gpu}"\n')


def transfer(at: float, what: str, host: str = "") -> str:
    body = f"{what}\n" + (f"\tTransferring to host: <10.0.0.9:9618?alias={host}>\n"
                          if host else "")
    return event(40, at, body)


def record(at: float, **fields) -> str:
    return event(8, at, JOB_RECORD + json.dumps({"at": T0 + at, **fields}) + "\n")


def rescheduled_log() -> str:
    """A checkpoint at 30 s, rescheduled (code 1025); an eviction before the next start
    (code 1022); the third claim runs to the end."""
    return "".join([
        event(0, 0, "Job submitted from host: <10.0.0.1:9618>\n    DAG Node: shard-00001\n"),
        transfer(10, "Started transferring input files", "gpu1"),
        transfer(14, "Finished transferring input files"),
        execute(14, "gpu1", "NVIDIA A100-SXM4-80GB"),
        record(20, event="ready"),
        record(30, event="checkpoint", started=T0 + 28, covers="part 3 of 10"),
        transfer(30, "Started transferring output files"),
        transfer(32, "Finished transferring output files"),
        event(21, 32, "Error from starter on slot1_1@gpu1:\n\tRescheduling self-checkpoint "
                      "job after checkpoint upload because reactivating the claim would have "
                      "failed.\n\tCode 1025 Subcode 0\n"),
        event(4, 33, "Job was evicted. Code 1025 Subcode 0\n" + RUSAGE
              + "\tReason: Error from slot1_1@gpu1: Rescheduling self-checkpoint job\n"),
        transfer(100, "Started transferring input files", "gpu2"),
        transfer(101, "Finished transferring input files"),
        event(4, 101, "Job was evicted. Code 1022 Subcode 0\n" + RUSAGE
              + "\tReason: Job vacated by schedd\n"),
        transfer(140, "Started transferring input files", "gpu3"),
        transfer(150, "Finished transferring input files"),
        execute(150, "gpu3", "NVIDIA H100 80GB HBM3"),
        record(151, event="start"),
        record(160, event="ready"),
        transfer(400, "Started transferring output files"),
        transfer(402, "Finished transferring output files"),
        event(5, 402, TERMINATED.format(rv=0)),
    ])
