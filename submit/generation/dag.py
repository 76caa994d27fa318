"""The generation DAG: one GPU job per (model, prompt shard) whose outputs are missing or
stale, each with its POST check, and a FINAL report node; its submission and status."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inference.config_loader import ConfigError
from inference.generation.generate import (
    checkpoint_path,
    manifest_path,
    pending,
    prepare,
)
from inference.generation.manifest import GenerationManifest
from inference.generation.prompts import prompt_shard_path
from inference.workdir import Workdir

from ..config import CondorConfig, checkpoint_arguments
from ..htcondor import (
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
from ..pipeline import EXIT_BAD_INPUT, GPU_CATEGORY

GENERATION_DIR = "condor-generate"
DAG_FILE = "generate.dag"
GENERATION_STATUS_FILE = "generate.status"
JOB_SCRIPT = "run-generate.sh"
STUDY_ATTRIBUTE = "InferCorpusStudy"  # every job's ad names its workdir: `status` finds them
PROGRESS_ATTRIBUTES = {"rows_done": "ChirpGenerationRowsDone",  # status's key: the job ad's
                       "rows_total": "ChirpGenerationRowsTotal",
                       "tokens_per_second": "ChirpGenerationTokensPerSecond"}


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
    checkpoint = checkpoint_arguments(c)
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
