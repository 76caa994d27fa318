"""The inference DAG that `infer-corpus submit` writes into WORKDIR/condor/ and submits.

    partition  (access point: checks the inputs are unchanged, records this run's settings)
        -> shard-00000 ... shard-NNNNN   (one GPU job per unfinished shard; POST validates)
        -> index   (access point: loads the validated results into the search index)
    FINAL report   (access point: `infer-corpus status`, written to report.txt, always runs)

Shard jobs read their shard and the manifest through HTCondor file transfer (from the workdir,
or from an osdf:// / pelican:// URL under a name that includes the partition key, since cached
objects never change), and send the result back to condor/incoming/. The POST script moves a
result into results/ only when it checks out, so a bad result is retried instead of loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inference.config import InferenceConfig
from inference.config_loader import ConfigError
from inference.errors import EXIT_USAGE
from inference.manifest import Manifest
from inference.partition import partition_key
from inference.workdir import Workdir

from .config import CondorConfig
from .htcondor import (CondorError, Dag, Node, Script, access_point_commands, job_commands,
                       lint_dag, read_node_status, require_not_running, submit_dag,
                       transfer_source, write_dag, write_job_script, write_submit)

CONDOR_DIR = "condor"
DAG_FILE = "pipeline.dag"
STATUS_FILE = "pipeline.status"
SUBMITTED_FILE = "submitted.json"
JOB_SCRIPT = "run-shard.sh"
GPU_CATEGORY = "gpu"
EXIT_BAD_INPUT = EXIT_USAGE  # a shard job or POST script exits with it when retrying cannot help


@dataclass
class PipelineFiles:
    """What `write_pipeline` wrote, and what the DAG will do."""

    dag: Path
    shard_jobs: list[int]
    shards_done: int
    staged: int
    files: list[str]
    problems: list[str] = field(default_factory=list)


def condor_dir(workdir: Workdir) -> Path:
    return workdir.root / CONDOR_DIR


def incoming_path(workdir: Workdir, shard: int) -> Path:
    """Where a shard job's result lands before its POST script checks it."""
    return condor_dir(workdir) / "incoming" / f"result-{shard:05d}.parquet"


def shard_object_name(manifest: Manifest, shard: int) -> str:
    """A shard's name under a data URL: new content always gets a new name, because caches
    (OSDF, Pelican) treat an object name as immutable."""
    return f"shard-{shard:05d}.{manifest.partition_key}.parquet"


def _no_space(path: Path, what: str) -> str:
    text = str(path)
    if re.search(r"\s", text):
        raise ConfigError(f"{what} {text!r} contains a space, which DAGMan scripts cannot "
                          "take: use a path without spaces")
    return text


def _check_partition(workdir: Workdir, config: InferenceConfig) -> Manifest:
    manifest = workdir.manifest().require_partitioned()  # shards are what the DAG fans out on
    if partition_key(config, manifest.inputs) != manifest.partition_key:
        raise ConfigError(f"this config's fields/passages/shards settings differ from those "
                          f"{workdir.root} was partitioned with: use the same settings, or "
                          "partition again with this config")
    return manifest


def _stage(source: Path, target: Path) -> bool:
    """Put one shard where the data URL serves it; False when it is already there."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return True


def _write_job_script(path: Path, c: CondorConfig) -> None:
    checkpoint = (f" --checkpoint-after {c.checkpoint_minutes * 60}"
                  f" --checkpoint-exit-code {c.checkpoint_exit_code}"
                  if c.checkpoint_minutes else "")
    write_job_script(
        path, c,
        "One shard job of `infer-corpus submit`: embed one shard in the job's scratch directory.\n"
        "Arguments: SHARD SHARD_FILE RESULT_FILE. Exit codes are listed in docs/condor.md.",
        f'-m submit.job --shard "$1" --shard-file "$2" --result-file "$3"{checkpoint}')


def _shard_submit(workdir: Workdir, c: CondorConfig) -> dict[str, str]:
    r = c.resources
    inputs = ["$(shard_input)", str(workdir.root.resolve() / "manifest.json"),
              *(transfer_source(i) for i in c.extra_inputs)]
    commands = {
        **job_commands(c, JOB_SCRIPT, "$(shard) $(shard_file) $(result_file)", inputs),
        "transfer_output_files": "$(result_file)",
        "transfer_output_remaps": f'"$(result_file) = {condor_dir(workdir).resolve()}'
                                  '/incoming/$(result_file)"',
        "output": "logs/shard-$(shard).out",
        "error": "logs/shard-$(shard).err",
        "log": "pipeline.log",
        "request_gpus": str(r.request_gpus),
        "request_cpus": str(r.request_cpus),
        "request_memory": r.request_memory,
        "request_disk": r.request_disk,
    }
    if r.request_gpus and r.gpus_minimum_capability:
        commands["gpus_minimum_capability"] = r.gpus_minimum_capability
    if r.request_gpus and r.gpus_minimum_memory:
        commands["gpus_minimum_memory"] = r.gpus_minimum_memory
    if r.requirements:
        commands["requirements"] = r.requirements
    if c.checkpoint_minutes:
        commands["checkpoint_exit_code"] = str(c.checkpoint_exit_code)
        commands["transfer_checkpoint_files"] = "parts"
    for name, value in c.site_attributes.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"condor.site_attributes: {name!r} is not a ClassAd attribute name")
        commands[f"MY.{name}"] = _classad_literal(value)
    return commands


def _classad_literal(value: bool | int | str) -> str:
    """A site attribute's YAML value as a ClassAd literal: true, 12, "short"."""
    import classad2

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return classad2.quote(value)


def _local_submit(args: list[str], name: str, output: str | None = None) -> dict[str, str]:
    """A step that runs on the access point itself, with the Python that wrote the DAG."""
    return {
        **access_point_commands(args),
        "getenv": "true",
        "output": output or f"logs/{name}.out",
        "error": f"logs/{name}.err",
        "log": "pipeline.log",
    }


def write_pipeline(workdir: Workdir, config: InferenceConfig,
                   condor: CondorConfig) -> PipelineFiles:
    """Write WORKDIR/condor/: the DAG, its submit files and the job script; lint the DAG."""
    manifest = _check_partition(workdir, config)
    if not (condor.container_image or condor.venv_tarball or condor.python):
        raise ConfigError("condor: say what software the jobs run: container_image (docker://,"
                          " osdf:// or a .sif path), venv_tarball, or python (an interpreter "
                          "with infer-corpus installed that the execute nodes can run)")
    root = Path(_no_space(workdir.root.resolve(), "the workdir"))
    _no_space(Path(sys.executable), "the Python interpreter")
    out = condor_dir(workdir)
    require_not_running(out / DAG_FILE)
    for sub in ("logs", "incoming"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    key = manifest.result_key(config)
    pending = [e.shard for e in manifest.shards if not workdir.result_is_current(e, key)]

    config_file = out.resolve() / "config.yaml"  # the partition node runs in the DAG's directory
    settings = {**config.to_dict(), "condor": dataclasses.asdict(condor)}
    config_file.write_text("# the settings this DAG runs with (written by infer-corpus submit)\n"
                           + yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    _write_job_script(out / JOB_SCRIPT, condor)

    staged = 0
    stage_lines = []
    shard_vars = {}
    for shard in pending:
        local = workdir.shard_path(shard).resolve()
        if condor.shards_url:
            name = shard_object_name(manifest, shard)
            source = f"{condor.shards_url.rstrip('/')}/{name}"
            stage_lines.append(f"{local}\t{source}")
            if condor.stage_dir:
                staged += _stage(local, Path(condor.stage_dir) / name)
        else:
            name, source = local.name, str(local)
        shard_vars[shard] = {"shard": str(shard), "shard_input": source, "shard_file": name,
                             "result_file": incoming_path(workdir, shard).name}
    if stage_lines:
        (out / "stage.tsv").write_text("# local shard\tobject URL the jobs read\n"
                                       + "\n".join(stage_lines) + "\n", encoding="utf-8")

    inputs = [item["path"] for item in manifest.inputs]
    write_submit(out / "partition.sub", _local_submit(
        ["infer_corpus", "partition", "--workdir", str(root), "--config", str(config_file),
         "--input", *inputs], "partition"))
    write_submit(out / "shard.sub", _shard_submit(workdir, condor))
    write_submit(out / "index.sub", _local_submit(
        ["infer_corpus", "index", "--workdir", str(root)], "index"))
    write_submit(out / "report.sub", _local_submit(
        ["infer_corpus", "status", "--workdir", str(root)], "report", output="report.txt"))

    nodes = [Node("partition", "partition.sub")]
    for shard in pending:
        nodes.append(Node(
            f"shard-{shard:05d}", "shard.sub", vars=shard_vars[shard], category=GPU_CATEGORY,
            retry=condor.retries, retry_unless_exit=EXIT_BAD_INPUT,
            post=Script(sys.executable, ["-m", "submit.validate", "--workdir", str(root),
                                         "--shard", str(shard), "--job-exit", "$RETURN"])))
    # DAGMan takes the FINAL node's outcome as the whole DAG's: the report fails (after writing
    # report.txt) unless every other node succeeded, so a failed shard is not a successful DAG
    nodes += [Node("index", "index.sub"),
              Node("report", "report.sub", kind="FINAL",
                   post=Script("/usr/bin/test", ["$DAG_STATUS", "-eq", "0"]))]
    shard_names = [n.name for n in nodes if n.category == GPU_CATEGORY]
    edges = ([(["partition"], shard_names), (shard_names, ["index"])] if shard_names
             else [(["partition"], ["index"])])
    dag = Dag(nodes=nodes, edges=edges, node_status_file=STATUS_FILE,
              max_jobs={GPU_CATEGORY: condor.max_jobs} if condor.max_jobs and shard_names else {})
    dag_path = write_dag(out / DAG_FILE, dag)
    files = ["pipeline.dag", "partition.sub", "shard.sub", "index.sub", "report.sub",
             JOB_SCRIPT, "config.yaml"] + (["stage.tsv"] if stage_lines else [])
    return PipelineFiles(dag=dag_path, shard_jobs=pending,
                         shards_done=len(manifest.shards) - len(pending), staged=staged,
                         files=files, problems=lint_dag(dag_path))


def submit_pipeline(workdir: Workdir, config: InferenceConfig, condor: CondorConfig, *,
                    dry_run: bool) -> dict[str, Any]:
    """Write the DAG; unless `dry_run`, submit it. Returns a summary for the CLI.

    `config` is the run's whole config (its sections all go into the DAG's config.yaml, for
    the partition node); `condor` is its `condor` section."""
    written = write_pipeline(workdir, config, condor)
    if written.problems:
        raise CondorError("the written DAG has problems:\n  " + "\n  ".join(written.problems))
    cluster = None
    if not dry_run:
        cluster = submit_dag(written.dag, batch_name=condor.batch_name
                             or f"infer-corpus {workdir.root.resolve().name}")
        (condor_dir(workdir) / SUBMITTED_FILE).write_text(json.dumps(
            {"cluster": cluster, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n",
            encoding="utf-8")
    return {
        "dag": str(written.dag), "shard_jobs": len(written.shard_jobs),
        "shards_done": written.shards_done, "staged": written.staged,
        "files": written.files, "dry_run": dry_run, "cluster": cluster,
    }


def dag_status(workdir: Workdir) -> dict[str, Any]:
    """Where the DAG stands, from DAGMan's node status file (and whether it was submitted)."""
    out = condor_dir(workdir)
    submitted_file = out / SUBMITTED_FILE
    submitted = (json.loads(submitted_file.read_text(encoding="utf-8"))
                 if submitted_file.is_file() else None)
    report: dict[str, Any] = {"dag": str(out / DAG_FILE), "submitted": submitted}
    status = read_node_status(out / STATUS_FILE)
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
