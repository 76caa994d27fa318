"""One head trained across several nodes: torchrun with a c10d rendezvous hosted by rank 0.

On HTCondor the rank-0 node is the DAG's PROVISIONER node: it starts torchrun as the host of
the rendezvous store, publishes its address and port into its own job ad with chirp
(`want_io_proxy`), then tells DAGMan it is ready (`ProvisionerState = 2`). The workers' PRE
script reads that ad and writes the endpoint, and a requirement that keeps workers off the
rank-0 machine, into the worker submit file. `--local` runs the same agents on this machine.

The rendezvous numbers the processes by sorting the nodes' addresses, so global rank 0 (the
process that writes `model.pt` and `metrics.json`) may run in the rank-0 job or in a worker
job. Every job's scratch directory is transferred back into the run directory on exit, so the
model lands in `WORKDIR/train/NAME/` either way; the job that wrote it says so in its output.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from inference.workdir import Workdir, write_json_atomic

from . import TrainError
from .data import DATASET, load_dataset, read_workdir, save_dataset
from .spec import CondorSettings, build_spec, load_spec_file
from .trial import (
    METRICS,
    MODEL,
    PARAMS,
    check_params,
    epoch_generator,
    evaluate,
    make_model,
    make_optimizer,
)

RUN_FILE = "run.json"
PROVISIONING_COMPLETE = 2  # DAGMan's ProvisionerState value that starts the other nodes
STORE_START_TIMEOUT = 600.0  # seconds for rank 0's torchrun to start hosting the rendezvous


@dataclass
class MultinodeSpec:
    name: str
    nodes: str = "2:2"  # MIN:MAX nodes (elastic) including the rank-0 node
    nproc_per_node: int = 1  # processes per node: one per GPU, or a few on CPU
    params: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.25
    condor: CondorSettings = field(default_factory=CondorSettings)

    @property
    def max_nodes(self) -> int:
        return int(self.nodes.split(":")[-1])

    def validate(self) -> None:
        """`nodes` N or MIN:MAX, kept as MIN:MAX; at least one process per node; known
        hyperparameters."""
        parts = self.nodes.split(":")
        if len(parts) > 2 or not all(p.isdigit() for p in parts):
            raise TrainError(f"nodes must be N or MIN:MAX, not {self.nodes!r}")
        low, high = int(parts[0]), int(parts[-1])
        if not 1 <= low <= high:
            raise TrainError(f"nodes {self.nodes!r}: need 1 <= MIN <= MAX")
        self.nodes = f"{low}:{high}"
        if self.nproc_per_node < 1:
            raise TrainError("nproc_per_node must be >= 1")
        if self.condor.data_source != "transfer" or self.condor.data_url:
            raise TrainError("condor.data_source and data_url are for sweeps: a multi-node "
                             "run's jobs get its dataset by file transfer")
        check_params(self.params)


def load_multinode_spec(path: Path, nodes: str | None = None) -> MultinodeSpec:
    """Read and check a multi-node spec; `nodes` (N or MIN:MAX) replaces the spec's."""
    return load_spec_file(MultinodeSpec, path, "multi-node spec",
                          {"nodes": nodes} if nodes is not None else None)


def prepare_run(spec: MultinodeSpec, workdir: Path) -> Path:
    """`WORKDIR/train/NAME/`: the spec, the hyperparameters and the dataset every node reads."""
    run_dir = Path(workdir) / "train" / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RUN_FILE, asdict(spec))
    write_json_atomic(run_dir / PARAMS, check_params(spec.params))
    if not (run_dir / DATASET).is_file():
        save_dataset(read_workdir(Workdir(workdir), spec.val_fraction), run_dir / DATASET)
    return run_dir


def read_run(run_dir: Path) -> MultinodeSpec:
    try:
        data = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise TrainError(f"{run_dir} is not a prepared multi-node run (no {RUN_FILE})") from None
    return build_spec(MultinodeSpec, data, str(run_dir / RUN_FILE))


def torchrun_args(run_dir: Path | str, endpoint: str, nodes: str, nproc_per_node: int,
                  run_id: str, is_host: bool) -> list[str]:
    """One torchrun agent's Python arguments; every node, local or in a job, starts training
    through this (torchrun starts the training processes with the same interpreter)."""
    return ["-m", "torch.distributed.run", f"--nnodes={nodes}",
            f"--nproc-per-node={nproc_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}",
            f"--rdzv-conf=is_host={str(is_host).lower()}", "--max-restarts=0",
            "-m", "submit.train.cli", "ddp-train", "--run-dir", str(run_dir)]


def ddp_train(run_dir: Path) -> NoReturn:
    """Runs on every process torchrun starts: data-parallel training of one head."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from .heads import export_head

    # a rank that dies in torch's C++ code (an abort in gloo, say) leaves its Python stack in
    # the node's log, not only torchrun's "Signal 6 received"
    faulthandler.enable()
    params = check_params(json.loads((run_dir / PARAMS).read_text(encoding="utf-8")))
    dataset = load_dataset(run_dir / DATASET)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    torch.set_num_threads(1)
    model = make_model(params, dataset.dim, len(dataset.classes)).to(device)
    ddp = DistributedDataParallel(model)
    optimizer = make_optimizer(params, ddp)
    x_train, y_train = (torch.from_numpy(a) for a in dataset.part(validation=False))
    per_rank = len(x_train) // world  # equal batch counts on every rank keep all-reduce in step
    history = []
    for epoch in range(1, params["epochs"] + 1):
        order = torch.randperm(len(x_train), generator=epoch_generator(params, epoch))
        mine = order[rank::world][:per_rank]
        ddp.train()
        total = torch.zeros(2, dtype=torch.float64)
        for start in range(0, per_rank, params["batch_size"]):
            batch = mine[start : start + params["batch_size"]]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(ddp(x_train[batch].to(device)),
                                                     y_train[batch].to(device))
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(batch), len(batch)], dtype=torch.float64)
        dist.all_reduce(total)
        x_val, y_val = (torch.from_numpy(a).to(device) for a in dataset.part(validation=True))
        history.append({"epoch": epoch, "train_loss": float(total[0] / total[1]),
                        **evaluate(model, [(x_val, y_val)])})
    if rank == 0:  # global rank 0 owns the output, wherever the rendezvous placed it
        final = {k: v for k, v in history[-1].items() if k != "epoch"}
        export_head(model, dataset.classes, dataset.embedding_model, final, run_dir / MODEL)
        write_json_atomic(run_dir / METRICS, {"status": "completed", "world_size": world,
                                              "host": socket.gethostname(), "params": params,
                                              "final": history[-1], "history": history})
        print(f"rank 0 of {world} on {socket.gethostname()} wrote {run_dir / MODEL}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: there, with no Python frame running, torch's
    # C++ objects have aborted a rank that had finished ("terminate called without an active
    # exception", about one run in eight on a loaded machine), which torchrun reports as a
    # failed node while the others wait out its exit barrier. All output is written by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def node_address() -> str:
    """The address other machines reach this one at (the interface of the default route)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("10.254.254.254", 1))  # no packet is sent: this only picks an interface
        return sock.getsockname()[0]
    return socket.gethostbyname(socket.gethostname())


def publish_rendezvous(host: str, port: int) -> None:
    """Put the endpoint into this job's ad and tell DAGMan the provisioner is ready."""
    from htcondor2.htchirp import HTChirp

    try:  # HTChirp's own errors all derive from HTChirp.ChirpError

        with HTChirp() as chirp:
            chirp.set_job_attr("RendezvousHost", json.dumps(host))
            chirp.set_job_attr("RendezvousPort", str(port))
            chirp.set_job_attr("ProvisionerState", str(PROVISIONING_COMPLETE))
    except (OSError, ValueError, RuntimeError, HTChirp.ChirpError) as exc:
        raise TrainError(f"cannot publish the rendezvous with chirp ({exc}): "
                         f"the rank-0 job needs want_io_proxy = true") from None


def serve_rank0(run_dir: Path) -> int:
    """The PROVISIONER job: host the rendezvous, publish it, train as one of the nodes."""
    spec = read_run(run_dir)
    host = node_address()
    port = free_port("")
    agent = subprocess.Popen([sys.executable, *torchrun_args(
        run_dir, f"{host}:{port}", spec.nodes, spec.nproc_per_node, spec.name, is_host=True)])
    try:
        if not wait_until_listening(host, port, agent):
            return agent.wait()  # torchrun ended before hosting the rendezvous; it said why
        publish_rendezvous(host, port)
    except TrainError:
        agent.terminate()
        agent.wait()
        raise
    return agent.wait()


def wait_until_listening(host: str, port: int, agent: subprocess.Popen,
                         timeout: float = STORE_START_TIMEOUT) -> bool:
    """Whether the rendezvous store accepts connections (False: its agent exited first).
    The endpoint is published only then: a worker that finds it refuses connections gives up
    after torch's read_timeout (60 s), and on a loaded machine torchrun's start can take longer."""
    deadline = time.monotonic() + timeout
    while agent.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        if time.monotonic() > deadline:
            raise TrainError(f"the rendezvous store did not start listening on {host}:{port} "
                             f"within {timeout:.0f} s")
        time.sleep(0.2)
    return False


def clear_outputs(run_dir: Path) -> None:
    """Drop an earlier run's model and metrics, so that a rerun which fails leaves none behind
    to be mistaken for its own."""
    for stale in (MODEL, METRICS):
        (run_dir / stale).unlink(missing_ok=True)


def run_local(run_dir: Path, timeout: float = 600.0) -> dict[str, Any]:
    """Every node as a torchrun agent on this machine, rendezvous on 127.0.0.1 (gloo on CPU)."""
    spec = read_run(run_dir)
    started = time.perf_counter()
    clear_outputs(run_dir)
    port = free_port("127.0.0.1")
    endpoint = f"127.0.0.1:{port}"
    run_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
    logs = run_dir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents: list[subprocess.Popen] = []
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for node in range(spec.max_nodes):
            with open(logs / f"node-{node}.log", "wb") as log:
                agents.append(subprocess.Popen(
                    [sys.executable, *torchrun_args(run_dir, endpoint, spec.nodes,
                                                    spec.nproc_per_node, run_id,
                                                    is_host=node == 0)],
                    stdout=log, stderr=subprocess.STDOUT, env=env))
            if node == 0 and not wait_until_listening("127.0.0.1", port, agents[0], timeout):
                break  # node 0 ended before hosting the rendezvous: its log says why
        for agent in agents:
            codes.append(agent.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        raise TrainError(f"multi-node run did not finish in {timeout:.0f} s; see {logs}") from None
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    if any(codes) or not (run_dir / MODEL).is_file():
        raise TrainError(f"multi-node run failed (agent exit codes {codes}); see {logs}")
    metrics = json.loads((run_dir / METRICS).read_text(encoding="utf-8"))
    return {"run": spec.name, "nodes": spec.max_nodes, "world_size": metrics["world_size"],
            "model": str(run_dir / MODEL), "val_accuracy": metrics["final"]["val_accuracy"],
            "seconds": round(time.perf_counter() - started, 1)}
