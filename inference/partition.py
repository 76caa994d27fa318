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
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
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
from .processes import die_with_parent
from .readers import expand_inputs
from .schema import SCHEMA_VERSION
from .tokenize import ShardTokenizer
from .version import __version__
from .workdir import Workdir, WorkdirError, atomic_path, write_json_atomic

PARTITION_SECTIONS = ("fields", "passages", "shards")
STAGE = "parts"  # WORKDIR/parts/: the plan, and each part's map output until the end
PLAN = "plan.json"
KEYS = "keys"  # STAGE/keys/part-N.npz and .json: what the merge reads of each mapped part
MERGE = "merge"  # STAGE/merge/: the merge's decisions, part-N.npz, and counts, merge.json
WRITTEN = "written.json"
LEDGER = "ledger.jsonl"
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
    step_seconds: dict[str, float] = field(default_factory=dict)  # plan, map, merge, write

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
            **({"step_seconds": self.step_seconds} if self.step_seconds else {}),
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
        steps: dict[str, float] = {}
        parts = prepare(patterns, workdir, config, force=force)
        if isinstance(parts, PartitionSummary):
            parts.seconds = time.perf_counter() - started
            return parts
        steps["plan"] = time.perf_counter() - started
        workers = max(1, min(workers or usable_cpus(), len(parts) or 1))
        stage = workdir.root / STAGE
        todo = [p for p in parts if not part_mapped(stage, p)]
        with _processes(workers) as pool:
            with tqdm(desc="partition", unit=" rows", disable=None if progress is None
                      else not progress, mininterval=0.5) as bar:
                _each(pool, _map_task, [(p, config, stage) for p in todo], bar.update)
            steps["map"] = time.perf_counter() - started - sum(steps.values())
            merged = merge(stage / KEYS, parts, config.shards.passages_per_shard,
                           stage / MERGE)
            steps["merge"] = time.perf_counter() - started - sum(steps.values())
            todo = [p for p in parts if not (stage / part_name(p.index) / WRITTEN).is_file()]
            _each(pool, _write_task, [
                (p, stage, config, workdir.shards_dir,
                 merged["parts"][p.index]["first_shard"], pool is None) for p in todo])
            steps["write"] = time.perf_counter() - started - sum(steps.values())
        summary = finish(workdir, config, parts, merged)
        summary.seconds = time.perf_counter() - started
        summary.step_seconds = {k: round(v, 3) for k, v in steps.items()}
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
        for leftover in [*stage.glob(".*.tmp-*"), *stage.glob("*/.*.tmp-*")]:
            if leftover.is_dir():  # a killed map's: its part is mapped again
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
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


def part_mapped(stage: Path, part: Part) -> bool:
    """The part's map output is there, whole, and made from the part's bytes."""
    return _read_json(stage / KEYS / f"{part_name(part.index)}.json").get("sha256") \
        == part.sha256


def publish_keys(stage: Path, index: int) -> None:
    """Give the merge a mapped part's keys: STAGE/keys/part-N.npz, then part-N.json (its
    counts, which mark the part mapped)."""
    mapped, keys = stage / part_name(index), stage / KEYS
    keys.mkdir(parents=True, exist_ok=True)
    for source, name in (("keys.npz", f"{part_name(index)}.npz"),
                         (DONE, f"{part_name(index)}.json")):
        with atomic_path(keys / name) as tmp:
            shutil.copyfile(mapped / source, tmp)


def _map_task(part: Part, config: InferenceConfig, stage: Path,
              on_rows: Callable[[int], None] | None = None) -> int:
    rows = map_part(part, config, stage / part_name(part.index), on_rows=on_rows)["rows"]
    publish_keys(stage, part.index)
    return rows


def _write_task(part: Part, stage: Path, config: InferenceConfig, shards_dir: Path,
                first_shard: int, alone: bool) -> None:
    """Write one part's shards; `alone`: the only process, so the tokenizer (if any) may use
    a process per core."""
    mapped = stage / part_name(part.index)
    tokenizer = ShardTokenizer.load(config) if alone and config.shards.tokenize else None
    try:
        shards = write_part(part, mapped, stage / MERGE / f"{part_name(part.index)}.npz",
                            config, shards_dir, first_shard, mapped / LEDGER,
                            tokenizer=tokenizer)
    finally:
        if tokenizer is not None:
            tokenizer.close()
    write_json_atomic(mapped / WRITTEN, {"shards": shards})


@contextmanager
def _processes(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """`workers` processes for the map and write steps (None: this process alone), started
    once for both; they end when this process does, however it dies."""
    if workers == 1:
        yield None
        return
    context = get_context("spawn")  # not forked from a process that may hold threads' locks
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=die_with_parent) as pool:
            yield pool
    except BrokenProcessPool:
        raise Failure("a partition worker process died (killed, or out of memory): run the "
                      "same command again; finished parts are kept") from None


def _each(pool: ProcessPoolExecutor | None, task: Callable[..., int | None],
          jobs: list[tuple], on_rows: Callable[[int], None] | None = None) -> None:
    """Run `task(*job)` for every job: in this process without a pool (the task reports
    its rows to `on_rows` as it goes), else in the pool's processes (each task's returned
    rows are reported as it finishes)."""
    if pool is None:
        for job in jobs:
            task(*job, on_rows) if on_rows is not None else task(*job)
        return
    for rows in pool.map(task, *zip(*jobs)) if jobs else ():
        if on_rows is not None and rows:
            on_rows(rows)


def merge(keys_dir: Path, parts: list[Part], passages_per_shard: int,
          folder: Path) -> dict[str, Any]:
    """Decide, from every mapped part's keys (in `keys_dir`: part-N.npz and part-N.json),
    which articles and passages are kept, and number each part's shards; writes each part's
    decisions and the counts (merge.json, written last) into `folder`, and returns the
    counts."""
    keys, maps = [], []
    for part in parts:
        name = part_name(part.index)
        done = _read_json(keys_dir / f"{name}.json")
        if not done:
            raise PartitionError(f"part {part.index} ({part.source}) has no finished map "
                                 f"output: {keys_dir / name}.json is missing or damaged")
        if done.get("sha256") != part.sha256:
            raise PartitionError(f"part {part.index} ({part.source}) was mapped from other "
                                 "bytes than the plan's: run the partition again")
        try:
            keys.append(PartKeys.load(keys_dir / f"{name}.npz"))
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise PartitionError(f"part {part.index}: damaged map output "
                                 f"{keys_dir / name}.npz ({exc})") from None
        if len(keys[-1].passage_digests) != done.get("passages") or \
                len(keys[-1].article_ids) != done.get("articles"):
            raise PartitionError(f"part {part.index}: {keys_dir / name}.npz does not hold "
                                 "the articles and passages the map counted")
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
    running = workdir.manifest()  # as `prepare` wrote it: the key and the inputs
    inputs = running.inputs
    for item in inputs:
        try:
            stat = Path(item["path"]).stat()
            same = (stat.st_size, stat.st_mtime_ns) == (item["size"], item["mtime_ns"])
        except OSError:
            same = False
        if not same:
            raise PartitionError(f"{item['path']} changed (or went) while it was partitioned: "
                                 "run the partition again")
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
            with open(mapped / LEDGER, "rb") as rejects:
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
        "partition_key": running.partition_key,
        "config": config.to_dict(),
        "tokenizer": ShardTokenizer.identity(config) if config.shards.tokenize else None,
        "inputs": inputs,
        "partition": {"state": "done", **summary.to_dict()},
        "shards": shards,
    })
    for folder in [stage / MERGE, stage / KEYS, *stage.glob("part-*")]:
        shutil.rmtree(folder, ignore_errors=True)
    return summary


# The partition as jobs on a pool (submit/pipeline.py writes the DAG; submit/steps.py moves
# what each job sends back into the workdir). Each job runs in an empty scratch directory
# holding only its transferred files.

def load_plan(plan_file: Path) -> tuple[str, list[Part]]:
    """The partition key and the parts of a written plan (STAGE/plan.json)."""
    data = _read_json(plan_file)
    try:
        return data["key"], [Part.from_dict(item) for item in data["plan"]["parts"]]
    except (KeyError, TypeError) as exc:
        raise PartitionError(f"{plan_file} is not a partition plan ({exc})") from None


def map_job(plan_file: Path, index: int, input_file: Path, config: InferenceConfig) -> Path:
    """Map part `index` from `input_file` (the part's bytes: the whole input, its row
    groups, or the line range cut out of it) into ./part-N/; returns that folder."""
    _, parts = load_plan(plan_file)
    part = _part(parts, index)
    if part.format == "jsonl" and not part.whole:  # the job holds the range alone
        part = Part(**{**part.to_dict(), "start": 0, "end": None})
    out = Path(part_name(index))
    map_part(part, config, out, input_path=input_file)
    return out


def merge_job(plan_file: Path, keys_dir: Path, config: InferenceConfig) -> Path:
    """The merge from the mapped parts' keys in `keys_dir`, into ./merge/."""
    _, parts = load_plan(plan_file)
    merge(keys_dir, parts, config.shards.passages_per_shard, Path(MERGE))
    return Path(MERGE)


def write_job(plan_file: Path, index: int, merge_dir: Path, config: InferenceConfig) -> Path:
    """Write part `index`'s shards from ./part-N/ and the merge's decisions (part-N.npz and
    merge.json in `merge_dir`) into ./written-N/ (shards/, ledger.jsonl, then
    written.json); returns that folder."""
    _, parts = load_plan(plan_file)
    part = _part(parts, index)
    merged = _read_json(merge_dir / "merge.json")
    if len(merged.get("parts", [])) != len(parts):
        raise PartitionError(f"{merge_dir / 'merge.json'} is missing or not this plan's")
    out = Path(f"written-{index:05d}")
    shutil.rmtree(out, ignore_errors=True)
    tokenizer = ShardTokenizer.load(config) if config.shards.tokenize else None
    try:
        shards = write_part(part, Path(part_name(index)),
                            merge_dir / f"{part_name(index)}.npz", config, out / "shards",
                            merged["parts"][index]["first_shard"], out / LEDGER,
                            tokenizer=tokenizer)
    finally:
        if tokenizer is not None:
            tokenizer.close()
    (out / "shards").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / WRITTEN, {"shards": shards})
    return out


def _part(parts: list[Part], index: int) -> Part:
    if not 0 <= index < len(parts):
        raise PartitionError(f"part {index} does not exist: the plan has parts "
                             f"0..{len(parts) - 1}")
    return parts[index]


def finish_pending(workdir: Workdir, config: InferenceConfig) -> PartitionSummary | None:
    """Finish a partition whose parts were mapped, merged and written by jobs: the ledger
    and the manifest (on the access point, after the last write job). None when the
    workdir holds no such partition (finished already, or never planned)."""
    with workdir.lock():
        stage = workdir.root / STAGE
        if not (stage / PLAN).is_file() or (workdir.has_manifest()
                                            and workdir.manifest().partitioned):
            return None
        key, parts = load_plan(stage / PLAN)
        if workdir.manifest().partition_key != key:
            raise PartitionError(f"{stage / PLAN} is not the plan of the partition in "
                                 f"{workdir.root}: submit the partition again")
        merged = _read_json(stage / MERGE / "merge.json")
        if len(merged.get("parts", [])) != len(parts):
            raise PartitionError(f"{workdir.root}: the partition's merge has not finished")
        return finish(workdir, config, parts, merged)
