"""The access point's side of the CPU steps that run as jobs: their PRE and POST scripts.

    python -m submit.steps partition --workdir DIR --job-exit $RETURN     (POST, partition.dag)
    python -m submit.steps stage-index --workdir DIR --group G --shards A-B   (PRE, index-G)
    python -m submit.steps index-piece --workdir DIR --group G --shards A-B --job-exit $RETURN
                                                                               (POST, index-G)
    python -m submit.steps stage-load --workdir DIR --group G --shards A-B    (PRE, load-G)

A partition job partitions its inputs in its scratch directory into a workdir named
`partition` that comes back to condor/incoming/partition/; its POST script checks it (a
finished partition whose shard files hold the rows the manifest lists), moves its shards and
rejects into the workdir, clears the results of any earlier partition, and writes the manifest
last, with the access point's paths of the inputs in place of the job's.

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

import pyarrow as pa
import pyarrow.parquet as pq

from inference.errors import UsageError, run_command
from inference.manifest import Manifest
from inference.workdir import Workdir, write_json_atomic

from .pipeline import INPUTS_FILE, condor_dir
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


def check_partition(received: Path) -> Manifest:
    """The received workdir's manifest, when it is a finished partition whose shard files
    hold the rows it lists; StepError otherwise."""
    try:
        manifest = Manifest(json.loads((received / "manifest.json").read_text("utf-8")),
                            received / "manifest.json")
    except (OSError, ValueError) as exc:
        raise StepError(f"no readable manifest came back ({exc})") from None
    if not manifest.partitioned:
        raise StepError("the partition it sent back did not finish")
    for entry in manifest.shards:
        path = received / entry.file
        try:
            rows = pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException) as exc:
            raise StepError(f"shard {entry.shard}: unreadable {entry.file} ({exc})") from None
        if rows != entry.rows:
            raise StepError(f"shard {entry.shard}: {rows} rows, the manifest says {entry.rows}")
    if not (received / "rejects" / "rejects.jsonl").is_file():
        raise StepError("no rejects/rejects.jsonl came back")
    return manifest


def _access_point_inputs(manifest: Manifest, workdir: Workdir) -> list[dict]:
    """The manifest's inputs as the access point has them: the job hashed its own copies, so
    the path (and the mtime, where the size agrees) become the access point file's, and the
    next partition check does not hash them again."""
    paths = (condor_dir(workdir) / INPUTS_FILE).read_text(encoding="utf-8").split("\n")
    by_name = {Path(p).name: Path(p) for p in paths if p}
    inputs = []
    for item in manifest.inputs:
        path = by_name.get(Path(item["path"]).name)
        if path is None:
            raise StepError(f"input {item['path']} is not one the DAG sent")
        stat = path.stat()
        same_size = stat.st_size == item["size"]
        inputs.append({**item, "path": str(path),
                       "mtime_ns": stat.st_mtime_ns if same_size else item["mtime_ns"]})
    return inputs


def accept_partition(workdir: Workdir, job_exit: int) -> int:
    """The partition node's POST decision as an exit code (see the module docstring)."""
    if job_exit != 0:
        log_decision(condor_dir(workdir), f"partition: job exited with {job_exit}")
        return job_exit if 0 < job_exit < 256 else 1
    received = _incoming(workdir, "partition")
    try:
        manifest = check_partition(received)
        inputs = _access_point_inputs(manifest, workdir)
    except (StepError, OSError) as exc:
        log_decision(condor_dir(workdir), f"partition: rejected: {exc}")
        shutil.rmtree(received, ignore_errors=True)
        return 1
    with workdir.lock():
        workdir.create()
        _replace_dir(received / "shards", workdir.shards_dir)
        _replace_dir(received / "rejects", workdir.rejects_dir)
        empty = workdir.results_dir.with_name(f".results-new-{os.getpid()}")
        empty.mkdir()
        _replace_dir(empty, workdir.results_dir)  # results of another partition: stale
        write_json_atomic(workdir.manifest_path, {**manifest.data, "inputs": inputs})
    shutil.rmtree(received, ignore_errors=True)
    log_decision(condor_dir(workdir), f"partition: accepted {len(manifest.shards)} shards, "
                  f"{manifest.passages:,} passages")
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
    parser.add_argument("step", choices=["partition", "stage-index", "index-piece",
                                         "stage-load"])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--job-exit", type=int, help="the job's exit code (DAGMan's $RETURN)")
    parser.add_argument("--group", type=int)
    parser.add_argument("--shards", metavar="A-B")
    args = parser.parse_args(argv)
    workdir = Workdir(args.workdir)
    if args.step != "partition" and (args.group is None or args.shards is None):
        parser.error(f"{args.step} needs --group and --shards")
    if args.step in ("partition", "index-piece") and args.job_exit is None:
        parser.error(f"{args.step} needs --job-exit")
    if args.step == "partition":
        return run_command("submit.steps", lambda: accept_partition(workdir, args.job_exit))
    if args.step == "index-piece":
        return run_command("submit.steps", lambda: accept_index_piece(
            workdir, args.group, shard_range(args.shards), args.job_exit))
    stage = stage_index if args.step == "stage-index" else stage_load
    return run_command("submit.steps", lambda: stage(workdir, args.group,
                                                     shard_range(args.shards)))


if __name__ == "__main__":
    sys.exit(main())
