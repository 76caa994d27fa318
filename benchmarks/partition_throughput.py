#!/usr/bin/env python
"""Throughput and peak memory of `infer-corpus partition` on a synthetic million-article corpus.

What it measures
  1. Generates (once, then caches) a reproducible JSONL corpus of N synthetic articles shaped
     like real abstracts: titles of 6-20 words; abstracts whose word counts have a median of
     about 180, about 10% over 250 words (up to ~1,200, so they split into several passages)
     and about 2% title-only records; sentences of 8-35 words ending in periods; fields id,
     title, abstract, authors (list), year, url and topic. Words come from a fixed, seeded
     vocabulary of a few thousand pseudo-words, drawn with Zipf-like frequencies.
  2. Runs the partitioner exactly as a user would, as a child process:
         infer-corpus partition --input CORPUS --workdir DIR --force --json
     on a fresh workdir (so it really partitions: an unchanged partition would be skipped),
     and records its wall-clock time and its peak RSS (from os.wait4's rusage of that child:
     ru_maxrss, KiB on Linux).
  3. Measures a floor on the same file, in-process: reading it line by line and parsing every
     line with orjson.loads, nothing else. The ratio ours/floor says how far the partitioner is
     from the cost of merely decoding its input.

Both passes read the file from a warm page cache (it was just written or read).
Targets: >= 10,000 articles/s and peak RSS < 2,048 MB (MiB). The script always exits 0
when the benchmark ran, whether the targets pass or fail (it is a benchmark, not a test);
it exits 1 only when the partitioner itself fails or times out.

How to run (from the repository root)
    .venv/bin/python benchmarks/partition_throughput.py               # 1,000,000 articles
    .venv/bin/python benchmarks/partition_throughput.py --n 20000     # quick check
    .venv/bin/python benchmarks/partition_throughput.py --json        # one JSON line at the end
    .venv/bin/python benchmarks/partition_throughput.py --set shards.passages_per_shard=20000

The corpus and the partition's workdir live under --workdir (default bench-work/partition,
git-ignored); a corpus with the same N and seed is reused. About 1.4 GB of JSONL per million
articles, plus the shards the partitioner writes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

GENERATOR_VERSION = 2
TARGET_ARTICLES_PER_S = 10_000
TARGET_PEAK_RSS_MB = 2_048
TARGET_SPEEDUP = 1.7  # 2 workers over 1 on 2 cores
CHUNK = 8192  # articles generated per vectorised chunk

# ---------------------------------------------------------------------------------------------
# Corpus generation
# ---------------------------------------------------------------------------------------------

_ONSETS = ("", "", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v",
           "w", "z", "br", "cr", "dr", "gr", "pr", "st", "tr", "ch", "sh", "th", "pl", "cl",
           "sl", "fl", "sp", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "io", "ou", "y")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "m", "t", "x", "nd", "st", "rk", "ng", "ct")
# Words that the sentence splitter treats as abbreviations would glue sentences together.
_AVOID = frozenset(
    "e.g i.e et al etc ca cf fig figs eq eqs vs approx no nos vol dr mr mrs ms prof st jr sr "
    "inc ltd co corp dept univ sect ch pp ref refs resp".split()
)
_TOPICS = ("machine learning", "genomics", "climate science", "particle physics", "neuroscience",
           "epidemiology", "materials science", "economics", "linguistics", "astronomy",
           "ecology", "robotics", "chemistry", "oncology", "hydrology", "cryptography",
           "immunology", "geology", "optics", "public health")
# Token variants of one word: (capitalised?, suffix), suffix 0 " ", 1 ". ", 2 ".", 3 "".
_SUFFIXES = (b" ", b". ", b".", b"")
_WIDTH = 16  # bytes per padded token: the longest word (14) plus ". "
_MAX_WORD = _WIDTH - 2


def _pseudo_word(rng: np.random.Generator, syllables: int) -> str:
    return "".join(
        _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
        + _CODAS[rng.integers(len(_CODAS))]
        for _ in range(syllables)
    )


def _unique_words(rng: np.random.Generator, size: int, syllables: tuple[int, ...],
                  min_len: int) -> list[str]:
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < size:
        word = _pseudo_word(rng, syllables[rng.integers(len(syllables))])
        if min_len <= len(word) <= _MAX_WORD and word not in seen and word not in _AVOID:
            seen.add(word)
            words.append(word)
    return words


class _Tables:
    """The seeded vocabulary, rendered once as a padded byte table of every token variant."""

    def __init__(self, rng: np.random.Generator, vocab_size: int) -> None:
        words = _unique_words(rng, vocab_size, (1, 2, 2, 2, 3, 3, 4), 2)
        words.sort(key=len)  # frequent words are short, as in real text
        self.vocab = words
        table = np.zeros((len(words) * 8, _WIDTH), dtype=np.uint8)
        lengths = np.zeros(len(words) * 8, dtype=np.int64)
        for w, word in enumerate(words):
            for cap in (0, 1):
                text = (word.capitalize() if cap else word).encode()
                for s, suffix in enumerate(_SUFFIXES):
                    token = text + suffix
                    row = w * 8 + cap + 2 * s
                    table[row, : len(token)] = np.frombuffer(token, dtype=np.uint8)
                    lengths[row] = len(token)
        self.table = table
        self.lengths = lengths
        # Zipf-Mandelbrot word frequencies, sampled through a 2**16-entry lookup table.
        ranks = np.arange(len(words), dtype=np.float64)
        weights = 1.0 / (ranks + 2.7) ** 1.05
        cdf = np.cumsum(weights) / weights.sum()
        self.lookup = np.minimum(
            np.searchsorted(cdf, (np.arange(65536) + 0.5) / 65536), len(words) - 1
        ).astype(np.int64)
        given = _unique_words(rng, 400, (1, 2, 2, 3), 3)
        family = _unique_words(rng, 3000, (2, 2, 3, 3, 4), 4)
        # A pool of people; each record's authors are drawn from it, JSON-quoted already.
        picks_g = rng.integers(len(given), size=50_000)
        picks_f = rng.integers(len(family), size=50_000)
        self.people = [f'"{given[g].capitalize()} {family[f].capitalize()}"'.encode()
                       for g, f in zip(picks_g.tolist(), picks_f.tolist())]

    def words(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return self.lookup[rng.integers(0, 65536, size=count, dtype=np.uint16)]

    def render(self, word_ids: np.ndarray, cap: np.ndarray, suffix: np.ndarray,
               words_per_doc: np.ndarray) -> tuple[bytes, np.ndarray]:
        """One bytes buffer of every document's text, and the n+1 byte offsets of the docs."""
        tokens = word_ids * 8 + cap + 2 * suffix.astype(np.int64)
        lengths = self.lengths[tokens]
        rows = self.table[tokens]
        buffer = rows[np.arange(_WIDTH)[None, :] < lengths[:, None]].tobytes()
        token_ends = np.concatenate(([0], np.cumsum(lengths)))
        doc_offsets = token_ends[np.concatenate(([0], np.cumsum(words_per_doc)))]
        return buffer, doc_offsets


def _abstract_targets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Target word counts: a lognormal body (<= 250) plus a ~10% long tail up to ~1,200."""
    body = rng.lognormal(np.log(168.0), 0.27, size=n)
    while (over := body > 238).any():  # truncate the body by redrawing
        body[over] = rng.lognormal(np.log(168.0), 0.27, size=int(over.sum()))
    tail = np.clip(rng.lognormal(np.log(360.0), 0.42, size=n), 262, 1180)
    targets = np.where(rng.random(n) < 0.09, tail, body)
    return np.maximum(targets, 20).astype(np.int64)


def _render_abstracts(rng: np.random.Generator, tables: _Tables,
                      targets: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Abstracts of whole sentences (8-35 words each) until each target is reached."""
    n = len(targets)
    slots = np.where(targets > 0, targets // 8 + 1, 0)  # enough sentences to reach the target
    doc_of_slot = np.repeat(np.arange(n), slots)
    lens = rng.integers(8, 36, size=int(slots.sum()))
    ends = np.cumsum(lens)
    before = np.concatenate(([0], ends))[np.cumsum(slots) - slots]  # words before each doc
    start_in_doc = ends - lens - before[doc_of_slot]
    keep = start_in_doc < targets[doc_of_slot]
    sentence_lens = lens[keep]
    words_per_doc = np.bincount(doc_of_slot[keep], weights=sentence_lens,
                                minlength=n).astype(np.int64)
    total = int(sentence_lens.sum())
    sentence_ends = np.cumsum(sentence_lens)
    cap = np.zeros(total, dtype=np.int64)
    cap[sentence_ends - sentence_lens] = 1
    suffix = np.zeros(total, dtype=np.int64)
    suffix[sentence_ends - 1] = 1  # ". "
    doc_ends = np.cumsum(words_per_doc)[words_per_doc > 0]
    suffix[doc_ends - 1] = 2  # "." at the very end, no trailing space
    buffer, offsets = tables.render(tables.words(rng, total), cap, suffix, words_per_doc)
    return buffer, offsets, words_per_doc


def _render_titles(rng: np.random.Generator, tables: _Tables, n: int) -> tuple[bytes, np.ndarray]:
    words_per_doc = rng.integers(6, 21, size=n)
    total = int(words_per_doc.sum())
    ends = np.cumsum(words_per_doc)
    cap = np.zeros(total, dtype=np.int64)
    cap[ends - words_per_doc] = 1
    suffix = np.zeros(total, dtype=np.int64)
    suffix[ends - 1] = 3  # no trailing space
    return tables.render(tables.words(rng, total), cap, suffix, words_per_doc)


_LINE = (b'{"id":"bench-%07d","title":"%s","abstract":"%s","authors":[%s],"year":%d,'
         b'"url":"https://bench.example.org/articles/%07d","topic":"%s"}\n')


def _chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, chunk])


_WORKER_TABLES: _Tables | None = None  # set before the worker processes fork


def _generate_chunk(task: tuple[int, int, int]) -> tuple[bytes, np.ndarray, int]:
    """The JSONL bytes of articles start..start+m-1, their abstract word counts, title-only count.

    Each chunk has its own seed, so the output does not depend on how many processes made it.
    """
    seed, start, m = task
    tables = _WORKER_TABLES
    assert tables is not None
    rng = _chunk_rng(seed, start // CHUNK)
    people = tables.people
    topics = [t.encode() for t in _TOPICS]
    title_only = rng.random(m) < 0.02
    targets = np.where(title_only, 0, _abstract_targets(rng, m))
    titles, title_offsets = _render_titles(rng, tables, m)
    abstracts, abstract_offsets, words = _render_abstracts(rng, tables, targets)
    author_counts = np.clip(rng.poisson(3.2, size=m) + 1, 1, 14)
    author_ids = rng.integers(len(people), size=int(author_counts.sum())).tolist()
    author_ends = np.cumsum(author_counts).tolist()
    years = rng.integers(1990, 2026, size=m).tolist()
    topic_ids = rng.integers(len(topics), size=m).tolist()
    to = title_offsets.tolist()
    ao = abstract_offsets.tolist()
    lines = []
    a0 = 0
    for i in range(m):
        a1 = author_ends[i]
        ident = start + i
        lines.append(_LINE % (
            ident, titles[to[i] : to[i + 1]], abstracts[ao[i] : ao[i + 1]],
            b",".join([people[j] for j in author_ids[a0:a1]]), years[i], ident,
            topics[topic_ids[i]],
        ))
        a0 = a1
    return b"".join(lines), words.astype(np.int32), int(title_only.sum())


def generate_corpus(path: Path, n: int, seed: int, vocab_size: int, jobs: int) -> dict:
    """Write the corpus to `path` (atomically) and return statistics about it."""
    global _WORKER_TABLES
    started = time.perf_counter()
    _WORKER_TABLES = _Tables(np.random.default_rng([seed, 2**32 - 1]), vocab_size)
    tasks = [(seed, start, min(CHUNK, n - start)) for start in range(0, n, CHUNK)]
    all_words = np.zeros(n, dtype=np.int32)
    title_only_total = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    pool = None
    try:
        if jobs > 1 and len(tasks) > 1 and "fork" in mp.get_all_start_methods():
            pool = mp.get_context("fork").Pool(jobs)
            results = pool.imap(_generate_chunk, tasks)
        else:
            results = map(_generate_chunk, tasks)
        with os.fdopen(fd, "wb", buffering=16 << 20) as out:
            for (_, start, m), (data, words, title_only) in zip(tasks, results):
                out.write(data)
                all_words[start : start + m] = words
                title_only_total += title_only
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _WORKER_TABLES = None
    with_text = all_words[all_words > 0]
    return {
        "articles": n,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "vocab_size": vocab_size,
        "bytes": path.stat().st_size,
        "title_only": title_only_total,
        "abstract_words_median": float(np.median(with_text)) if len(with_text) else 0.0,
        "abstract_words_mean": round(float(with_text.mean()), 1) if len(with_text) else 0.0,
        "abstract_words_p99": float(np.percentile(with_text, 99)) if len(with_text) else 0.0,
        "abstract_words_max": int(with_text.max()) if len(with_text) else 0,
        "share_over_250_words": round(float((with_text > 250).mean()), 4)
        if len(with_text) else 0.0,
        "generation_seconds": round(time.perf_counter() - started, 2),
        "generation_jobs": jobs,
    }


def ensure_corpus(workdir: Path, n: int, seed: int, vocab_size: int,
                  regenerate: bool, jobs: int) -> tuple[Path, dict, bool]:
    """The cached corpus for (n, seed), generated first when missing: (path, stats, cached)."""
    stem = f"corpus-n{n}-seed{seed}-v{GENERATOR_VERSION}-vocab{vocab_size}"
    path = workdir / f"{stem}.jsonl"
    meta_path = workdir / f"{stem}.meta.json"
    if not regenerate and path.is_file() and meta_path.is_file():
        stats = json.loads(meta_path.read_text())
        if stats.get("bytes") == path.stat().st_size:
            return path, stats, True
    stats = generate_corpus(path, n, seed, vocab_size, jobs)
    meta_path.write_text(json.dumps(stats, indent=2) + "\n")
    return path, stats, False


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def baseline_read_parse(path: Path) -> tuple[int, float]:
    """The floor: read the file line by line and orjson-parse each line. (records, seconds)."""
    loads = orjson.loads
    count = 0
    started = time.perf_counter()
    with open(path, "rb") as handle:
        for line in handle:
            loads(line)
            count += 1
    return count, time.perf_counter() - started


def partition_command() -> list[str]:
    script = Path(sys.executable).with_name("infer-corpus")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "infer_corpus"]


def run_partition(corpus: Path, run_dir: Path, overrides: list[str], timeout: float,
                  workers: int) -> dict:
    """Run the partitioner as a child process on a fresh workdir; time it and read its peak RSS
    (the largest of its own and its worker processes')."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unchanged, finished partition would be skipped, not redone
    cmd = [*partition_command(), "partition", "--input", str(corpus), "--workdir", str(run_dir),
           "--force", "--json", "--workers", str(workers)]
    for item in overrides:
        cmd += ["--set", item]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                timed_out = True
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    rss_bytes = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    summary = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            summary = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    return {"cmd": cmd, "returncode": proc.returncode, "timed_out": timed_out,
            "seconds": seconds, "peak_rss_mb": rss_bytes / 2**20, "summary": summary,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "stderr": stderr}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\nSee the module docstring for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=1_000_000,
                        help="articles in the synthetic corpus (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--vocab-size", type=int, default=4000,
                        help="pseudo-words in the vocabulary (default 4,000)")
    parser.add_argument("--workdir", type=Path, default=Path("bench-work/partition"),
                        help="where the corpus is cached and the partition is written "
                        "(default bench-work/partition)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes that generate the corpus (default: all CPUs; the "
                        "corpus is the same whatever the number)")
    parser.add_argument("--regenerate", action="store_true",
                        help="generate the corpus again even when a cached one matches")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override passed to the partitioner "
                        "(repeatable), e.g. shards.passages_per_shard=20000")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="kill the partitioner after this many seconds (default 1800)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not measure the read+parse floor")
    parser.add_argument("--keep", action="store_true",
                        help="keep the partition's workdir (shards) afterwards")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="run the partition with each of these worker counts (default: "
                        "1 2); the first is the baseline of the speed-up")
    parser.add_argument("--merge-passages", type=int, nargs="*", default=[1_000_000, 4_000_000],
                        metavar="N", help="also time the merge alone on N synthetic passage "
                        "keys (10 per article), with its peak memory (default: 1M and 4M)")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    return parser


def measure_merge(passages: int, seed: int = 0) -> dict:
    """The merge's time and peak memory on `passages` synthetic keys in 16 parts (10
    passages an article, 1% of passages repeated): what the capacity model scales to 180M."""
    import tracemalloc

    from inference.dedup import PartKeys, decide

    rng = np.random.default_rng(seed)
    articles = max(1, passages // 10)
    parts = []
    for count in np.diff(np.linspace(0, articles, 17).astype(int)):
        ids = rng.integers(0, 2**63, size=(count, 2), dtype=np.uint64)
        digests = rng.integers(0, 2**63, size=(count * 10, 2), dtype=np.uint64)
        repeats = rng.random(len(digests)) < 0.01
        digests[repeats] = digests[rng.integers(0, len(digests), int(repeats.sum()))]
        parts.append(PartKeys(ids, ids[:, :1].copy(), digests,
                              np.repeat(np.arange(count, dtype=np.int32), 10)))
    keys_mb = sum(a.nbytes for p in parts for a in vars(p).values()) / 2**20
    tracemalloc.start()
    started = time.perf_counter()
    decisions = decide(parts)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    kept = sum(int(d.keep.sum()) for d in decisions)
    return {"passages": articles * 10, "seconds": round(seconds, 3),
            "passages_per_s": round(articles * 10 / seconds), "keys_mb": round(keys_mb, 1),
            "peak_extra_mb": round(peak, 1), "kept": kept}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 1:
        print("--n must be positive", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    corpus, stats, cached = ensure_corpus(workdir, args.n, args.seed, args.vocab_size,
                                          args.regenerate, max(1, args.jobs))
    prepare_s = time.perf_counter() - t0
    print(f"corpus: {corpus} ({stats['bytes'] / 1e6:,.0f} MB, {stats['articles']:,} articles) "
          + (f"reused from cache (generated in {stats['generation_seconds']:.1f} s)" if cached
             else f"generated in {stats['generation_seconds']:.1f} s"),
          file=sys.stderr, flush=True)

    baseline_n, baseline_s = (0, 0.0)
    if not args.skip_baseline:
        baseline_n, baseline_s = baseline_read_parse(corpus)
        print(f"baseline: read + orjson.loads {baseline_n:,} lines in {baseline_s:.2f} s",
              file=sys.stderr, flush=True)

    runs = []
    for workers in args.workers:
        print(f"partition: {' '.join(partition_command())} partition --workers {workers} ... "
              f"(timeout {args.timeout:.0f} s)", file=sys.stderr, flush=True)
        run = run_partition(corpus, workdir / "run", args.overrides, args.timeout, workers)
        summary = run["summary"] or {}
        if run["timed_out"] or run["returncode"] != 0 or not summary:
            why = (f"timed out after {run['seconds']:.0f} s" if run["timed_out"]
                   else f"exited {run['returncode']}")
            print(f"partition failed: {why}\n{run['stderr'][-4000:]}", file=sys.stderr)
            if args.json:
                print(json.dumps({"error": why, "seconds": round(run["seconds"], 2),
                                  "peak_rss_mb": round(run["peak_rss_mb"], 1)}))
            return 1
        if not args.keep:
            shutil.rmtree(workdir / "run", ignore_errors=True)
        runs.append({"workers": workers, "seconds": round(run["seconds"], 3),
                     "articles_per_s": round(int(summary.get("articles", 0)) / run["seconds"], 1),
                     "peak_rss_mb": round(run["peak_rss_mb"], 1), "parts": summary.get("parts"),
                     "cpu_user_s": round(run["user_s"], 2),
                     "step_seconds": summary.get("step_seconds"), "summary": summary})
    for run_ in runs:
        run_["speedup"] = round(runs[0]["seconds"] / run_["seconds"], 3)
    merges = []
    for passages in args.merge_passages:
        print(f"merge: {passages:,} synthetic passage keys ...", file=sys.stderr, flush=True)
        merges.append(measure_merge(passages))
    run = {"seconds": runs[0]["seconds"], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "user_s": runs[0]["cpu_user_s"], "sys_s": 0.0}
    summary = runs[0]["summary"]
    best = max(runs, key=lambda r: r["articles_per_s"])

    articles = int(summary.get("articles", 0))
    seconds = best["seconds"]
    rate = articles / seconds if seconds else 0.0
    baseline_rate = baseline_n / baseline_s if baseline_s else None
    ratio = rate / baseline_rate if baseline_rate else None
    rate_ok = rate >= TARGET_ARTICLES_PER_S
    rss_ok = run["peak_rss_mb"] < TARGET_PEAK_RSS_MB
    result = {
        "articles": articles,
        "passages": summary.get("passages"),
        "rejected": summary.get("rejected"),
        "duplicate_passages": summary.get("duplicate_passages"),
        "shards": summary.get("shards"),
        "parts": summary.get("parts"),
        "partitioned": summary.get("partitioned"),
        "seconds": round(seconds, 3),
        "articles_per_s": round(rate, 1),
        "passages_per_s": round((summary.get("passages") or 0) / seconds, 1) if seconds else None,
        "mb_per_s": round(stats["bytes"] / 1e6 / seconds, 2) if seconds else None,
        "peak_rss_mb": round(run["peak_rss_mb"], 1),
        "runs": [{k: v for k, v in r.items() if k != "summary"} for r in runs],
        "merge": merges,
        "baseline_articles_per_s": round(baseline_rate, 1) if baseline_rate else None,
        "baseline_seconds": round(baseline_s, 3) if baseline_rate else None,
        "ratio": round(ratio, 4) if ratio is not None else None,
        "target_articles_per_s": TARGET_ARTICLES_PER_S,
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
        "target_speedup_2_workers": TARGET_SPEEDUP,
        "articles_per_s_pass": rate_ok,
        "peak_rss_pass": rss_ok,
        "pass": rate_ok and rss_ok,
        "corpus": {**stats, "path": str(corpus), "cached": cached,
                   "prepare_seconds": round(prepare_s, 2)},
        "overrides": args.overrides,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }

    def mark(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines = [
        "",
        f"partition benchmark: {articles:,} articles -> {result['passages']:,} passages "
        f"in {result['shards']} shards ({result['rejected']} rejected)",
        f"  corpus      {stats['bytes'] / 1e6:,.0f} MB; abstract words median "
        f"{stats['abstract_words_median']:.0f}, mean {stats['abstract_words_mean']:.0f}, "
        f"{stats['share_over_250_words']:.1%} over 250, max {stats['abstract_words_max']}; "
        f"{stats['title_only']:,} title-only; "
        + ("cached" if cached else f"generated in {stats['generation_seconds']:.1f} s"),
    ]
    for r in runs:
        lines.append(
            f"  partition   {r['seconds']:8.2f} s wall  {r['articles_per_s']:>12,.0f} articles/s"
            f"  with {r['workers']} worker(s), {r['parts']} parts; speed-up {r['speedup']:.2f}x "
            f"over {runs[0]['workers']}; peak RSS of any process {r['peak_rss_mb']:,.0f} MB; "
            "steps " + ", ".join(f"{k} {v:.1f} s" for k, v in (r["step_seconds"] or {}).items()))
    for m in merges:
        lines.append(
            f"  merge       {m['seconds']:8.2f} s       {m['passages_per_s']:>12,.0f} passages/s"
            f"  on {m['passages']:,} synthetic keys ({m['keys_mb']:,.0f} MB of keys, "
            f"{m['peak_extra_mb']:,.0f} MB more at its peak)")
    if baseline_rate:
        lines.append(f"  baseline    {baseline_s:8.2f} s       {baseline_rate:>12,.0f} articles/s  "
                     "(read lines + orjson.loads, in-process)")
        lines.append(f"  ratio       {ratio:8.3f}  (partition speed / baseline speed; "
                     f"the partitioner is {1 / ratio:.1f}x slower than the floor)")
    lines += [
        f"  throughput  {rate:,.0f} articles/s vs target >= {TARGET_ARTICLES_PER_S:,}: "
        f"{mark(rate_ok)}",
        *([f"  speed-up    {runs[1]['speedup']:.2f}x with {runs[1]['workers']} workers vs "
           f"target >= {TARGET_SPEEDUP}: {mark(runs[1]['speedup'] >= TARGET_SPEEDUP)}"]
          if len(runs) > 1 and runs[1]["workers"] == 2 and runs[0]["workers"] == 1 else []),
        f"  peak RSS    {run['peak_rss_mb']:,.0f} MB vs target < {TARGET_PEAK_RSS_MB:,} MB: "
        f"{mark(rss_ok)}",
    ]
    # With --json, stdout carries only the JSON line; the readable summary goes to stderr.
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
