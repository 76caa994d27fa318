"""The access point's side of the CPU steps that run as jobs: their PRE and POST scripts.

    python -m submit.steps cut-part --workdir DIR --part N                  (PRE, map-N)
    python -m submit.steps map --workdir DIR --part N --job-exit $RETURN    (POST, map-N)
    python -m submit.steps merge --workdir DIR --job-exit $RETURN           (POST, merge)
    python -m submit.steps write --workdir DIR --part N --job-exit $RETURN  (POST, write-N)
    python -m submit.steps stage-index --workdir DIR --group G --shards A-B   (PRE, index-G)
    python -m submit.steps index-piece --workdir DIR --group G --shards A-B --job-exit $RETURN
                                                                               (POST, index-G)
    python -m submit.steps stage-load --workdir DIR --group G --shards A-B    (PRE, load-G)

The partition's jobs (partition.dag; see inference/partition.py): a map job gets one part's
bytes (a line range of a large JSONL file is cut into condor/cut/ by its PRE script first)
and sends back `part-N/`; its POST script checks that it was made from the plan's bytes and
holds the keys it counts, then moves it into WORKDIR/parts/ and gives its keys to the merge.
The merge job sends back `merge/` (each part's decisions and the counts), checked against the
mapped parts. A write job sends back `written-N/`: its shards, checked against the merge's
count, go into WORKDIR/shards/, its rejects ledger beside its part.

An index piece job and an Elasticsearch load job need the manifest and, for their group of
shards, the shard and result files, which share their names: the PRE script links them into
condor/load/group-G/{manifest.json,shards/,results/}, which the job gets whole. An index piece
job builds its group's piece of the embedded index in its scratch directory; its `index`
folder comes back to condor/incoming/index-G/, and the POST script moves the piece, once it
holds exactly the group's shards, into the workdir's index/pieces/, where the DAG's `index`
node combines the pieces. A piece is a folder renamed into place whole, and no search reads
pieces: searches read the current build until the combine swaps the pointer.

Exit codes: 0 done; 1 retry (the job failed, or what it sent back does not check out); 2 no
retry (the job exited 2: bad input, or the workdir is unreadable). Every decision is logged in
condor/logs/validate.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inference.dedup import PartKeys
from inference.errors import UsageError, run_command
from inference.partition import KEYS, LEDGER, MERGE, PLAN, STAGE, WRITTEN, load_plan, publish_keys
from inference.partition_map import DONE, part_name
from inference.parts import Part
from inference.workdir import Workdir, atomic_path

from .pipeline import condor_dir
from .validate import log_decision


class StepError(UsageError):
    """What a step's job sent back must not go into the workdir (its POST turns it into a
    retry)."""


def _incoming(workdir: Workdir, name: str) -> Path:
    return condor_dir(workdir) / "incoming" / name


def _replace_dir(source: Path, target: Path) -> None:
    """Put the folder `source` at `target`, replacing what was there."""
    source.mkdir(parents=True, exist_ok=True)  # file transfer may drop an empty folder
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


def _plan(workdir: Workdir) -> list[Part]:
    return load_plan(workdir.root / STAGE / PLAN)[1]


def cut_part(workdir: Workdir, index: int) -> int:
    """The map node's PRE script for a line range of a large JSONL file: copy the range to
    condor/cut/part-N.jsonl, which the job gets instead of the whole file."""
    part = _plan(workdir)[index]
    target = condor_dir(workdir) / "cut" / f"{part_name(index)}.jsonl"
    with atomic_path(target) as tmp, open(part.path, "rb") as source, open(tmp, "wb") as out:
        left = (part.end or 0) - part.start
        position = part.start
        while left > 0:
            sent = os.copy_file_range(source.fileno(), out.fileno(), left, position)
            if not sent:
                raise StepError(f"{part.path} ends before byte {part.end}: it changed since "
                                "the partition was planned")
            left -= sent
            position += sent
    return 0


def _reject(workdir: Workdir, what: str, received: Path, why: object) -> int:
    log_decision(condor_dir(workdir), f"{what}: rejected: {why}")
    shutil.rmtree(received, ignore_errors=True)
    return 1


def _job_failed(workdir: Workdir, what: str, job_exit: int) -> int | None:
    if job_exit == 0:
        return None
    log_decision(condor_dir(workdir), f"{what}: job exited with {job_exit}")
    return job_exit if 0 < job_exit < 256 else 1


def accept_map(workdir: Workdir, index: int, job_exit: int) -> int:
    """The map node's POST decision as an exit code (see the module docstring)."""
    what = f"map {index}"
    if (failed := _job_failed(workdir, what, job_exit)) is not None:
        return failed
    received = _incoming(workdir, part_name(index))
    try:
        part = _plan(workdir)[index]
        done = json.loads((received / DONE).read_text("utf-8"))
        if done.get("sha256") != part.sha256:
            raise StepError("it was made from other bytes than the plan's part")
        keys = PartKeys.load(received / "keys.npz")
        if (len(keys.article_ids), len(keys.passage_digests)) != (done["articles"],
                                                                  done["passages"]):
            raise StepError("its keys do not hold the articles and passages it counts")
        rows = pq.read_metadata(received / "passages.parquet").num_rows
        if rows != done["passages"]:
            raise StepError(f"passages.parquet holds {rows} passages, it counts "
                            f"{done['passages']}")
    except (StepError, OSError, ValueError, KeyError, pa.ArrowException) as exc:
        return _reject(workdir, what, received, exc)
    stage = workdir.root / STAGE
    _replace_dir(received, stage / part_name(index))
    publish_keys(stage, index)
    (condor_dir(workdir) / "cut" / f"{part_name(index)}.jsonl").unlink(missing_ok=True)
    log_decision(condor_dir(workdir), f"{what}: accepted {done['rows']:,} rows, "
                 f"{done['passages']:,} candidate passages")
    return 0


def accept_merge(workdir: Workdir, job_exit: int) -> int:
    """The merge node's POST decision as an exit code (see the module docstring)."""
    if (failed := _job_failed(workdir, "merge", job_exit)) is not None:
        return failed
    received = _incoming(workdir, MERGE)
    stage = workdir.root / STAGE
    try:
        parts = _plan(workdir)
        merged = json.loads((received / "merge.json").read_text("utf-8"))
        if len(merged.get("parts", [])) != len(parts):
            raise StepError(f"merge.json counts {len(merged.get('parts', []))} parts, the "
                            f"plan has {len(parts)}")
        for part, counts in zip(parts, merged["parts"]):
            with np.load(received / f"{part_name(part.index)}.npz") as decided:
                keep = decided["keep"]
            mapped = json.loads((stage / KEYS / f"{part_name(part.index)}.json").read_text())
            if len(keep) != mapped["passages"] or int(keep.sum()) != counts["passages"]:
                raise StepError(f"part {part.index}: its decisions do not match the mapped "
                                "part or the counts")
    except (StepError, OSError, ValueError, KeyError) as exc:
        return _reject(workdir, "merge", received, exc)
    _replace_dir(received, stage / MERGE)
    log_decision(condor_dir(workdir), f"merge: accepted {len(parts)} parts, "
                 f"{sum(c['passages'] for c in merged['parts']):,} passages kept")
    return 0


def accept_write(workdir: Workdir, index: int, job_exit: int) -> int:
    """The write node's POST decision as an exit code (see the module docstring)."""
    what = f"write {index}"
    if (failed := _job_failed(workdir, what, job_exit)) is not None:
        return failed
    received = _incoming(workdir, f"written-{index:05d}")
    stage = workdir.root / STAGE
    try:
        counts = json.loads((stage / MERGE / "merge.json").read_text("utf-8"))["parts"][index]
        shards = json.loads((received / WRITTEN).read_text("utf-8"))["shards"]
        numbers = [entry["shard"] for entry in shards]
        first = counts["first_shard"]
        if numbers != list(range(first, first + counts["shards"])):
            raise StepError(f"shards {numbers}, the merge numbered "
                            f"{first}..{first + counts['shards'] - 1}")
        for entry in shards:
            rows = pq.read_metadata(received / "shards" / entry["file"]).num_rows
            if rows != entry["rows"]:
                raise StepError(f"{entry['file']}: {rows} rows, it lists {entry['rows']}")
        if sum(entry["rows"] for entry in shards) != counts["passages"]:
            raise StepError("its shards do not hold the passages the merge kept")
        if not (received / LEDGER).is_file():
            raise StepError(f"no {LEDGER} came back")
    except (StepError, OSError, ValueError, KeyError, IndexError, pa.ArrowException) as exc:
        return _reject(workdir, what, received, exc)
    workdir.shards_dir.mkdir(parents=True, exist_ok=True)
    for entry in shards:
        os.replace(received / "shards" / entry["file"], workdir.shards_dir / entry["file"])
    mapped = stage / part_name(index)
    os.replace(received / LEDGER, mapped / LEDGER)
    os.replace(received / WRITTEN, mapped / WRITTEN)  # last: marks the part written
    shutil.rmtree(received, ignore_errors=True)
    log_decision(condor_dir(workdir), f"{what}: accepted {len(shards)} shards, "
                 f"{counts['passages']:,} passages")
    return 0


def accept_index_piece(workdir: Workdir, group: int, shards: list[int],
                       job_exit: int) -> int:
    """An index piece node's POST decision as an exit code (see the module docstring)."""
    what = f"index piece {group}"
    if job_exit != 0:
        log_decision(condor_dir(workdir), f"{what}: job exited with {job_exit}")
        return job_exit if 0 < job_exit < 256 else 1
    received = _incoming(workdir, f"index-{group:03d}")
    found = sorted((received / "index" / "pieces").glob("piece-*"))
    record = {}
    if len(found) == 1:
        try:
            record = json.loads((found[0] / "piece.json").read_text())
        except (OSError, ValueError):
            pass
    if not isinstance(record, dict) or record.get("shards") != shards:
        log_decision(condor_dir(workdir), f"{what}: rejected: the job sent back no piece of "
                     f"shards {shards[0]}-{shards[-1]} ({len(found)} piece folders)")
        shutil.rmtree(received, ignore_errors=True)
        return 1
    pieces = workdir.root / "index" / "pieces"
    pieces.mkdir(parents=True, exist_ok=True)
    _replace_dir(found[0], pieces / found[0].name)
    shutil.rmtree(received, ignore_errors=True)
    log_decision(condor_dir(workdir), f"{what}: accepted {found[0].name} "
                 f"({record.get('rows', 0):,} passages)")
    return 0


def shard_range(text: str) -> list[int]:
    """"A-B" (or "N") as the shard numbers A..B."""
    first, _, last = text.partition("-")
    try:
        numbers = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise UsageError(f"--shards {text!r}: give a range such as 0-9, or one shard") from None
    if not numbers or int(first) < 0:
        raise UsageError(f"--shards {text!r}: give a range such as 0-9, first <= last")
    return numbers


def stage_load(workdir: Workdir, group: int, shards: list[int]) -> int:
    """A load or index piece node's PRE script: link its shards' files where its job gets
    them."""
    manifest = workdir.manifest()
    target = condor_dir(workdir) / "load" / f"group-{group:03d}"
    shutil.rmtree(target, ignore_errors=True)
    for sub in ("shards", "results"):
        (target / sub).mkdir(parents=True)
    shutil.copyfile(workdir.manifest_path, target / "manifest.json")
    for shard in shards:
        manifest.shard(shard)  # exists
        for source in (workdir.shard_path(shard), workdir.result_path(shard)):
            if not source.is_file():
                log_decision(condor_dir(workdir), f"load {group}: shard {shard} has no "
                             f"{source.parent.name} file")
                raise StepError(f"{source} does not exist")
            link = target / source.parent.name / source.name
            try:
                os.link(source, link)
            except OSError:
                shutil.copyfile(source, link)
    return 0


def stage_index(workdir: Workdir, group: int, shards: list[int]) -> int:
    """An index piece node's PRE script: its shards' files, and an empty folder for what the
    job sends back (its initial directory, which must exist when it is submitted)."""
    received = _incoming(workdir, f"index-{group:03d}")
    shutil.rmtree(received, ignore_errors=True)
    received.mkdir(parents=True)
    return stage_load(workdir, group, shards)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.steps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["cut-part", "map", "merge", "write", "stage-index",
                                         "index-piece",
                                         "stage-load"])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--job-exit", type=int, help="the job's exit code (DAGMan's $RETURN)")
    parser.add_argument("--part", type=int)
    parser.add_argument("--group", type=int)
    parser.add_argument("--shards", metavar="A-B")
    args = parser.parse_args(argv)
    workdir = Workdir(args.workdir)
    if args.step in ("stage-index", "index-piece", "stage-load") and (
            args.group is None or args.shards is None):
        parser.error(f"{args.step} needs --group and --shards")
    if args.step in ("cut-part", "map", "write") and args.part is None:
        parser.error(f"{args.step} needs --part")
    if args.step in ("map", "merge", "write", "index-piece") and args.job_exit is None:
        parser.error(f"{args.step} needs --job-exit")
    steps = {
        "cut-part": lambda: cut_part(workdir, args.part),
        "map": lambda: accept_map(workdir, args.part, args.job_exit),
        "merge": lambda: accept_merge(workdir, args.job_exit),
        "write": lambda: accept_write(workdir, args.part, args.job_exit),
        "index-piece": lambda: accept_index_piece(workdir, args.group,
                                                  shard_range(args.shards), args.job_exit),
        "stage-index": lambda: stage_index(workdir, args.group, shard_range(args.shards)),
        "stage-load": lambda: stage_load(workdir, args.group, shard_range(args.shards))}
    return run_command("submit.steps", steps[args.step])


if __name__ == "__main__":
    sys.exit(main())
