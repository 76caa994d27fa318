"""The DAGs that `infer-corpus submit` writes into WORKDIR/condor/ and submits.

A workdir whose inputs are not partitioned yet, given `--input`, gets `partition.dag`: the
partition as CPU jobs (a map job per part of the inputs, one merge on the parts' keys, a
write job per part; each job's POST script checks what it sent back and moves it in; see
`write_partition_dag`), then `pipeline.dag` as a sub-DAG (SUBDAG EXTERNAL), which the sub-DAG
node's PRE script writes on the access point once the shards exist (`infer-corpus submit
--from-partition-dag`; DAGMan reads a sub-DAG's file only when it starts it). A partitioned
workdir gets `pipeline.dag` directly:

    check      (access point: the recorded inputs are unchanged; records this run's settings)
        -> shard-00000 ... shard-NNNNN   (one GPU job per unfinished shard; POST validates)
        -> index-000 ... index-NNN (CPU jobs, each building the embedded index's piece of a
                    group of shards as soon as its shards are done; POST puts it in place)
           -> index (access point: combines the pieces into the index and makes it current)
           or, with Elasticsearch: load-000 ... load-NNN (CPU jobs, each bulk-loading a group
                    of shards into the new index as soon as its shards are done) -> swap
                    (access point: checks the count and moves the alias once)
    FINAL report   (access point: `infer-corpus status`, written to report.txt, always runs)

`condor.local_steps` runs the partition and the index on the access point instead (local
universe), for small runs. Shard jobs read their shard and the manifest through HTCondor file
transfer (from the workdir, or from an osdf:// / pelican:// URL under a name that includes the
partition key, since cached objects never change), and send the result back to
condor/incoming/. The POST script moves a result into results/ only when it checks out, so a
bad result is retried instead of loaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inference.config import InferenceConfig
from inference.config_loader import ConfigError
from inference.errors import EXIT_USAGE, UsageError
from inference.manifest import Manifest
from inference.partition import (
    KEYS,
    MERGE,
    PLAN,
    STAGE,
    finish_pending,
    part_mapped,
    partition_key,
    prepare,
)
from inference.partition_map import part_name
from inference.readers import expand_inputs
from inference.workdir import Workdir

from .config import CondorConfig, StepResourcesConfig, checkpoint_arguments
from .datasource import stage
from .htcondor import (
    CondorError,
    Dag,
    Node,
    Script,
    access_point_commands,
    checkpoint_commands,
    classad_literal,
    condor_arguments,
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

CONDOR_DIR = "condor"
DAG_FILE = "pipeline.dag"
PARTITION_DAG = "partition.dag"
STATUS_FILE = "pipeline.status"
PARTITION_STATUS = "partition.status"
JOB_SCRIPT = "run-shard.sh"
STEP_SCRIPT = "run-step.sh"
GPU_CATEGORY = "gpu"
EXIT_BAD_INPUT = EXIT_USAGE  # a shard job or POST script exits with it when retrying cannot help
RUN_ATTRIBUTE = "InferCorpusRun"  # every job's ad names its workdir: `status` finds them by it
PROGRESS_ATTRIBUTES = {"passages_done": "ChirpShardPassagesDone",  # status's key: the job ad's
                       "passages_total": "ChirpShardPassagesTotal",
                       "passages_per_second": "ChirpShardPassagesPerSecond"}


@dataclass
class PipelineFiles:
    """What `write_pipeline` or `write_partition_dag` wrote, and what the DAG will do."""

    dag: Path
    shard_jobs: list[int]
    shards_done: int
    staged: int
    files: list[str]
    problems: list[str] = field(default_factory=list)
    load_jobs: int = 0
    partition_jobs: int = 0
    index_jobs: int = 0


def condor_dir(workdir: Workdir) -> Path:
    return workdir.root / CONDOR_DIR


def incoming_path(workdir: Workdir, shard: int) -> Path:
    """Where a shard job's result lands before its POST script checks it."""
    return condor_dir(workdir) / "incoming" / f"result-{shard:05d}.parquet"


def shard_object_name(manifest: Manifest, shard: int) -> str:
    """A shard's name under a data URL: new content always gets a new name, because caches
    (OSDF, Pelican) treat an object name as immutable."""
    return f"shard-{shard:05d}.{manifest.partition_key}.parquet"


def load_groups(shards: int, jobs: int) -> list[tuple[int, int]]:
    """Shards 0..shards-1 in at most `jobs` contiguous groups of near-equal size, as
    (first, last) pairs: what each Elasticsearch load job sends."""
    jobs = max(1, min(jobs, shards))
    size, extra = divmod(shards, jobs)
    groups, first = [], 0
    for job in range(jobs):
        last = first + size + (job < extra) - 1
        groups.append((first, last))
        first = last + 1
    return groups if shards else []


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


def _write_job_script(path: Path, c: CondorConfig) -> None:
    checkpoint = checkpoint_arguments(c)
    write_job_script(
        path, c,
        "One shard job of `infer-corpus submit`: embed one shard in the job's scratch directory.\n"
        "Arguments: SHARD SHARD_FILE RESULT_FILE. Exit codes are listed in docs/condor.md.",
        f'-m submit.job --shard "$1" --shard-file "$2" --result-file "$3"{checkpoint}'
        + (f" --data-source {c.data_source}" if c.data_source != "transfer" else ""))


def run_attribute_commands(root: Path) -> dict[str, str]:
    return {f"MY.{RUN_ATTRIBUTE}": classad_literal(str(root))}


def _shard_submit(workdir: Workdir, c: CondorConfig) -> dict[str, str]:
    r = c.resources
    root = workdir.root.resolve()
    streamed = c.data_source != "transfer"  # the job reads the shard's URL itself
    inputs = [*([] if streamed else ["$(shard_input)"]), str(root / "manifest.json"),
              *(transfer_source(i) for i in c.extra_inputs)]
    shard_argument = "$(shard_input)" if streamed else "$(shard_file)"
    commands = {
        **job_commands(c, JOB_SCRIPT, f"$(shard) {shard_argument} $(result_file)", inputs),
        "transfer_output_files": "$(result_file)",
        "transfer_output_remaps": f'"$(result_file) = {condor_dir(workdir).resolve()}'
                                  '/incoming/$(result_file)"',
        "output": "logs/shard-$(shard).out",
        "error": "logs/shard-$(shard).err",
        "log": "pipeline.log",
        **gpu_commands(r),
        **resource_commands(r),
        **checkpoint_commands(c, "parts"),
    }
    if c.want_io_proxy:
        commands["want_io_proxy"] = "true"  # chirp: the job publishes its progress in its ad
    return {**commands, **site_attribute_commands(c.site_attributes),
            **run_attribute_commands(root)}


def _local_submit(args: list[str], name: str, root: Path,
                  output: str | None = None) -> dict[str, str]:
    """A step that runs on the access point itself, with the Python that wrote the DAG."""
    return {
        **access_point_commands(args),
        "getenv": "true",
        "output": output or f"logs/{name}.out",
        "error": f"logs/{name}.err",
        "log": "pipeline.log",
        **run_attribute_commands(root),
    }


def _step_submit(c: CondorConfig, r: StepResourcesConfig, name: str, args: list[str],
                 inputs: list[str], outputs: str, root: Path,
                 getenv: str | None = None) -> dict[str, str]:
    """A CPU step as a job (`python -m infer_corpus ARGS` in an empty scratch directory):
    `inputs` come in by file transfer; `outputs` (a folder, or "" for nothing) go back to
    condor/incoming/, where the step's POST script takes them."""
    out = condor_dir(Workdir(root)).resolve()
    commands = {
        **job_commands(c, str(out / STEP_SCRIPT),
                       condor_arguments(["-m", "infer_corpus", *args]), inputs),
        "initialdir": "incoming",  # what comes back lands here; other paths are relative to it
        "transfer_output_files": outputs,
        "output": f"../logs/{name}.out",
        "error": f"../logs/{name}.err",
        "log": "../pipeline.log",
        **resource_commands(r),
        **run_attribute_commands(root),
    }
    if getenv:
        commands["getenv"] = getenv
    return commands


def _settings(config: InferenceConfig, condor: CondorConfig) -> dict[str, Any]:
    return {**config.to_dict(), "condor": dataclasses.asdict(condor)}


def _prepare(workdir: Workdir, config: InferenceConfig, condor: CondorConfig,
             running: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """Checks and files every DAG shares: the software, paths without spaces, no DAG of
    this workdir running (but those in `running`: the partition DAG writes the pipeline DAG
    it runs next); condor/ with logs/ and incoming/, config.yaml (the settings the DAG's
    steps run with) and run-step.sh. Returns (workdir, condor dir, config file), absolute."""
    if not (condor.container_image or condor.venv_tarball or condor.python):
        raise ConfigError("condor: say what software the jobs run: container_image (docker://,"
                          " osdf:// or a .sif path), venv_tarball, or python (an interpreter "
                          "with infer-corpus installed that the execute nodes can run)")
    root = Path(_no_space(workdir.root.resolve(), "the workdir"))
    _no_space(Path(sys.executable), "the Python interpreter")
    out = condor_dir(workdir).resolve()
    for name in (DAG_FILE, PARTITION_DAG):
        if name not in running:
            require_not_running(out / name)
    for sub in ("logs", "incoming"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    config_file = out / "config.yaml"
    config_file.write_text("# the settings this DAG runs with (written by infer-corpus submit)\n"
                           + yaml.safe_dump(_settings(config, condor), sort_keys=False),
                           encoding="utf-8")
    write_job_script(out / STEP_SCRIPT, condor,
                     "A CPU step of `infer-corpus submit` (partition, index, an Elasticsearch "
                     "load):\nPython runs the job's arguments in the job's scratch directory.",
                     '"$@"')
    return root, out, config_file


def _index_nodes(workdir: Workdir, config: InferenceConfig, c: CondorConfig,
                 manifest: Manifest, root: Path, out: Path, shard_nodes: dict[int, str],
                 key_env: str | None) -> tuple[list[Node], list[tuple], list[str]]:
    """The nodes that load the results into the index, their edges, and their files;
    `key_env`: see `write_pipeline`."""
    all_shards = list(shard_nodes.values())
    if c.local_steps:
        write_submit(out / "index.sub", _local_submit(
            ["infer_corpus", "index", "--workdir", str(root)], "index", root))
        return [Node("index", "index.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT)], \
            [(all_shards or ["check"], ["index"])], ["index.sub"]
    if key_env is None:
        return _index_piece_nodes(c, manifest, root, out, shard_nodes)
    write_submit(out / "load.sub", _step_submit(
        c, c.load_resources, "load-$(group)",
        ["index", "--workdir", ".", "--shards", "$(shards)", "--no-swap"],
        ["$(group_dir)/"], "", root, getenv=key_env or None))
    write_submit(out / "swap.sub", _local_submit(
        ["infer_corpus", "index", "--workdir", str(root), "--swap-only"], "swap", root))
    nodes, edges = [], []
    for group, (first, last) in enumerate(load_groups(len(manifest.shards), c.load_jobs)):
        name = f"load-{group:03d}"
        nodes.append(Node(
            name, "load.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT,
            vars={"group": f"{group:03d}", "shards": f"{first}-{last}",
                  "group_dir": str(out / "load" / f"group-{group:03d}")},
            pre=_step_script("stage-load", "--workdir", str(root), "--group", str(group),
                             "--shards", f"{first}-{last}")))
        parents = [shard_nodes[n] for n in range(first, last + 1) if n in shard_nodes]
        edges.append((parents or ["check"], [name]))
    nodes.append(Node("swap", "swap.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT))
    edges.append(([n.name for n in nodes if n.name != "swap"] or ["check"], ["swap"]))
    return nodes, edges, ["load.sub", "swap.sub"]


def _index_piece_nodes(c: CondorConfig, manifest: Manifest, root: Path, out: Path,
                       shard_nodes: dict[int, str]) -> tuple[list[Node], list[tuple], list[str]]:
    """The embedded index on the pool: one CPU job per group of shards (`load_jobs` groups)
    builds that group's piece, each asking for what its passages need within the config's
    caps; then the access point combines the pieces (`infer-corpus index`, which only links
    them). Each job's piece comes back to its own condor/incoming/index-GGG/."""
    piece = _step_submit(c, c.index_resources, "index-$(group)",
                         ["index", "--workdir", ".", "--shards", "$(shards)"],
                         ["$(group_dir)/"], "index", root)
    piece.update({"initialdir": "incoming/index-$(group)", "log": "../../pipeline.log",
                  "output": "../../logs/index-$(group).out",
                  "error": "../../logs/index-$(group).err",
                  "request_memory": "$(memory)", "request_disk": "$(disk)"})
    write_submit(out / "index-piece.sub", piece)
    write_submit(out / "index.sub", _local_submit(
        ["infer_corpus", "index", "--workdir", str(root), "--workers", "1"], "index", root))
    nodes, edges = [], []
    for group, (first, last) in enumerate(load_groups(len(manifest.shards), c.load_jobs)):
        name, shards = f"index-{group:03d}", f"{first}-{last}"
        passages = sum(e.rows for e in manifest.shards[first : last + 1])
        nodes.append(Node(
            name, "index-piece.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT,
            vars={"group": f"{group:03d}", "shards": shards,
                  "group_dir": str(out / "load" / f"group-{group:03d}"),
                  **index_piece_requests(c.index_resources, passages)},
            pre=_step_script("stage-index", "--workdir", str(root), "--group", str(group),
                             "--shards", shards),
            post=_step_script("index-piece", "--workdir", str(root), "--group", str(group),
                              "--shards", shards, "--job-exit", "$RETURN")))
        parents = [shard_nodes[n] for n in range(first, last + 1) if n in shard_nodes]
        edges.append((parents or ["check"], [name]))
    nodes.append(Node("index", "index.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT))
    edges.append(([n.name for n in nodes if n.name != "index"] or ["check"], ["index"]))
    return nodes, edges, ["index-piece.sub", "index.sub"]


# What one index piece job needs (docs/benchmarks.md has the measured index sizes): tantivy's
# indexing buffer (1 GB), one shard's tables and Python; and on disk its shards and results
# coming in plus the piece going out.
INDEX_JOB_MEMORY = 3 << 30
INDEX_JOB_DISK = 1 << 30
INDEX_JOB_DISK_PER_PASSAGE = 6 << 10


def index_piece_requests(caps: StepResourcesConfig, passages: int) -> dict[str, str]:
    """The memory and disk an index piece job of `passages` asks for, at most the config's
    `index_resources` (the caps)."""
    memory = min(INDEX_JOB_MEMORY, quantity(caps.request_memory, "M") << 20)
    disk = min(INDEX_JOB_DISK + passages * INDEX_JOB_DISK_PER_PASSAGE,
               quantity(caps.request_disk, "K") << 10)
    return {"memory": f"{-(-memory // (1 << 20))}MB", "disk": f"{-(-disk // (1 << 20))}MB"}


def write_pipeline(workdir: Workdir, config: InferenceConfig, condor: CondorConfig, *,
                   from_partition_dag: bool = False, es_key_env: str | None = None
                   ) -> PipelineFiles:
    """Write WORKDIR/condor/pipeline.dag, its submit files and job scripts; lint the DAG.
    `from_partition_dag`: written by the PRE script of partition.dag's sub-DAG node.
    `es_key_env`: the results load into Elasticsearch, whose API key the load jobs get from
    this environment variable ("": none; retrieval's `index` section, which the commands read:
    this layer does not import retrieval); None: the embedded index, built in pieces."""
    manifest = _check_partition(workdir, config)
    root, out, config_file = _prepare(workdir, config, condor,
                                      (PARTITION_DAG,) if from_partition_dag else ())
    key = manifest.result_key(config)
    pending = [e.shard for e in manifest.shards if not workdir.result_is_current(e, key)]
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
                staged += stage(local, Path(condor.stage_dir) / name)
        else:
            name, source = local.name, str(local)
        shard_vars[shard] = {"shard": str(shard), "shard_input": source, "shard_file": name,
                             "result_file": incoming_path(workdir, shard).name}
    if stage_lines:
        (out / "stage.tsv").write_text("# local shard\tobject URL the jobs read\n"
                                       + "\n".join(stage_lines) + "\n", encoding="utf-8")

    inputs = [item["path"] for item in manifest.inputs]
    write_submit(out / "check.sub", _local_submit(
        ["infer_corpus", "partition", "--workdir", str(root), "--config", str(config_file),
         "--input", *inputs], "check", root))
    write_submit(out / "shard.sub", _shard_submit(workdir, condor))
    write_submit(out / "report.sub", _local_submit(
        ["infer_corpus", "status", "--workdir", str(root)], "report", root,
        output="report.txt"))

    nodes = [Node("check", "check.sub")]
    shard_nodes = {}
    for shard in pending:
        shard_nodes[shard] = f"shard-{shard:05d}"
        nodes.append(Node(
            shard_nodes[shard], "shard.sub", vars=shard_vars[shard], category=GPU_CATEGORY,
            retry=condor.retries, retry_unless_exit=EXIT_BAD_INPUT,
            post=Script(sys.executable, ["-m", "submit.validate", "--workdir", str(root),
                                         "--shard", str(shard), "--job-exit", "$RETURN"])))
    index_nodes, index_edges, index_files = _index_nodes(workdir, config, condor, manifest,
                                                         root, out, shard_nodes, es_key_env)
    # DAGMan takes the FINAL node's outcome as the whole DAG's: the report fails (after writing
    # report.txt) unless every other node succeeded, so a failed shard is not a successful DAG
    nodes += [*index_nodes, Node("report", "report.sub", kind="FINAL",
                                 post=Script("/usr/bin/test", ["$DAG_STATUS", "-eq", "0"]))]
    edges = ([(["check"], list(shard_nodes.values()))] if shard_nodes else []) + index_edges
    dag = Dag(nodes=nodes, edges=edges, node_status_file=STATUS_FILE,
              max_jobs={GPU_CATEGORY: condor.max_jobs} if condor.max_jobs and shard_nodes
              else {})
    dag_path = write_dag(out / DAG_FILE, dag)
    files = ["pipeline.dag", "check.sub", "shard.sub", *index_files, "report.sub", JOB_SCRIPT,
             STEP_SCRIPT, "config.yaml"] + (["stage.tsv"] if stage_lines else [])
    return PipelineFiles(dag=dag_path, shard_jobs=pending,
                         shards_done=len(manifest.shards) - len(pending), staged=staged,
                         files=files, problems=lint_dag(dag_path),
                         load_jobs=sum(n.name.startswith("load-") for n in index_nodes),
                         index_jobs=sum(n.name.startswith("index-") for n in index_nodes))


def _step_script(*args: str) -> Script:
    """A PRE or POST script of the access point's side of a CPU step (`submit.steps`)."""
    return Script(sys.executable, ["-m", "submit.steps", *args])


def _transferable(path: str) -> str:
    """A path a job's transfer list can hold: file transfer splits the list on commas."""
    if "," in path or re.search(r"\s", path):
        raise ConfigError(f"input {path}: a partition job cannot take a path with a comma or "
                          "a space; rename it, or partition on the access point")
    return path


# What a partition job needs, by the bytes it handles (measured by
# benchmarks/partition_throughput.py: a map process peaked at 395 MB on a 122 MB part, the
# merge at about 60 bytes a passage); within the config's partition_resources, as caps.
STEP_BASE_MB = 1024
BYTES_PER_PASSAGE = 1000  # assumed for sizing the merge before the passages are known
MERGE_BYTES_PER_PASSAGE = 80  # keys (24 B an article's share plus 16 B a passage) and sorting
TOKENIZE_PASSAGES_PER_CPU = 100_000  # shards.tokenize: a write job's CPUs, about a minute each


def _sized(r: StepResourcesConfig, memory_mb: float, disk_mb: float,
           cpus: int = 1) -> dict[str, str]:
    """The requests of one partition job, as node VARS: what its work needs, capped by the
    config's requests. Named apart from the submit commands that use them: DAGMan sets VARS
    before it reads the submit file, whose own `request_cpus` would win."""
    memory = min(int(memory_mb), quantity(r.request_memory, "M"))
    disk = min(int(disk_mb), quantity(r.request_disk, "K") // 1024)
    return {"cpus": str(min(cpus, r.request_cpus)), "memory": f"{memory}MB",
            "disk": f"{disk}MB"}


def _cpu_step(c: CondorConfig, name: str, args: list[str], inputs: list[str],
              outputs: str, root: Path) -> dict[str, str]:
    """A partition job whose requests come from its node's VARS (see `_sized`)."""
    sized = StepResourcesConfig(request_cpus="$(cpus)",  # type: ignore[arg-type]
                                request_memory="$(memory)", request_disk="$(disk)",
                                requirements=c.partition_resources.requirements)
    return _step_submit(c, sized, name, args, inputs, outputs, root)


def write_partition_dag(workdir: Workdir, config: InferenceConfig, condor: CondorConfig,
                        inputs: list[str]) -> PipelineFiles:
    """Write WORKDIR/condor/partition.dag: the partition as map, merge and write jobs on the
    pool (or, with `condor.local_steps`, as one step on the access point); lint the DAG.

    The plan is made here, on the access point (it reads each input once): one map job per
    part (a line range of a large JSONL file is cut out by the node's PRE script, so the job
    gets only its bytes), then one merge job on the parts' keys, then one write job per part;
    each node's POST script checks what came back and moves it into the workdir. The sub-DAG
    node's PRE script finishes the partition (the rejects ledger, the manifest) and writes
    pipeline.dag."""
    root, out, config_file = _prepare(workdir, config, condor)
    for path in inputs:
        _transferable(os.path.abspath(path))
    if condor.local_steps:
        write_submit(out / "partition.sub", _local_submit(
            ["infer_corpus", "partition", "--workdir", str(root), "--config", str(config_file),
             "--input", *(os.path.abspath(p) for p in inputs)], "partition", root))
        nodes, last = [Node("partition", "partition.sub")], ["partition"]
        edges: list[tuple[list[str], list[str]]] = []
        files = ["partition.sub"]
    else:
        nodes, edges, last = _partition_jobs(workdir, config, condor, inputs, root, out,
                                             config_file)
        files = ["map.sub", "merge.sub", "write.sub"]
    # then the GPU DAG, as a sub-DAG: its PRE script writes pipeline.dag on the access
    # point once the shards exist (DAGMan reads a sub-DAG's file only when it starts it)
    pipeline = Node("pipeline", DAG_FILE, kind="SUBDAG", pre=Script(sys.executable, [
        "-m", "infer_corpus", "submit", "--workdir", str(root), "--config", str(config_file),
        "--from-partition-dag"]))
    dag_path = write_dag(out / PARTITION_DAG, Dag(
        nodes=[*nodes, pipeline], edges=[*edges, (last, ["pipeline"])],
        node_status_file=PARTITION_STATUS))
    files = [PARTITION_DAG, *files, STEP_SCRIPT, "config.yaml"]
    return PipelineFiles(dag=dag_path, shard_jobs=[], shards_done=0, staged=0, files=files,
                         problems=lint_dag(dag_path),
                         partition_jobs=sum(n.name != "partition" for n in nodes))


def _partition_jobs(workdir: Workdir, config: InferenceConfig, c: CondorConfig,
                    inputs: list[str], root: Path, out: Path, config_file: Path
                    ) -> tuple[list[Node], list[tuple[list[str], list[str]]], list[str]]:
    """The map, merge and write nodes (see `write_partition_dag`) and their edges."""
    with workdir.lock():
        parts = prepare(inputs, workdir, config, force=True)
    if not isinstance(parts, list):  # the same partition is there: nothing to redo
        parts = []
    stage = (root / STAGE).resolve()
    plan = str(stage / PLAN)
    r = c.partition_resources
    mb = 1 << 20
    write_submit(out / "map.sub", _cpu_step(
        c, "map-$(part)", ["partition-step", "map", "--plan", PLAN, "--part", "$(part)",
                           "--input", "$(input_name)", "--config", config_file.name],
        ["$(part_input)", plan, str(config_file)], "part-$(part)", root))
    write_submit(out / "merge.sub", _cpu_step(
        c, "merge", ["partition-step", "merge", "--plan", PLAN, "--keys", KEYS, "--config",
                     config_file.name],
        [str(stage / KEYS), plan, str(config_file)], MERGE, root))
    write_submit(out / "write.sub", _cpu_step(
        c, "write-$(part)", ["partition-step", "write", "--plan", PLAN, "--part", "$(part)",
                             "--merge", ".", "--config", config_file.name],
        [str(stage / "$(part_dir)"), str(stage / MERGE / "$(part_dir).npz"),
         str(stage / MERGE / "merge.json"), plan, str(config_file)],
        "written-$(part)", root))
    nodes, maps, writes = [], [], []
    total = sum(p.size for p in parts)
    tokenizing = config.shards.tokenize
    for part in parts:
        if part_mapped(root / STAGE, part):
            continue  # mapped by an earlier submission of the same partition
        number = f"{part.index:05d}"
        source = _transferable(part.path)
        pre = None
        if part.format == "jsonl" and not part.whole:
            source = str(out / "cut" / f"{part_name(part.index)}.jsonl")
            pre = _step_script("cut-part", "--workdir", str(root), "--part", str(part.index))
        size_mb = part.size / mb
        maps.append(f"map-{number}")
        nodes.append(Node(
            maps[-1], "map.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT, pre=pre,
            # not `input`: that is the submit command for the job's standard input
            vars={"part": number, "part_input": source, "input_name": Path(source).name,
                  **_sized(r, 512 + 2 * size_mb, 1024 + 3 * size_mb)},
            post=_step_script("map", "--workdir", str(root), "--part", str(part.index),
                              "--job-exit", "$RETURN")))
    passages = total / BYTES_PER_PASSAGE
    nodes.append(Node(
        "merge", "merge.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT,
        vars=_sized(r, STEP_BASE_MB + passages * MERGE_BYTES_PER_PASSAGE / mb,
                    STEP_BASE_MB + 2 * passages * 40 / mb),
        post=_step_script("merge", "--workdir", str(root), "--job-exit", "$RETURN")))
    for part in parts:
        number = f"{part.index:05d}"
        size_mb = part.size / mb
        cpus = -(-part.size // (BYTES_PER_PASSAGE * TOKENIZE_PASSAGES_PER_CPU)) \
            if tokenizing else 1
        writes.append(f"write-{number}")
        nodes.append(Node(
            writes[-1], "write.sub", retry=c.retries, retry_unless_exit=EXIT_BAD_INPUT,
            vars={"part": number, "part_dir": part_name(part.index),
                  **_sized(r, STEP_BASE_MB + 512 * (max(1, cpus) - 1), 1024 + 3 * size_mb,
                           max(1, cpus))},
            post=_step_script("write", "--workdir", str(root), "--part", str(part.index),
                              "--job-exit", "$RETURN")))
    edges = [(maps, ["merge"])] if maps else []
    if writes:
        edges.append((["merge"], writes))
    return nodes, edges, writes or ["merge"]


def submit_pipeline(workdir: Workdir, config: InferenceConfig, condor: CondorConfig, *,
                    dry_run: bool, inputs: list[str] | None = None,
                    from_partition_dag: bool = False,
                    es_key_env: str | None = None) -> dict[str, Any]:
    """Write the DAG the workdir needs next; unless `dry_run`, submit it. Returns a summary
    for the CLI.

    A workdir without a finished partition, given `inputs`, gets the partition DAG; a
    partitioned one gets the pipeline DAG (`inputs`, if given, must be the partition's).
    `config` is the run's whole config (its sections all go into the DAG's config.yaml, for
    the partition and check steps); `condor` is its `condor` section; `es_key_env`: see
    `write_pipeline`."""
    if from_partition_dag:
        finish_pending(workdir, config)  # what the partition's jobs made, gathered
    partitioned = workdir.has_manifest() and workdir.manifest().partitioned
    if inputs and not partitioned:
        written = write_partition_dag(workdir, config, condor, inputs)
    else:
        if inputs:
            recorded = {item["path"] for item in workdir.manifest().inputs}
            given = {os.path.abspath(p) for p in expand_inputs(inputs)}
            if given != recorded:
                raise UsageError(f"{workdir.root} holds a partition of other inputs: leave "
                                 "out --input, or use a new --workdir")
        elif not partitioned:
            workdir.manifest().require_partitioned()  # the error says what to run first
        written = write_pipeline(workdir, config, condor,
                                 from_partition_dag=from_partition_dag, es_key_env=es_key_env)
    if written.problems:
        raise CondorError("the written DAG has problems:\n  " + "\n  ".join(written.problems))
    cluster = None
    if not dry_run:
        cluster = submit_dag(written.dag, batch_name=condor.batch_name
                             or f"infer-corpus {workdir.root.resolve().name}",
                             getenv=[es_key_env] if es_key_env else None)
        record_submission(written.dag, cluster)
    return {
        "dag": str(written.dag), "partition_job": written.dag.name == PARTITION_DAG,
        "partition_jobs": written.partition_jobs,
        "shard_jobs": len(written.shard_jobs), "shards_done": written.shards_done,
        "load_jobs": written.load_jobs, "index_jobs": written.index_jobs,
        "staged": written.staged, "files": written.files,
        "dry_run": dry_run, "cluster": cluster,
    }


def dag_status(workdir: Workdir) -> dict[str, Any]:
    """Where the workdir's newest DAG (partition or pipeline) stands, and while it runs, its
    jobs in the queue with the progress shard jobs publish."""
    out = condor_dir(workdir)
    dags = [out / name for name in (DAG_FILE, PARTITION_DAG) if (out / name).is_file()]
    dag = max(dags, key=lambda p: p.stat().st_mtime_ns) if dags else out / DAG_FILE
    status = out / (PARTITION_STATUS if dag.name == PARTITION_DAG else STATUS_FILE)
    return dag_report(dag, status, RUN_ATTRIBUTE, str(workdir.root.resolve()),
                      PROGRESS_ATTRIBUTES, parents=(PARTITION_DAG,))
