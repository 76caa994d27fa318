"""The local executor: partition, then every unfinished shard in parallel worker processes.

Each worker process runs the very same `infer-corpus shard` command an HTCondor job runs, so
what passes locally is what runs on the pool. Workers report progress as JSON lines on stdout;
their stderr goes to `logs/worker-N.log`. A caller that loads the model itself (`eval`) may
have one worker's shards run in its own process, through the same `run_shards`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import InferenceConfig
from .config_loader import ConfigError
from .devices import cuda_device_count, pick_device
from .errors import Failure
from .models import check_model
from .partition import partition
from .processes import die_with_parent
from .workdir import Workdir


class RunError(Failure):
    """A worker process failed; the message names its shards and its log."""


def check_models(config: InferenceConfig) -> None:
    """The checks a worker would fail on at once, made before any work: the model names
    resolve to something loadable, the model takes passages of `max_seq_length` tokens, and
    the device exists (a ModelError or ConfigError otherwise)."""
    limit = check_model(config.model.name).get("max_position_embeddings")
    if isinstance(limit, int) and config.model.max_seq_length > limit:
        raise ConfigError(f"model.max_seq_length {config.model.max_seq_length:,} is beyond "
                          f"the limit of model {config.model.name!r}, {limit:,} tokens")
    if config.predictions.kind == "classifier":
        check_model(config.predictions.model or "")
    if config.model.device != "auto":
        pick_device(config.model.device)


def _disk_full(workdir: Workdir) -> str:
    """Why a worker may have died without a word: its log could not be written either."""
    try:
        free = shutil.disk_usage(workdir.root).free
    except OSError:
        return ""
    return f"no space left on the disk holding {workdir.root}" if free < (1 << 20) else ""


def _last_error(log: Path) -> str:
    """The worker's closing one-line error (its log's last `infer-corpus:` line), if any."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("infer-corpus: ")]
    return errors[-1].removeprefix("infer-corpus: ") if errors else ""


def plan_workers(config: InferenceConfig, pending: int) -> tuple[int, int, list[str | None]]:
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


class EmbedProgress:
    """One progress bar over the passages of all the shards a run embeds, from the workers'
    events; its clock restarts when the first model is loaded, so that the rate and ETA count
    embedding time, not loading time."""

    def __init__(self, total: int, progress: bool | None) -> None:
        self.total = total
        self.loading = True
        self.bar = tqdm(total=total, desc="embed (loading model)", unit=" passages",
                        disable=None if progress is None else not progress, mininterval=0.5,
                        smoothing=0.1)

    def show(self, event: dict[str, Any]) -> None:
        if event.get("event") == "ready" and self.loading:
            self.loading, done = False, self.bar.n
            self.bar.set_description("embed", refresh=False)
            self.bar.reset(total=self.total)
            self.bar.update(done)
        elif event.get("event") == "progress":
            self.bar.update(event["passages"])
        elif event.get("event") == "done" and event.get("skipped"):
            self.bar.update(event["rows"])

    def __enter__(self) -> EmbedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def run_in_process(workdir: Workdir, shards: list[int], config: InferenceConfig,
                   progress: bool | None = None) -> None:
    """Run `shards` in this process, as one worker process would run them. For a caller that
    loads the model's libraries itself anyway (`infer-corpus eval`): a worker process imports
    them again, about 5 s on a CPU, often more than a small collection's embedding."""
    from .worker import run_shards

    rows = {entry.shard: entry.rows for entry in workdir.manifest().shards}
    _, threads, _ = plan_workers(config, 1)
    with EmbedProgress(sum(rows[s] for s in shards), progress) as bar:
        run_shards(workdir, shards, threads=threads, on_event=bar.show)


def run_workers(workdir: Workdir, shards: list[int], config: InferenceConfig,
                progress: bool | None = None) -> None:
    """Run `shards` in worker processes, showing one progress bar over all their passages."""
    rows = {entry.shard: entry.rows for entry in workdir.manifest().shards}
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
            command = [sys.executable, "-m", "infer_corpus", "shard", "--workdir",
                       str(workdir.root), "--events", "--threads", str(threads)]
            for shard in assigned:
                command += ["--shard", str(shard)]
            log = open(workdir.logs_dir / f"worker-{index}.log", "ab")
            logs.append(log)
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env,
                                    text=True, preexec_fn=die_with_parent)
            procs.append(proc)
            threading.Thread(target=_pump, args=(index, proc.stdout, events), daemon=True).start()
        with EmbedProgress(sum(rows[s] for s in shards), progress) as bar:
            running = len(procs)
            while running:
                _, event = events.get()
                if event is None:
                    running -= 1
                else:
                    bar.show(event)
        failures = []
        for index, proc in enumerate(procs):
            code = proc.wait()
            if code != 0:
                log_path = workdir.logs_dir / f"worker-{index}.log"
                reason = _last_error(log_path) or _disk_full(workdir)
                failures.append(
                    f"worker {index} (shards {assignments[index]}) exited with {code}"
                    + (f": {reason}" if reason else "") + f"; see {log_path}"
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


def run_pipeline(patterns: list[str], workdir: Workdir, config: InferenceConfig, *,
                 force: bool = False, progress: bool | None = None,
                 in_process: bool = False) -> dict[str, Any]:
    """Partition, then run every shard whose result is missing or stale. Returns the summary.
    `in_process`: where the shards need one worker, run them in this process instead
    (`run_in_process`)."""
    check_models(config)  # a bad model name or device: exit 2 now, not in every worker
    with workdir.lock():
        return _run_pipeline(patterns, workdir, config, force=force, progress=progress,
                             in_process=in_process)


def _run_pipeline(patterns: list[str], workdir: Workdir, config: InferenceConfig, *,
                  force: bool, progress: bool | None, in_process: bool) -> dict[str, Any]:
    started = time.perf_counter()
    summary = partition(patterns, workdir, config, force=force, progress=progress)
    manifest = workdir.manifest()
    key = manifest.result_key(config)
    pending = [e.shard for e in manifest.shards if not workdir.result_is_current(e, key)]
    if pending and in_process and plan_workers(config, len(pending))[0] == 1:
        run_in_process(workdir, pending, config, progress=progress)
    elif pending:
        run_workers(workdir, pending, config, progress=progress)
    manifest = workdir.manifest()
    manifest = manifest.with_shards([
        dataclasses.replace(e, state="done" if workdir.result_is_current(e, key) else "pending")
        for e in manifest.shards])
    workdir.write_manifest(manifest)
    return {
        **summary.to_dict(),
        "partitioned": not summary.skipped,
        "shards_run": len(pending),
        "shards_done": sum(e.state == "done" for e in manifest.shards),
        "workdir": str(workdir.root),
        "seconds": round(time.perf_counter() - started, 3),
    }
