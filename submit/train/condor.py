"""Training on HTCondor: the sweep DAG and the multi-node DAG, written with `submit.htcondor`.

Every training job runs `run-train.sh` (next to the DAG), which unpacks `condor.venv_tarball`
when there is one and runs Python with the job's arguments: the software comes from the
container image, the venv tarball, or `condor.python` on the execute node's PATH.

Sweep DAG: the unfinished trials run in waves, each wave one job cluster whose item data
(trial id, resume files) comes from a file. A trial job exits with the checkpoint exit code
every `checkpoint_every` epochs (heads) or checkpoints (embedders, every `save_steps` steps);
HTCondor then keeps `checkpoint.pt` (heads) or the `checkpoints/` folder (embedders) and
restarts it, so evicted trials lose little. A trial job gets the sweep's dataset (or pairs)
as `condor.data_source` says: by file transfer (from the sweep directory, or from
`condor.data_url` through HTCondor's plugin), or read by the job itself from its URL
(stream, cache; it is then no input file).
Writing the DAG again (after a failure, a removal or a finished DAG) leaves
finished trials out and sends each unfinished trial's `checkpoint.pt` and `metrics.json` with
its job, so it resumes at its latest epoch. After each wave a POST script (`train-models
evaluate`) decides whether to go on: 3 (target reached) stops the DAG through ABORT-DAG-ON
and the DAG succeeds; 4 (trials diverged) fails the wave's node, so no later wave runs and the
DAG fails. The FINAL node (`train-models collect`, on the access point) ranks the trials either
way; its POST script carries the DAG's outcome, which DAGMan takes from the FINAL node.

An optuna sweep's DAG (`search.py`) has one node per wave, as many as the sweep can need,
fixed when it is written. Each node's PRE script (`train-models ask --submit`) asks the study
for the wave's trials and writes the node's submit file and item data (trial, the epochs or
checkpoints left to its rung, resume files) before DAGMan submits it; a wave with nothing to
run exits ASK_NOTHING, which PRE_SKIP turns into a node done. Its jobs stop at their rung
and exit 0 (`--stop-at-rung`: DAGMan takes any other exit of a wave's job as a failure and
removes the wave's other jobs): the checkpoint and metrics come back with the job's output
for the next wave. The POST script prunes and evaluates as above. A rewritten DAG starts at
the first wave not yet run.

Multi-node DAG: `PROVISIONER RANK0` (hosts the rendezvous, publishes it with chirp) and
`JOB WORKERS` whose PRE script (`pre_script`) reads rank 0's job ad with condor_q and writes the
endpoint into `workers.sub` before it is submitted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from inference.workdir import atomic_path, write_json_atomic
from submit.htcondor import (
    Dag,
    Node,
    Script,
    access_point_commands,
    condor_arguments,
    dag_text,
    job_commands,
    lint_dag,
    require_not_running,
    resource_commands,
    submit_dag,
    write_job_script,
    write_submit,
)

from ..preemption import ClassCosts, GpuClass, PolicyError, choose_gpus
from . import TrainError
from .data import DATASET
from .embedder import CHECKPOINTS_DIR, MODEL_DIR
from .multinode import RUN_FILE, MultinodeSpec, read_run, torchrun_args
from .search import ASK_NOTHING, evaluate_study, open_waves, rungs
from .spec import CondorSettings
from .sweep import (
    EVAL_TARGET_REACHED,
    FINISHED,
    Sweep,
    collect,
    evaluate,
    trial_arguments,
    unfinished_trials,
)
from .trial import (
    CHECKPOINT,
    CHECKPOINT_EXIT_CODE,
    METRICS,
    PARAMS,
    check_params,
    read_metrics,
)

SWEEP_DAG = "sweep.dag"
GPU_POLICY_FILE = "gpu-policy.json"  # what condor.gpu chose, and the figures it rests on
MULTINODE_DAG = "multinode.dag"
JOB_SCRIPT = "run-train.sh"
# what an unfinished trial's job takes along, and HTCondor saves at its checkpoint exits
RESUME_FILES = {"head": (CHECKPOINT, METRICS), "embedder": (CHECKPOINTS_DIR, METRICS)}
# an embedder trial's model is a folder, which HTCondor sends back only when named (heads:
# every new file of the sandbox's top level comes back)
OUTPUT_FILES = {"head": {}, "embedder": {"transfer_output_files": f"{METRICS},{MODEL_DIR}"}}
RENDEZVOUS_PENDING = "rank0-not-ready.invalid:0"  # replaced by the workers' PRE script


def _write_job_script(condor_dir: Path, settings: CondorSettings) -> Path:
    return write_job_script(
        condor_dir / JOB_SCRIPT, settings,
        "A job of `train-models`: Python runs the job's arguments (see the .sub files)\n"
        "in the job's scratch directory. Exit codes: see `train-models --help`.", '"$@"')


def _job(condor_dir: Path, settings: CondorSettings, arguments: list[str],
         inputs: list[str]) -> dict[str, str]:
    """What every training job shares: the software, its inputs and the resources it asks for
    (`_write_job_script` has written its executable)."""
    commands = {**job_commands(settings, str(condor_dir / JOB_SCRIPT),
                               condor_arguments(arguments), inputs),
                **resource_commands(settings)}
    if settings.request_gpus:
        commands["request_gpus"] = str(settings.request_gpus)
    commands.update({k: str(v) for k, v in settings.extra.items()})
    return commands


def _write(path: Path, commands: dict[str, str],
           itemdata: list[dict[str, str]] | None = None) -> Any:
    try:
        return write_submit(path, commands, itemdata=itemdata)
    except Exception as exc:  # htcondor2 raises its own errors for bad submit commands
        raise TrainError(f"submit file {path} does not parse: {exc}") from None


def _write_dag(path: Path, dag: Dag) -> Path:
    """The DAG, then linted: every submit file parses."""
    with atomic_path(path) as tmp:
        tmp.write_text(dag_text(dag), encoding="utf-8")
    problems = lint_dag(path)
    if problems:
        raise TrainError(f"{path} is not a valid DAG: {'; '.join(problems)}")
    return path


def _local_script(*args: str) -> Script:
    """A DAG script (PRE or POST) run on the access point, with this installation's Python."""
    return Script(sys.executable, ["-m", "submit.train.cli", *args])


def _resume_files(sweep: Sweep, kind: str, trial: str) -> str:
    """Item value: the trial's files (or folder) to send along (each followed by a comma),
    or ''."""
    return "".join(f"{name}," for name in RESUME_FILES[kind]
                   if (sweep.trial_dir(trial) / name).exists())


def _clear_previous_dag(condor_dir: Path) -> None:
    """A new DAG replaces the previous one: its rescue DAGs name waves that now hold other
    trials, so DAGMan must not apply them, and waves beyond the new last one are gone."""
    require_not_running(condor_dir / SWEEP_DAG)
    for stale in [*condor_dir.glob(f"{SWEEP_DAG}.rescue*"), *condor_dir.glob("wave-*.sub"),
                  *condor_dir.glob("wave-*.items")]:
        stale.unlink()


def gpu_choice(sweep: Sweep, settings: CondorSettings) -> dict[str, Any]:
    """What `condor.gpu` decides for the sweep's jobs: the lowest compute capability to
    require (None: any class), and the simulated figures it rests on. Without measured
    classes it admits any class and says so in one line."""
    if settings.gpu == "any":
        return {"policy": "any", "min_capability": None}
    if not settings.gpu_classes:
        note = (f"condor.gpu: {settings.gpu} has no condor.gpu_classes (measured costs per "
                "class, e.g. from `train-models jobs --json` of an earlier sweep): admitting "
                "any GPU class")
        print(f"train-models: {note}", file=sys.stderr)
        return {"policy": "any", "min_capability": None, "fallback": note}
    classes = {name: GpuClass(
        c.capability, ClassCosts(c.epoch_seconds, c.checkpoint_seconds, c.restart_seconds,
                                 c.queue_seconds),
        c.mean_time_between_evictions or settings.mean_time_between_evictions or math.inf,
        c.share) for name, c in settings.gpu_classes.items()}
    epochs = max((check_params(t["params"])["epochs"] for t in sweep.trials()),
                 default=check_params(dict(sweep.spec().base))["epochs"])  # optuna: none yet
    interval = settings.checkpoint_every or epochs
    try:
        floor, simulated = choose_gpus(settings.gpu, classes, epochs, interval)
    except PolicyError as exc:
        raise TrainError(f"condor.gpu_classes: {exc}") from None
    return {"policy": settings.gpu, "min_capability": floor, "simulated": simulated}


def _start_dag(sweep: Sweep) -> tuple[Path, dict[str, Any]]:
    """The condor folder cleared of the previous DAG, with the job script and the GPU choice
    (`condor/gpu-policy.json`, which the wave submit files follow)."""
    settings = sweep.spec().condor
    condor_dir = sweep.root.resolve() / "condor"
    condor_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_dag(condor_dir)
    _write_job_script(condor_dir, settings)
    choice = gpu_choice(sweep, settings)
    write_json_atomic(condor_dir / GPU_POLICY_FILE, choice)
    return condor_dir, choice


def _wave_commands(sweep: Sweep, choice: dict[str, Any]) -> dict[str, str]:
    """A wave's job cluster, one job per item (trial). Grid and random: HTCondor restarts a
    job that exits with the checkpoint code. Optuna: the job ends at its rung (`$(budget)`
    epochs or checkpoints) with exit 0, and the files come back for the next wave."""
    spec = sweep.spec()
    settings = spec.condor
    root = sweep.root.resolve()
    url = sweep.dataset_url(settings)
    if settings.data_source == "transfer":  # from the sweep directory, or data_url's plugin
        transfer = [url or str(sweep.dataset.resolve())]
        dataset = transfer[0].rsplit("/", 1)[-1]
    else:  # the job reads the URL itself
        transfer, dataset = [], str(url)
    trial_args = trial_arguments(spec.kind, ".", dataset, settings.data_source)
    if spec.method == "optuna":  # a job stops at its rung, and exits 0 there (see rung_exit)
        trial_args += ["--checkpoint-exit-every", "$(budget)", "--stop-at-rung"]
    elif settings.checkpoint_every:
        trial_args += ["--checkpoint-exit-every", str(settings.checkpoint_every)]
    if settings.checkpoint_every == "auto":
        trial_args += ["--mean-time-between-evictions",
                       str(settings.mean_time_between_evictions)]
    if spec.method == "optuna":  # embedders: checkpoints/ at a rung, model/ at the end
        restart = ({"transfer_output_files": f"{METRICS},$(outputs)"}
                   if spec.kind == "embedder" else {})
    else:
        restart = {"checkpoint_exit_code": str(CHECKPOINT_EXIT_CODE),
                   "transfer_checkpoint_files": ",".join(RESUME_FILES[spec.kind]),
                   **OUTPUT_FILES[spec.kind]}
    gpu = ({"gpus_minimum_capability": f"{choice['min_capability']:g}"}
           if choice["min_capability"] else {})
    return {
        **_job(root / "condor", settings, trial_args, [f"$(resume){PARAMS}", *transfer]),
        "initialdir": str(root / "trials" / "$(trial)"), **restart,
        "environment": '"OMP_NUM_THREADS=$(request_cpus)"',
        "output": "trial.out", "error": "trial.err", "log": str(root / "condor" / "sweep.log"),
        "batch_name": f"sweep-{spec.name}", **gpu,
    }


def write_wave_submit(sweep: Sweep, wave: int, items: list[dict[str, Any]]) -> Path:
    """An optuna wave's submit file and item data, from `search.ask`'s items (its PRE
    script writes them, before DAGMan submits the node)."""
    spec = sweep.spec()
    condor_dir = sweep.root.resolve() / "condor"
    if not (condor_dir / GPU_POLICY_FILE).is_file():
        raise TrainError(f"{sweep.root} has no DAG: run `train-models sweep --executor "
                         "condor` first")
    choice = json.loads((condor_dir / GPU_POLICY_FILE).read_text(encoding="utf-8"))
    last = rungs(spec)[-1]
    rows = [{"trial": item["trial"], "budget": str(item["budget"]),
             **({"outputs": MODEL_DIR if item["until"] == last else CHECKPOINTS_DIR}
                if spec.kind == "embedder" else {}),
             "resume": _resume_files(sweep, spec.kind, item["trial"])} for item in items]
    path = condor_dir / f"wave-{wave:03d}.sub"
    _write(path, _wave_commands(sweep, choice), itemdata=rows)
    return path


def _collect_node(sweep: Sweep, condor_dir: Path) -> Node:
    """FINAL: rank the trials on the access point, whatever the waves did."""
    root = sweep.root.resolve()
    _write(condor_dir / "collect.sub", {
        **access_point_commands(["submit.train.cli", "collect", "--sweep-dir", str(root)]),
        "output": str(condor_dir / "collect.out"), "error": str(condor_dir / "collect.err"),
        "log": str(condor_dir / "sweep.log"), "getenv": "PATH,HOME",
    })
    # DAGMan takes the FINAL node's outcome as the DAG's: fail it unless the waves all
    # succeeded or one stopped the DAG at the target (ABORT-DAG-ON ... RETURN 0, which leaves
    # DAG_STATUS at 0; 3, an abort, is taken too); diverged trials (4) fail their wave's
    # node, and so the DAG
    return Node("COLLECT", "collect.sub", kind="FINAL", post=Script(
        "/usr/bin/test", ["$DAG_STATUS", "-eq", "0", "-o", "$DAG_STATUS", "-eq", "3"]))


def _chain(waves: list[Node], final: Node) -> Dag:
    edges = [([a.name], [b.name]) for a, b in zip(waves, waves[1:])]
    return Dag(nodes=[*waves, final], edges=edges, node_status_file="sweep.status")


def write_sweep_dag(sweep: Sweep, trials: list[str]) -> Path:
    """The DAG that runs `trials` (the unfinished ones), resuming each from its checkpoint."""
    if not trials:
        raise TrainError("no trial left to run: the DAG would be empty")
    spec = sweep.spec()
    root = sweep.root.resolve()
    condor_dir, choice = _start_dag(sweep)
    size = spec.condor.wave_size or len(trials)
    waves = [trials[i : i + size] for i in range(0, len(trials), size)]
    nodes = []
    for number, wave in enumerate(waves):
        name = f"wave-{number:03d}"
        _write(condor_dir / f"{name}.sub", _wave_commands(sweep, choice),
               itemdata=[{"trial": t, "resume": _resume_files(sweep, spec.kind, t)}
                         for t in wave])
        nodes.append(Node(f"WAVE{number}", f"{name}.sub",
                          post=_local_script("evaluate", "--sweep-dir", str(root),
                                             "--trials", ",".join(wave)),
                          abort_dag_on=(EVAL_TARGET_REACHED, 0)))
    return _write_dag(condor_dir / SWEEP_DAG, _chain(nodes, _collect_node(sweep, condor_dir)))


def write_optuna_dag(sweep: Sweep, waves: range) -> Path:
    """An optuna sweep's DAG: one node per wave still to run, each asking for its trials in a
    PRE script (`train-models ask --submit`, which writes the node's submit file; exit
    ASK_NOTHING skips the node, PRE_SKIP) and evaluating them in its POST script."""
    if not waves:
        raise TrainError("no wave left to run: the DAG would be empty")
    root = sweep.root.resolve()
    condor_dir, _ = _start_dag(sweep)
    nodes = [Node(f"WAVE{wave}", f"wave-{wave:03d}.sub",
                  pre=_local_script("ask", "--sweep-dir", str(root), "--wave", str(wave),
                                    "--submit"),
                  pre_skip=ASK_NOTHING,
                  post=_local_script("evaluate", "--sweep-dir", str(root), "--wave",
                                     str(wave)),
                  abort_dag_on=(EVAL_TARGET_REACHED, 0)) for wave in waves]
    return _write_dag(condor_dir / SWEEP_DAG, _chain(nodes, _collect_node(sweep, condor_dir)))


def run_sweep_dag(sweep: Sweep, dry_run: bool) -> dict[str, Any]:
    """Write (and unless `dry_run` submit) the DAG for what is left of the sweep.

    With nothing left (every trial finished, or the early-stop rule already met) no DAG is
    written: the trials are ranked here, as the DAG's FINAL node would.
    """
    optuna = sweep.spec().method == "optuna"
    if optuna:  # the study hears of its trials here: never beside a running DAG's scripts
        require_not_running(sweep.root / "condor" / SWEEP_DAG)
    decision = evaluate_study(sweep) if optuna else evaluate(sweep)
    pending = open_waves(sweep) if optuna else unfinished_trials(sweep)
    if not pending or decision["action"] == "stop":
        return {**collect(sweep), "dag": None, "submitted": None,
                "stopped_early": decision["reason"]}
    dag = write_optuna_dag(sweep, pending) if optuna else write_sweep_dag(sweep, pending)
    choice = json.loads((dag.parent / GPU_POLICY_FILE).read_text(encoding="utf-8"))
    trials = sweep.trials()
    statuses = [(read_metrics(sweep.trial_dir(t["trial"])) or {}).get("status")
                for t in trials]
    spec = sweep.spec()
    waves = {"waves": [pending[0], pending[-1]],  # optuna: trials not asked yet are pending
             "pending": spec.samples - sum(s in FINISHED for s in statuses)} if optuna else {}
    return {"sweep": spec.name, "trials": len(trials),
            "completed": statuses.count("completed"), "pending": len(pending), **waves,
            "best": None, "dag": str(dag),
            "dataset": sweep.dataset_url(spec.condor) or str(sweep.dataset),
            "gpu_policy": {k: v for k, v in choice.items() if k != "simulated"},
            "submitted": None if dry_run else submit_dag(dag)}


def _multinode_job(run_dir: Path, spec: MultinodeSpec, arguments: list[str]) -> dict[str, str]:
    return {**_job(run_dir / "condor", spec.condor, arguments, [DATASET, PARAMS, RUN_FILE]),
            "initialdir": str(run_dir),
            "log": str(run_dir / "condor" / "multinode.log"),
            "batch_name": f"multinode-{spec.name}"}


def write_workers_submit(run_dir: Path, spec: MultinodeSpec, endpoint: str,
                         rank0_machine: str) -> Path:
    """Worker nodes: torchrun joining rank 0's rendezvous, never on rank 0's machine."""
    run_dir = Path(run_dir).resolve()
    arguments = torchrun_args(".", endpoint, spec.nodes, spec.nproc_per_node, spec.name,
                              is_host=False)
    path = run_dir / "condor" / "workers.sub"
    away = f'(TARGET.Machine =!= "{rank0_machine}")'
    _write(path, {
        **_multinode_job(run_dir, spec, arguments),
        "requirements": (f"({spec.condor.requirements}) && {away}"
                         if spec.condor.requirements else away),
        "output": "condor/worker-$(worker).out", "error": "condor/worker-$(worker).err",
    }, itemdata=[{"worker": str(n)} for n in range(1, spec.max_nodes)])
    return path


def write_multinode_dag(run_dir: Path) -> Path:
    run_dir = Path(run_dir).resolve()
    spec = read_run(run_dir)
    if spec.max_nodes < 2:
        raise TrainError("a multi-node DAG needs at least 2 nodes (--nodes 2 or MIN:MAX)")
    condor_dir = run_dir / "condor"
    _write_job_script(condor_dir, spec.condor)
    _write(condor_dir / "rank0.sub", {
        **_multinode_job(run_dir, spec, ["-m", "submit.train.cli", "multinode-rank0",
                                         "--run-dir", "."]),
        "want_io_proxy": "true",
        "output": "condor/rank0.out", "error": "condor/rank0.err",
    })
    write_workers_submit(run_dir, spec, RENDEZVOUS_PENDING, "")
    pre = _local_script("multinode-pre", "--run-dir", str(run_dir), "--dag-id", "$DAGID")
    dag = Dag(nodes=[Node("RANK0", "rank0.sub", kind="PROVISIONER"),
                     Node("WORKERS", "workers.sub", pre=pre)],
              node_status_file="multinode.status")
    return _write_dag(condor_dir / MULTINODE_DAG, dag)


def query_rank0_ad(dag_id: str) -> dict[str, Any]:
    """The rank-0 job's ad, from `condor_q` (the schedd the DAG runs on)."""
    constraint = f'DAGManJobId == {int(dag_id)} && DAGNodeName == "RANK0"'
    try:
        proc = subprocess.run(["condor_q", "-json", "-constraint", constraint, "-attributes",
                               "RendezvousHost,RendezvousPort,RemoteHost,JobStatus"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrainError(f"cannot run condor_q: {exc}") from None
    if proc.returncode != 0:
        raise TrainError(f"condor_q failed: {proc.stderr.strip()[:300]}")
    try:
        ads = json.loads(proc.stdout or "[]")
    except ValueError:
        raise TrainError("condor_q -json printed something that is not JSON") from None
    if not ads:
        raise TrainError(f"no RANK0 job of DAG {dag_id} in the queue")
    return ads[0]


def pre_script(run_dir: Path, dag_id: str) -> int:
    """Workers' PRE script: endpoint and rank-0 machine from its ad into workers.sub."""
    ad = query_rank0_ad(dag_id)
    missing = [a for a in ("RendezvousHost", "RendezvousPort", "RemoteHost") if a not in ad]
    if missing:
        raise TrainError(f"the RANK0 job's ad lacks {', '.join(missing)}: it has not published "
                         f"its rendezvous yet")
    machine = str(ad["RemoteHost"]).split("@")[-1]
    endpoint = f"{ad['RendezvousHost']}:{int(ad['RendezvousPort'])}"
    path = write_workers_submit(run_dir, read_run(run_dir), endpoint, machine)
    print(f"workers join {endpoint}, away from {machine}: {path}")
    return 0
