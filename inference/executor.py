"""The local executor: partition, then every unfinished shard in parallel worker processes.

Each worker process runs the very same `infer-corpus shard` command an HTCondor job runs, so
what passes locally is what runs on the pool. Workers report progress as JSON lines on stdout;
their stderr goes to `logs/worker-N.log`.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from tqdm import tqdm

from .config import Config
from .devices import cuda_device_count
from .partition import partition
from .workdir import Workdir
from .worker import result_is_current, result_key


class RunError(RuntimeError):
    """A worker process failed; the message names its shards and its log."""


def plan_workers(config: Config, pending: int) -> tuple[int, int, list[str | None]]:
    """How many workers, CPU threads for each, and the GPU each one sees (None on CPU)."""
    gpus = cuda_device_count()
    workers = config.executor.workers or max(gpus, 1)
    workers = max(1, min(workers, pending))
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        devices: list[str | None] = [ids[i % len(ids)] for i in range(workers)]
    else:
        devices = [None] * workers
    threads = config.executor.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    return workers, threads, devices


def _pump(index: int, stream: Any, events: queue.Queue) -> None:
    for line in stream:
        try:
            events.put((index, json.loads(line)))
        except ValueError:
            continue
    events.put((index, None))


def run_workers(workdir: Workdir, shards: list[int], config: Config,
                progress: bool | None = None) -> None:
    """Run `shards` in worker processes, showing one progress bar over all their passages."""
    manifest = workdir.read_manifest()
    rows = {s["shard"]: s["rows"] for s in manifest["shards"]}
    workers, threads, devices = plan_workers(config, len(shards))
    assignments = [shards[i::workers] for i in range(workers)]
    workdir.logs_dir.mkdir(parents=True, exist_ok=True)
    events: queue.Queue = queue.Queue()
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for index, assigned in enumerate(assignments):
            env = dict(os.environ)
            if devices[index] is not None:
                env["CUDA_VISIBLE_DEVICES"] = devices[index]
            command = [sys.executable, "-m", "inference", "shard", "--workdir",
                       str(workdir.root), "--events", "--threads", str(threads)]
            for shard in assigned:
                command += ["--shard", str(shard)]
            log = open(workdir.logs_dir / f"worker-{index}.log", "ab")
            logs.append(log)
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env,
                                    text=True)
            procs.append(proc)
            threading.Thread(target=_pump, args=(index, proc.stdout, events), daemon=True).start()
        total = sum(rows[s] for s in shards)
        disable = None if progress is None else not progress
        with tqdm(total=total, desc="embed", unit=" passages", disable=disable,
                  mininterval=0.5, smoothing=0.1) as bar:
            running = len(procs)
            while running:
                _, event = events.get()
                if event is None:
                    running -= 1
                elif event.get("event") == "progress":
                    bar.update(event["passages"])
                elif event.get("event") == "done" and event.get("skipped"):
                    bar.update(event["rows"])
        failures = []
        for index, proc in enumerate(procs):
            code = proc.wait()
            if code != 0:
                failures.append(
                    f"worker {index} (shards {assignments[index]}) exited with {code}; "
                    f"see {workdir.logs_dir / f'worker-{index}.log'}"
                )
        if failures:
            raise RunError("; ".join(failures))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        for log in logs:
            log.close()


def run_pipeline(patterns: list[str], workdir: Workdir, config: Config, *,
                 force: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Partition, then run every shard whose result is missing or stale. Returns the summary."""
    started = time.perf_counter()
    summary = partition(patterns, workdir, config, force=force, progress=progress)
    manifest = workdir.read_manifest()
    key = result_key(manifest, config)
    pending = [s["shard"] for s in manifest["shards"] if not result_is_current(workdir, s, key)]
    if pending:
        run_workers(workdir, pending, config, progress=progress)
    manifest = workdir.read_manifest()
    for entry in manifest["shards"]:
        entry["state"] = "done" if result_is_current(workdir, entry, key) else "pending"
    workdir.write_manifest(manifest)
    return {
        **summary.to_dict(),
        "partitioned": not summary.skipped,
        "shards_run": len(pending),
        "shards_done": sum(e["state"] == "done" for e in manifest["shards"]),
        "workdir": str(workdir.root),
        "seconds": round(time.perf_counter() - started, 3),
    }
