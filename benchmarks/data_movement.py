#!/usr/bin/env python
"""How a shard job's input moves through a Pelican federation: transfer, stream and cache.

What it measures
  1. Partitions (once, then reuses) the partition benchmark's synthetic corpus into a workdir
     with the default 50,000 passages per shard, and publishes its first shard under a
     content-keyed name on the local federation of the test suite
     (`tests/support/pelican_federation.py`: a director, one cache and an origin over HTTPS
     on 127.0.0.1).
  2. Runs a shard job's reading as the job does it (`submit.job.ShardInput`, parts of 10,000
     passages, the next read ahead in a thread), each mode in a process of its own with an
     empty scratch folder, as the pool runs a job:
       - transfer (the baseline): the whole object fetched into scratch by a process of its
         own before the job starts, in the place of HTCondor's transfer plugin (the same
         client, so both pay one client start and discovery), then read there by the job;
       - stream: row group by row group through pelicanfs, nothing written to scratch;
       - cache: fetched whole through pelicanfs into scratch, then read there for `--epochs`
         epochs, and the same process run again in the same scratch (a restart in place).
     Each reports its wall time, its time to the first batch (part) of passages, a digest of
     the passages read and its scratch bytes; the federation's request log gives the bytes
     sent, requests, discoveries and director lookups per run. The three modes run in turn
     `--repeat` times; times are the medians.
  3. Streams once more with the first row group's body cut short after 1 MB and counts, from
     the range log, the bytes fetched again.

Goals: stream <= 1.25x transfer's wall time with a shorter time to the first batch; after the
cut, only the cut row group fetched again and the same passages; 0 input bytes on scratch in
stream, one copy in transfer and cache; in cache, one whole read per job across epochs and a
restart; at most one discovery and one director lookup per process. The script prints the
figures and exits 0 whether or not the goals are met; 1 when a run fails.

The federation is on the loopback interface: no wide-area latency, and unless
`--bandwidth-mbps` sets a link speed, more bandwidth than a real link. A real cache adds a
round trip per request, which stream pays once per row group (7 requests for a
50,000-passage shard) and transfer once.

How to run (from the repository root)
    .venv/bin/python benchmarks/data_movement.py                # 50,000-article corpus
    .venv/bin/python benchmarks/data_movement.py --articles 20000 --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(Path(__file__).parent)]

PART_ROWS = 10_000  # submit.job's default
CUT_AFTER = 1 << 20
GOAL_STREAM_RATIO = 1.25


def scratch_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def child(mode: str, url: str, epochs: int) -> None:
    """One job's reading (or, as `plugin`, the transfer before a job) in this process; prints
    its figures as one JSON line."""
    from submit.datasource import fetch, prefetched
    from submit.job import ShardInput

    name = url.rsplit("/", 1)[-1]
    started = time.perf_counter()
    if mode == "plugin":  # HTCondor's transfer plugin, before the job starts
        fetch(url, Path(name))
        print(json.dumps({"mode": mode, "seconds": time.perf_counter() - started}))
        return
    first_batch = None
    digest = hashlib.sha256()
    rows = 0
    for epoch in range(epochs if mode == "cache" else 1):
        shard = ShardInput(name if mode == "transfer" else url, mode)
        for _, table in prefetched(shard.parts(0, PART_ROWS)):
            if first_batch is None:
                first_batch = time.perf_counter() - started
            if epoch == 0:
                rows += table.num_rows
                for column in ("passage_id", "text"):
                    digest.update("\n".join(table.column(column).to_pylist()).encode())
    print(json.dumps({"mode": mode, "seconds": time.perf_counter() - started,
                      "first_batch": first_batch, "rows": rows, "digest": digest.hexdigest(),
                      "scratch_bytes": scratch_bytes(Path.cwd())}))


def prepare(folder: Path, articles: int) -> Path:
    """The first shard of the synthetic corpus's partition (made once)."""
    from partition_throughput import ensure_corpus

    from inference.config import load_config
    from inference.partition import partition
    from inference.workdir import Workdir

    workdir = Workdir(folder / f"work-{articles}")
    if not (workdir.has_manifest() and workdir.manifest().partitioned):
        corpus, _, _ = ensure_corpus(ROOT / "bench-work" / "partition", articles, 0, 4000,
                                     False, 2)
        partition([str(corpus)], workdir, load_config(None, ["predictions.kind=none"]),
                  force=True, progress=False)
    return workdir.shard_path(0)


def run(folder: Path, mode: str, fed, name: str, size: int, epochs: int,
        env: dict[str, str], scratch: Path | None = None) -> dict:
    """One job's reading in a fresh process and scratch folder (or `scratch` again), with
    what the federation saw of it."""
    fed.log.clear()
    scratch = scratch or folder / f"scratch-{mode}-{time.monotonic_ns()}"
    scratch.mkdir(exist_ok=True)

    def process(what: str) -> dict:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", what,
                               fed.url(name), "--epochs", str(epochs)],
                              cwd=scratch, capture_output=True, text=True, env=env,
                              timeout=1800)
        if proc.returncode:
            sys.exit(f"{what} run failed:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    before = process("plugin")["seconds"] if mode == "transfer" else 0.0
    out = process(mode)
    out["seconds"] += before
    out["first_batch"] += before
    gets = fed.log.gets_for(name)
    out.update(scratch=scratch, bytes_sent=fed.log.bytes_for(name), requests=len(gets),
               whole_reads=fed.log.bytes_for(name) / size,  # the object's worth of bytes
               ranges=[g.byte_range for g in gets], cut=[g.bytes_sent for g in gets],
               discoveries=fed.log.discoveries(), director_lookups=fed.log.director_lookups())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=50_000,
                        help="synthetic articles to partition (default 50,000: one full shard)")
    parser.add_argument("--epochs", type=int, default=3, help="cache mode's reads of the shard")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds of the three modes; times are the medians")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-work" / "data-movement")
    parser.add_argument("--bandwidth-mbps", type=float, default=0,
                        help="each answer sent at this many megabits/s, as over a link to "
                             "the cache (default 0: as fast as the loopback goes)")
    parser.add_argument("--json", action="store_true", help="one JSON line at the end")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.epochs)
        return

    import pyarrow.parquet as pq
    from pelican_federation import Federation

    args.workdir.mkdir(parents=True, exist_ok=True)
    shard = prepare(args.workdir, args.articles)
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()[:16]
    origin = args.workdir / "origin"
    shutil.rmtree(origin, ignore_errors=True)
    origin.mkdir()
    name = f"shard-{digest}.parquet"
    os.link(shard, origin / name)
    size = (origin / name).stat().st_size
    metadata = pq.ParquetFile(shard).metadata
    groups = metadata.num_row_groups
    print(f"shard: {metadata.num_rows:,} passages, {size / 1e6:.1f} MB, {groups} row groups",
          file=sys.stderr)
    for old in args.workdir.glob("scratch-*"):
        shutil.rmtree(old)

    rate = args.bandwidth_mbps * 1e6 / 8 or None
    print(f"link: {f'{args.bandwidth_mbps:g} Mbit/s' if rate else 'loopback'}", file=sys.stderr)
    with Federation(origin, caches=1, bandwidth=rate) as fed:
        env = {**os.environ, "SSL_CERT_FILE": str(fed.ca_path),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        rounds = [{mode: run(args.workdir, mode, fed, name, size, args.epochs, env)
                   for mode in ("transfer", "stream", "cache")} for _ in range(args.repeat)]
        results = rounds[0]  # counts from the first round, times the median of all
        for mode, r in results.items():
            for key in ("seconds", "first_batch"):
                r[key] = statistics.median(one[mode][key] for one in rounds)
        restart = run(args.workdir, "cache", fed, name, size, args.epochs, env,
                      scratch=results["cache"]["scratch"])
        fed.faults.cut_body(CUT_AFTER, path=name)
        cut = run(args.workdir, "stream", fed, name, size, 1, env)

    clean = results["stream"]["bytes_sent"]
    refetched = cut["bytes_sent"] - clean
    # the cut run's ranges less the clean run's: the cut read's range, asked for again
    again = Counter(cut["ranges"]) - Counter(results["stream"]["ranges"])
    base = results["transfer"]
    figures = {
        "passages": metadata.num_rows, "bytes": size, "row_groups": groups,
        "bandwidth_mbps": args.bandwidth_mbps,
        "modes": {m: {k: r[k] for k in ("seconds", "first_batch", "bytes_sent", "requests",
                                         "whole_reads", "scratch_bytes", "discoveries",
                                         "director_lookups")}
                  for m, r in results.items()},
        "cache_restart": {k: restart[k] for k in ("requests", "bytes_sent", "discoveries",
                                                  "director_lookups")},
        "cut": {"refetched_bytes": refetched, "requests": cut["requests"],
                "discoveries": cut["discoveries"], "director_lookups": cut["director_lookups"],
                "ranges_again": [list(r) for r in again],
                "same_passages": cut["digest"] == base["digest"]},
    }
    goals = {
        "stream <= 1.25x transfer": results["stream"]["seconds"]
        <= GOAL_STREAM_RATIO * base["seconds"],
        "stream first batch sooner": results["stream"]["first_batch"] < base["first_batch"],
        "same passages in every mode": all(r["digest"] == base["digest"]
                                           for r in results.values()),
        "after a cut, only the cut row group again": sum(again.values()) == 1
        and refetched == CUT_AFTER and cut["digest"] == base["digest"],
        "stream: 0 bytes on scratch": results["stream"]["scratch_bytes"] == 0,
        "transfer and cache: one copy": all(results[m]["scratch_bytes"] == size
                                            for m in ("transfer", "cache")),
        "cache: one whole read across epochs and a restart":
            results["cache"]["whole_reads"] == 1 and restart["bytes_sent"] == 0,
        "one discovery and director lookup per process": all(
            r["discoveries"] <= 1 and r["director_lookups"] <= 1
            for r in (results["stream"], results["cache"], restart)),
    }
    figures["goals"] = goals
    print(f"\n{'mode':<9} {'wall s':>7} {'first batch s':>14} {'MB sent':>8} {'requests':>9} "
          f"{'scratch MB':>11} {'discoveries':>12} {'director':>9}")
    for mode, r in results.items():
        print(f"{mode:<9} {r['seconds']:>7.2f} {r['first_batch']:>14.2f} "
              f"{r['bytes_sent'] / 1e6:>8.1f} {r['requests']:>9} "
              f"{r['scratch_bytes'] / 1e6:>11.1f} {r['discoveries']:>12} "
              f"{r['director_lookups']:>9}")
    print(f"\nstream / transfer wall: {results['stream']['seconds'] / base['seconds']:.2f}x "
          f"(goal <= {GOAL_STREAM_RATIO}x); first batch {results['stream']['first_batch']:.2f} "
          f"s against {base['first_batch']:.2f} s")
    print(f"cache restarted in place: {restart['requests']} GETs, {restart['bytes_sent']:,} "
          f"bytes; {args.epochs} epochs read from one fetch")
    print(f"cut after {CUT_AFTER:,} bytes: {cut['requests']} GETs against "
          f"{results['stream']['requests']}, ranges asked for again: {list(again)}, "
          f"{refetched:,} bytes more than a clean stream (the cut body); same passages: "
          f"{cut['digest'] == base['digest']}")
    for goal, met in goals.items():
        print(f"  {'met' if met else 'NOT MET'}: {goal}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
