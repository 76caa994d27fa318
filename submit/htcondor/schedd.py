"""The schedd: submitting a DAG, reading the queue and DAGMan's node status file, and the
report `infer-corpus status` prints from both."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from inference.errors import Failure

from .description import classad_literal

NODE_STATES = {0: "not_ready", 1: "ready", 2: "pre", 3: "submitted", 4: "post", 5: "done",
               6: "error", 7: "futile"}



class CondorError(Failure):
    """HTCondor could not take the work: no schedd, a DAG already running, or submission
    refused."""


def require_not_running(dag: Path) -> None:
    """A CondorError while DAGMan runs `dag` (its .lock file exists): a DAG in flight must be
    neither rewritten nor submitted a second time."""
    if Path(dag).with_name(Path(dag).name + ".lock").exists():
        raise CondorError(f"{dag} is running (its .lock file exists: DAGMan is already running "
                          "it): wait for it, or remove it with condor_rm, before writing or "
                          "submitting it again")


def submit_dag(path: Path, *, batch_name: str | None = None,
               getenv: list[str] | None = None) -> int:
    """Submit a DAG to the local schedd; returns the DAGMan job's cluster id.

    Runs from the DAG's directory, so relative paths in it mean what they say. A DAG
    submitted again as it is picks up DAGMan's rescue DAG (finished nodes are not rerun); one
    written anew has none (`write_dag`) and leaves out finished work itself.
    `getenv` names environment variables DAGMan passes on to node jobs that ask for them
    (`condor_submit_dag -include_env`), such as an API key's.
    """
    import htcondor2

    path = Path(path).resolve()
    require_not_running(path)
    try:
        schedd = htcondor2.Schedd()
    except htcondor2.HTCondorException as exc:
        raise CondorError(
            f"no HTCondor schedd is reachable ({str(exc).strip().rstrip('.')}): run this on an "
            "access point where condor_q works, or set CONDOR_CONFIG; the DAG is ready at "
            f"{path} (condor_submit_dag submits it too)") from None
    options: dict[str, Any] = {"UpdateSubmit": True}
    if batch_name:
        options["batch-name"] = batch_name
    if getenv:
        options["GetFromEnv"] = ",".join(getenv)
    with contextlib.chdir(path.parent):
        try:
            description = htcondor2.Submit.from_dag(path.name, options)
            result = schedd.submit(description)
        except htcondor2.HTCondorException as exc:
            raise CondorError(f"submitting {path} failed: {str(exc).strip()}") from None
    return int(result.cluster())


def query_queue(constraint: str, attributes: list[str], timeout: float = 60) -> list[dict]:
    """The ads of the queued jobs that match `constraint` (only `attributes`), from
    `condor_q -json`: it asks the schedd of this access point. A CondorError when condor_q
    is missing, fails or says something that is not JSON."""
    try:
        proc = subprocess.run(["condor_q", "-json", "-constraint", constraint, "-attributes",
                               ",".join(attributes)], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CondorError(f"cannot run condor_q: {exc}") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no message"]
        raise CondorError(f"condor_q failed: {lines[-1][:300]}")
    try:
        ads = json.loads(proc.stdout or "[]")
    except ValueError:
        raise CondorError("condor_q -json printed something that is not JSON") from None
    return ads if isinstance(ads, list) else []


def read_node_status(path: Path) -> dict[str, Any] | None:
    """DAGMan's node status file as {"dag": {...}, "nodes": [{...}], "end": {...}}, or None
    when the file does not exist yet. States are names: not_ready, ready, pre, submitted,
    post, done, error, futile."""
    import classad2

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    report: dict[str, Any] = {"dag": {}, "nodes": [], "end": {}}
    for ad in classad2.parseAds(text):
        values = {key: _plain(ad.eval(key)) for key in ad}
        kind = values.get("Type")
        if kind == "DagStatus":
            values["state"] = NODE_STATES.get(values.get("DagStatus"), "unknown")
            report["dag"] = values
        elif kind == "NodeStatus":
            values["state"] = NODE_STATES.get(values.get("NodeStatus"), "unknown")
            report["nodes"].append(values)
        elif kind == "StatusEnd":
            report["end"] = values
    return report


JOB_STATES = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held",
              6: "transferring output", 7: "suspended"}
SUBMITTED_FILE = "submitted.json"


def record_submission(dag: Path, cluster: int) -> None:
    """Note beside the DAG which DAGMan job runs it, for `infer-corpus status`."""
    (dag.parent / SUBMITTED_FILE).write_text(json.dumps(
        {"cluster": cluster, "dag": dag.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        + "\n", encoding="utf-8")


def dag_report(dag: Path, status_file: Path, attribute: str, value: str,
               progress: dict[str, str], parents: tuple[str, ...] = ()) -> dict[str, Any]:
    """Where a DAG stands, from DAGMan's node status file, and while it runs (its `.lock`
    exists), its jobs in the queue: those whose ad has `attribute == value`, each with the
    `progress` attributes its job publishes through chirp (report key -> ad attribute).
    `parents`: DAGs beside it that run it as a sub-DAG (their submission is its)."""
    submitted_file = dag.parent / SUBMITTED_FILE
    submitted = (json.loads(submitted_file.read_text(encoding="utf-8"))
                 if submitted_file.is_file() else None)
    if submitted and submitted.get("dag", dag.name) not in (dag.name, *parents):
        submitted = None  # that submission was another DAG's
    report: dict[str, Any] = {"dag": str(dag), "submitted": submitted}
    if dag.with_name(dag.name + ".lock").exists():
        report.update(_queued_jobs(attribute, value, progress))
    status = read_node_status(status_file)
    if status is None:
        report["state"] = "waiting for DAGMan" if submitted else "not submitted"
        return report
    nodes = status["nodes"]
    counts = Counter(n["state"] for n in nodes)
    report.update({
        "state": status["dag"].get("state", "unknown"),
        "updated": status["end"].get("EndTime") or status["dag"].get("Timestamp"),
        "nodes": {state: counts[state] for state in
                  ("done", "submitted", "pre", "post", "ready", "not_ready", "error", "futile")
                  if counts[state]},
        "held": status["dag"].get("JobProcsHeld", 0),
        "retries": sum(n.get("RetryCount", 0) for n in nodes),
        "failed": [n["Node"] for n in nodes if n["state"] == "error"],
    })
    return report


def _queued_jobs(attribute: str, value: str, progress: dict[str, str]) -> dict[str, Any]:
    """{"jobs": [...]} from the schedd, or {"queue_error": why} when condor_q cannot tell."""
    if not shutil.which("condor_q"):
        return {"queue_error": "condor_q is not on the PATH"}
    try:
        ads = query_queue(f"{attribute} == {classad_literal(value)}",
                          ["ClusterId", "ProcId", "DAGNodeName", "JobStatus", "RemoteHost",
                           *progress.values()], timeout=30)
    except CondorError as exc:
        return {"queue_error": str(exc)}
    jobs = []
    for ad in sorted(ads, key=lambda a: (a.get("DAGNodeName") or "", a.get("ProcId", 0))):
        jobs.append({
            "node": ad.get("DAGNodeName"), "job": f"{ad.get('ClusterId')}.{ad.get('ProcId')}",
            "state": JOB_STATES.get(ad.get("JobStatus"), "unknown"), "host": ad.get("RemoteHost"),
            **{key: ad.get(name) for key, name in progress.items()}})
    return {"jobs": jobs}


def _plain(value: Any) -> Any:
    """A ClassAd value as a JSON-friendly Python value."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value)
