"""The replay harness's job event logs (tests/support/condor_replay.py), read back with
HTCondor's own reader (`htcondor2.JobEventLog`): the events of a plain job, restarts after a
checkpoint exit in place and rescheduled to another machine, an injected eviction, a chirp
`ulog` line, holds and a removal by DAGMan."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import classad2
import htcondor2
from condor_replay import (
    DAG_ABORT_REASON,
    RESCHEDULE_MESSAGE,
    DagRun,
    Eviction,
    Machine,
    Pool,
)

Event = htcondor2.JobEventType
TRANSFERS = {2: "in", 3: "in-done", 5: "out", 6: "out-done"}  # FileTransferEvent types
A100 = Machine("gpu-a.example.org", {"GPUs_DeviceName": "NVIDIA A100-SXM4-80GB",
                                     "GPUs_Capability": 8.0}, "10.0.0.7")
H100 = Machine("gpu-b.example.org", {"GPUs_DeviceName": "NVIDIA H100 80GB HBM3",
                                     "GPUs_Capability": 9.0}, "10.0.0.9")

# Counts to STEPS, one step every PAUSE seconds; after each EVERY steps it saves its count
# (the checkpoint) and exits with 85. scratch.txt, outside the checkpoint, records each start.
COUNTER = """\
import json, pathlib, sys, time
steps, every, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
state = pathlib.Path("state.json")
done = json.loads(state.read_text())["done"] if state.exists() else 0
with open("scratch.txt", "a") as scratch:
    scratch.write(f"start at {done}\\n")
while done < steps:
    time.sleep(pause)
    done += 1
    if done % every == 0 and done < steps:
        state.write_text(json.dumps({"done": done}))
        sys.exit(85)
starts = len(pathlib.Path("scratch.txt").read_text().splitlines())
pathlib.Path("result.txt").write_text(f"{done} steps, {starts} starts in this sandbox\\n")
"""
COUNTER_SUBMIT = """\
executable = counter.py
arguments = {arguments}
checkpoint_exit_code = 85
transfer_checkpoint_files = state.json
transfer_output_files = result.txt
log = counter.log
output = counter.out
error = counter.err
request_cpus = 1
request_memory = 100MB
request_disk = 10MB
request_gpus = 1
ulog_execute_attrs = GPUs_DeviceName, GPUs_Capability, NotOnTheMachine
queue
"""


def script(path: Path, body: str) -> None:
    """A job script: jobs get no PATH, so the shebang names this interpreter."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


def replay(folder: Path, pool: Pool, dag: str, submits: dict[str, str]) -> DagRun:
    folder.mkdir(exist_ok=True)
    (folder / "test.dag").write_text(dag)
    for name, text in submits.items():
        (folder / name).write_text(text)
    return pool.submit_dag("condor_submit_dag test.dag", cwd=folder)


def events(log: Path, cluster: int | None = None) -> list:
    found = list(htcondor2.JobEventLog(str(log)).events(stop_after=0))
    return [e for e in found if cluster is None or e.cluster == cluster]


def sequence(found: list) -> list[str]:
    """The events by number; transfers by what they say."""
    return [f"040 {TRANSFERS[e['Type']]}" if e.type == Event.FILE_TRANSFER
            else f"{int(e.type):03d}" for e in found]


def near(stamp: int, when: float | None) -> bool:
    """A log time (whole seconds) against a precise one."""
    return when is not None and int(when) <= stamp <= int(when) + 1


def counter_dag(tmp_path: Path, arguments: str) -> Path:
    folder = tmp_path / "dag"
    folder.mkdir()
    script(folder / "counter.py", COUNTER)
    (folder / "counter.sub").write_text(COUNTER_SUBMIT.format(arguments=arguments))
    (folder / "test.dag").write_text("JOB count counter.sub\n")
    return folder


def test_a_plain_job_and_a_local_one_write_what_htcondor_writes(tmp_path):
    """Two procs of one cluster and a local-universe job share one log; each event is whole
    and in its place, with the execute event's slot and properties and the exit's value."""
    folder = tmp_path / "dag"
    folder.mkdir()
    script(folder / "hello.py", "import sys\nopen('out.txt', 'w').write(sys.argv[1])\n")
    run = replay(folder, Pool(tmp_path / "pool", machine="exec-1.example.org"),
                 "JOB hello hello.sub\nJOB local local.sub\n", {
                     "hello.sub": "executable = hello.py\narguments = $(Process)\n"
                                  "transfer_output_files = out.txt\n"
                                  "transfer_output_remaps = \"out.txt = out-$(Process).txt\"\n"
                                  "log = shared.log\nrequest_memory = 1GB\nqueue 2\n",
                     "local.sub": "universe = local\nexecutable = hello.py\narguments = L\n"
                                  "log = shared.log\nqueue\n"})
    assert run.status == "succeeded", run.summary()
    assert (folder / "out-1.txt").read_text() == "1"
    everything = events(folder / "shared.log")
    assert len(everything) == 2 * 7 + 3
    hello = run.nodes["hello"].cluster
    for proc in (0, 1):
        found = [e for e in everything if e.cluster == hello and e.proc == proc]
        assert sequence(found) == ["000", "040 in", "040 in-done", "001", "040 out",
                                   "040 out-done", "005"]
        submitted, started, _, execute, _, _, terminated = found
        assert submitted["LogNotes"] == "DAG Node: hello"
        assert "alias=exec-1.example.org" in started["Host"]
        job = next(j for j in run.starts("hello") if j.proc == proc)
        assert execute["SlotName"] == job.slot == f"slot1_{proc + 1}@exec-1.example.org"
        assert execute["ExecuteHost"] == \
            "<127.0.0.1:9618?addrs=127.0.0.1-9618&alias=exec-1.example.org>"
        props = dict(execute["ExecuteProps"])
        assert props == {"CondorScratchDir": str(job.sandbox), "Cpus": 1, "Memory": 1024,
                         "Disk": 1048576}
        assert near(execute.timestamp, job.started) and near(terminated.timestamp, job.ended)
        assert terminated["TerminatedNormally"] and terminated["ReturnValue"] == 0
        assert [e.timestamp for e in found] == sorted(e.timestamp for e in found)
        assert job.machine == "exec-1.example.org" and job.gpu is None
        assert job.evicted is None and not job.rescheduled
    local = [e for e in everything if e.cluster == run.nodes["local"].cluster]
    assert sequence(local) == ["000", "001", "005"]
    assert "SlotName" not in local[1] and "ExecuteProps" not in local[1]
    assert local[1]["ExecuteHost"].endswith(f"alias={socket.gethostname()}>")


def test_a_checkpoint_exit_restarts_in_place(tmp_path):
    """Two exits with the checkpoint code: each uploads the checkpoint (an output transfer
    pair) and the job goes on in the same sandbox, on the same slot, with no new 001; files
    outside the checkpoint survive."""
    folder = counter_dag(tmp_path, "3 1 0")
    run = Pool(tmp_path / "pool", machines=[A100, H100]).submit_dag(
        "condor_submit_dag test.dag", cwd=folder)
    assert run.status == "succeeded", run.summary()
    assert (folder / "result.txt").read_text() == "3 steps, 3 starts in this sandbox\n"
    starts = run.starts("count")
    assert [j.exit_code for j in starts] == [85, 85, 0]
    assert len({j.sandbox for j in starts}) == 1 and {j.machine for j in starts} == {A100.name}
    assert [j.input_seconds > 0 for j in starts] == [True, False, False]
    assert all(j.output_seconds > 0 and not j.rescheduled and j.evicted is None
               for j in starts)
    found = events(folder / "counter.log")
    assert sequence(found) == ["000", "040 in", "040 in-done", "001", "040 out",
                               "040 out-done", "040 out", "040 out-done", "040 out",
                               "040 out-done", "005"]
    assert found[3]["SlotName"] == f"slot1_1@{A100.name}"
    assert dict(found[3]["ExecuteProps"])["GPUs_DeviceName"] == "NVIDIA A100-SXM4-80GB"


def test_a_rescheduled_checkpoint_exit_moves_to_the_next_machine(tmp_path):
    """With reschedule_after_checkpoint each checkpoint upload is followed by the starter's
    021 and a 004 with code 1025, and the job starts again on the next machine, in a fresh
    sandbox with its inputs and the checkpoint: a new 001 with that machine's GPU."""
    folder = counter_dag(tmp_path, "3 1 0")
    run = Pool(tmp_path / "pool", machines=[A100, H100],
               reschedule_after_checkpoint={"count"}).submit_dag(
        "condor_submit_dag test.dag", cwd=folder)
    assert run.status == "succeeded", run.summary()
    assert (folder / "result.txt").read_text() == "3 steps, 1 starts in this sandbox\n"
    starts = run.starts("count")
    assert [j.exit_code for j in starts] == [85, 85, 0]
    assert [j.machine for j in starts] == [A100.name, H100.name, A100.name]
    assert [j.gpu for j in starts] == ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3",
                                       "NVIDIA A100-SXM4-80GB"]
    assert [j.rescheduled for j in starts] == [True, True, False]
    assert [j.evicted for j in starts] == [1025, 1025, None]
    assert len({j.sandbox for j in starts}) == 3
    assert (starts[1].sandbox / "scratch.txt").read_text() == "start at 1\n"
    machine_ad = classad2.parseOne((starts[1].sandbox / ".machine.ad").read_text())
    assert machine_ad["GPUs_DeviceName"] == "NVIDIA H100 80GB HBM3"
    assert machine_ad["Name"] == f"slot1_1@{H100.name}" and machine_ad["GPUs"] == 1
    found = events(folder / "counter.log")
    claim = ["040 in", "040 in-done", "001", "040 out", "040 out-done"]
    assert sequence(found) == ["000", *claim, "021", "004", *claim, "021", "004", *claim,
                               "005"]
    executes = [e for e in found if e.type == Event.EXECUTE]
    props = dict(executes[1]["ExecuteProps"])
    assert executes[1]["SlotName"] == f"slot1_1@{H100.name}"
    assert props["GPUs_DeviceName"] == "NVIDIA H100 80GB HBM3"
    assert props["GPUs_Capability"] == 9.0 and props["GPUs"] == 1
    assert props["CondorScratchDir"] == str(starts[1].sandbox)
    assert "NotOnTheMachine" not in props
    for error, evicted in zip([e for e in found if e.type == Event.REMOTE_ERROR],
                              [e for e in found if e.type == Event.JOB_EVICTED], strict=True):
        assert error["ErrorMsg"] == RESCHEDULE_MESSAGE and error["HoldReasonCode"] == 1025
        assert error["Daemon"] == "starter"
        assert evicted["ReasonCode"] == 1025 and RESCHEDULE_MESSAGE in evicted["Reason"]


def test_an_injected_eviction_loses_the_work_since_the_checkpoint(tmp_path):
    """The second start (after the first checkpoint, at step 4) is evicted 0.5 s in, two
    steps later: the 004 has the given code, and after restart_delay the job starts on the
    other machine from step 4, the work of the evicted start lost; the result is right."""
    folder = counter_dag(tmp_path, "10 4 0.2")
    eviction = Eviction("count", start=1, after=0.5, code=1014, reason="Startd is draining")
    run = Pool(tmp_path / "pool", machines=[A100, H100], evictions=[eviction],
               restart_delay=1).submit_dag("condor_submit_dag test.dag", cwd=folder)
    assert run.status == "succeeded", run.summary()
    assert (folder / "result.txt").read_text() == "10 steps, 2 starts in this sandbox\n"
    starts = run.starts("count")
    assert [j.evicted for j in starts] == [None, 1014, None, None]
    assert [j.exit_code for j in starts] == [85, -15, 85, 0]  # SIGTERM ended the evicted one
    evicted = starts[1]
    assert evicted.started is not None and evicted.ended is not None
    assert abs(evicted.ended - (evicted.started + 0.5)) < 1
    assert [j.machine for j in starts] == [A100.name, A100.name, H100.name, H100.name]
    assert starts[2].sandbox != evicted.sandbox == starts[0].sandbox
    assert (starts[2].sandbox / "scratch.txt").read_text() == "start at 4\nstart at 8\n"
    found = events(folder / "counter.log")
    assert sequence(found) == ["000", "040 in", "040 in-done", "001", "040 out",
                               "040 out-done", "004", "040 in", "040 in-done", "001",
                               "040 out", "040 out-done", "040 out", "040 out-done", "005"]
    eviction_event = found[6]
    assert eviction_event["ReasonCode"] == 1014 and "ReasonSubCode" not in eviction_event
    assert eviction_event["Reason"] == "Startd is draining"
    assert near(eviction_event.timestamp, evicted.ended)
    assert found[7].timestamp - eviction_event.timestamp >= 1  # restart_delay
    assert found[9]["SlotName"] == f"slot1_1@{H100.name}"


def test_a_chirp_ulog_line_is_a_generic_event(tmp_path):
    folder = tmp_path / "dag"
    folder.mkdir()
    script(folder / "say.py", "from htcondor2.htchirp import HTChirp\n"
                              "with HTChirp() as chirp:\n"
                              "    chirp.ulog('ready: step 1 of 3')\n")
    run = replay(folder, Pool(tmp_path / "pool"), "JOB say say.sub\n", {
        "say.sub": "executable = say.py\nwant_io_proxy = true\nlog = say.log\nqueue\n"})
    assert run.status == "succeeded", run.summary()
    found = events(folder / "say.log")
    assert sequence(found) == ["000", "040 in", "040 in-done", "001", "008", "040 out",
                               "040 out-done", "005"]
    assert found[4]["Info"] == "ready: step 1 of 3"


def test_holds_write_the_starters_error_and_the_hold(tmp_path):
    """An output the job never wrote: the hold alone (code 12). An executable that cannot
    run: the starter's 021, then the hold that quotes it (code 6). The DAG stalls."""
    folder = tmp_path / "dag"
    folder.mkdir()
    script(folder / "quiet.py", "pass\n")
    (folder / "broken.sh").write_text("#!/no/such/interpreter\n")
    (folder / "broken.sh").chmod(0o755)
    run = replay(folder, Pool(tmp_path / "pool"), "JOB quiet quiet.sub\nJOB broken broken.sub\n",
                 {"quiet.sub": "executable = quiet.py\ntransfer_output_files = missing.txt\n"
                               "log = dag.log\nqueue\n",
                  "broken.sub": "executable = broken.sh\nlog = dag.log\nqueue\n"})
    assert run.status == "stalled" and len(run.holds) == 2, run.summary()
    quiet = events(folder / "dag.log", run.nodes["quiet"].cluster)
    assert sequence(quiet) == ["000", "040 in", "040 in-done", "001", "040 out", "012"]
    assert quiet[-1]["HoldReasonCode"] == 12 and quiet[-1]["HoldReasonSubCode"] == 2
    assert "missing.txt was not created by the job" in quiet[-1]["HoldReason"]
    broken = events(folder / "dag.log", run.nodes["broken"].cluster)
    assert sequence(broken) == ["000", "040 in", "040 in-done", "021", "012"]
    error, held = broken[-2:]
    slot = run.starts("broken")[0].slot
    assert error["ExecuteHost"] == slot and error["HoldReasonCode"] == 6
    assert error["ErrorMsg"].startswith("Failed to execute ")
    assert held["HoldReason"] == f"Error from {slot}: {error['ErrorMsg']}"
    assert held["HoldReasonCode"] == 6 and held["HoldReasonSubCode"] == 2  # ENOENT


def test_a_job_removed_by_an_abort_is_aborted_and_a_signal_is_abnormal(tmp_path):
    """ABORT-DAG-ON: DAGMan removes the job still running (009 with its reason); a job that
    a signal ends terminates abnormally."""
    folder = tmp_path / "dag"
    folder.mkdir()
    running = tmp_path / "slow-is-running"  # the crash waits for it: slow is running then
    script(folder / "slow.py", "import sys, time\nopen(sys.argv[1], 'w').close()\n"
                               "time.sleep(30)\n")
    script(folder / "crash.py", "import os, signal, sys, time\n"
                                "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\n"
                                "os.kill(os.getpid(), signal.SIGKILL)\n")
    run = replay(folder, Pool(tmp_path / "pool", slots=2),
                 "JOB slow slow.sub\nJOB crash crash.sub\nABORT-DAG-ON crash -9\n",
                 {"slow.sub": f"executable = slow.py\narguments = {running}\nlog = dag.log\n"
                              "queue\n",
                  "crash.sub": f"executable = crash.py\narguments = {running}\n"
                               "log = dag.log\nqueue\n"})
    assert run.status == "aborted", run.summary()
    crash = events(folder / "dag.log", run.nodes["crash"].cluster)
    assert sequence(crash) == ["000", "040 in", "040 in-done", "001", "040 out",
                               "040 out-done", "005"]
    assert not crash[-1]["TerminatedNormally"] and crash[-1]["TerminatedBySignal"] == 9
    slow = events(folder / "dag.log", run.nodes["slow"].cluster)
    assert sequence(slow) == ["000", "040 in", "040 in-done", "001", "009"]
    assert slow[-1]["Reason"].startswith(f"{DAG_ABORT_REASON} (by user ")
    assert [j.removed for j in run.starts("slow")] == [True]
