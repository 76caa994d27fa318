"""Replay a written DAG the way condor_submit_dag, DAGMan, the schedd and the starter run it.

A test tool, not a scheduler: it runs every job on this machine, one after another or a few at
a time, so that a test sees what the files we write do when HTCondor takes them literally.
Submit descriptions are read and expanded with the `htcondor2` bindings (`htcondor2.Submit`,
`Submit.from_dag`); only the DAG language lines are parsed here.

What it does, as HTCondor does it:

- `Pool.submit_dag("condor_submit_dag [-usedagdir] DAG", cwd=...)`: the command line a user
  types, in the directory they type it in. DAGMan's working directory is that directory, or the
  DAG's own with `-usedagdir`; node submit files, `DIR`, PRE/POST scripts and relative paths in
  submit files are resolved against it. DAGMan's environment is the submitter's, filtered by
  the `getenv` list of the `.condor.sub` file that `Submit.from_dag` writes.
- DAG lines: JOB/NODE (with DIR, NOOP, DONE), FINAL, PROVISIONER, VARS (values become submit
  macros, expanded by `htcondor2.Submit`; set before the submit file is read, as DAGMan's
  default PREPEND does, so the file's own commands win), SCRIPT PRE/POST (run in the node's
  directory with `$JOB`, `$NODE`, `$RETRY`, `$MAX_RETRIES`, `$RETURN`, `$PRE_SCRIPT_RETURN`,
  `$DAG_STATUS`, `$FAILED_COUNT`, `$DAGID`, `$JOBID`, `$CLUSTERID`; other `$WORDS` stay as
  they are),
  PARENT/CHILD, RETRY n [UNLESS-EXIT m] (the whole node again: PRE, job, POST), PRE_SKIP
  (the PRE script's exit value that marks the node done without its job or POST), ABORT-DAG-ON
  (on the PRE script's value, the POST script's, or the job's when there is no POST; jobs still
  running are removed, FINAL runs), CATEGORY/MAXJOBS, CONFIG (recorded only). The FINAL node
  always runs; as in DAGMan its success or failure is the DAG's, whatever happened before.
  A PROVISIONER node's job starts first; the other nodes wait until its job ad has
  `ProvisionerState == 2` (set through chirp); the DAG ends when its job ends too.
- SUBDAG EXTERNAL (with DIR, NOOP, DONE): as DAGMan's default lazy submission, the inner DAG
  file is read only when the node runs, after its PRE script (which may write it); it is
  replayed with the same pool, `-usedagdir` passed down, its own `.lock`, and its DAGMan's
  exit code as the node's `$RETURN`. Its jobs and scripts join the outer run's lists; its
  nodes are in `NodeResult.subdag`.
- Queue statements: `queue`, `queue N`, `queue VARS from FILE` / `in` / `matching` (item data
  from `Submit.itemdata()`, read in the node's directory): one job (proc) per item, all of them
  running at once, with `$(Process)`, `$(ProcId)`, `$(Cluster)`, `$(ClusterId)` and the item's
  variables. When a proc fails (exits non-zero), DAGMan's defaults remove the cluster's other
  procs, running or idle (their outputs never come back); `$RETURN` is the first failed
  proc's exit code, else 0.
- What condor_submit checks: the executable exists; output, error and log can be created (their
  folders exist; output and error are created empty at submission, the log only if missing),
  initialdir exists.
- Machines: `Pool(machines=[Machine(name, ad), ...])`, taken in turn by claims (a job that
  comes back after an eviction or a reschedule goes to the machine after its last one); the
  machine's ad goes into the sandbox's `.machine.ad` with the slot's resources and name.
- Vanilla jobs run in a fresh, empty scratch directory that gets the executable and only
  `transfer_input_files` (relative to initialdir; `dir/` sends the folder's contents; URLs go
  through a stand-in plugin that maps a URL prefix such as `osdf:///ospool/ap40/data/alice` to a
  local folder). A missing input, or an URL with no plugin, puts the job on hold. The job gets
  no environment but `environment`, `getenv` (from DAGMan's environment) and what the starter
  sets: `_CONDOR_SCRATCH_DIR`, `_CONDOR_JOB_AD`, `_CONDOR_MACHINE_AD`, `_CONDOR_JOB_IWD`,
  `_CONDOR_SLOT`, `TMPDIR`/`TMP`/`TEMP`, `OMP_NUM_THREADS` and the other thread counts
  (request_cpus), `BATCH_SYSTEM`, `HOME` (an empty folder: the execute node's home is not the
  submitter's), and `_CONDOR_CHIRP_CONFIG` and `_CHIRP_DELAYED_UPDATE_PREFIX` (`Chirp*`) with
  `want_io_proxy`. No `PATH`.
  On exit, stdout/stderr go to `output`/`error`, and `transfer_output_files` come back to
  initialdir (or where `transfer_output_remaps` says); one that does not exist puts the job on
  hold. Without `transfer_output_files`, new or changed top-level files come back.
- `checkpoint_exit_code`: the job's `transfer_checkpoint_files` are uploaded (saved in the
  spool) and the job restarts in place: same sandbox (files outside the checkpoint survive),
  same slot, stdout/stderr appended to. With `Pool(reschedule_after_checkpoint=...)` it is
  rescheduled instead, as HTCondor does when it cannot reactivate the claim: a new claim, on
  the next machine, in a fresh sandbox with its inputs and that checkpoint.
- Evictions, injected with `Pool(evictions=[Eviction(node, start, after, code, ...)])`: the
  chosen start is killed `after` seconds in (SIGTERM to its process group, SIGKILL after a
  grace time) and the job restarts on a new claim from its last saved checkpoint; what it did
  since is lost. `Pool(restart_delay=S)` puts S seconds between a claim's end and the next.
- The job event log (`log`, appended to under a lock, one whole event per write, in
  HTCondor's text format with its default ISO dates in local time): `000` at submission (with
  `DAG Node:`), `040` around each input transfer, output transfer and checkpoint upload, `001`
  when a claim's process starts (`SlotName`, `CondorScratchDir`, the slot's Cpus/Disk/GPUs/
  Memory and the machine attributes `ulog_execute_attrs` names; none for a restart in place),
  `005` at the end (usage and byte counts 0), `004` for an eviction or a reschedule (with
  the `021` the starter writes first for the latter), `021` then `012` when the starter puts
  the job on hold (`012` alone for other holds), `008` for each chirp `ulog` line, `009` when
  DAGMan removes the job. Local-universe jobs get the same but transfers, and their `001`
  names the access point, without a slot or properties.
- Local-universe jobs run on the access point in their initialdir, with `environment` and
  `getenv`, stdout/stderr written straight to `output`/`error`.
- Chirp (`want_io_proxy = true`): a chirp server on 127.0.0.1 serves `set_job_attr` and
  `get_job_attr` (the job's ad) and `ulog` (a `008` event in the job's log). Delayed updates
  (`set_job_attr_delayed`) of names that do not match `Chirp*` are dropped, as the starter
  does with its default CHIRP_DELAYED_UPDATE_PREFIX; those it takes reach the ad at once
  (HTCondor's take up to the starter's and shadow's update intervals).
- `condor_q`: the only stand-in command, first on DAGMan's PATH (so PRE/POST scripts and
  jobs with `getenv` find it); it answers `-json`, `-constraint EXPR` (evaluated with
  classad2), `-attributes A,B` and `-af A B` from the ads of the jobs in the queue (with
  `DAGManJobId`, `DAGNodeName`, `RemoteHost`, `JobStatus`, `+`/`MY.` attributes and what
  chirp set).
- A held job stays held, as in HTCondor: its node never finishes, the DAG does not end, and the
  replay returns with `status == "stalled"` and the hold reasons.

What it does not model: matchmaking (requirements and request_* are recorded in the ad, never
checked against a machine ad; no GPU is assigned), the container, docker, grid and parallel
universes, evictions other than those injected (a test injects other damage through
`Pool(after_exit=...)`), `when_to_transfer_output = ON_EXIT_OR_EVICT` / `ON_SUCCESS`,
`preserve_relative_paths`, periodic expressions and job policy (`on_exit_hold`,
`max_retries`, ...), rescue DAGs, the node status file, the events of the job log not listed
above (image size, shadow exceptions, disconnections, ...) and the usage it reports, DAGMan's
`-maxidle`/`-maxpre`, SPLICE, INCLUDE, SERVICE nodes, DEFER, and submission
failures other than the checks above.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import classad2
import htcondor2

PROVISIONING_COMPLETE = 2
DAGMAN_CLUSTER = 100
# HTCondor's default CHIRP_DELAYED_UPDATE_PREFIX: the names a job may set as delayed updates
DELAYED_UPDATE_PREFIX = "Chirp*"


THREAD_VARS = ("CUBACORES", "GOMAXPROCS", "JULIA_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS", "OMP_THREAD_LIMIT",
               "OPENBLAS_NUM_THREADS", "PYTHON_CPU_COUNT", "ROOT_MAX_THREADS",
               "TF_LOOP_PARALLEL_ITERATIONS", "TF_NUM_THREADS")

IDLE, RUNNING, HELD, COMPLETED = 1, 2, 5, 4
# HTCondor's hold and vacate codes (condor_holdcodes.h) for what this harness does
FAILED_TO_CREATE_PROCESS, TRANSFER_OUTPUT_ERROR, TRANSFER_INPUT_ERROR = 6, 12, 13
JOB_EXECUTE_EXCEEDED, SCHEDD_VACATE, SUCCESSFUL_CHECKPOINT = 47, 1022, 1025
RESCHEDULE_MESSAGE = ("Rescheduling self-checkpoint job after checkpoint upload because "
                      "reactivating the claim would have failed.")  # the starter's words
DAG_ABORT_REASON = "DAG Abort: DAG is exiting and writing rescue file."  # DAGMan's condor_rm


def _is_attribute(macro: str) -> bool:
    """A `+Name` or `MY.Name` macro: a job ad attribute, not a submit command."""
    return macro.startswith("+") or macro.upper().startswith("MY.")


class NotModelled(Exception):
    """The DAG or a submit file uses something this harness does not replay."""


class SubmitFailed(Exception):
    """What condor_submit would refuse (DAGMan reports the job's return as -1001)."""


class Held(Exception):
    """The job went on hold: HoldReason, HoldReasonCode and HoldReasonSubCode. `remote`: the
    starter put it on hold (its error reaches the log as a 021 event first)."""

    def __init__(self, reason: str, code: int = 0, subcode: int = 0, *,
                 remote: bool = False) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.remote = code, subcode, remote


# --- the DAG language ------------------------------------------------------------------------

@dataclass
class DagNode:
    name: str
    submit_file: str
    kind: str = "JOB"
    directory: str = "."
    subdag: bool = False  # SUBDAG EXTERNAL: submit_file is the DAG file
    noop: bool = False
    done: bool = False
    vars: dict[str, str] = field(default_factory=dict)
    pre: list[str] | None = None
    pre_skip: int | None = None
    post: list[str] | None = None
    retry: int = 0
    unless_exit: int | None = None
    abort_on: list[tuple[int, int | None]] = field(default_factory=list)
    category: str | None = None
    parents: list[str] = field(default_factory=list)


@dataclass
class DagFile:
    nodes: dict[str, DagNode]
    max_jobs: dict[str, int]
    config: str | None


_VAR = re.compile(r'([A-Za-z_+][\w.+-]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def parse_dag(path: Path) -> DagFile:
    """The DAG file's lines (the subset listed in the module docstring)."""
    nodes: dict[str, DagNode] = {}
    max_jobs: dict[str, int] = {}
    config = None

    def targets(name: str) -> list[DagNode]:
        if name == "ALL_NODES":
            return [n for n in nodes.values() if n.kind == "JOB"]
        if name not in nodes:
            raise ValueError(f"{path.name}: node {name} is not defined (yet)")
        return [nodes[name]]

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0].upper()
        where = f"{path.name}:{number}"
        if key == "SUBDAG":
            if len(words) < 4 or words[1].upper() != "EXTERNAL":
                raise ValueError(f"{where}: SUBDAG EXTERNAL name file")
            words = words[1:]  # from here on like JOB name file ...
        if key in ("JOB", "NODE", "FINAL", "PROVISIONER", "SUBDAG"):
            node = DagNode(words[1], words[2], kind="JOB" if key in ("NODE", "SUBDAG") else key,
                           subdag=key == "SUBDAG")
            rest = [w.upper() for w in words[3:]]
            if "DIR" in rest:
                node.directory = words[3 + rest.index("DIR") + 1]
            node.noop, node.done = "NOOP" in rest, "DONE" in rest
            nodes[node.name] = node
        elif key == "VARS":
            text = raw.split(None, 2)[2] if len(words) > 2 else ""
            if text.split()[0].upper() in ("PREPEND", "APPEND"):
                text = text.split(None, 1)[1]
            pairs = {k: re.sub(r"\\(.)", r"\1", v) for k, v in _VAR.findall(text)}
            for node in targets(words[1]):
                node.vars.update(pairs)
        elif key == "SCRIPT":
            rest = words[1:]
            if rest[0].upper() in ("DEFER", "DEBUG"):
                raise NotModelled(f"{where}: SCRIPT {rest[0]}")
            when, name, command = rest[0].upper(), rest[1], rest[2:]
            if when not in ("PRE", "POST"):
                raise NotModelled(f"{where}: SCRIPT {when}")
            for node in targets(name):
                setattr(node, when.lower(), command)
        elif key == "PARENT":
            upper = [w.upper() for w in words]
            split = upper.index("CHILD")
            for child in words[split + 1:]:
                targets(child)[0].parents += words[1:split]
        elif key == "RETRY":
            for node in targets(words[1]):
                node.retry = int(words[2])
                if len(words) > 3 and words[3].upper() == "UNLESS-EXIT":
                    node.unless_exit = int(words[4])
        elif key == "ABORT-DAG-ON":
            ret = int(words[4]) if len(words) > 4 and words[3].upper() == "RETURN" else None
            for node in targets(words[1]):
                node.abort_on.append((int(words[2]), ret))
        elif key == "PRE_SKIP":
            for node in targets(words[1]):
                node.pre_skip = int(words[2])
        elif key == "CATEGORY":
            for node in targets(words[1]):
                node.category = words[2]
        elif key == "MAXJOBS":
            max_jobs[words[1]] = int(words[2])
        elif key == "CONFIG":
            config = words[1]
        elif key in ("NODE_STATUS_FILE", "JOBSTATE_LOG", "DOT"):
            continue
        else:
            raise NotModelled(f"{where}: {words[0]}")
    for node in nodes.values():
        for parent in node.parents:
            if parent not in nodes:
                raise ValueError(f"{path.name}: PARENT {parent} is not a node")
    return DagFile(nodes, max_jobs, config)


def checkpoint_at_once(script: Path, arguments: str = "--checkpoint-after 0.000001") -> None:
    """Make a written job script checkpoint at its first chance: the config's interval is in
    minutes (`condor.checkpoint_minutes`), too long for a test. `arguments` replace its
    `--checkpoint-after S`."""
    text, count = re.subn(r"--checkpoint-after \S+", arguments, script.read_text())
    if count != 1:
        raise ValueError(f"{script} has no --checkpoint-after to replace")
    script.write_text(text)


# --- submit-file values ----------------------------------------------------------------------

def split_arguments(value: str) -> list[str]:
    """`arguments` in HTCondor's new syntax ("a 'b c'") or old syntax (a b \\"c\\")."""
    value = value.strip()
    if not value:
        return []
    if not (value.startswith('"') and value.endswith('"') and len(value) > 1):
        return [w.replace('\\"', '"') for w in value.split()]
    text = value[1:-1].replace('""', '"')
    args, current, quoted, started, i = [], [], False, False, 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == "'" and text[i + 1 : i + 2] == "'":
                current.append("'")
                i += 1
            elif char == "'":
                quoted = False
            else:
                current.append(char)
        elif char == "'":
            quoted = started = True
        elif char in " \t":
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            current.append(char)
            started = True
        i += 1
    if quoted:
        raise ValueError(f"unbalanced single quote in arguments {value!r}")
    if started:
        args.append("".join(current))
    return args


def parse_environment(value: str) -> dict[str, str]:
    """`environment` in the new syntax ("A=1 B='x y'") or the old one (A=1;B=2)."""
    value = value.strip()
    if not value:
        return {}
    if value.startswith('"') and value.endswith('"'):
        entries = split_arguments(value)
    else:
        entries = [e for e in value.split(";") if e]
    env = {}
    for entry in entries:
        name, _, val = entry.partition("=")
        env[name] = val
    return env


def getenv_filter(value: str, source: dict[str, str]) -> dict[str, str]:
    """The variables `getenv` copies from the submitter's environment."""
    value = value.strip()
    if not value or value.lower() in ("false", "no"):
        return {}
    if value.lower() in ("true", "yes"):
        return dict(source)
    patterns = [p for p in re.split(r"[,\s]+", value) if p]
    return {k: v for k, v in source.items()
            if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "yes", "1")


# --- results ---------------------------------------------------------------------------------

@dataclass
class JobRun:
    """One start of one proc's process: restarts after a checkpoint exit (in place or
    rescheduled) and after an eviction are new starts of the same proc."""

    node: str
    proc: int
    retry: int
    start: int
    sandbox: Path | None
    exit_code: int | None = None  # minus the signal number when a signal ended it
    removed: bool = False
    seconds: float = 0.0
    machine: str | None = None  # host name (the access point's for the local universe)
    slot: str | None = None  # SlotName, as the 001 event says it
    gpu: str | None = None  # the machine ad's GPUs_DeviceName
    started: float | None = None  # wall-clock epoch of the process start
    ended: float | None = None  # ... and of its end
    input_seconds: float = 0.0  # its input transfer (none for a restart in place)
    output_seconds: float = 0.0  # its output transfer, or its checkpoint upload
    evicted: int | None = None  # the code of the 004 event that ended it
    rescheduled: bool = False  # a checkpoint exit that moved the job to a new claim


@dataclass
class ScriptRun:
    node: str
    when: str
    retry: int
    argv: list[str]
    exit_code: int
    output: str
    seconds: float


@dataclass
class NodeResult:
    name: str
    status: str = "not_ready"  # done, failed, held, futile, removed, not_ready
    retries: int = 0
    job_return: int | None = None
    value: int | None = None  # what decided the node: POST's exit, else the job's, else PRE's
    error: str | None = None
    cluster: int | None = None  # of the last submission
    subdag: DagRun | None = None  # a SUBDAG EXTERNAL node's last run of its DAG


@dataclass
class DagRun:
    """What the replay did. `exit_code` is DAGMan's, None when the DAG never ended (held)."""

    status: str  # succeeded, failed, aborted, stalled
    exit_code: int | None
    dag_status: int
    nodes: dict[str, NodeResult]
    jobs: list[JobRun]
    scripts: list[ScriptRun]
    holds: list[str]
    node_dir: Path

    def summary(self) -> str:
        """A readable account for assertion messages."""
        lines = [f"DAG {self.status} (exit {self.exit_code}, DAG_STATUS {self.dag_status})"]
        for node in self.nodes.values():
            lines.append(f"  {node.name}: {node.status} retries={node.retries} "
                         f"job={node.job_return} value={node.value}"
                         + (f" ({node.error})" if node.error else ""))
        lines += [f"  held: {h}" for h in self.holds]
        for script in self.scripts:
            if script.exit_code:
                lines.append(f"  {script.when} {script.node} (retry {script.retry}) exited "
                             f"{script.exit_code}: {script.output.strip()[-800:]}")
        return "\n".join(lines)

    def starts(self, node: str) -> list[JobRun]:
        return [j for j in self.jobs if j.node == node]


# --- machines, evictions and the job event log ----------------------------------------------

@dataclass
class Machine:
    """An execute machine: its host name, the attributes of its slot ad (`GPUs_DeviceName`,
    `GPUs_Capability`, ...: what `ulog_execute_attrs` and `.machine.ad` show), and the IP
    address of its sinful string."""

    name: str
    ad: dict[str, Any] = field(default_factory=dict)
    address: str = "127.0.0.1"


@dataclass
class Eviction:
    """An eviction to inject: the `start`-th start (0-based, as `JobRun.start` counts them) of
    the node's job is killed `after` seconds after its process started, and the log gets a
    004 with `code`, `subcode` and `reason`. `proc` and `retry` narrow the match (None: any).
    A job that ends before `after` is not evicted."""

    node: str
    start: int = 0
    after: float = 0.0
    code: int = SCHEDD_VACATE
    subcode: int = 0
    reason: str = "Job vacated by schedd"
    proc: int | None = None
    retry: int | None = None

    def matches(self, node: str, proc: int, retry: int, start: int) -> bool:
        return (self.node == node and self.start == start
                and self.proc in (None, proc) and self.retry in (None, retry))


# The event bodies as condor_event.cpp's formatBody writes them. Usage is not measured here:
# its lines say 0, as do the byte counts.
USAGE = "\tUsr 0 00:00:00, Sys 0 00:00:00"
GENERIC_INFO_MAX = 1023  # GenericEvent keeps info[1024]


def sinful(address: str, host: str) -> str:
    """A daemon's address as HTCondor logs it."""
    return f"<{address}:9618?addrs={address}-9618&alias={host}>"


def _literal(value: Any) -> str:
    """A value as a ClassAd literal, the way HTCondor prints an attribute (a real as 8.0)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)  # an expression


def submit_body(host: str, node: str) -> str:
    return f"Job submitted from host: {host}\n    DAG Node: {node}\n"


def transfer_body(what: str, host: str | None = None) -> str:
    """040: `what` is e.g. "Started transferring input files"."""
    return f"{what}\n" + (f"\tTransferring to host: {host}\n" if host else "")


def execute_body(host: str, slot: str | None = None, props: dict[str, Any] | None = None) -> str:
    """001: the properties sorted by name, ignoring case, as the ad's attribute set does."""
    props = props or {}
    return (f"Job executing on host: {host}\n" + (f"\tSlotName: {slot}\n" if slot else "")
            + "".join(f"\t{k} = {_literal(props[k])}\n" for k in sorted(props, key=str.lower)))


def terminated_body(code: int) -> str:
    """005: `code` is the return value, or minus the signal that ended the job."""
    how = (f"\t(1) Normal termination (return value {code})\n" if code >= 0 else
           f"\t(0) Abnormal termination (signal {-code})\n\t(0) No core file\n")
    usage = "".join(f"\t{USAGE}  -  {kind} Usage\n"
                    for kind in ("Run Remote", "Run Local", "Total Remote", "Total Local"))
    sent = "".join(f"\t0  -  {kind} By Job\n" for kind in (
        "Run Bytes Sent", "Run Bytes Received", "Total Bytes Sent", "Total Bytes Received"))
    return "Job terminated.\n" + how + usage + sent


def evicted_body(code: int, subcode: int, reason: str) -> str:
    """004, not checkpointed (a vanilla job's eviction never is)."""
    first = f" Code {code} Subcode {subcode}" if code else ""
    return (f"Job was evicted.{first}\n\t(0) CPU times\n"
            f"\t{USAGE}  -  Run Remote Usage\n\t{USAGE}  -  Run Local Usage\n"
            "\t0  -  Run Bytes Sent By Job\n\t0  -  Run Bytes Received By Job\n"
            + (f"\tReason: {reason}\n" if reason else ""))


def remote_error_body(slot: str, message: str, code: int = 0, subcode: int = 0) -> str:
    """021 from the starter: each line of the message indented by a tab."""
    text = message[:-1] if message.endswith("\n") else message
    return (f"Error from starter on {slot}:\n"
            + "".join(f"\t{line}\n" for line in (text.split("\n") if text else []))
            + (f"\tCode {code} Subcode {subcode}\n" if code else ""))


def held_body(reason: str, code: int, subcode: int) -> str:
    return (f"Job was held.\n\t{reason or 'Reason unspecified'}\n"
            f"\tCode {code} Subcode {subcode}\n")


def aborted_body(reason: str) -> str:
    return "Job was aborted.\n" + (f"\t{reason}\n" if reason else "")


def generic_body(text: str) -> str:
    """008, as the starter writes a chirp `ulog` line (cut to what the event keeps)."""
    return f"{text[:GENERIC_INFO_MAX]}\n"


def event_text(number: int, cluster: int, proc: int, when: float, body: str) -> str:
    """One whole event: the header in HTCondor's default format (ISO date, local time, whole
    seconds), the body, and the `...` line that ends it."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(when)))
    return f"{number:03d} ({cluster:03d}.{proc:03d}.000) {stamp} {body}...\n"


def _quantity(value: str, unit: str) -> int | None:
    """A request_memory/request_disk value (`16GB`, `100`, `2.5G`) in `unit` (K or M, the
    default when no unit is given), rounded up; None for an expression."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGTP]?)B?\s*", value, re.IGNORECASE)
    if match is None:
        return None
    powers = "KMGTP"
    scale = 1024.0 ** (powers.index((match[2] or unit).upper()) - powers.index(unit))
    return math.ceil(float(match[1]) * scale)


# --- chirp and condor_q ----------------------------------------------------------------------

def _chirp_words(line: str) -> list[str]:
    words, current, i = [], [], 0
    while i < len(line):
        char = line[i]
        if char == "\\" and i + 1 < len(line):
            current.append(line[i + 1])
            i += 2
            continue
        if char == " ":
            words.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    words.append("".join(current))
    return words


class _ChirpHandler(socketserver.StreamRequestHandler):
    """The chirp protocol as the starter's proxy speaks it: the job ad, and `ulog` lines that
    become 008 events in the job's log."""

    def handle(self) -> None:
        pool: Pool = self.server.pool  # type: ignore[attr-defined]
        job: _Job | None = None
        for raw in self.rfile:
            words = _chirp_words(raw.decode().rstrip("\n"))
            command, args = words[0], words[1:]
            if command == "cookie":
                job = pool._jobs_by_cookie.get(args[0]) if args else None
                self._reply("0" if job is not None else "-1")
            elif job is None:
                self._reply("-1")
            elif command == "set_job_attr_delayed" and len(args) == 2 and not \
                    fnmatch.fnmatchcase(args[0].lower(), DELAYED_UPDATE_PREFIX.lower()):
                # the starter drops a delayed update whose name does not match its
                # CHIRP_DELAYED_UPDATE_PREFIX, with a reply the client does not raise on
                self._reply("1")
            elif command in ("set_job_attr", "set_job_attr_delayed") and len(args) == 2:
                with pool._lock:
                    job.ad[args[0]] = classad2.ExprTree(args[1])
                    pool._write_queue()
                self._reply("0")
            elif command in ("get_job_attr", "get_job_attr_delayed") and len(args) == 1:
                with pool._lock:
                    value = str(job.ad.lookup(args[0])) if args[0] in job.ad else "UNDEFINED"
                self._reply(str(len(value)))
                self.wfile.write(value.encode())
            elif command == "ulog" and args:  # the first word, as the starter's sscanf reads it
                pool._log(job, 8, generic_body(args[0]))
                self._reply("0")
            else:
                self._reply("-8")  # not supported

    def _reply(self, text: str) -> None:
        self.wfile.write(f"{text}\n".encode())


CONDOR_Q = '''\
"""condor_q stand-in of the replay harness: answers from the harness's job queue."""
import json, sys
import classad2

args = sys.argv[1:]
constraint, attributes, autoformat, as_json = "true", None, None, False
while args:
    arg = args.pop(0)
    if arg in ("-json",):
        as_json = True
    elif arg in ("-constraint", "-const"):
        constraint = args.pop(0)
    elif arg in ("-attributes", "-attribute"):
        attributes = args.pop(0).split(",")
    elif arg in ("-af", "-autoformat"):
        autoformat = list(args)
        args = []
    else:
        sys.exit(f"condor_q stand-in: {arg} is not modelled")
with open(QUEUE, encoding="utf-8") as handle:
    ads = [classad2.parseOne(text) for text in json.load(handle)]
selected = [ad for ad in ads if classad2.ExprTree(constraint).eval(ad) is True]
def value(ad, name):
    v = ad.eval(name) if name in ad else None
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
if autoformat:
    for ad in selected:
        print(" ".join(str(value(ad, a)) if a in ad else "undefined" for a in autoformat))
elif as_json:
    print(json.dumps([{k: value(ad, k) for k in (attributes or list(ad)) if k in ad}
                      for ad in selected]))
else:
    for ad in selected:
        print(ad.eval("ClusterId"), ad.eval("ProcId"), ad.eval("JobStatus"))
'''


# --- the pool --------------------------------------------------------------------------------

class Pool:
    """An access point plus execute slots on this machine, under `root`.

    `plugins` maps URL prefixes (`osdf:///ospool/ap40/data/alice`) to local folders.
    `slots` jobs run at once. `machines` are the execute machines, taken in turn (default:
    one, named `machine` or after this host). `after_exit(job, sandbox)` runs after a job
    exits, before its output is transferred (a test may damage an output there); not after an
    eviction. `timeout` bounds each job and script. `evictions` are injected as they come.
    `reschedule_after_checkpoint` (True, or the names of the nodes it applies to) moves a job
    that exits with its checkpoint code to a new claim, as HTCondor does when it cannot
    reactivate the claim, instead of restarting it in place. `restart_delay` seconds pass
    between the end of a claim (eviction or reschedule) and the next one's start.
    """

    def __init__(self, root: Path, *, plugins: dict[str, Path] | None = None, slots: int = 2,
                 machine: str | None = None, machines: list[Machine] | None = None,
                 timeout: float = 600,
                 after_exit: Callable[[JobRun, Path], None] | None = None,
                 evictions: list[Eviction] | None = None,
                 reschedule_after_checkpoint: bool | Collection[str] = False,
                 restart_delay: float = 0.0) -> None:
        if machine is not None and machines is not None:
            raise ValueError("give Pool machine (one machine's name) or machines, not both")
        self.root = Path(root).resolve()
        self.plugins = {k.rstrip("/"): Path(v) for k, v in (plugins or {}).items()}
        self.slots = threading.Semaphore(slots)
        self.machines = list(machines if machines is not None
                             else [Machine(machine or socket.gethostname())])
        if not self.machines:
            raise ValueError("a pool needs at least one execute machine")
        self.access_point = socket.gethostname()
        self.schedd_address = sinful("127.0.0.1", self.access_point)
        self.timeout = timeout
        self.after_exit = after_exit
        self.evictions = list(evictions or [])
        self.reschedule_after_checkpoint = reschedule_after_checkpoint
        self.restart_delay = restart_delay
        self._lock = threading.RLock()
        self._log_lock = threading.Lock()
        self._ads: list[classad2.ClassAd] = []
        self._jobs_by_cookie: dict[str, _Job] = {}
        self._claims = 0  # claims made, for the round robin over the machines
        self._next_cluster = DAGMAN_CLUSTER
        self._chirp: socketserver.ThreadingTCPServer | None = None
        for sub in ("execute", "spool", "bin", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.queue_file = self.root / "queue.json"
        self._write_queue()
        condor_q = self.root / "bin" / "condor_q"
        condor_q.write_text(f"#!{sys.executable}\nQUEUE = {str(self.queue_file)!r}\n" + CONDOR_Q)
        condor_q.chmod(0o755)

    # -- DAG submission -------------------------------------------------------------------

    def submit_dag(self, command: str | list[str], cwd: Path,
                   env: dict[str, str] | None = None) -> DagRun:
        """Run `condor_submit_dag ...` as typed in `cwd`, and replay the DAG to its end."""
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv or Path(argv[0]).name != "condor_submit_dag":
            raise ValueError(f"not a condor_submit_dag command: {argv}")
        options: dict[str, Any] = {}
        dags = []
        words = argv[1:]
        while words:
            word = words.pop(0)
            flag = word.lstrip("-").lower()
            if not word.startswith("-"):
                dags.append(word)
            elif flag == "usedagdir":
                options["UseDagDir"] = True
            elif flag == "force":
                options["Force"] = True
            elif flag == "batch-name":
                options["BatchName"] = words.pop(0)
            else:
                raise NotModelled(f"condor_submit_dag option {word}")
        if len(dags) != 1:
            raise NotModelled("one DAG file per condor_submit_dag")
        cwd = Path(cwd).resolve()
        submitter_env = dict(os.environ if env is None else env)
        with contextlib.chdir(cwd):
            if not Path(dags[0]).is_file():
                raise SubmitFailed(f"condor_submit_dag: {dags[0]} does not exist in {cwd}")
            description = htcondor2.Submit.from_dag(dags[0], {
                **options, "Force": True, "DagmanPath": shutil.which("true") or "/bin/true"})
        dagman_args = split_arguments(description["arguments"])
        dag_path = cwd / dagman_args[dagman_args.index("-Dag") + 1]
        node_dir = dag_path.parent if "-UseDagDir" in dagman_args else cwd
        dagman_env = getenv_filter(description.get("getenv", ""), submitter_env)
        dagman_env.update(parse_environment(description.get("environment", "")))
        dagman_env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{dagman_env.get('PATH', '')}"
        lock = cwd / dagman_args[dagman_args.index("-Lockfile") + 1]
        if lock.exists():
            raise SubmitFailed(f"{lock} exists: DAGMan is running this DAG")
        lock.write_text(f"{DAGMAN_CLUSTER}\n")
        try:
            return _Replay(self, parse_dag(dag_path), node_dir, dagman_env,
                           usedagdir="-UseDagDir" in dagman_args).run()
        finally:
            lock.unlink(missing_ok=True)
            self.close()

    def close(self) -> None:
        if self._chirp is not None:
            self._chirp.shutdown()
            self._chirp.server_close()
            self._chirp = None

    # -- the queue ------------------------------------------------------------------------

    def _new_cluster(self) -> int:
        with self._lock:
            self._next_cluster += 1
            return self._next_cluster

    def _write_queue(self) -> None:
        with self._lock:
            live = [str(ad) for ad in self._ads if ad.eval("JobStatus") != COMPLETED]
            tmp = self.queue_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(live))
            os.replace(tmp, self.queue_file)

    def _set(self, ad: classad2.ClassAd, **values: Any) -> None:
        with self._lock:
            for key, value in values.items():
                ad[key] = value
            self._write_queue()

    def _chirp_address(self) -> tuple[str, int]:
        with self._lock:
            if self._chirp is None:
                server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _ChirpHandler)
                server.daemon_threads = True
                server.pool = self  # type: ignore[attr-defined]
                threading.Thread(target=server.serve_forever, daemon=True).start()
                self._chirp = server
            return self._chirp.server_address[:2]

    def _claim(self, job: _Job) -> _Claim:
        """A slot for the job's next claim: machines are taken in turn, and a job that comes
        back (after an eviction or a reschedule) goes to the machine after its last one."""
        with self._lock:
            if job.machine_index is None:
                job.machine_index = self._claims
            else:
                job.machine_index += 1
            self._claims += 1
            machine = self.machines[job.machine_index % len(self.machines)]
        execute = self.root / "execute" / machine.name
        execute.mkdir(parents=True, exist_ok=True)
        job.slot = f"slot1_{job.proc + 1}@{machine.name}"
        return _Claim(machine, job.slot, Path(tempfile.mkdtemp(prefix="dir_", dir=execute)))

    def _eviction(self, job: _Job, retry: int, start: int) -> Eviction | None:
        return next((e for e in self.evictions
                     if e.matches(job.node, job.proc, retry, start)), None)

    def _reschedules(self, node: str) -> bool:
        wanted = self.reschedule_after_checkpoint
        return wanted if isinstance(wanted, bool) else node in wanted

    def _log(self, job: _Job, number: int, body: str, when: float | None = None) -> None:
        """Append one event to the job's `log`, whole and in one write: the jobs of a DAG
        share their log file, and a reader must never meet half an event."""
        if job.log is None:
            return
        text = event_text(number, job.cluster, job.proc,
                          time.time() if when is None else when, body).encode()
        with self._log_lock:
            fd = os.open(job.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)

    def _fetch(self, url: str, target_dir: Path) -> None:
        """The stand-in transfer plugin: a URL under a known prefix is a file in a folder."""
        for prefix, folder in self.plugins.items():
            if url == prefix or url.startswith(prefix + "/"):
                source = folder / url[len(prefix):].lstrip("/")
                if not source.exists():
                    raise Held(f"Transfer input files failure: {url}: no such object "
                               f"(plugin folder {folder})", TRANSFER_INPUT_ERROR, errno.ENOENT)
                _copy(source, target_dir / Path(url).name)
                return
        raise Held(f"Transfer input files failure: no file transfer plugin for {url}",
                   TRANSFER_INPUT_ERROR)


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True, symlinks=True)
    else:
        shutil.copy2(source, target)


@dataclass
class _Job:
    """One proc of a node's cluster, expanded."""

    node: str
    proc: int
    description: htcondor2.Submit
    submit_dir: Path
    ad: classad2.ClassAd
    cluster: int
    log: Path | None = None  # the job event log, once condor_submit has checked it
    slot: str | None = None  # of its current or last claim
    machine_index: int | None = None  # of its last claim, in the pool's round robin

    def get(self, key: str, default: str = "") -> str:
        if key not in self.description:
            return default
        try:
            return self.description.expand(key).strip()
        except KeyError:  # the bindings' expand() of an empty value, e.g. no output files
            return ""

    def path(self, key: str, base: Path) -> Path | None:
        value = self.get(key)
        return None if not value else (base / value if not os.path.isabs(value)
                                       else Path(value))

    @property
    def iwd(self) -> Path:
        return self.path("initialdir", self.submit_dir) or self.submit_dir


@dataclass
class _Claim:
    """A slot claimed for a job: its starts run there, in one sandbox, until an eviction or a
    reschedule ends the claim."""

    machine: Machine
    slot: str
    sandbox: Path
    executable: Path | None = None
    inputs: dict[str, int] = field(default_factory=dict)  # file name -> mtime after transfer
    resources: dict[str, int] = field(default_factory=dict)  # Cpus, Disk, GPUs, Memory
    env: dict[str, str] = field(default_factory=dict)


class _Replay:
    def __init__(self, pool: Pool, dag: DagFile, node_dir: Path, env: dict[str, str], *,
                 usedagdir: bool = False) -> None:
        self.pool, self.dag, self.node_dir, self.env = pool, dag, node_dir, env
        self.usedagdir = usedagdir
        self.results = {name: NodeResult(name) for name in dag.nodes}
        self.jobs: list[JobRun] = []
        self.scripts: list[ScriptRun] = []
        self.holds: list[str] = []
        self.aborted: tuple[str, int] | None = None  # (node, DAG exit code)
        self.abort_event = threading.Event()
        # each running process: (process, removable by DAGMan, its cluster)
        self.running: dict[int, tuple[subprocess.Popen, bool, int]] = {}
        self.removed: set[int] = set()
        self.failed_clusters: set[int] = set()  # removed by DAGMan after a proc failed
        self.categories = {c: threading.Semaphore(n) for c, n in dag.max_jobs.items() if n}
        self.lock = threading.RLock()

    # -- the DAG --------------------------------------------------------------------------

    def run(self) -> DagRun:
        nodes = self.dag.nodes
        provisioner = next((n for n in nodes.values() if n.kind == "PROVISIONER"), None)
        final = next((n for n in nodes.values() if n.kind == "FINAL"), None)
        normal = [n for n in nodes.values() if n.kind == "JOB"]
        for node in normal:
            if node.done:
                self.results[node.name].status = "done"
        with ThreadPoolExecutor(max_workers=max(4, len(nodes))) as executor:
            running: dict[Future, str] = {}
            ready_gate = threading.Event()
            if provisioner is not None:
                running[executor.submit(self._node, provisioner, ready_gate)] = provisioner.name
                while not ready_gate.wait(0.2):
                    if all(f.done() for f in running):
                        break
                result = self.results[provisioner.name]
                if not ready_gate.is_set() and result.status == "done":
                    result.status = "failed"
                    result.error = "its job ended before it set ProvisionerState = 2"
            else:
                ready_gate.set()
            started = {provisioner.name} if provisioner else set()
            while True:
                if ready_gate.is_set() and not self.abort_event.is_set():
                    for node in normal:
                        if node.name in started or self.results[node.name].status == "done":
                            continue
                        if all(self.results[p].status == "done" for p in node.parents):
                            started.add(node.name)
                            running[executor.submit(self._node, node)] = node.name
                pending = [f for f in running if not f.done()]
                if not pending:
                    break
                wait(pending, return_when=FIRST_COMPLETED)
            for future in running:
                future.result()  # the harness's own errors surface here
        stalled = any(r.status == "held" for r in self.results.values())
        for node in normal:  # never ready: behind a failed node (or an abort)
            result = self.results[node.name]
            if result.status == "not_ready" and not self.aborted and not stalled:
                result.status = "futile"
        failed = sum(r.status in ("failed", "removed") for r in self.results.values())
        # an abort whose DAG exit code is 0 leaves DAG_STATUS at 0, as DAGMan's shutdown does
        dag_status = (3 if self.aborted[1] else 0) if self.aborted else 2 if failed else 0
        if stalled:
            return self._result("stalled", None, dag_status)
        if self.aborted:
            status, code = "aborted", self.aborted[1]
        else:
            status, code = ("failed", 1) if failed else ("succeeded", 0)
        if final is not None:
            self._node(final, dag_status=dag_status, failed_count=failed)
            ok = self.results[final.name].status == "done"
            status, code = ("succeeded", 0) if ok else ("failed", 1)
        return self._result(status, code, dag_status)

    def _result(self, status: str, code: int | None, dag_status: int) -> DagRun:
        return DagRun(status, code, dag_status, self.results, self.jobs, self.scripts,
                      self.holds, self.node_dir)

    def _abort(self, node: DagNode, value: int) -> bool:
        for abort_value, ret in node.abort_on:
            if value == abort_value:
                with self.lock:
                    if self.aborted is None:
                        self.aborted = (node.name, value if ret is None else ret)
                    self.abort_event.set()
                    for key, (proc, removable, _) in list(self.running.items()):
                        if removable:
                            self.removed.add(key)
                            _kill(proc)
                return True
        return False

    def _remove_cluster(self, cluster: int) -> None:
        """As DAGMan does when a proc of a node's cluster fails (DAGMAN_REMOVE_JOB_LIST_ON_
        FAILURE, default true, with no failure tolerance): remove the others, running or not."""
        with self.lock:
            self.failed_clusters.add(cluster)
            for key, (proc, removable, of) in list(self.running.items()):
                if removable and of == cluster:
                    self.removed.add(key)
                    _kill(proc)

    def _removing(self, job: _Job) -> bool:
        """Whether DAGMan is removing this job: the DAG aborts, or its cluster failed."""
        return self.abort_event.is_set() or job.cluster in self.failed_clusters

    def _node(self, node: DagNode, gate: threading.Event | None = None, *,
              dag_status: int = 0, failed_count: int = 0) -> None:
        """PRE, job, POST, and the retries, as DAGMan runs one node."""
        result = self.results[node.name]
        directory = (self.node_dir / node.directory).resolve()
        macros = {"DAG_STATUS": str(dag_status), "FAILED_COUNT": str(failed_count)}
        for retry in range(node.retry + 1):
            if self.abort_event.is_set() and node.kind != "FINAL":
                result.status = "removed"
                return
            result.retries = retry
            pre_value = -1
            if node.pre:
                pre_value = self._script(node, "PRE", node.pre, directory, retry, macros)
                if node.pre_skip is not None and pre_value == node.pre_skip:
                    result.status, result.value = "done", 0  # no job, no POST script
                    return
                if self._abort(node, pre_value):
                    result.status, result.value = "failed", pre_value
                    return
            if node.pre and pre_value != 0:
                value = pre_value
                result.job_return = -1004
            else:
                try:
                    job_return = self._cluster(node, directory, retry, macros, gate)
                except Held as exc:
                    result.status, result.error = "held", str(exc)
                    with self.lock:
                        self.holds.append(f"{node.name}: {exc}")
                    if gate is not None:
                        gate.set()
                    return
                if job_return is None:  # removed by an abort
                    result.status = "removed"
                    return
                result.job_return = value = job_return
                if node.post:
                    cluster = result.cluster or 0
                    value = self._script(node, "POST", node.post, directory, retry,
                                         {**macros, "RETURN": str(job_return),
                                          "PRE_SCRIPT_RETURN": str(pre_value),
                                          "JOBID": f"{cluster}.0", "CLUSTERID": str(cluster)})
            result.value = value
            if self._abort(node, value):
                result.status = "done" if value == 0 else "failed"
                return
            if value == 0:
                result.status = "done"
                return
            if node.unless_exit is not None and value == node.unless_exit:
                break
        result.status = "failed"

    def _script(self, node: DagNode, when: str, command: list[str], directory: Path,
                retry: int, macros: dict[str, str]) -> int:
        values = {"JOB": node.name, "NODE": node.name, "RETRY": str(retry),
                  "MAX_RETRIES": str(node.retry), "DAGID": str(DAGMAN_CLUSTER), **macros}
        argv = [values.get(w[1:].upper(), w) if w.startswith("$") else w for w in command]
        executable = argv[0] if os.path.isabs(argv[0]) else str(directory / argv[0])
        started = time.monotonic()
        try:
            proc = subprocess.run([executable, *argv[1:]], cwd=directory, env=self.env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=self.pool.timeout)
            code, output = proc.returncode, proc.stdout + proc.stderr
        except OSError as exc:
            code, output = 1, f"cannot run {executable}: {exc}"
        except subprocess.TimeoutExpired:
            code, output = 1, f"ran past the harness's {self.pool.timeout} s"
        with self.lock:
            self.scripts.append(ScriptRun(node.name, when, retry, argv, code, output,
                                          time.monotonic() - started))
        return code

    # -- the node's job cluster -----------------------------------------------------------

    def _cluster(self, node: DagNode, directory: Path, retry: int, macros: dict[str, str],
                 gate: threading.Event | None) -> int | None:
        """Submit the node's cluster and run its procs; the node's $RETURN (None if removed)."""
        if node.noop:
            return 0
        if node.subdag:
            return self._subdag(node, directory)
        cluster = self.results[node.name].cluster = self.pool._new_cluster()
        try:
            jobs = self._expand(node, directory, retry, cluster, macros)
        except (SubmitFailed, ValueError, RuntimeError, OSError) as exc:
            self.results[node.name].error = f"submit failed: {exc}"
            return -1001
        category = self.categories.get(node.category or "")
        codes, failure = [], None
        with category or contextlib.nullcontext():
            with ThreadPoolExecutor(max_workers=len(jobs)) as executor:
                futures = [executor.submit(self._proc, job, retry, gate) for job in jobs]
                for future in as_completed(futures):
                    codes.append(future.result())
                    if codes[-1] not in (0, None) and failure is None:
                        failure = codes[-1]  # the node's $RETURN: its first failed proc's
                        self._remove_cluster(cluster)
        if failure is not None:
            return failure
        return None if any(c is None for c in codes) else 0

    def _subdag(self, node: DagNode, directory: Path) -> int | None:
        """A SUBDAG EXTERNAL node, as DAGMan runs it by default (lazily): only now, after the
        node's PRE script, is its DAG file read (`condor_submit_dag -no_submit`, with
        -usedagdir passed down), and the inner DAGMan's exit code is the node's $RETURN."""
        result = self.results[node.name]
        result.cluster = self.pool._new_cluster()
        dag_path = directory / node.submit_file
        options = {"Force": True, "DagmanPath": shutil.which("true") or "/bin/true"}
        if self.usedagdir:
            options["UseDagDir"] = True
        try:
            with contextlib.chdir(directory):
                if not dag_path.is_file():
                    raise SubmitFailed(f"{node.submit_file} does not exist in {directory}")
                htcondor2.Submit.from_dag(node.submit_file, options)
            inner = parse_dag(dag_path)
        except (SubmitFailed, ValueError, RuntimeError, OSError) as exc:
            result.error = f"submit failed: {exc}"
            return -1001
        lock = dag_path.with_name(dag_path.name + ".lock")
        if lock.exists():
            result.error = f"submit failed: {lock} exists: DAGMan is running this DAG"
            return -1001
        lock.write_text(f"{result.cluster}\n")
        try:
            run = _Replay(self.pool, inner, dag_path.parent if self.usedagdir else directory,
                          self.env, usedagdir=self.usedagdir).run()
        finally:
            lock.unlink(missing_ok=True)
        result.subdag = run
        with self.lock:
            self.jobs += run.jobs
            self.scripts += run.scripts
            self.holds += run.holds
        if run.exit_code is None:
            raise Held(f"its sub-DAG {node.submit_file} stalled: {'; '.join(run.holds)}")
        return run.exit_code

    def _expand(self, node: DagNode, directory: Path, retry: int, cluster: int,
                macros: dict[str, str]) -> list[_Job]:
        """What condor_submit makes of the node's submit file: one expanded job per proc."""
        submit_file = directory / node.submit_file
        if not submit_file.is_file():
            raise SubmitFailed(f"submit file {submit_file} does not exist")
        text = submit_file.read_text(encoding="utf-8")
        with contextlib.chdir(directory):
            parsed = htcondor2.Submit(text)
            qargs = parsed.getQArgs().strip()
            items = parsed.itemdata()
            items = list(items) if items is not None else None
        count = int(qargs.split()[0]) if qargs and qargs.split()[0].isdigit() else 1
        if items is None:
            items = [{}] * count
        else:
            items = [item for item in items for _ in range(count)]
            items = [i if isinstance(i, dict) else {"Item": i} for i in items]
        # DAGMan sets a node's VARS (and its own macros) before it reads the submit file
        # (PREPEND, its default), so the file's own commands win over them; the queue
        # statement's variables are set per job afterwards
        first = {**node.vars, "JOB": node.name, "RETRY": str(retry), **macros,
                 "DAGManJobId": str(DAGMAN_CLUSTER)}
        prefix = "".join(f"{key} = {value}\n" for key, value in first.items()
                         if not _is_attribute(key))
        jobs = []
        for proc, item in enumerate(items):
            description = htcondor2.Submit(prefix + text)
            live = {"Cluster": str(cluster), "ClusterId": str(cluster), "Process": str(proc),
                    "ProcId": str(proc), "Step": "0", "Row": str(proc), **item}
            attrs = {key.split(".", 1)[-1].lstrip("+"): value
                     for key, value in {**first, **live}.items() if _is_attribute(key)}
            for key, value in live.items():
                if not _is_attribute(key):
                    description[key] = value
            ad = self._job_ad(description, cluster, proc, node.name, attrs)
            job = _Job(node.name, proc, description, directory, ad, cluster)
            self._check_submit(job)
            jobs.append(job)
        with self.pool._lock:
            self.pool._ads += [j.ad for j in jobs]
            self.pool._write_queue()
        for job in jobs:
            self.pool._log(job, 0, submit_body(self.pool.schedd_address, node.name))
        return jobs

    def _job_ad(self, description: htcondor2.Submit, cluster: int, proc: int, node: str,
                attrs: dict[str, str]) -> classad2.ClassAd:
        ad = classad2.ClassAd()
        ad.update({"ClusterId": cluster, "ProcId": proc, "JobStatus": 1,
                   "DAGManJobId": DAGMAN_CLUSTER, "DAGNodeName": node,
                   "Owner": os.environ.get("USER", "user"), "QDate": int(time.time())})
        for key in description.keys():
            if key.upper().startswith("MY.") or key.startswith("+"):
                attrs[key.split(".", 1)[-1].lstrip("+")] = description.expand(key)
        for key, value in attrs.items():
            ad[key] = classad2.ExprTree(value)
        return ad

    def _check_submit(self, job: _Job) -> None:
        universe = job.get("universe", "vanilla").lower()
        if universe not in ("vanilla", "local", "scheduler"):
            raise NotModelled(f"{job.node}: universe {universe}")
        if job.get("container_image"):
            raise NotModelled(f"{job.node}: container_image")
        when = job.get("when_to_transfer_output", "ON_EXIT").upper()
        if universe == "vanilla" and when != "ON_EXIT":
            raise NotModelled(f"{job.node}: when_to_transfer_output = {when}")
        if not job.iwd.is_dir():
            raise SubmitFailed(f"initialdir {job.iwd} does not exist")
        executable = job.path("executable", job.submit_dir)
        if executable is None or not executable.is_file():
            raise SubmitFailed(f"executable {job.get('executable')!r} does not exist "
                               f"(relative to {job.submit_dir})")
        for key in ("output", "error", "log"):
            target = job.path(key, job.iwd)
            if target is None:
                continue
            if not target.parent.is_dir():
                raise SubmitFailed(f"{key} {job.get(key)}: folder {target.parent} does not "
                                   "exist")
            if key == "log":  # appended to, never emptied
                target.touch()
                job.log = target
            else:
                target.write_bytes(b"")

    def _proc(self, job: _Job, retry: int, gate: threading.Event | None) -> int | None:
        """Run one proc to its end: its exit code, None if removed; raises Held."""
        try:
            if job.get("universe", "vanilla").lower() in ("local", "scheduler"):
                return self._local(job, retry, gate)
            return self._vanilla(job, retry, gate)
        except Held as exc:
            self.pool._set(job.ad, JobStatus=HELD)
            reason = str(exc)
            if exc.remote and job.slot is not None:  # the starter's error, then the hold
                self.pool._log(job, 21, remote_error_body(job.slot, reason, exc.code,
                                                          exc.subcode))
                reason = f"Error from {job.slot}: {reason}"
            self.pool._log(job, 12, held_body(reason, exc.code, exc.subcode))
            raise
        finally:
            if job.ad.eval("JobStatus") != HELD:
                self.pool._set(job.ad, JobStatus=COMPLETED)

    def _environment(self, job: _Job) -> dict[str, str]:
        env = getenv_filter(job.get("getenv", "false"), self.env)
        env.update(parse_environment(job.get("environment")))
        return env

    def _local(self, job: _Job, retry: int, gate: threading.Event | None) -> int | None:
        pool = self.pool
        run = JobRun(job.node, job.proc, retry, 0, None, machine=pool.access_point)
        self.jobs.append(run)
        executable = job.path("executable", job.submit_dir)
        env = {**self._environment(job), "_CONDOR_JOB_IWD": str(job.iwd)}
        out, err = job.path("output", job.iwd), job.path("error", job.iwd)

        def executing() -> None:
            pool._set(job.ad, JobStatus=RUNNING, RemoteHost=f"local@{pool.access_point}")
            pool._log(job, 1, execute_body(pool.schedd_address))

        run.exit_code = self._execute(job, [str(executable),
                                            *split_arguments(job.get("arguments"))],
                                      job.iwd, env, out, err, gate, run, on_start=executing)
        run.removed = run.exit_code is None
        self._log_end(job, run.exit_code)
        return run.exit_code

    def _vanilla(self, job: _Job, retry: int, gate: threading.Event | None) -> int | None:
        """The proc's claims and starts, as the shadow and the starter run them. A claim (the
        next machine, a fresh sandbox with the inputs and the last checkpoint, 040 and 001
        events) begins the job and follows an eviction or a rescheduled checkpoint exit; any
        other checkpoint exit restarts the job in place: same sandbox, no new 001."""
        pool = self.pool
        removable = self.dag.nodes[job.node].kind != "FINAL"
        ckpt_code = job.get("checkpoint_exit_code")
        checkpoint: Path | None = None
        claim: _Claim | None = None
        for start in range(100):
            fresh = claim is None
            if claim is None:
                if removable and self._removing(job):  # removed while idle
                    self._log_end(job, None)
                    return None
                claim = pool._claim(job)
            run = JobRun(job.node, job.proc, retry, start, claim.sandbox,
                         machine=claim.machine.name, slot=claim.slot,
                         gpu=claim.machine.ad.get("GPUs_DeviceName"))
            self.jobs.append(run)
            if fresh:
                began = time.time()
                pool._log(job, 40, transfer_body("Started transferring input files",
                                                 sinful(claim.machine.address,
                                                        claim.machine.name)))
                claim.executable, claim.inputs = self._transfer_in(job, claim.sandbox,
                                                                   checkpoint)
                pool._log(job, 40, transfer_body("Finished transferring input files"))
                run.input_seconds = time.time() - began
                claim.resources = self._resources(job, claim.sandbox)
                claim.env = self._starter_env(job, claim)
            argv = [str(claim.executable), *split_arguments(job.get("arguments"))]
            eviction = pool._eviction(job, retry, start)
            with pool.slots:
                code = self._execute(job, argv, claim.sandbox, claim.env,
                                     claim.sandbox / "_condor_stdout",
                                     claim.sandbox / "_condor_stderr", gate, run,
                                     on_start=functools.partial(self._executing, job, claim)
                                     if fresh else None, eviction=eviction)
            run.exit_code = code
            if code is None:
                run.removed = True
                self._log_end(job, None)
                return None
            if eviction is not None and run.evicted is not None:
                pool._log(job, 4, evicted_body(eviction.code, eviction.subcode,
                                               eviction.reason), run.ended)
                self._requeue(job)
                claim = None
                continue
            if pool.after_exit is not None:
                pool.after_exit(run, claim.sandbox)
            if ckpt_code and code == int(ckpt_code):  # HTCondor uploads the checkpoint
                began = time.time()
                pool._log(job, 40, transfer_body("Started transferring output files"))
                checkpoint = self._save_checkpoint(job, claim.sandbox)
                pool._log(job, 40, transfer_body("Finished transferring output files"))
                run.output_seconds = time.time() - began
                if pool._reschedules(job.node):
                    run.rescheduled, run.evicted = True, SUCCESSFUL_CHECKPOINT
                    pool._log(job, 21, remote_error_body(claim.slot, RESCHEDULE_MESSAGE,
                                                         SUCCESSFUL_CHECKPOINT))
                    pool._log(job, 4, evicted_body(SUCCESSFUL_CHECKPOINT, 0,
                                                   f"Error from {claim.slot}: "
                                                   f"{RESCHEDULE_MESSAGE}"))
                    self._requeue(job)
                    claim = None
                continue
            began = time.time()
            pool._log(job, 40, transfer_body("Started transferring output files"))
            self._transfer_out(job, claim.sandbox, claim.inputs)
            pool._log(job, 40, transfer_body("Finished transferring output files"))
            run.output_seconds = time.time() - began
            self._log_end(job, code)
            return code
        raise Held("the job restarted 100 times")

    def _executing(self, job: _Job, claim: _Claim) -> None:
        """The shadow's execute event, when the starter has started the job on a claim."""
        pool = self.pool
        with pool._lock:
            pool._set(job.ad, JobStatus=RUNNING, RemoteHost=claim.slot,
                      NumJobStarts=(job.ad.get("NumJobStarts") or 0) + 1)
        pool._log(job, 1, execute_body(sinful(claim.machine.address, claim.machine.name),
                                       claim.slot, self._execute_props(job, claim)))

    def _requeue(self, job: _Job) -> None:
        """The claim is gone: the job is idle until the next one (after `restart_delay`)."""
        with self.pool._lock:
            job.ad["JobStatus"] = IDLE
            if "RemoteHost" in job.ad:
                del job.ad["RemoteHost"]
            self.pool._write_queue()
        time.sleep(self.pool.restart_delay)

    def _log_end(self, job: _Job, code: int | None) -> None:
        """005 for an exit; 009 when DAGMan removed the job (code None)."""
        if code is None:
            owner = job.ad.get("Owner", "user")
            self.pool._log(job, 9, aborted_body(f"{DAG_ABORT_REASON} (by user {owner})"))
        else:
            self.pool._log(job, 5, terminated_body(code))

    def _resources(self, job: _Job, sandbox: Path) -> dict[str, int]:
        """What a partitionable slot carves out for the job: request_* or HTCondor's defaults
        (JOB_DEFAULT_REQUEST*; the disk's from the size of the input sandbox), rounded up as
        the default MODIFY_REQUEST_EXPR_* do. An expression is left out."""
        cpus = job.get("request_cpus", "1") or "1"
        memory = _quantity(job.get("request_memory", "128") or "128", "M")
        disk = _quantity(job.get("request_disk"), "K") if job.get("request_disk") else \
            int(max(1024, (_tree_size(sandbox) / 2**20 + 1) * 1.25) * 1024)
        resources = {"Cpus": int(cpus) if cpus.isdigit() else None,
                     "Memory": None if memory is None else -(-memory // 128) * 128,
                     "Disk": None if disk is None else -(-disk // 1024) * 1024}
        gpus = job.get("request_gpus")
        if gpus:
            resources["GPUs"] = int(gpus) if gpus.isdigit() else None
        return {k: v for k, v in resources.items() if v is not None}

    def _execute_props(self, job: _Job, claim: _Claim) -> dict[str, Any]:
        """The 001 event's properties: the scratch directory, the slot's resources, and the
        machine attributes `ulog_execute_attrs` names (those the machine ad has)."""
        props: dict[str, Any] = {"CondorScratchDir": str(claim.sandbox), **claim.resources}
        taken = {name.lower() for name in props}  # ClassAd names ignore case
        by_lower = {k.lower(): k for k in claim.machine.ad}
        for name in re.split(r"[,\s]+", job.get("ulog_execute_attrs")):
            key = by_lower.get(name.lower())
            if key is not None and name.lower() not in taken:
                props[key] = claim.machine.ad[key]
        return props

    def _starter_env(self, job: _Job, claim: _Claim) -> dict[str, str]:
        sandbox = claim.sandbox
        env = self._environment(job)
        cpus = job.get("request_cpus", "1") or "1"
        (sandbox / ".job.ad").write_text(str(job.ad))
        machine_ad = classad2.ClassAd()
        machine_ad.update({**claim.machine.ad, **claim.resources,
                           "Machine": claim.machine.name, "Name": claim.slot})
        machine_ad["Cpus"] = classad2.ExprTree(cpus)  # request_cpus as written
        (sandbox / ".machine.ad").write_text(f"{machine_ad}\n")
        env.update({name: cpus for name in THREAD_VARS})
        env.update({"_CONDOR_SCRATCH_DIR": str(sandbox), "TMPDIR": str(sandbox),
                    "TMP": str(sandbox), "TEMP": str(sandbox),
                    "_CONDOR_JOB_AD": str(sandbox / ".job.ad"),
                    "_CONDOR_MACHINE_AD": str(sandbox / ".machine.ad"),
                    "_CONDOR_JOB_IWD": str(job.iwd),
                    "_CONDOR_SLOT": claim.slot.split("@", 1)[0],
                    "BATCH_SYSTEM": "HTCondor", "HOME": str(self.pool.root / "home")})
        if _truthy(job.get("want_io_proxy")):
            host, port = self.pool._chirp_address()
            cookie = f"cookie-{job.cluster}-{job.proc}-{time.monotonic_ns()}"
            with self.pool._lock:
                self.pool._jobs_by_cookie[cookie] = job
            (sandbox / ".chirp.config").write_text(f"{host} {port} {cookie}\n")
            env["_CONDOR_CHIRP_CONFIG"] = str(sandbox / ".chirp.config")
            env["_CHIRP_DELAYED_UPDATE_PREFIX"] = DELAYED_UPDATE_PREFIX
        return env

    def _transfer_in(self, job: _Job, sandbox: Path,
                     checkpoint: Path | None) -> tuple[Path, dict[str, int]]:
        """The input sandbox; returns the executable and each file's mtime (to find outputs)."""
        executable = job.path("executable", job.submit_dir)
        assert executable is not None
        if _truthy(job.get("transfer_executable", "true")):
            target = sandbox / executable.name
            shutil.copy2(executable, target)
            executable = target
        entries = [e.strip() for e in job.get("transfer_input_files").split(",") if e.strip()]
        if job.get("input"):
            entries.append(job.get("input"))
        for entry in entries:
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", entry):
                self.pool._fetch(entry, sandbox)
                continue
            source = Path(entry) if os.path.isabs(entry) else job.iwd / entry
            if not source.exists():
                raise Held(f"Transfer input files failure: {entry}: no such file or directory "
                           f"(looked for {source})", TRANSFER_INPUT_ERROR, errno.ENOENT)
            if source.is_dir() and entry.endswith("/"):
                for child in source.iterdir():
                    _copy(child, sandbox / child.name)
            else:
                _copy(source, sandbox / source.name)
        if checkpoint is not None:
            for child in checkpoint.iterdir():
                _copy(child, sandbox / child.name)
        return executable, {p.name: p.stat().st_mtime_ns for p in sandbox.iterdir()}

    def _save_checkpoint(self, job: _Job, sandbox: Path) -> Path:
        names = [e.strip() for e in job.get("transfer_checkpoint_files").split(",") if e.strip()]
        spool = self.pool.root / "spool" / f"{job.cluster}.{job.proc}"
        new = spool.with_name(spool.name + ".new")
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        for name in names or [p.name for p in sandbox.iterdir()]:
            source = sandbox / name
            if not source.exists():
                raise Held(f"Transfer checkpoint files failure: {name} does not exist",
                           TRANSFER_OUTPUT_ERROR, errno.ENOENT)
            _copy(source, new / Path(name).name)
        shutil.rmtree(spool, ignore_errors=True)
        os.replace(new, spool)
        return spool

    def _transfer_out(self, job: _Job, sandbox: Path, inputs: dict[str, int]) -> None:
        for key, name in (("output", "_condor_stdout"), ("error", "_condor_stderr")):
            target = job.path(key, job.iwd)
            if target is not None and (sandbox / name).exists():
                shutil.copyfile(sandbox / name, target)
        remaps = {}
        for pair in job.get("transfer_output_remaps").strip('"').split(";"):
            if "=" in pair:
                source, dest = (p.strip() for p in pair.split("=", 1))
                remaps[source] = dest
        if "transfer_output_files" in job.description:
            names = [e.strip() for e in job.get("transfer_output_files").split(",") if e.strip()]
        else:  # new or changed files at the top of the sandbox; folders are not scanned
            skip = {"_condor_stdout", "_condor_stderr", ".job.ad", ".machine.ad",
                    ".chirp.config"}
            names = [p.name for p in sandbox.iterdir() if p.is_file() and p.name not in skip
                     and inputs.get(p.name) != p.stat().st_mtime_ns]
        for name in names:
            source = sandbox / name
            if not source.exists():
                raise Held(f"Transfer output files failure: {name} was not created by the job "
                           "(listed in transfer_output_files)", TRANSFER_OUTPUT_ERROR,
                           errno.ENOENT)
            dest = remaps.get(name, Path(name).name)
            target = Path(dest) if os.path.isabs(dest) else job.iwd / dest
            if not target.parent.is_dir():
                raise Held(f"Transfer output files failure: {target.parent} does not exist",
                           TRANSFER_OUTPUT_ERROR, errno.ENOENT)
            _copy(source, target)

    def _execute(self, job: _Job, argv: list[str], cwd: Path, env: dict[str, str],
                 out: Path | None, err: Path | None, gate: threading.Event | None,
                 run: JobRun, *, on_start: Callable[[], None] | None = None,
                 eviction: Eviction | None = None) -> int | None:
        """Run the process, watching chirp's ProvisionerState. `on_start` runs once the
        process has started (the execute event); an `eviction` kills it `eviction.after`
        seconds later, as the starter's soft kill does, and sets `run.evicted`.
        Returns the exit code (minus the signal number), or None when DAGMan removed it."""
        removable = self.dag.nodes[job.node].kind != "FINAL"
        stdout = open(out, "ab") if out else subprocess.DEVNULL
        stderr = (stdout if err == out else open(err, "ab")) if err else subprocess.DEVNULL
        try:
            proc = start_job(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
            run.started, started = time.time(), time.monotonic()
            with self.lock:
                self.running[id(proc)] = (proc, removable, job.cluster)
                if removable and self._removing(job):
                    self.removed.add(id(proc))
                    _kill(proc)
            if on_start is not None and id(proc) not in self.removed:
                on_start()
            try:
                while True:
                    wait = 0.1 if eviction is None else \
                        min(0.1, max(0.0, started + eviction.after - time.monotonic()))
                    try:
                        code = proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    if eviction is not None and time.monotonic() >= started + eviction.after:
                        _kill(proc)
                        run.evicted, code = eviction.code, proc.returncode
                        break
                    if gate is not None and not gate.is_set() and \
                            job.ad.get("ProvisionerState") == PROVISIONING_COMPLETE:
                        gate.set()
                    if time.monotonic() - started > self.pool.timeout:
                        _kill(proc)
                        raise Held(f"ran past the harness's {self.pool.timeout} s limit",
                                   JOB_EXECUTE_EXCEEDED)
            finally:
                run.seconds = time.monotonic() - started
                run.ended = time.time()
                with self.lock:
                    self.running.pop(id(proc), None)
            return None if id(proc) in self.removed else code
        finally:
            for handle in {stdout, stderr}:
                if handle is not subprocess.DEVNULL:
                    handle.close()


# exec errors that say "not now" rather than "never": the executable is still open for
# writing in a process forked (by another job's thread) while it was being copied into its
# sandbox (ETXTBSY), or the machine is short of processes or memory for a moment
TRANSIENT_EXEC_ERRORS = (errno.ETXTBSY, errno.EAGAIN, errno.ENOMEM)
EXEC_PATIENCE = 10.0  # seconds of transient errors before the job goes on hold


def start_job(argv: list[str], **options: Any) -> subprocess.Popen:
    """Start a job's process in its own session, as the starter does. A transient exec error
    is retried: in HTCondor another process transfers the executable, so the copy this
    harness makes in one thread while another forks (a busy machine widens that window) must
    not put a job on hold. Any other error, or one that lasts EXEC_PATIENCE, puts the job on
    hold, as in HTCondor."""
    deadline = time.monotonic() + EXEC_PATIENCE
    delay = 0.01
    while True:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                    **options)
        except OSError as exc:
            if exc.errno not in TRANSIENT_EXEC_ERRORS or time.monotonic() > deadline:
                raise Held(f"Failed to execute {argv[0]}: {exc.strerror}",
                           FAILED_TO_CREATE_PROCESS, exc.errno or 0, remote=True) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _kill(proc: subprocess.Popen) -> None:
    """condor_rm, or the starter's soft kill when it evicts a job: SIGTERM to the job's
    process group, then SIGKILL after a grace time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
