"""Batch generation on HTCondor: the DAG, its job and its POST check.

`infer-corpus submit --generation` writes WORKDIR/condor-generate/:

    gen-MODEL-00000 ... gen-MODEL-NNNNN   one GPU job per prompt shard and model whose outputs
                                          are missing or stale; each model has its own submit
                                          file, asking for a GPU with the memory it needs
                                          (`generation.models.KEY.gpu_memory`; an endpoint's
                                          jobs ask for no GPU); SCRIPT POST checks the output
    FINAL report   (access point: `infer-corpus generate report`; fails the DAG unless every
                   job succeeded)

A job (`python -m submit.generation job ...`) gets its prompt shard and the generation
manifest by file transfer and runs the same worker as `infer-corpus generate`. With
`condor.checkpoint_minutes`, it exits with `condor.checkpoint_exit_code` at the first row
checkpoint past that time; HTCondor saves the checkpoint file (`transfer_checkpoint_files`)
and restarts the job, which continues from it. At each row checkpoint the job logs its rows
and output tokens/s and, with `condor.want_io_proxy`, publishes them in its job ad
(`GenerationRowsDone`, `GenerationRowsTotal`, `GenerationTokensPerSecond`), which
`infer-corpus status` shows beside the DAG's state. The POST script (`python -m submit.generation
post ...`) moves an output into generations/MODEL/ only when it checks out; otherwise it keeps
it as `*.rejected`, logs why in logs/validate.log, and exits 1 so DAGMan retries the node.

Exit codes as for shard jobs (docs/condor.md): 0 done, 1 failed (retry), 2 bad input (no
retry), the checkpoint code, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inference.config_loader import ConfigError
from inference.errors import UsageError, run_command
from inference.generation.generate import (
    FINISH_REASONS,
    GenerationWorker,
    ModelRun,
    checkpoint_path,
    manifest_path,
    output_keys,
    output_path,
    pending,
    prepare,
)
from inference.generation.manifest import GenerationManifest
from inference.generation.prompts import prompt_shard_path
from inference.schema import check_schema_version
from inference.workdir import Workdir

from .chirp import JobAd
from .config import CondorConfig
from .htcondor import (
    CondorError,
    Dag,
    Node,
    Script,
    access_point_commands,
    checkpoint_commands,
    classad_literal,
    dag_report,
    gpu_commands,
    job_commands,
    lint_dag,
    quantity,
    record_submission,
    require_not_running,
    resource_commands,
    site_attribute_commands,
    submit_dag,
    transfer_source,
    write_dag,
    write_job_script,
    write_submit,
)
from .job import BadInput
from .pipeline import EXIT_BAD_INPUT, GPU_CATEGORY
from .validate import ResultError, accept_file

GENERATION_DIR = "condor-generate"
DAG_FILE = "generate.dag"
GENERATION_STATUS_FILE = "generate.status"
JOB_SCRIPT = "run-generate.sh"
STUDY_ATTRIBUTE = "InferCorpusStudy"  # every job's ad names its workdir: `status` finds them
PROGRESS_ATTRIBUTES = {"rows_done": "GenerationRowsDone",  # status's key: the job ad's
                       "rows_total": "GenerationRowsTotal",
                       "tokens_per_second": "GenerationTokensPerSecond"}


@dataclass
class GenerationFiles:
    """What `write_generation_dag` wrote, and the jobs its DAG runs."""

    dag: Path
    jobs: dict[str, list[int]]
    files: list[str]
    problems: list[str] = field(default_factory=list)


def generation_dir(workdir: Workdir) -> Path:
    return workdir.root / GENERATION_DIR


def incoming_name(model: str, shard: int) -> str:
    return f"{model}.{shard:05d}.parquet"


def incoming_path(workdir: Workdir, model: str, shard: int) -> Path:
    """Where a job's output lands before its POST script checks it."""
    return generation_dir(workdir) / "incoming" / incoming_name(model, shard)


def _job_submit(workdir: Workdir, model: str, gpu_memory: str, c: CondorConfig
                ) -> dict[str, str]:
    r = c.resources
    gpus = r.request_gpus if quantity(gpu_memory, "M") > 0 else 0
    inputs = ["$(prompts_input)", str(manifest_path(workdir.root).resolve()),
              *(transfer_source(i) for i in c.extra_inputs)]
    incoming = generation_dir(workdir).resolve() / "incoming"
    commands = {
        **job_commands(c, JOB_SCRIPT, f"{model} $(shard) $(prompts_file) $(output_file)",
                       inputs),
        "transfer_output_files": "$(output_file)",
        "transfer_output_remaps": f'"$(output_file) = {incoming}/$(output_file)"',
        "output": f"logs/{model}-$(shard).out",
        "error": f"logs/{model}-$(shard).err",
        "log": "generate.log",
        **gpu_commands(replace(r, request_gpus=gpus), gpu_memory),
        **resource_commands(r),
        **checkpoint_commands(c, "$(checkpoint_file)"),
        **site_attribute_commands(c.site_attributes),
        f"MY.{STUDY_ATTRIBUTE}": classad_literal(str(workdir.root.resolve())),
    }
    if c.want_io_proxy:
        commands["want_io_proxy"] = "true"  # chirp: the job publishes its progress in its ad
    return commands


def write_generation_dag(workdir: Workdir, config: Any, condor: CondorConfig,
                         inputs: list[str] | None = None) -> GenerationFiles:
    """Prepare the prompts (from `inputs`, a prompt set, or generation.template over the
    workdir's passages; without either, those prepared before), record this config's models
    in the generation manifest, then write WORKDIR/condor-generate/: the DAG, a submit file
    per model, the job script."""
    if not (condor.container_image or condor.venv_tarball or condor.python):
        raise ConfigError("condor: say what software the jobs run: container_image (docker://,"
                          " osdf:// or a .sif path), venv_tarball, or python (an interpreter "
                          "with infer-corpus installed that the execute nodes can run)")
    root = workdir.root.resolve()
    if re.search(r"\s", str(root)) or re.search(r"\s", sys.executable):
        raise ConfigError(f"the workdir {root} or the Python interpreter {sys.executable} "
                          "contains a space, which DAGMan scripts cannot take")
    out = generation_dir(workdir)
    require_not_running(out / DAG_FILE)
    if not (inputs or config.generation.template):
        GenerationManifest.require(workdir.root)  # the prompts prepared before
    with workdir.lock():
        manifest = prepare(workdir, config, inputs or None)
    jobs = {model: shards for model, shards in pending(workdir, manifest).items() if shards}
    for sub in ("logs", "incoming"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    c = condor
    checkpoint = (f" --checkpoint-after {c.checkpoint_minutes * 60}"
                  f" --checkpoint-exit-code {c.checkpoint_exit_code}"
                  if c.checkpoint_minutes else "")
    write_job_script(
        out / JOB_SCRIPT, c,
        "One job of `infer-corpus submit --generation`: one model over one prompt shard.\n"
        "Arguments: MODEL SHARD PROMPTS_FILE OUTPUT_FILE. Exit codes: docs/condor.md.",
        '-m submit.generation job --model "$1" --shard "$2" --prompts-file "$3" '
        f'--output-file "$4"{checkpoint}')
    files = [DAG_FILE, JOB_SCRIPT, "report.sub"]
    nodes = []
    specs = config.generation.models
    for model, shards in jobs.items():
        submit_file = f"gen-{model}.sub"
        gpu_memory = specs[model].gpu_memory if specs[model].backend != "openai" else "0"
        write_submit(out / submit_file, _job_submit(workdir, model, gpu_memory, c))
        files.append(submit_file)
        for shard in shards:
            name = incoming_name(model, shard)
            nodes.append(Node(
                f"gen-{model}-{shard:05d}", submit_file, category=GPU_CATEGORY,
                vars={"shard": str(shard),
                      "prompts_input": str(prompt_shard_path(root, shard)),
                      "prompts_file": prompt_shard_path(root, shard).name,
                      "output_file": name,
                      "checkpoint_file": checkpoint_path(Path(name)).name},
                retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT,
                post=Script(sys.executable, ["-m", "submit.generation", "post", "--workdir",
                                             str(root), "--model", model, "--shard", str(shard),
                                             "--job-exit", "$RETURN"])))
    write_submit(out / "report.sub", {
        **access_point_commands(["infer_corpus", "generate", "report", "--workdir", str(root)]),
        "getenv": "true", "output": "report.txt", "error": "logs/report.err",
        "log": "generate.log"})
    nodes.append(Node("report", "report.sub", kind="FINAL",
                      post=Script("/usr/bin/test", ["$DAG_STATUS", "-eq", "0"])))
    dag = Dag(nodes=nodes, node_status_file=GENERATION_STATUS_FILE,
              max_jobs={GPU_CATEGORY: c.max_jobs} if c.max_jobs and jobs else {})
    path = write_dag(out / DAG_FILE, dag)
    return GenerationFiles(dag=path, jobs=jobs, files=files, problems=lint_dag(path))


def submit_generation(workdir: Workdir, config: Any, condor: CondorConfig, *,
                      dry_run: bool, inputs: list[str] | None = None) -> dict[str, Any]:
    """Write the generation DAG; unless `dry_run`, submit it. Returns a summary for the CLI."""
    written = write_generation_dag(workdir, config, condor, inputs)
    if written.problems:
        raise CondorError("the written DAG has problems:\n  " + "\n  ".join(written.problems))
    cluster = None
    if not dry_run:
        cluster = submit_dag(written.dag, batch_name=condor.batch_name
                             or f"infer-corpus generate {workdir.root.resolve().name}")
        record_submission(written.dag, cluster)
    return {"dag": str(written.dag), "jobs": sum(map(len, written.jobs.values())),
            "models": {m: len(s) for m, s in written.jobs.items()}, "files": written.files,
            "dry_run": dry_run, "cluster": cluster}


def generation_status(workdir: Workdir) -> dict[str, Any]:
    """Where the generation DAG stands, and while it runs, its jobs with their progress."""
    out = generation_dir(workdir)
    return dag_report(out / DAG_FILE, out / GENERATION_STATUS_FILE, STUDY_ATTRIBUTE,
                      str(workdir.root.resolve()), PROGRESS_ATTRIBUTES)


# ---------------------------------------------------------------- the job


class Progress:
    """Rows done and output tokens/s of a job, on stderr at each row checkpoint and in the job
    ad (GenerationRowsDone, GenerationRowsTotal, GenerationTokensPerSecond)."""

    def __init__(self, model: str, shard: int) -> None:
        self.label = f"{model} shard {shard}"
        self.started = time.monotonic()
        self.ad = JobAd(self.label)

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] == "ready":  # loading the model is not generating
            self.started = time.monotonic()
        elif event["event"] == "checkpoint":
            seconds = max(time.monotonic() - self.started, 1e-9)
            rate = event["output_tokens"] / seconds
            print(f"{self.label}: {event['rows']:,} of {event['of']:,} rows "
                  f"({event['generated']:,} by this start, {rate:,.1f} output tokens/s)",
                  file=sys.stderr)
            self.ad.publish({"GenerationRowsDone": str(event["rows"]),
                             "GenerationRowsTotal": str(event["of"]),
                             "GenerationTokensPerSecond": f"{rate:.1f}"},
                            force=event["rows"] == event["of"])




def run_job(model: str, shard: int, prompts_file: Path, output_file: Path, *,
            manifest_file: Path, checkpoint_after: float = 0,
            checkpoint_exit_code: int = 85) -> int:
    """Generate one shard in the job's scratch directory; returns 0, or the checkpoint code
    when it stopped at a checkpoint (HTCondor restarts it there)."""
    manifest = GenerationManifest.from_file(manifest_file)
    run = ModelRun.from_manifest(manifest, model)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)  # HTCondor sets it to request_cpus
    worker = GenerationWorker(run, threads, on_event=Progress(model, shard))
    try:
        outcome = worker.run_shard(shard, prompts_file, manifest.shard_rows(shard), output_file,
                                   stop_after=checkpoint_after)
    finally:
        worker.close()
    if outcome.state == "checkpointed":
        print(f"{model} shard {shard}: checkpoint after {outcome.generated} rows",
              file=sys.stderr)
        return checkpoint_exit_code
    print(f"{model} shard {shard}: {outcome.rows} rows ({outcome.errors} row errors) -> "
          f"{output_file}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- the POST check


def check_output(workdir: Workdir, model: str, shard: int) -> int:
    """Raise ResultError unless the incoming output of (model, shard) is sound; its rows."""
    manifest = GenerationManifest.require(workdir.root)
    entry = manifest.model(model)
    rows = manifest.shard_rows(shard)
    path = incoming_path(workdir, model, shard)
    if not path.is_file():
        raise ResultError(f"the job sent back no output ({path.name} is missing)")
    try:
        check_schema_version(pq.read_schema(path), "generation", path.name)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise ResultError(f"unreadable output: {exc}") from None
    keys = output_keys(path)
    if keys is None or keys[0] != entry.generation_key or keys[1] != entry.label_key:
        raise ResultError(f"generation/label key {keys[:2] if keys else None} does not match "
                          f"this study's ({entry.generation_key}, {entry.label_key})")
    if keys[2] != rows:
        raise ResultError(f"{keys[2]} rows, the prompt shard has {rows}")
    try:
        table = pq.read_table(path, columns=["row_id", "output", "finish_reason"])
        ids = pq.read_table(prompt_shard_path(workdir.root, shard), columns=["row_id"])
    except (OSError, pa.ArrowException) as exc:
        raise ResultError(f"cannot read rows: {exc}") from None
    if not table.column("row_id").equals(ids.column("row_id")):
        raise ResultError("row ids differ from the prompt shard's (or are in another order)")
    reasons = set(table.column("finish_reason").to_pylist())
    if not reasons <= set(FINISH_REASONS):
        raise ResultError(f"unknown finish reasons {sorted(reasons - set(FINISH_REASONS))}")
    no_text = pc.and_(pc.is_null(table.column("output")),
                      pc.not_equal(table.column("finish_reason"), "error"))
    if pc.any(no_text).as_py():
        raise ResultError("a row without output is not marked as an error")
    return rows


def accept(workdir: Workdir, model: str, shard: int, job_exit: int) -> int:
    """The POST script's decision as an exit code (see the module docstring)."""
    return accept_file(generation_dir(workdir), f"{model} shard {shard}", job_exit,
                       incoming_path(workdir, model, shard),
                       output_path(workdir.root, model, shard),
                       lambda: f"{check_output(workdir, model, shard)} rows")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.generation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    job = sub.add_parser("job", help="generate one prompt shard with one model (a job)")
    job.add_argument("--model", required=True)
    job.add_argument("--shard", type=int, required=True)
    job.add_argument("--prompts-file", type=Path, required=True)
    job.add_argument("--output-file", type=Path, required=True)
    job.add_argument("--manifest", type=Path, default=Path("manifest.json"))
    job.add_argument("--checkpoint-after", type=float, default=0, metavar="SECONDS",
                     help="exit with the checkpoint code at the first row checkpoint after "
                     "this many seconds (0: never)")
    job.add_argument("--checkpoint-exit-code", type=int, default=85)
    post = sub.add_parser("post", help="check a job's output and move it into place")
    post.add_argument("--workdir", required=True)
    post.add_argument("--model", required=True)
    post.add_argument("--shard", type=int, required=True)
    post.add_argument("--job-exit", type=int, required=True,
                      help="the job's exit code (DAGMan's $RETURN)")
    args = parser.parse_args(argv)
    if args.step == "post":
        return run_command("submit.generation", lambda: accept(
            Workdir(args.workdir), args.model, args.shard, args.job_exit))

    def body() -> int:
        try:
            return run_job(args.model, args.shard, args.prompts_file, args.output_file,
                           manifest_file=args.manifest, checkpoint_after=args.checkpoint_after,
                           checkpoint_exit_code=args.checkpoint_exit_code)
        except UsageError as exc:  # named as the exit code's meaning in the job's stderr
            raise BadInput(str(exc)) from None

    code = run_command("submit.generation", body)
    if code not in (0, args.checkpoint_exit_code) and not args.output_file.exists():
        args.output_file.touch()  # lets HTCondor end the job with its exit code (no hold)
    return code


if __name__ == "__main__":
    sys.exit(main())
