"""What one shard job runs on an execute node: `python -m submit.job --shard N ...`.

The job's scratch directory holds the shard file and the workdir's manifest (HTCondor file
transfer). The shard is embedded in parts of `--part-rows` passages by the same shard worker
`infer-corpus shard` uses, each part's result written atomically under parts/. With
`--checkpoint-after S`, the job exits with the checkpoint exit code once S seconds have passed
at a part boundary; HTCondor then saves parts/ (`transfer_checkpoint_files`) and restarts the
job, which skips the finished parts. The last part joins the parts into RESULT_FILE, which
HTCondor sends back to the access point.

Exit codes: 0 done; 1 failed (worth a retry); 2 bad input (the shard or manifest is damaged or
does not match: retrying cannot help); the checkpoint exit code; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inference.errors import UsageError, run_command
from inference.manifest import Manifest, ShardEntry
from inference.workdir import Workdir, WorkdirError, atomic_path
from inference.worker import ShardWorker

PARTS_DIR = "parts"
PART_ROWS = 10_000


class BadInput(UsageError):
    """The shard, manifest or model a job was given is damaged or does not match: DAGMan's
    `RETRY ... UNLESS-EXIT 2` does not retry it."""

    label = "bad input"


def _prepare_parts(parts: Workdir, manifest: Manifest, shard: int, shard_file: Path,
                   part_rows: int) -> int:
    """Split the shard into part files under parts/ (a workdir of its own); returns the count."""
    entry = manifest.shard(shard)
    try:
        table = pq.read_table(shard_file)
    except (OSError, pa.ArrowException) as exc:
        raise WorkdirError(f"cannot read {shard_file}: {exc}") from None
    if table.num_rows != entry.rows:
        raise WorkdirError(f"{shard_file} has {table.num_rows} rows, the manifest says "
                           f"{entry.rows}")
    count = max(1, math.ceil(table.num_rows / part_rows))
    shards = []
    for part in range(count):
        rows = table.slice(part * part_rows, part_rows)
        path = parts.shard_path(part)
        if not path.is_file():
            with atomic_path(path) as tmp:
                pq.write_table(rows, tmp, compression="zstd")
        shards.append(ShardEntry(part, rows.num_rows, str(path.relative_to(parts.root))))
    parts.create()
    parts.write_manifest(manifest.with_shards(shards))
    return count


def _join_parts(parts: Workdir, count: int, result_file: Path) -> int:
    tables = [pq.read_table(parts.result_path(part)) for part in range(count)]
    table = pa.concat_tables(tables)
    with atomic_path(result_file) as tmp:
        pq.write_table(table, tmp, compression={"passage_id": "zstd", "embedding": "none",
                                                "label": "zstd", "label_score": "zstd"})
    return table.num_rows


def run_job(shard: int, shard_file: Path, result_file: Path, *, manifest_file: Path,
            part_rows: int = PART_ROWS, checkpoint_after: float = 0,
            checkpoint_exit_code: int = 85) -> int:
    """Embed one shard; returns the exit code (0, or the checkpoint code to be restarted)."""
    started = time.monotonic()
    try:
        manifest = Manifest(json.loads(manifest_file.read_text(encoding="utf-8")), manifest_file)
    except (OSError, ValueError) as exc:
        raise WorkdirError(f"cannot read {manifest_file}: {exc}") from None
    parts = Workdir(PARTS_DIR)
    count = _prepare_parts(parts, manifest, shard, shard_file, part_rows)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)  # HTCondor sets it to request_cpus
    worker = ShardWorker(parts, threads=threads)
    for part in range(count):
        outcome = worker.run(part)
        worker.wait()
        remaining = count - part - 1
        if (checkpoint_after and remaining and not outcome.skipped
                and time.monotonic() - started >= checkpoint_after):
            shutil.rmtree(parts.shards_dir)  # re-made from the shard file; keep the checkpoint small
            print(f"shard {shard}: checkpoint after part {part + 1} of {count}", file=sys.stderr)
            return checkpoint_exit_code
    rows = _join_parts(parts, count, result_file)
    print(f"shard {shard}: {rows} passages -> {result_file}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--shard-file", type=Path, required=True)
    parser.add_argument("--result-file", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, default=Path("manifest.json"))
    parser.add_argument("--part-rows", type=int, default=PART_ROWS)
    parser.add_argument("--checkpoint-after", type=float, default=0, metavar="SECONDS",
                        help="exit with the checkpoint code at the first part boundary after "
                        "this many seconds (0: never)")
    parser.add_argument("--checkpoint-exit-code", type=int, default=85)
    args = parser.parse_args(argv)
    if args.part_rows < 1:
        parser.error("--part-rows must be >= 1")

    def job() -> int:
        try:
            return run_job(args.shard, args.shard_file, args.result_file,
                           manifest_file=args.manifest, part_rows=args.part_rows,
                           checkpoint_after=args.checkpoint_after,
                           checkpoint_exit_code=args.checkpoint_exit_code)
        except UsageError as exc:  # named as the exit code's meaning in the job's stderr
            raise BadInput(str(exc)) from None

    code = run_command("submit.job", job)
    if code not in (0, args.checkpoint_exit_code) and not args.result_file.exists():
        # HTCondor holds a job whose transfer_output_files are missing; an empty result lets
        # the job end with its exit code, which the POST script passes on to DAGMan
        args.result_file.touch()
    return code


if __name__ == "__main__":
    sys.exit(main())
