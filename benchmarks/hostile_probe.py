#!/usr/bin/env python
"""Try the product as a hostile user would, and count what held.

Each part runs the real commands in child processes on this machine (all traffic stays on
127.0.0.1) and counts outcomes; nothing is mocked:

  inputs    files full of bad rows (malformed JSON, bad UTF-8, byte-order marks, NaN and
            infinite years, wrong field types, over-long fields, duplicate ids, truncated gzip,
            ragged CSV, authors as objects) partitioned at once: every row written must come
            back as an article, a counted duplicate or a reject
  kills     `run` and `index` SIGKILLed at random moments, then run again: the search results
            must equal those of a run that was never killed
  disk      a partition and an index build on a tmpfs too small for them (needs root): one
            line, exit 1, and the same command on a roomy disk then finishes
  writers   two `run`s started together on one workdir: one exits 2 at once, naming the other
  configs   bad config files and overrides (a billion-laughs alias bomb, 600 levels of
            nesting in a --set, repeated keys, NaN, absurd numbers, an unknown model): exit
            2, one line each, within seconds
  workdirs  a finished workdir mounted read-only (needs root): search, status and qa-api
            work, run, partition and index refuse in one line; a file given as the workdir;
            `index` on a folder that is no workdir leaves nothing behind
  api       bad requests to `qa-api` (bodies, types, sizes, keys) and a short load of
            concurrent clients: no status 500, no traceback in the server's output

A traceback anywhere, a 500, a lost row or a changed search result is a failure: the script
prints the figures (with --json, one JSON line) and exits 1 if any part failed.

    .venv/bin/python benchmarks/hostile_probe.py                 # everything, about 10 minutes
    .venv/bin/python benchmarks/hostile_probe.py --parts inputs configs --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLI = [sys.executable, "-m", "infer_corpus"]
FAST = ["--set", "predictions.kind=none", "--set", "model.max_seq_length=64",
        "--set", "shards.passages_per_shard=20"]
QUERIES = ["how do ice cores record past climate", "lithium extraction from brines",
           "ventilation and airborne spread", "why are the dolomites made of dolomite",
           "sea level rise contributors"]


def cli(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def tracebacks(*texts: str) -> int:
    return sum(text.count("Traceback (most recent call last)") for text in texts)


def one_line(proc: subprocess.CompletedProcess) -> bool:
    return len(proc.stderr.strip().splitlines()) == 1


# -- inputs -------------------------------------------------------------------------------------

def readable_prefix_lines(path: Path) -> int:
    """Whole lines that a reader gets from a truncated gzip file (a cut last line is lost)."""
    data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(path.read_bytes())
    whole = data[: data.rfind(b"\n") + 1]
    return len([line for line in whole.split(b"\n") if line.strip()])


def write_bad_inputs(folder: Path, rng: random.Random, rows: int) -> tuple[int, int]:
    """Files of good and bad rows: (rows a reader can get, rows lost in the cut gzip)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    written = 0
    lines = []
    for i in range(rows):
        kind = rng.choice(["good", "good", "good", "malformed", "badutf8", "types", "notext",
                           "dupid", "dupcontent", "authors", "longid", "array"])
        record = {"id": f"j{i}", "title": f"Title {i} {rng.random()}",
                  "abstract": f"Text of record {i}. " * rng.randint(1, 30),
                  "year": rng.choice([2001, "1999-05", "n.d.", None, 10**12, -5])}
        if kind == "malformed":
            lines.append(b'{"id": "x' + str(i).encode() + b'", "title": ')
        elif kind == "badutf8":
            lines.append(b'{"id": "u%d", "title": "caf\xe9"}' % i)
        elif kind == "types":
            record["title"] = {"nested": [1, 2]}
            lines.append(json.dumps(record).encode())
        elif kind == "notext":
            lines.append(json.dumps({"id": f"n{i}", "title": "", "abstract": " "}).encode())
        elif kind == "dupid":
            lines.append(json.dumps({**record, "id": "j0"}).encode())
        elif kind == "dupcontent":
            lines.append(json.dumps({**record, "id": f"d{i}", "title": "Same",
                                     "abstract": "Same text."}).encode())
        elif kind == "authors":
            record["authors"] = rng.choice([{"name": "A"}, [{"given": "B", "family": "C"}], 7])
            lines.append(json.dumps(record).encode())
        elif kind == "longid":
            record["id"] = "x" * 2000
            lines.append(json.dumps(record).encode())
        elif kind == "array":
            lines.append(b"[1, 2, 3]")
        else:
            lines.append(json.dumps(record).encode())
    (folder / "mixed.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    written += len(lines)
    # a gzip file cut in the middle: the rows before the cut count, the rest is one reject
    full = gzip.compress(b"\n".join(json.dumps({"id": f"g{i}", "title": f"G {i}"}).encode()
                                    for i in range(rows)) + b"\n")
    (folder / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    readable = readable_prefix_lines(folder / "cut.jsonl.gz")
    written += readable + 1  # the unreadable rest is one reject
    # CSV with a byte-order mark, a quoted header and ragged rows
    csv_rows = ['\ufeff"id","title","abstract","year"']
    for i in range(rows // 2):
        if i % 7 == 0:
            csv_rows.append(f"c{i},only two")
        else:
            csv_rows.append(f'c{i},"Title, {i}","Abstract {i}",{rng.choice(["2020", "", "x"])}')
    (folder / "bom.csv").write_text("\n".join(csv_rows) + "\n", encoding="utf-8")
    written += len(csv_rows) - 1
    # Parquet written the pandas way: missing integers as NaN, infinities too
    years = [rng.choice([2001.0, float("nan"), float("inf"), -float("inf"), 1e300])
             for _ in range(rows)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(rows)],
                             "title": [f"P {i}" for i in range(rows)], "year": years}),
                   folder / "nan.parquet")
    written += rows
    return written, rows - readable


def probe_inputs(work: Path, rng: random.Random, rows: int) -> dict:
    folder = work / "bad-inputs"
    folder.mkdir(parents=True)
    written, lost = write_bad_inputs(folder, rng, rows)
    proc = cli("partition", "--input", str(folder), "--workdir", str(work / "inputs-run"),
               "--json", *FAST)
    summary = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    # every readable row is an article kept, a duplicate article or a reject; the cut gzip
    # file's unreadable tail is one reject of its own
    accounted = summary.get("articles", 0) + summary.get("duplicate_articles", 0) \
        + summary.get("rejected", 0)
    huge = probe_huge_line(work)
    return {"rows_tried": written - 1 + lost, "rows_readable": written - 1,
            "lost_in_cut_gzip": lost, "articles": summary.get("articles"),
            "duplicates": summary.get("duplicate_articles"), "rejected": summary.get("rejected"),
            "accounted_for": accounted, "expected": written, "exit": proc.returncode,
            "huge_line": huge, "tracebacks": tracebacks(proc.stderr) + huge["tracebacks"],
            "ok": proc.returncode == 0 and tracebacks(proc.stderr) == 0 and accounted == written
            and huge["ok"]}


def probe_huge_line(work: Path, size: int = 1 << 30, limit: int = 1 << 30) -> dict:
    """A JSONL file whose second line is `size` bytes with no newline, partitioned under a
    `limit`-byte address-space limit (a job's memory limit)."""
    import resource

    path = work / "huge-line.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"id": "ok", "title": "A short one", "abstract": "Fine."}\n')
        handle.write(b'{"id": "huge", "abstract": "')
        block = b"x" * (1 << 20)
        for _ in range(size >> 20):
            handle.write(block)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([*CLI, "partition", "--input", str(path), "--workdir",
                           str(work / "huge-line-run"), "--json", *FAST], capture_output=True,
                          text=True, timeout=900, preexec_fn=cap)
    path.unlink()
    summary = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    return {"line_bytes": size, "memory_limit_bytes": limit, "exit": proc.returncode,
            "reject_reasons": summary.get("reject_reasons"),
            "tracebacks": tracebacks(proc.stderr),
            "ok": proc.returncode == 0 and summary.get("reject_reasons") == {"line_too_long": 1}
            and summary.get("articles") == 1}


# -- kills --------------------------------------------------------------------------------------

def top_hits(workdir: Path) -> list[list[str]]:
    out = []
    for query in QUERIES:
        proc = cli("search", "--workdir", str(workdir), query, "--json")
        if proc.returncode != 0:
            return [[f"error: {proc.stderr.strip()}"]]
        out.append([hit["passage_id"] for hit in json.loads(proc.stdout)["hits"]])
    return out


def probe_kills(work: Path, rng: random.Random, kills: int) -> dict:
    from inference.demo import demo_corpus_path

    demo = str(demo_corpus_path())
    reference = work / "kills-reference"
    proc = cli("run", "--input", demo, "--workdir", str(reference), *FAST)
    expected = top_hits(reference)
    survived, seen = 0, []
    for attempt in range(kills):
        workdir = work / f"kills-{attempt}"
        during_index = attempt % 3 == 2
        if during_index:  # a finished run whose index build is killed
            cli("run", "--input", demo, "--workdir", str(workdir), *FAST)
            shutil.rmtree(workdir / "index", ignore_errors=True)
            child = subprocess.Popen([*CLI, "index", "--workdir", str(workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
            delay = rng.uniform(0.5, 6)
        else:
            child = subprocess.Popen([*CLI, "run", "--input", demo, "--workdir", str(workdir),
                                      *FAST], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
            delay = rng.uniform(1, 25)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate()
        again = cli("run", "--input", demo, "--workdir", str(workdir), *FAST)
        got = top_hits(workdir)
        seen.append({"during": "index" if during_index else "run",
                     "after_s": round(delay, 1), "rerun_exit": again.returncode,
                     "identical": got == expected,
                     "tracebacks": tracebacks(stderr, again.stderr)})
        survived += got == expected and again.returncode == 0
    return {"kills": kills, "survived_identical": survived, "reference_exit": proc.returncode,
            "tracebacks": sum(s["tracebacks"] for s in seen), "attempts": seen,
            "ok": survived == kills and all(s["tracebacks"] == 0 for s in seen)}


# -- disk ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def probe_disk(work: Path) -> dict:
    from inference.demo import demo_corpus_path

    demo = str(demo_corpus_path())
    results = []
    for size in ("64k", "300k", "1m"):
        with small_disk(work / f"disk-{size}", size) as ok:
            if not ok:
                return {"skipped": "cannot mount a tmpfs here (needs root)", "ok": True}
            workdir = work / f"disk-{size}" / "w"
            proc = cli("run", "--input", demo, "--workdir", str(workdir), *FAST)
            results.append({"size": size, "exit": proc.returncode,
                            "one_line": one_line(proc) if proc.returncode else True,
                            "tracebacks": tracebacks(proc.stderr),
                            "message": proc.stderr.strip()[-200:]})
    failed_cleanly = all(r["exit"] in (0, 1) and r["one_line"] and not r["tracebacks"]
                         for r in results)
    return {"runs": results, "tracebacks": sum(r["tracebacks"] for r in results),
            "ok": failed_cleanly}


# -- writers ------------------------------------------------------------------------------------

def probe_writers(work: Path) -> dict:
    from inference.demo import demo_corpus_path

    demo = str(demo_corpus_path())
    workdir = work / "writers"
    procs = [subprocess.Popen([*CLI, "run", "--input", demo, "--workdir", str(workdir), *FAST],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outcomes = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    refused = [err for code, err in outcomes if code == 2]
    return {"writers": len(procs), "exit_codes": codes,
            "refused_with_pid": sum("in use by PID" in err for err in refused),
            "tracebacks": tracebacks(*(err for _, err in outcomes)),
            "search_after": top_hits(workdir)[0][:2],
            "ok": codes.count(0) >= 1 and all(c in (0, 2) for c in codes)
            and all("in use by PID" in err for err in refused)
            and tracebacks(*(err for _, err in outcomes)) == 0}


# -- configs ------------------------------------------------------------------------------------

BAD_CONFIGS: list[bytes] = [
    b"model:\n  batch_sise: 12\n", b"modle:\n  name: x\n", b"model: [" * 5000,
    b"model:\n  name: caf\xe9\n", b"model:\n  1: x\n  batch_size: 3\n", b"- a\n- b\n",
    b"model:\n  batch_size: many\n", b"model:\n  batch_size: 0\n", b"model:\n  device: tpu\n",
    b"model:\n  dtype: int4\n", b"passages:\n  min_words: 500\n", b"shards:\n  tokenize: maybe\n",
    b"predictions:\n  kind: classifier\n", b"index:\n  backend: solr\n",
    b"index:\n  url: ftp://x\n", b"condor:\n  resources:\n    request_memory: lots\n",
    b"condor:\n  container_image: a.sif\n  venv_tarball: b.tgz\n", b"qa:\n  max_steps: 0\n",
    b"qa:\n  models:\n    x:\n      kind: magic\n", b"fields:\n  id: {a: b}\n",
    b"\t\tmodel: x\n", b"model:\n  - a\n b: 2\n", b"&a [*a]\n",
    b"model: !!python/object:os.system {}\n",
    # a billion laughs: nine levels of ten aliases each, a few hundred bytes
    b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"a%d: &a%d [" % (i, i) + b", ".join([b"*a%d" % (i - 1)] * 10) + b"]\n"
        for i in range(1, 10)),
    b"model:\n  batch_size: 8\n  batch_size: 16\n", b"generation:\n  temperature: .nan\n",
    b"model:\n  batch_size: 1000000000000000000000000000000\n",
]
BAD_OVERRIDES = ["model.batch_size=", "nonsense", "=3", "model.batch_size=[1", "qa.models.x.kind=y",
                 "model.name=https://example.org/m", "model.name=", "executor.workers=-1",
                 "model.name=" + "[" * 600 + "]" * 600, "model.name={a: 1, a: 2}",
                 "generation.temperature=.inf", "executor.workers=100000",
                 "model.max_seq_length=100000", "model.name=no-such-model-xyz"]


def probe_configs(work: Path) -> dict:
    folder = work / "configs"
    folder.mkdir()
    results = []
    slowest = 0.0
    for i, content in enumerate(BAD_CONFIGS):
        path = folder / f"bad-{i}.yaml"
        path.write_bytes(content)
        started = time.perf_counter()
        results.append(cli("partition", "--demo", "--workdir", str(work / "cfg-w"),
                           "--config", str(path), timeout=120))
        slowest = max(slowest, time.perf_counter() - started)
    for override in BAD_OVERRIDES:
        started = time.perf_counter()
        results.append(cli("run", "--demo", "--workdir", str(work / "cfg-w2"), "--set", override,
                           timeout=120))
        slowest = max(slowest, time.perf_counter() - started)
    good = [r for r in results if r.returncode == 2 and one_line(r) and not tracebacks(r.stderr)]
    return {"tried": len(results), "exit_2_one_line": len(good),
            "tracebacks": sum(tracebacks(r.stderr) for r in results),
            "slowest_s": round(slowest, 1),
            "bad": [r.stderr.strip()[:300] for r in results if r not in good][:5],
            "ok": len(good) == len(results) and slowest < 60}


# -- workdirs -----------------------------------------------------------------------------------

@contextlib.contextmanager
def read_only_view(source: Path, mount: Path):
    """`source` bind-mounted read-only at `mount` (needs root); yields False when impossible."""
    mount.mkdir(parents=True, exist_ok=True)
    bound = subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True)
    try:
        ok = bound.returncode == 0 and subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(mount)], capture_output=True).returncode == 0
        yield ok
    finally:
        if bound.returncode == 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def serve_once(workdir: Path, log: Path) -> dict:
    """Start qa-api on `workdir`, ask /health and one /search, stop it."""
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "infer_corpus.qa_cli", "--workdir",
                               str(workdir), "--port", str(port)], stdout=log.open("w"),
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    statuses = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and server.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                statuses["health"] = httpx.get(f"{url}/health").status_code
                if statuses["health"] == 200:
                    break
            time.sleep(0.5)
        if statuses.get("health") == 200:
            statuses["search"] = httpx.post(f"{url}/search", json={"query": QUERIES[0]},
                                            timeout=60).status_code
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {**statuses, "tracebacks": tracebacks(log.read_text())}


def probe_workdirs(work: Path) -> dict:
    from inference.demo import demo_corpus_path

    demo = str(demo_corpus_path())
    source = work / "archive"
    cli("run", "--input", demo, "--workdir", str(source), *FAST)
    report: dict = {}
    with read_only_view(source, work / "read-only") as mounted:
        ro = work / "read-only"
        if not mounted:
            report["read_only"] = {"skipped": "cannot bind-mount read-only here (needs root)"}
        else:
            readers = [cli("search", "--workdir", str(ro), query, "--json") for query in QUERIES]
            status = cli("status", "--workdir", str(ro))
            served = serve_once(ro, work / "qa-api-read-only.log")
            writers = [cli(*command, "--workdir", str(ro), *extra) for command, extra in [
                (["run", "--input", demo], FAST), (["partition", "--input", demo], FAST),
                (["index"], [])]]
            report["read_only"] = {
                "searches_ok": sum(r.returncode == 0 and bool(json.loads(r.stdout)["hits"])
                                   for r in readers),
                "status_exit": status.returncode, "qa_api": served,
                "writers_refused": sum(r.returncode == 2 and one_line(r)
                                       and "is read-only" in r.stderr for r in writers),
                "tracebacks": tracebacks(*(r.stderr for r in [*readers, status, *writers]))
                + served["tracebacks"]}
            r = report["read_only"]
            r["ok"] = (r["searches_ok"] == len(QUERIES) and r["status_exit"] == 0
                       and served.get("search") == 200 and r["writers_refused"] == 3
                       and r["tracebacks"] == 0)
    a_file = work / "notes.md"
    a_file.write_text("not a workdir\n")
    odd = [cli(*command, "--workdir", str(path), *extra)
           for path in (a_file, a_file / "run")
           for command, extra in [(["run", "--input", demo], FAST),
                                  (["partition", "--input", demo], FAST), (["index"], [])]]
    report["file_as_workdir"] = {
        "tried": len(odd), "exit_2_one_line": sum(r.returncode == 2 and one_line(r) for r in odd),
        "file_unchanged": a_file.read_text() == "not a workdir\n",
        "tracebacks": tracebacks(*(r.stderr for r in odd))}
    folder = work / "not-a-workdir"
    folder.mkdir()
    (folder / "hosts").write_text("127.0.0.1 localhost\n")
    index_here = cli("index", "--workdir", str(folder))
    index_nowhere = cli("index", "--workdir", str(work / "no" / "such" / "run"))
    report["index_elsewhere"] = {
        "exits": [index_here.returncode, index_nowhere.returncode],
        "left_behind": sorted(p.name for p in folder.iterdir() if p.name != "hosts"),
        "created_missing": (work / "no").exists(),
        "tracebacks": tracebacks(index_here.stderr, index_nowhere.stderr)}
    f, i = report["file_as_workdir"], report["index_elsewhere"]
    f["ok"] = f["exit_2_one_line"] == f["tried"] and f["file_unchanged"] and not f["tracebacks"]
    i["ok"] = (i["exits"] == [2, 2] and not i["left_behind"] and not i["created_missing"]
               and not i["tracebacks"])
    report["tracebacks"] = sum(part.get("tracebacks", 0) for part in report.values()
                               if isinstance(part, dict))
    report["ok"] = all(part.get("ok", True) for part in report.values() if isinstance(part, dict))
    return report


# -- api ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bad_requests() -> list[tuple[str, str, bytes, dict]]:
    big = json.dumps({"question": "x" * 2_000_000}).encode()
    bodies = [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"question": 1}', b'{"question": ""}',
              b'{"question": "ok", "retriever_top_k": -1}', b'{"question": "ok", "topic": "' +
              b"t" * 100_000 + b'"}', b'{"question": "ok", "model": "../../etc/passwd"}',
              b'{"question": "ok", "verbose": "yes"}', b'{"question": "ok", "extra": 1}',
              b"[" * 10_000 + b"]" * 10_000, big, b'{"question": "<script>alert(1)</script>"}',
              b'{"query": "ok", "mode": "' + b"m" * 50_000 + b'"}',
              b'{"query": "ok", "top_k": 1e9}',
              b'{"question": "ok", "screening_top_k": "100"}', b'{"question": "\\ud800"}']
    requests = []
    for path in ("/react", "/search", "/react/stream"):
        for body in bodies:
            requests.append(("POST", path, body, {"content-type": "application/json"}))
    for path in ("/../../etc/passwd", "/static/../../pyproject.toml", "/topics?x=" + "a" * 5000,
                 "/%2e%2e/%2e%2e/etc/passwd", "/docs", "/health", "/models", "/nonexistent"):
        requests.append(("GET", path, b"", {}))
    requests.append(("POST", "/react", b'{"question": "ok"}', {"content-type": "text/plain"}))
    requests.append(("PUT", "/react", b'{"question": "ok"}', {}))
    return requests


async def api_load(url: str, clients: int, seconds: float) -> dict:
    import httpx

    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline:
                response = await http.post("/search", json={"query": QUERIES[i % len(QUERIES)]})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return statuses


def probe_api(work: Path, clients: int, seconds: float) -> dict:
    import httpx

    from inference.demo import demo_corpus_path

    workdir = work / "api"
    cli("run", "--input", str(demo_corpus_path()), "--workdir", str(workdir), *FAST)
    results = {}
    for keyed in (False, True):
        port = free_port()
        log = work / f"qa-api-{keyed}.log"
        env = {**os.environ, "QA_API_KEY": "s3cret"} if keyed else \
            {k: v for k, v in os.environ.items() if k != "QA_API_KEY"}
        server = subprocess.Popen([sys.executable, "-m", "infer_corpus.qa_cli", "--workdir",
                                   str(workdir), "--port", str(port)], stdout=log.open("w"),
                                  stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                time.sleep(0.5)
            statuses: dict[int, int] = {}
            leaked = 0
            with httpx.Client(base_url=url, timeout=60) as http:
                for method, path, body, headers in bad_requests():
                    response = http.request(method, path, content=body, headers=headers)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    leaked += "s3cret" in response.text
                    if keyed and path in ("/react", "/search") and response.status_code != 401:
                        statuses[-1] = statuses.get(-1, 0) + 1  # answered without the key
            load = asyncio.run(api_load(url, clients, seconds)) if not keyed else {}
        finally:
            server.terminate()
            server.wait(timeout=30)
        text = log.read_text()
        results["keyed" if keyed else "open"] = {
            "requests": sum(statuses.values()), "statuses": statuses, "load": load,
            "status_500": statuses.get(500, 0) + load.get(500, 0), "key_leaks": leaked,
            "tracebacks": tracebacks(text)}
    ok = all(r["status_500"] == 0 and r["tracebacks"] == 0 and r["key_leaks"] == 0
             and r["statuses"].get(-1, 0) == 0 for r in results.values())
    return {**results, "ok": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["inputs", "configs", "workdirs",
                                                        "writers", "disk", "kills", "api"])
    parser.add_argument("--rows", type=int, default=2000, help="rows per bad input file")
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = random.Random(args.seed)
    report = {}
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        work = Path(tmp)
        for part in args.parts:
            started = time.perf_counter()
            if part == "inputs":
                report[part] = probe_inputs(work, rng, args.rows)
            elif part == "kills":
                report[part] = probe_kills(work, rng, args.kills)
            elif part == "disk":
                report[part] = probe_disk(work)
            elif part == "writers":
                report[part] = probe_writers(work)
            elif part == "configs":
                report[part] = probe_configs(work)
            elif part == "workdirs":
                report[part] = probe_workdirs(work)
            elif part == "api":
                report[part] = probe_api(work, args.clients, args.seconds)
            else:
                parser.error(f"unknown part {part}")
            report[part]["seconds"] = round(time.perf_counter() - started, 1)
            status = "ok" if report[part]["ok"] else "FAILED"
            print(f"{part:<8} {status}  {json.dumps(report[part])[:400]}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return 0 if all(part["ok"] for part in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
