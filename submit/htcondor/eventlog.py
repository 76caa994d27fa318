"""What happened to each job, attempt by attempt, read from HTCondor's job event logs.

A job checkpoints and is restarted: after its own exit with the checkpoint code (in place, or
rescheduled to another machine), or after an eviction. An *attempt* is one claim of a slot:
from its input transfer to the end of its run there (terminated, evicted, held, removed).
Its wall time splits into

- input and output transfer (the `040` events; checkpoint uploads are output transfers),
- setup: process start to the first useful step,
- checkpoint writing,
- lost work: steps done after the last checkpoint HTCondor kept, thrown away by the end of
  an attempt that did not finish,
- goodput: the rest, work that counts toward the result.

The events come from HTCondor (`001` executes with `SlotName` and the machine attributes the
submit file names in `ulog_execute_attrs`, `004` evictions with `Code N Subcode M`, `021`
remote errors, `040` transfers, `005` termination). The rest comes from the jobs: ours write
`008` records through chirp's `ulog` (`JOB_RECORD` followed by JSON: `start` when a process
starts, `ready` at its first useful step, `checkpoint` with when its writing started and ended
and what it covers, `policy` when it chose its checkpoint interval). A log
without such records (another tool's jobs) is still read: each process counts as ready at
its start, and each output transfer that the job survives as a checkpoint.

Timestamps in the log are whole seconds; a job record carries its own precise time (`at`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import htcondor2

from inference.errors import UsageError

JOB_RECORD = "infer-corpus-job "  # the prefix of the 008 records our jobs write
# FileTransferEvent types (HTCondor's FileTransferEventType)
IN_STARTED, IN_FINISHED, OUT_STARTED, OUT_FINISHED = 2, 3, 5, 6
# a reschedule after a checkpoint exit (HTCondor's CONDOR_HOLD_CODE::SuccessfulCheckpoint)
RESCHEDULED_AFTER_CHECKPOINT = 1025
EVENT_END = "...\n"


class EventLogError(UsageError):
    """A log that is missing, not an HTCondor job event log, or another DAG's."""

    label = "job log"


@dataclass
class Checkpoint:
    started: float
    written: float
    covers: str = ""
    kept: float | None = None  # when HTCondor had it: the end of the upload that followed


@dataclass
class Attempt:
    """One claim of a slot by one job."""

    host: str = ""
    slot: str = ""
    gpu: str = ""
    capability: float | None = None
    began: float | None = None  # input transfer started (else: the execute event)
    started: float | None = None  # the execute event
    ended: float | None = None
    outcome: str = "running"  # done, failed, evicted, held, removed, running
    return_value: int | None = None
    code: int | None = None
    subcode: int | None = None
    reason: str = ""
    input_seconds: float = 0.0
    output_seconds: float = 0.0  # checkpoint uploads and the final output
    final_output_seconds: float = 0.0
    process_starts: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # reading state: a transfer under way, an upload not yet known to be a checkpoint, a
    # restart in place expected
    transferring: float | None = field(default=None, repr=False)
    upload: float | None = field(default=None, repr=False)
    restarting: bool = field(default=False, repr=False)
    last_upload: float = field(default=0.0, repr=False)

    @property
    def gpu_class(self) -> str:
        return self.gpu or "no GPU recorded"

    def figures(self, now: float, records: bool) -> dict[str, float]:
        """Seconds of wall time, transfer, setup, checkpoint writing, lost work and goodput
        (they add up to the wall time). `records`: the job writes its own records, so a
        process that never reported ready spent its whole run in setup."""
        end = self.ended if self.ended is not None else now
        began = self.began if self.began is not None else (self.started or end)
        finished = self.outcome in ("done", "failed")
        writing = sum(c.written - c.started for c in self.checkpoints)
        setup = lost = 0.0
        for number, start in enumerate(self.process_starts):
            until = (self.process_starts[number + 1] if number + 1 < len(self.process_starts)
                     else end)
            ready = self._ready_in(start, until)
            if ready is not None:
                setup += ready - start
            elif records and not finished and number == len(self.process_starts) - 1:
                setup += until - start  # ended before its first useful step
        if not finished:
            kept = max([c.kept for c in self.checkpoints if c.kept is not None and c.kept <= end]
                       or [began])
            if self.code == RESCHEDULED_AFTER_CHECKPOINT:
                setup += max(0.0, end - kept)  # the claim's teardown after the upload
            else:
                last = self.process_starts[-1] if self.process_starts else began
                ready = self._ready_in(last, end)
                if ready is not None or not records:
                    work_from = max(kept, ready if ready is not None else last)
                    unkept = sum(c.written - c.started for c in self.checkpoints
                                 if c.started >= work_from and c.kept is None)
                    lost = max(0.0, end - work_from - unkept)
        wall = max(0.0, end - began)
        transfer = self.input_seconds + self.output_seconds
        goodput = max(0.0, wall - transfer - setup - writing - lost)
        return {"wall": wall, "transfer": transfer, "setup": setup, "checkpoint": writing,
                "lost": lost, "goodput": goodput}

    def restart_setup(self) -> float:
        """Setup of the processes restarted in place after a checkpoint (their first useful
        step after their start): part of what each checkpoint costs."""
        starts = self.process_starts
        total = 0.0
        for number, start in enumerate(starts[1:], 1):
            until = starts[number + 1] if number + 1 < len(starts) else (
                self.ended if self.ended is not None else math.inf)
            ready = self._ready_in(start, until)
            total += ready - start if ready is not None else 0.0
        return total

    def _ready_in(self, start: float, until: float) -> float | None:
        return next((t for t in self.ready if start <= t <= until), None)


@dataclass
class Job:
    """One HTCondor job (cluster.proc): a DAG node's try, or a job of a plain submit."""

    cluster: int
    proc: int
    node: str = ""
    submitted: float | None = None
    ended: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    records: int = 0  # job records (008) read

    @property
    def id(self) -> str:
        return f"{self.cluster}.{self.proc}"

    @property
    def state(self) -> str:
        return self.attempts[-1].outcome if self.attempts else "idle"


@dataclass
class LogReading:
    jobs: list[Job]
    warnings: list[str]
    last_event: float | None


def read_logs(paths: list[Path]) -> LogReading:
    """Every job in the logs, in order of submission. A log that ends mid-event (a job is
    writing it, or it was cut) is read up to its last complete event, with a warning."""
    jobs: dict[tuple[int, int], Job] = {}
    warnings: list[str] = []
    last: float | None = None
    for path in paths:
        events = _events(path, warnings)
        for event in events:
            key = (event.cluster, event.proc)
            job = jobs.get(key)
            if job is None:
                job = jobs[key] = Job(event.cluster, event.proc)
            _apply(job, event)
            last = max(last or event.timestamp, event.timestamp)
    ordered = sorted(jobs.values(), key=lambda j: (j.submitted or 0, j.cluster, j.proc))
    return LogReading(ordered, warnings, last)


def _events(path: Path, warnings: list[str]) -> list[Any]:
    if not path.is_file():
        raise EventLogError(f"no job event log at {path}")
    try:
        events = list(htcondor2.JobEventLog(str(path)).events(stop_after=0))
    except Exception as exc:  # the bindings raise their own exception types
        raise EventLogError(f"{path} cannot be read as an HTCondor job event log: "
                            f"{exc}") from None
    size = path.stat().st_size
    if size and not events:
        raise EventLogError(f"{path} is not an HTCondor job event log (no event in its "
                            f"{size:,} bytes)")
    if size:
        with open(path, "rb") as handle:
            handle.seek(max(0, size - len(EVENT_END)))
            if handle.read() != EVENT_END.encode():
                warnings.append(f"{path} ends mid-event (a job is writing it, or it was "
                                f"cut): read up to its last complete event")
    return events


def _apply(job: Job, event: Any) -> None:
    kind = htcondor2.JobEventType
    t = float(event.timestamp)
    attempt = job.attempts[-1] if job.attempts else None
    if attempt is not None and attempt.upload is not None and \
            event.type != kind.JOB_TERMINATED:
        # the job went on after an upload: it was a checkpoint (logs without job records)
        attempt.checkpoints.append(Checkpoint(attempt.upload, attempt.upload, "",
                                              attempt.upload))
        attempt.upload = None
    if event.type == kind.SUBMIT:
        job.submitted = t
        notes = event.get("StructuredNotes")
        node = notes.get("DAGNodeName") if notes is not None else None
        job.node = node or _dag_node(str(event.get("LogNotes", ""))) or job.node
    elif event.type == kind.FILE_TRANSFER:
        _transfer(job, int(event.get("Type", 0)), t)
    elif event.type == kind.EXECUTE:
        _execute(job, event, t)
    elif event.type == kind.GENERIC:
        _record(job, str(event.get("Info", "")), t)
    elif event.type == kind.REMOTE_ERROR:
        if job.attempts:
            job.attempts[-1].reason = str(event.get("ErrorMsg", "")).strip()
    elif event.type in (kind.JOB_EVICTED, kind.JOB_HELD, kind.JOB_ABORTED,
                        kind.JOB_TERMINATED, kind.SHADOW_EXCEPTION):
        _end(job, event, t)


def _open_attempt(job: Job) -> Attempt:
    """The attempt a transfer or execute belongs to: the last one while it is still open
    (not started, or started and not ended), else a new one."""
    if job.attempts and job.attempts[-1].ended is None:
        return job.attempts[-1]
    job.attempts.append(Attempt())
    return job.attempts[-1]


def _execute(job: Job, event: Any, t: float) -> None:
    attempt = _open_attempt(job)
    if attempt.started is not None:  # a second execute without an end: the claim was lost
        attempt.outcome, attempt.ended = "evicted", t
        attempt = _open_attempt(job)
    props = event.get("ExecuteProps")
    props = dict(props) if props is not None else {}
    attempt.slot = str(event.get("SlotName", ""))
    attempt.host = (attempt.slot.split("@", 1)[-1] if "@" in attempt.slot
                    else _alias(str(event.get("ExecuteHost", ""))))
    attempt.gpu = str(props.get("GPUs_DeviceName") or "")
    capability = props.get("GPUs_Capability")
    attempt.capability = float(capability) if isinstance(capability, int | float) else None
    attempt.started = t
    if attempt.began is None:
        attempt.began = t
    attempt.process_starts.append(t)


def _transfer(job: Job, kind: int, t: float) -> None:
    if kind == IN_STARTED:
        attempt = _open_attempt(job)
        if attempt.started is not None:  # input for a new claim: the old one ended
            attempt.outcome, attempt.ended = "evicted", t
            attempt = _open_attempt(job)
        attempt.began = attempt.transferring = t
        return
    if not job.attempts:
        return
    attempt = job.attempts[-1]
    if kind == OUT_STARTED:
        attempt.transferring = t
    elif kind in (IN_FINISHED, OUT_FINISHED) and attempt.transferring is not None:
        seconds, attempt.transferring = t - attempt.transferring, None
        if kind == IN_FINISHED:
            attempt.input_seconds += seconds
            return
        attempt.output_seconds += seconds
        attempt.last_upload = seconds
        unkept = [c for c in attempt.checkpoints if c.kept is None]
        for checkpoint in unkept:  # HTCondor has them now
            checkpoint.kept = t
        attempt.restarting = True  # a process that starts next is a restart in place
        if not unkept and not job.records:
            attempt.upload = t


def _end(job: Job, event: Any, t: float) -> None:
    kind = htcondor2.JobEventType
    if event.type in (kind.JOB_TERMINATED, kind.JOB_ABORTED):
        job.ended = t
    attempt = job.attempts[-1] if job.attempts else None
    if attempt is None or attempt.ended is not None:
        return  # e.g. removed while idle
    attempt.ended = t
    attempt.upload = None
    if event.type == kind.JOB_TERMINATED:
        if attempt.restarting:  # the upload right before the end was the job's output
            attempt.final_output_seconds = attempt.last_upload
        if event.get("TerminatedNormally", False):
            attempt.return_value = _int(event.get("ReturnValue"))
            attempt.outcome = "done" if attempt.return_value == 0 else "failed"
        else:
            attempt.outcome = "failed"
            attempt.reason = f"signal {event.get('TerminatedBySignal', '?')}"
    elif event.type == kind.JOB_EVICTED:
        attempt.outcome = "evicted"
        attempt.code, attempt.subcode = _codes(event)
        reason = str(event.get("Reason", ""))
        if reason and not reason.startswith("Code ") and not attempt.reason:
            attempt.reason = reason  # a remote error before it says more
    elif event.type == kind.JOB_HELD:
        attempt.outcome = "held"
        attempt.reason = str(event.get("HoldReason", ""))
        attempt.code = _int(event.get("HoldReasonCode"))
        attempt.subcode = _int(event.get("HoldReasonSubCode"))
    elif event.type == kind.JOB_ABORTED:
        attempt.outcome = "removed"
        attempt.reason = str(event.get("Reason", ""))
    else:  # shadow exception: the claim is gone, the job goes back to the queue
        attempt.outcome = "evicted"
        attempt.reason = str(event.get("Message", "shadow exception"))


def _codes(event: Any) -> tuple[int | None, int | None]:
    code = _int(event.get("ReasonCode"))
    subcode = _int(event.get("ReasonSubCode"))
    if code is None:  # older readers keep "Code N Subcode M" in the reason text
        words = str(event.get("Reason", "")).split()
        if len(words) >= 4 and words[0] == "Code" and words[2] == "Subcode":
            code, subcode = _int(words[1]), _int(words[3])
    if code is not None and subcode is None:
        subcode = 0  # HTCondor's reader leaves a zero subcode out
    return code, subcode


def _record(job: Job, text: str, t: float) -> None:
    """One of our jobs' own records (`JOB_RECORD` + JSON); other generic events are left."""
    if not text.startswith(JOB_RECORD) or not job.attempts:
        return
    try:
        record = json.loads(text[len(JOB_RECORD):])
        at = float(record.get("at", t))
    except (ValueError, TypeError, AttributeError):
        return
    job.records += 1
    attempt = job.attempts[-1]
    if record.get("event") == "start" and attempt.restarting:
        attempt.process_starts.append(at)  # restarted in place after a checkpoint upload
        attempt.restarting = False
    elif record.get("event") == "ready":
        attempt.ready.append(at)
    elif record.get("event") == "checkpoint":
        attempt.checkpoints.append(Checkpoint(float(record.get("started", at)), at,
                                              str(record.get("covers", ""))))


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _dag_node(notes: str) -> str:
    return notes.split("DAG Node:", 1)[1].strip() if "DAG Node:" in notes else ""


def _alias(address: str) -> str:
    """The host name in a sinful string (`<ip:port?addrs=...&alias=NAME>`), else the IP."""
    for part in address.strip("<>").split("?", 1)[-1].split("&"):
        if part.startswith("alias="):
            return part[len("alias="):]
    return address.strip("<>").split(":", 1)[0]


def summary(reading: LogReading, now: float | None = None) -> dict[str, Any]:
    """Per job and per GPU class: attempts, hosts, outcomes and the wall-time split."""
    now = now if now is not None else (reading.last_event or 0.0)
    jobs, classes = [], {}
    for job in reading.jobs:
        attempts = []
        totals = dict.fromkeys(("wall", "transfer", "setup", "checkpoint", "lost",
                                "goodput"), 0.0)
        for attempt in job.attempts:
            figures = attempt.figures(now, bool(job.records))
            for key, value in figures.items():
                totals[key] += value
            per_class = classes.setdefault(attempt.gpu_class, {
                "attempts": 0, **dict.fromkeys(totals, 0.0), **dict.fromkeys(COUNTS, 0.0)})
            per_class["attempts"] += 1
            for key, value in figures.items():
                per_class[key] += value
            restart_setup = attempt.restart_setup()
            _count(per_class, attempt, restart_setup)
            record = {key: value for key, value in asdict(attempt).items()
                      if key not in ("transferring", "upload", "restarting", "last_upload")}
            attempts.append({**record, "figures": figures,
                             "restart_setup_seconds": restart_setup})
        ended = job.ended if job.ended is not None else now
        wall = (ended - job.submitted) if job.submitted is not None else totals["wall"]
        jobs.append({
            "job": job.id, "node": job.node, "state": job.state,
            "submitted": job.submitted, "ended": job.ended, "wall": wall,
            "waiting": max(0.0, wall - totals["wall"]), "in_slots": totals,
            "attempts": attempts,
            "checkpoints": sum(len(a.checkpoints) for a in job.attempts),
            "records": job.records})
    for per_class in classes.values():
        per_class["costs"] = _costs(per_class)
    return {"jobs": jobs, "gpu_classes": classes, "warnings": reading.warnings,
            "read_at": now}


# what a GPU class's costs are averaged from (see _costs)
COUNTS = ("starts", "checkpoints", "uploads", "restart_setup", "evictions", "claims_started",
          "claim_start")


def _count(per_class: dict[str, Any], attempt: Attempt, restart_setup: float) -> None:
    per_class["starts"] += len(attempt.process_starts)
    per_class["checkpoints"] += len(attempt.checkpoints)
    per_class["uploads"] += attempt.output_seconds - attempt.final_output_seconds
    per_class["restart_setup"] += restart_setup
    if attempt.outcome == "evicted" and attempt.code != RESCHEDULED_AFTER_CHECKPOINT:
        per_class["evictions"] += 1
    if attempt.process_starts and attempt.ready:
        per_class["claims_started"] += 1
        per_class["claim_start"] += (attempt.input_seconds + attempt.ready[0]
                                     - attempt.process_starts[0])


def _costs(per_class: dict[str, Any]) -> dict[str, float | None]:
    """The class's measured costs, in the terms of `submit.preemption.ClassCosts` and a
    sweep's `condor.gpu_classes`: seconds a checkpoint costs (writing, upload and the setup
    of the restart after it), a new claim (input and setup), and slot time per eviction
    (None: none seen)."""
    checkpoints = per_class["checkpoints"]
    paid = per_class["checkpoint"] + per_class["uploads"] + per_class["restart_setup"]
    return {
        "checkpoint_seconds": paid / checkpoints if checkpoints else None,
        "restart_seconds": (per_class["claim_start"] / per_class["claims_started"]
                            if per_class["claims_started"] else None),
        "mean_time_between_evictions": (per_class["wall"] / per_class["evictions"]
                                        if per_class["evictions"] else None)}
