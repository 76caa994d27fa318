"""What one shard job runs on an execute node: `python -m submit.job --shard N ...`.

The job's scratch directory holds the shard file and the workdir's manifest (HTCondor file
transfer); with `--data-source stream` the job reads the shard's federation URL row group by
row group instead (nothing of it on scratch), with `cache` it fetches it whole into scratch
first (`submit.datasource`). The shard is read row group by row group in parts of
`--part-rows` passages, the next part read while the current one is embedded by the same
shard worker `infer-corpus shard` uses; each part's result is written atomically under
parts/. With `--checkpoint-after S`, the job exits with the checkpoint exit code once S
seconds have passed at a part boundary; HTCondor then saves parts/
(`transfer_checkpoint_files`) and restarts the job, which starts reading at the row group of
its first unfinished part. The last part joins the parts into RESULT_FILE, which HTCondor
sends back to the access point.

The job logs each part's throughput to stderr. When HTCondor gives it a chirp proxy
(`want_io_proxy = true`), it also publishes its progress in its job ad, where `condor_q -af
ChirpShardPassagesDone ChirpShardPassagesPerSecond` and `infer-corpus status` read it:
ChirpShardPassagesDone, ChirpShardPassagesTotal and ChirpShardPassagesPerSecond (passages
embedded by this start of the job, over the seconds since its first part began). Progress
is best effort: a job without a chirp proxy, or whose chirp calls fail, runs the same.

Exit codes: 0 done; 1 failed (worth a retry); 2 bad input (the shard or manifest is damaged or
does not match: retrying cannot help); the checkpoint exit code; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inference.errors import UsageError, run_command
from inference.manifest import Manifest, ShardEntry
from inference.schema import check_schema_version
from inference.workdir import Workdir, WorkdirError, atomic_path
from inference.worker import ShardWorker

from .chirp import PUBLISH_INTERVAL, JobAd
from .config import DATA_SOURCES
from .datasource import fetch, parquet_metadata, prefetched, read_row_groups
from .preemption import add_checkpoint_options, announce_auto_checkpoint

PARTS_DIR = "parts"
PART_ROWS = 10_000


class BadInput(UsageError):
    """The shard, manifest or model a job was given is damaged or does not match: DAGMan's
    `RETRY ... UNLESS-EXIT 2` does not retry it."""

    label = "bad input"


class ShardInput:
    """The shard's rows in parts of `part_rows`, read row group by row group: from the
    transferred file, from its URL through the federation (stream: nothing of it on scratch)
    or from one whole fetch into scratch (cache). Reading starts at the row group holding the
    first part asked for, so a job restarted after a checkpoint reads only what is left."""

    def __init__(self, shard_file: str, data_source: str) -> None:
        self.url = shard_file if data_source == "stream" else None
        try:
            if data_source == "cache":
                shard_file = str(fetch(shard_file, Path(shard_file.rstrip("/").rsplit("/", 1)[-1])))
            metadata = (parquet_metadata(shard_file) if self.url
                        else pq.ParquetFile(shard_file).metadata)
            check_schema_version(metadata.schema.to_arrow_schema(), "shard", shard_file)
        except (OSError, pa.ArrowException) as exc:
            raise WorkdirError(f"cannot read {shard_file}: {exc}") from None
        except ValueError as exc:  # another kind of file, or version
            raise WorkdirError(str(exc)) from None
        self.name = shard_file
        self.metadata = metadata
        self.rows = metadata.num_rows
        self.group_rows = [metadata.row_group(i).num_rows
                           for i in range(metadata.num_row_groups)]

    def _groups(self, start: int) -> Iterator[pa.Table]:
        try:
            if self.url:
                yield from (table for _, table in read_row_groups(self.url, start,
                                                              metadata=self.metadata))
                return
            parquet = pq.ParquetFile(self.name)
            for group in range(start, parquet.num_row_groups):
                yield parquet.read_row_group(group)
        except (OSError, pa.ArrowException) as exc:  # damaged: no retry mends it
            raise WorkdirError(f"cannot read {self.name}: {exc}") from None

    def parts(self, first: int, part_rows: int) -> Iterator[tuple[int, pa.Table]]:
        """(part, rows) from part `first` on; part p holds rows [p * part_rows, ...)."""
        begin = first * part_rows
        group, skip = 0, begin
        while group < len(self.group_rows) and skip >= self.group_rows[group]:
            skip -= self.group_rows[group]
            group += 1
        part, held = first, []
        for table in self._groups(group):
            held.append(table.slice(skip))
            skip = 0
            rows = pa.concat_tables(held)
            while rows.num_rows >= part_rows:
                yield part, rows.slice(0, part_rows)
                part, rows = part + 1, rows.slice(part_rows)
            held = [rows]
        rest = pa.concat_tables(held) if held else None
        if rest is not None and (rest.num_rows or self.rows == 0):
            yield part, rest


class Progress:
    """Passages done and passages/s, logged per part and published in the job ad."""

    def __init__(self, shard: int, total: int, interval: float = PUBLISH_INTERVAL) -> None:
        self.shard, self.total = shard, total
        self.before = 0  # passages of the parts finished before the current one
        self.computed = 0  # passages embedded by this start of the job
        self.started: float | None = None  # when this start began embedding
        self.part_began = 0.0
        self.ad = JobAd(f"shard {shard}", interval)

    def part_started(self) -> None:
        self.part_began = time.monotonic()
        if self.started is None:
            self.started = self.part_began

    def model_ready(self) -> None:
        """Loading the model is not embedding: rates start after it."""
        self.ad.record("ready")
        self.part_began = time.monotonic()
        if not self.computed:
            self.started = self.part_began

    def update(self, passages_in_part: int, *, force: bool = False) -> None:
        if force or self.ad.due():
            computed = self.computed + passages_in_part
            self.ad.publish({"ChirpShardPassagesDone": str(self.before + passages_in_part),
                             "ChirpShardPassagesTotal": str(self.total),
                             "ChirpShardPassagesPerSecond": f"{self.rate(computed):.1f}"},
                            force=True)

    def part_done(self, part: int, count: int, rows: int, skipped: bool) -> None:
        seconds = time.monotonic() - self.part_began
        self.before += rows
        if skipped:
            print(f"shard {self.shard}: part {part + 1} of {count}: {rows:,} passages, "
                  "done before a restart", file=sys.stderr)
            if not self.computed:
                self.started = None
        else:
            self.computed += rows
            print(f"shard {self.shard}: part {part + 1} of {count}: {rows:,} passages in "
                  f"{seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} passages/s)",
                  file=sys.stderr)
        self.update(0, force=True)

    def rate(self, computed: int | None = None) -> float:
        """Passages/s of this start: `computed` (default: the finished parts') over the
        seconds since it began embedding."""
        seconds = time.monotonic() - self.started if self.started is not None else 0.0
        return (self.computed if computed is None else computed) / seconds if seconds else 0.0


def _join_parts(parts: Workdir, count: int, result_file: Path) -> int:
    tables = [pq.read_table(parts.result_path(part)) for part in range(count)]
    table = pa.concat_tables(tables)
    with atomic_path(result_file) as tmp:
        pq.write_table(table, tmp, compression={"passage_id": "zstd", "embedding": "none",
                                                "label": "zstd", "label_score": "zstd"})
    return table.num_rows


def run_job(shard: int, shard_file: str | Path, result_file: Path, *, manifest_file: Path,
            part_rows: int = PART_ROWS, checkpoint_after: float | str = 0,
            checkpoint_exit_code: int = 85, mean_time_between_evictions: float = 0.0,
            data_source: str = "transfer") -> int:
    """Embed one shard; returns the exit code (0, or the checkpoint code to be restarted).
    `checkpoint_after` auto: chosen once the model is ready, from the setup this start took
    (`submit.preemption.auto_checkpoint_seconds`)."""
    started = time.monotonic()
    limit = None if checkpoint_after == "auto" else float(checkpoint_after)
    try:
        manifest = Manifest(json.loads(manifest_file.read_text(encoding="utf-8")), manifest_file)
    except (OSError, ValueError) as exc:
        raise WorkdirError(f"cannot read {manifest_file}: {exc}") from None
    entry = manifest.shard(shard)
    source = ShardInput(str(shard_file), data_source)
    if source.rows != entry.rows:
        raise WorkdirError(f"{shard_file} has {source.rows} rows, the manifest says "
                           f"{entry.rows}")
    count = max(1, math.ceil(source.rows / part_rows))
    # the parts, as a workdir of their own for the shard worker (their rows come from memory)
    parts = Workdir(PARTS_DIR)
    entries = [ShardEntry(part, min(part_rows, source.rows - part * part_rows),
                          str(parts.shard_path(part).relative_to(parts.root)))
               for part in range(count)]
    for folder in (parts.results_dir, parts.rejects_dir, parts.logs_dir):  # no shards/
        folder.mkdir(parents=True, exist_ok=True)
    parts.write_manifest(manifest.with_shards(entries))
    key = manifest.result_key()
    first = next((e.shard for e in entries if not parts.result_is_current(e, key)), count)
    progress = Progress(shard, entry.rows)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)  # HTCondor sets it to request_cpus

    def on_event(event: dict) -> None:
        nonlocal limit
        if event.get("event") == "progress":
            progress.update(event["passages"])
        elif event.get("event") == "ready":
            progress.model_ready()
            if limit is None:
                setup = time.monotonic() - started
                seconds = announce_auto_checkpoint(progress.ad, f"shard {shard}", "part",
                                                   setup, mean_time_between_evictions)
                limit = setup + seconds if seconds else 0.0  # 0: never

    for part in range(first):
        progress.part_done(part, count, entries[part].rows, skipped=True)
    worker = ShardWorker(parts, threads=threads, on_event=on_event)
    for part, rows in prefetched(source.parts(first, part_rows)):  # the next read meanwhile
        progress.part_started()
        outcome = worker.run(part, rows)
        worker.wait()
        progress.part_done(part, count, outcome.rows, outcome.skipped)
        remaining = count - part - 1
        if (limit and remaining and not outcome.skipped
                and time.monotonic() - started >= limit):
            writing = time.time()
            progress.ad.record("checkpoint", started=round(writing, 3),
                               covers=f"part {part + 1} of {count}")
            print(f"shard {shard}: checkpoint after part {part + 1} of {count}", file=sys.stderr)
            return checkpoint_exit_code
    rows = _join_parts(parts, count, result_file)
    print(f"shard {shard}: {rows:,} passages -> {result_file} ({progress.computed:,} embedded "
          f"by this start at {progress.rate():,.0f} passages/s)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--shard-file", required=True,
                        help="the transferred shard file, or its URL with --data-source "
                             "stream or cache")
    parser.add_argument("--data-source", choices=DATA_SOURCES, default="transfer",
                        help="transfer: the file HTCondor brought; stream: read the URL row "
                             "group by row group through the federation; cache: fetch it "
                             "whole into scratch first")
    parser.add_argument("--result-file", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, default=Path("manifest.json"))
    parser.add_argument("--part-rows", type=int, default=PART_ROWS)
    add_checkpoint_options(parser, "part boundary", "setup")
    args = parser.parse_args(argv)
    if args.part_rows < 1:
        parser.error("--part-rows must be >= 1")

    def job() -> int:
        try:
            return run_job(args.shard, args.shard_file, args.result_file,
                           manifest_file=args.manifest, part_rows=args.part_rows,
                           checkpoint_after=args.checkpoint_after,
                           mean_time_between_evictions=args.mean_time_between_evictions,
                           data_source=args.data_source,
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
