"""The partitioner: validate, quarantine bad rows, split into passages, dedup, write shards.

It runs as map and reduce, so that no process holds or reads the whole corpus:
1. plan: the inputs are cut into parts (whole files, line ranges of large JSONL files, row
   groups of large Parquet files; see `parts`);
2. map: each part is partitioned on its own, in parallel (`partition_map.map_part`): every
   candidate passage, with the keys de-duplication decides on;
3. merge: one process decides from those keys alone which copies are kept (`dedup`);
4. write: each part's kept passages become its shards, in parallel, and its rejects ledger.
The result does not depend on the number of workers: the passages, their ids, the rejects
ledger and the counts are those of one pass over the inputs in order, and the shards are
fixed by the inputs and settings (a part's shards are its own). Each map and write needs
memory for one batch of rows and its part's keys (24 bytes a passage); the merge holds every
part's keys. On the pool, each map and write is a CPU job and the merge is one more
(submit/pipeline.py). Finished parts survive an interruption: a re-run maps only the others.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from .config import InferenceConfig
from .dedup import PartKeys, decide
from .devices import usable_cpus
from .errors import Failure, UsageError
from .partition_map import DONE, map_part, part_name, write_part
from .parts import Part, fingerprint_inputs, plan, plan_record
from .readers import expand_inputs
from .schema import SCHEMA_VERSION
from .tokenize import ShardTokenizer
from .version import __version__
from .workdir import Workdir, WorkdirError, atomic_path, write_json_atomic

PARTITION_SECTIONS = ("fields", "passages", "shards")
STAGE = "parts"  # WORKDIR/parts/: the plan, and each part's map output until the end
PLAN = "plan.json"
MERGE = "merge"
WRITTEN = "written.json"
__all__ = ["PartitionSummary", "fingerprint_inputs", "partition", "partition_key"]


@dataclass
class PartitionSummary:
    articles: int = 0  # kept: duplicates are counted apart
    passages: int = 0
    rejected: int = 0
    duplicate_passages: int = 0
    duplicate_articles: int = 0
    shards: int = 0
    parts: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "articles": self.articles,
            "passages": self.passages,
            "rejected": self.rejected,
            "duplicate_passages": self.duplicate_passages,
            "duplicate_articles": self.duplicate_articles,
            "shards": self.shards,
            "parts": self.parts,
            "reject_reasons": dict(self.reject_reasons),
            "seconds": round(self.seconds, 3),
        }


def partition_key(config: InferenceConfig, inputs: list[dict[str, Any]]) -> str:
    """What decides the shards' content: the inputs' bytes (not their paths: the same files
    moved or reinstalled are the same inputs) and the partition settings."""
    tokenizer = ShardTokenizer.identity(config) if config.shards.tokenize else None
    blob = orjson.dumps(
        {"inputs": [(i["format"], i["sha256"]) for i in inputs],
         "config": config.section_hash(*PARTITION_SECTIONS), "tokenizer": tokenizer},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(blob).hexdigest()[:16]




def partition(patterns: list[str], workdir: Workdir, config: InferenceConfig, *,
              force: bool = False, progress: bool | None = None,
              workers: int | None = None) -> PartitionSummary:
    """Partition the inputs into `workdir`, or do nothing when it already holds this
    partition. `workers`: processes for the map and write steps (default: one per CPU)."""
    with workdir.lock():
        started = time.perf_counter()
        parts = prepare(patterns, workdir, config, force=force)
        if isinstance(parts, PartitionSummary):
            parts.seconds = time.perf_counter() - started
            return parts
        workers = max(1, min(workers or usable_cpus(), len(parts) or 1))
        stage = workdir.root / STAGE
        todo = [p for p in parts if not _mapped(stage, p)]
        with tqdm(desc="partition", unit=" rows", disable=None if progress is None
                  else not progress, mininterval=0.5) as bar:
            _each(workers, _map_task, [(p, config, stage) for p in todo], bar.update)
        merged = merge(stage, parts, config.shards.passages_per_shard)
        todo = [p for p in parts if not (stage / part_name(p.index) / WRITTEN).is_file()]
        _each(workers, _write_task, [
            (p, stage, config, workdir.shards_dir, merged["parts"][p.index]["first_shard"],
             workers == 1) for p in todo])
        summary = finish(workdir, config, parts, merged)
        summary.seconds = time.perf_counter() - started
        return summary


def prepare(patterns: list[str], workdir: Workdir, config: InferenceConfig, *,
            force: bool) -> list[Part] | PartitionSummary:
    """The plan's parts, with the workdir made ready to receive them (marked unfinished, old
    shards, results and rejects removed; map outputs of the same plan kept); or the skipped
    summary, when the workdir already holds this partition."""
    paths = expand_inputs(patterns)
    manifest = workdir.manifest() if workdir.has_manifest() else None
    stage = workdir.root / STAGE
    previous = _read_json(stage / PLAN)
    inputs, parts = plan(paths, config.shards.part_bytes, previous.get("plan"))
    key = partition_key(config, inputs)
    if manifest and manifest.partitioned:
        if manifest.partition_key == key:
            # model settings may change; results check them
            workdir.write_manifest({**manifest.data, "config": config.to_dict()})
            stats = {k: v for k, v in manifest.partition.items()
                     if k in PartitionSummary.__dataclass_fields__}
            return PartitionSummary(**stats, skipped=True)
        if not force:
            raise WorkdirError(
                f"{workdir.root} already holds a partition of other inputs or settings; "
                "use a new --workdir, or --force to discard it and start over"
            )
    workdir.create()
    # From here until the final manifest, the workdir holds no finished partition.
    workdir.write_manifest({"format": "infer-corpus.manifest", "partition_key": key,
                            "inputs": inputs, "partition": {"state": "running"}, "shards": []})
    for folder in (workdir.shards_dir, workdir.results_dir, workdir.rejects_dir):
        shutil.rmtree(folder, ignore_errors=True)
    if previous.get("key") != key:
        shutil.rmtree(stage, ignore_errors=True)  # map outputs of another plan
    else:
        shutil.rmtree(stage / MERGE, ignore_errors=True)
        for written in stage.glob(f"part-*/{WRITTEN}"):
            written.unlink()  # their shards were just removed
    workdir.create()
    write_json_atomic(stage / PLAN, {"key": key, "plan": plan_record(
        inputs, parts, config.shards.part_bytes)})
    return parts


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _mapped(stage: Path, part: Part) -> bool:
    """The part's map output is there, whole, and made from the part's bytes."""
    return _read_json(stage / part_name(part.index) / DONE).get("sha256") == part.sha256


def _map_task(part: Part, config: InferenceConfig, stage: Path,
              on_rows: Callable[[int], None] | None = None) -> int:
    return map_part(part, config, stage / part_name(part.index), on_rows=on_rows)["rows"]


def _write_task(part: Part, stage: Path, config: InferenceConfig, shards_dir: Path,
                first_shard: int, alone: bool) -> None:
    """Write one part's shards; `alone`: the only process, so the tokenizer (if any) may use
    a process per core."""
    mapped = stage / part_name(part.index)
    tokenizer = ShardTokenizer.load(config) if alone and config.shards.tokenize else None
    try:
        shards = write_part(part, mapped, stage / MERGE / f"{part_name(part.index)}.npz",
                            config, shards_dir, first_shard, tokenizer=tokenizer)
    finally:
        if tokenizer is not None:
            tokenizer.close()
    write_json_atomic(mapped / WRITTEN, {"shards": shards})


def _each(workers: int, task: Callable[..., int | None], jobs: list[tuple],
          on_rows: Callable[[int], None] | None = None) -> None:
    """Run `task(*job)` for every job: in this process when `workers` is 1 (the task
    reports its rows to `on_rows` as it goes), else in that many processes (each task's
    returned rows are reported as it finishes)."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            task(*job, on_rows) if on_rows is not None else task(*job)
        return
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for rows in pool.map(task, *zip(*jobs)):
                if on_rows is not None and rows:
                    on_rows(rows)
    except BrokenProcessPool:
        raise Failure("a partition worker process died (killed, or out of memory): run the "
                      "same command again; finished parts are kept") from None


def merge(stage: Path, parts: list[Part], passages_per_shard: int) -> dict[str, Any]:
    """Decide, from every mapped part's keys, which articles and passages are kept, and
    number each part's shards; writes each part's decisions and the counts to
    STAGE/merge/ (and returns the counts)."""
    folder = stage / MERGE
    keys, maps = [], []
    for part in parts:
        mapped = stage / part_name(part.index)
        done = _read_json(mapped / DONE)
        if not done:
            raise PartitionError(f"part {part.index} ({part.source}) has no finished map "
                                 f"output in {mapped}")
        if done.get("sha256") != part.sha256:
            raise PartitionError(f"part {part.index} ({part.source}) was mapped from other "
                                 "bytes than the plan's: run the partition again")
        try:
            keys.append(PartKeys.load(mapped / "keys.npz"))
        except (OSError, ValueError, KeyError) as exc:
            raise PartitionError(f"part {part.index}: damaged map output {mapped}/keys.npz "
                                 f"({exc})") from None
        if len(keys[-1].passage_digests) != done.get("passages") or \
                len(keys[-1].article_ids) != done.get("articles"):
            raise PartitionError(f"part {part.index}: {mapped}/keys.npz does not hold the "
                                 f"articles and passages its {DONE} counts")
        maps.append(done)
    counts, first = [], 0
    for part, done, decided in zip(parts, maps, decide(keys)):
        with atomic_path(folder / f"{part_name(part.index)}.npz") as tmp, \
                open(tmp, "wb") as handle:
            np.savez(handle, keep=decided.keep, clashes=decided.clashes)
        kept = int(decided.keep.sum())
        shards = -(-kept // passages_per_shard)
        counts.append({"part": part.index, "rows": done["rows"], "articles": decided.articles,
                       "passages": kept, "duplicate_articles": decided.duplicate_articles,
                       "duplicate_passages": decided.duplicate_passages,
                       "rejected": done["rejected"] + len(decided.clashes),
                       "reject_reasons": dict(Counter(done["reject_reasons"])
                                              + Counter({"duplicate_id": len(decided.clashes)})),
                       "first_shard": first, "shards": shards})
        first += shards
    merged = {"passages_per_shard": passages_per_shard, "parts": counts}
    write_json_atomic(folder / "merge.json", merged)
    return merged


class PartitionError(UsageError):
    """A part's map output is missing, damaged, or was made from other bytes."""


def finish(workdir: Workdir, config: InferenceConfig, parts: list[Part],
           merged: dict[str, Any]) -> PartitionSummary:
    """Gather the written parts: the rejects ledger in input order, then the manifest."""
    stage = workdir.root / STAGE
    summary = PartitionSummary(parts=len(parts))
    reasons: Counter[str] = Counter()
    shards: list[dict[str, Any]] = []
    with atomic_path(workdir.rejects_dir / "rejects.jsonl") as tmp, open(tmp, "wb") as ledger:
        for part, counts in zip(parts, merged["parts"]):
            mapped = stage / part_name(part.index)
            written = _read_json(mapped / WRITTEN) if (mapped / WRITTEN).is_file() else None
            if written is None:
                raise PartitionError(f"part {part.index} ({part.source}) has no written shards")
            for entry in written["shards"]:
                shards.append({**entry, "file": f"shards/{entry['file']}"})
            with open(mapped / "ledger.jsonl", "rb") as rejects:
                shutil.copyfileobj(rejects, ledger)
            for name in ("articles", "passages", "rejected", "duplicate_articles",
                         "duplicate_passages"):
                setattr(summary, name, getattr(summary, name) + counts[name])
            reasons.update(counts["reject_reasons"])
    summary.shards = len(shards)
    summary.reject_reasons = dict(sorted((k, v) for k, v in reasons.items() if v))
    workdir.write_manifest({
        "format": "infer-corpus.manifest",
        "schema_version": SCHEMA_VERSION,
        "code_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "partition_key": workdir.manifest().partition_key,
        "config": config.to_dict(),
        "tokenizer": ShardTokenizer.identity(config) if config.shards.tokenize else None,
        "inputs": workdir.manifest().inputs,
        "partition": {"state": "done", **summary.to_dict()},
        "shards": shards,
    })
    for folder in [stage / MERGE, *stage.glob("part-*")]:
        shutil.rmtree(folder, ignore_errors=True)
    return summary
