"""The parallel partition (parts, map, merge, write) equals one plain pass over the inputs in
order, for any part size and number of workers: passages, ids, rejects ledger and counts."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from partition_reference import ledger, reference_partition

from inference.config import load_config
from inference.partition import partition
from inference.parts import plan
from inference.readers import Span, read_rows
from inference.workdir import Workdir

SHARD_FIELDS = ["passage_id", "article_id", "ordinal", "title", "text", "authors", "year", "url",
                "topic", "source"]


def _sentences(rng: random.Random, count: int) -> str:
    words = ["ice", "core", "lake", "sediment", "tree", "ring", "lithium", "brine", "cobalt",
             "shale", "delta", "glacier", "basin", "record", "isotope", "pollen"]
    return " ".join(" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + "."
                    for _ in range(count))


def nasty_corpus(root: Path, seed: int = 7) -> list[str]:
    """Four formats; duplicates within and across files (same article, same id with other
    content, a passage shared by two articles, an article whose id clash frees a passage for a
    later article); bad rows of every kind; a byte-order mark; blank lines."""
    rng = random.Random(seed)
    shared = _sentences(rng, 20)  # a long text: several passages, reused across articles
    records = []
    for i in range(240):
        kind = rng.random()
        text = _sentences(rng, rng.choice([1, 3, 25]))
        record = {"id": f"a{i}", "title": f"Title {i % 50}", "abstract": text,
                  "authors": ["X. Y"], "year": 1990 + i % 30, "doi": f"10.1/{i}"}
        if kind < 0.08:
            record = {"id": f"a{rng.randrange(max(i, 1))}", "title": "Other", "abstract": text}
        elif kind < 0.14 and records:
            record = dict(rng.choice([r for r in records if isinstance(r, dict)] or [record]))
        elif kind < 0.20:
            record["abstract"] = shared
            record["title"] = "Shared"
        elif kind < 0.24:
            record = {"id": f"bad{i}", "title": "", "abstract": ""}
        elif kind < 0.27:
            record = "{not json"
        elif kind < 0.29:
            record = {"id": [1, 2], "title": "T"}
        records.append(record)

    def line(record) -> bytes:
        return (record if isinstance(record, str) else json.dumps(record)).encode()

    big = root / "big.jsonl"
    lines = [line(r) for r in records[:120]]
    lines.insert(5, b"")
    lines.insert(40, b"\xff\xfe not utf-8")
    big.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    with gzip.open(root / "more.jsonl.gz", "wb") as handle:
        handle.write(b"\n".join(line(r) for r in records[120:160]) + b"\n")
    rows = [r for r in records[160:200] if isinstance(r, dict) and isinstance(r.get("id"), str)]
    table = pa.Table.from_pylist([{"id": r["id"], "title": r.get("title"),
                                   "abstract": r.get("abstract"), "year": r.get("year")}
                                  for r in rows])
    pq.write_table(table, root / "rows.parquet", row_group_size=4)
    with open(root / "table.csv", "w", encoding="utf-8", newline="") as handle:
        handle.write("id,title,abstract\n")
        for r in records[200:]:
            if isinstance(r, dict) and isinstance(r.get("id"), str):
                text = str(r.get("abstract", "")).replace('"', "'")
                handle.write(f'{r["id"]},"{r.get("title", "")}","{text}"\n')
            else:
                handle.write("only,two\n")
    big.with_name("tail.jsonl").write_text(json.dumps(
        {"id": "late", "title": "Shared", "abstract": shared}) + "\n")
    return [str(big), str(root / "more.jsonl.gz"), str(root / "rows.parquet"),
            str(root / "table.csv"), str(big.with_name("tail.jsonl"))]


def result(workdir: Workdir) -> dict:
    manifest = workdir.manifest()
    passages = []
    for entry in manifest.shards:
        passages += pq.read_table(workdir.root / entry.file, columns=SHARD_FIELDS).to_pylist()
    counts = {k: manifest.partition[k] for k in
              ("articles", "passages", "rejected", "duplicate_articles", "duplicate_passages")}
    return {"passages": passages, "rejects": ledger(workdir.rejects_dir / "rejects.jsonl"),
            "counts": counts, "reasons": manifest.partition["reject_reasons"]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    return nasty_corpus(tmp_path_factory.mktemp("nasty"))


@pytest.fixture(scope="module")
def expected(inputs) -> dict:
    reference = reference_partition(inputs, load_config())
    counts = {k: reference["counts"].get(k, 0) for k in
              ("articles", "passages", "rejected", "duplicate_articles", "duplicate_passages")}
    return {**reference, "counts": counts}


def test_the_nasty_corpus_exercises_every_decision(expected):
    c = expected["counts"]
    assert c["duplicate_articles"] and c["duplicate_passages"] and c["rejected"]
    assert {"duplicate_id", "malformed_json", "undecodable_bytes", "no_text",
            "malformed_row"} <= set(expected["reasons"])


@pytest.mark.parametrize("part_bytes,workers", [(1 << 30, 1), (2048, 1), (1024, 2),
                                                (3000, 2)])
def test_any_parts_and_workers_give_the_single_pass_result(inputs, expected, tmp_path,
                                                          part_bytes, workers):
    config = load_config(None, [f"shards.part_bytes={part_bytes}",
                                "shards.passages_per_shard=40"])
    workdir = Workdir(tmp_path / "w")
    summary = partition(inputs, workdir, config, progress=False, workers=workers)
    if part_bytes < 1 << 20:
        assert summary.parts > 8  # the large JSONL file and the Parquet file were cut
    got = result(workdir)
    assert got["counts"] == expected["counts"]
    assert got["reasons"] == expected["reasons"]
    assert got["rejects"] == expected["rejects"]
    assert got["passages"] == expected["passages"]
    assert all(entry.rows <= 40 for entry in workdir.manifest().shards)
    assert not (workdir.root / "parts" / "part-00000").exists()  # map outputs cleaned up


def test_line_ranges_cover_the_file_once_with_their_own_line_numbers(inputs, tmp_path):
    big = Path(inputs[0])
    _, parts = plan([big], 1500)
    assert len(parts) > 3
    assert parts[0].start == 0 and parts[-1].end == big.stat().st_size
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))
    whole = [(r.line, r.reason, r.record) for r in read_rows(big)]
    pieces = [(r.line, r.reason, r.record) for p in parts for r in read_rows(big, p.span)]
    assert pieces == whole
    lines = big.read_bytes().split(b"\n")
    assert all(lines[p.first - 1] == big.read_bytes()[p.start:].split(b"\n")[0] for p in parts)


def test_a_line_over_the_limit_is_a_reject_that_is_never_read_whole(tmp_path):
    src = tmp_path / "huge.jsonl"
    with open(src, "wb") as handle:
        handle.write(b'{"id": "a", "title": "Fine", "abstract": "Short."}\n')
        handle.write(b'{"id": "b", "abstract": "' + b"x" * 300_000 + b'"}\n')
        handle.write(b"y" * 200_000)  # no newline at the end
        handle.write(b'\n{"id": "c", "title": "Also fine", "abstract": "Short too."}\n')
    rows = list(read_rows(src, Span(), max_line_bytes=100_000))
    assert [(r.line, r.reason) for r in rows] == [(1, None), (2, "line_too_long"),
                                                 (3, "line_too_long"), (4, None)]
    assert "300,0" in rows[1].detail and "limit 100,000" in rows[1].detail


def test_a_part_whose_input_changed_is_refused_in_one_line(tmp_path):
    from inference.partition_map import PartChanged, map_part

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "title": f"T {i}"}) + "\n"
                           for i in range(200)))
    _, parts = plan([src], 2048)
    src.write_text(src.read_text().replace("T 1", "T X"))
    with pytest.raises(PartChanged, match="changed since the partition was planned"):
        map_part(parts[0], load_config(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_partition_killed_at_random_moments_resumes_to_the_unkilled_result(inputs, expected,
                                                                            tmp_path):
    """`partition --workers 2` killed (SIGKILL, its worker processes with it) at moments
    spread over a run, in the map, the merge or the writes, then run again: nothing lost,
    nothing counted twice, and the finished parts of the killed run are not mapped again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "infer_corpus", "partition", "--workdir",
               str(tmp_path / "w"), "--workers", "2", "--set", "shards.part_bytes=1024",
               "--set", "shards.passages_per_shard=40", "--json", "--input", *inputs]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    whole = time.perf_counter() - started
    reference = result(Workdir(tmp_path / "w"))
    rng = random.Random(3)
    interrupted = 0
    for attempt in range(3):
        workdir = tmp_path / f"k{attempt}"
        killed = [*command]
        killed[killed.index(str(tmp_path / "w"))] = str(workdir)
        proc = subprocess.Popen(killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.3, 0.9) * whole)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        manifest = workdir / "manifest.json"
        interrupted += manifest.is_file() and \
            json.loads(manifest.read_text())["partition"]["state"] == "running"
        out = subprocess.run(killed, check=True, capture_output=True, text=True).stdout
        assert json.loads(out.splitlines()[-1])["articles"] == expected["counts"]["articles"]
        assert result(Workdir(workdir)) == reference
    assert interrupted, "no kill landed while the partition ran"
    assert reference["passages"] == expected["passages"]


def test_a_partition_under_a_memory_limit_survives_a_line_larger_than_the_limit(tmp_path):
    """A 600 MB line with no newline, under a 1 GB address-space limit (a job's memory
    limit): it becomes a line_too_long reject; it used to end in a MemoryError traceback."""
    import resource
    import subprocess
    import sys

    src = tmp_path / "huge.jsonl"
    with open(src, "wb") as handle:
        handle.write(b'{"id": "a", "title": "Fine", "abstract": "Short."}\n')
        handle.write(b'{"id": "b", "abstract": "' + b"x" * (600 << 20))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run([sys.executable, "-m", "infer_corpus", "partition", "--input",
                           str(src), "--workdir", str(tmp_path / "w"), "--json"],
                          preexec_fn=limit, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["articles"] == 1 and summary["reject_reasons"] == {"line_too_long": 1}
    [reject] = ledger(tmp_path / "w" / "rejects" / "rejects.jsonl")
    assert reject["line"] == 2 and "629,145,6" in reject["detail"]


def test_an_input_that_changes_between_map_and_merge_is_refused_in_one_line(tmp_path):
    from inference.partition import PartitionError, _map_task, finish, merge, prepare

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "title": f"T {i}"}) + "\n"
                           for i in range(100)))
    workdir = Workdir(tmp_path / "w")
    config = load_config(None, ["shards.part_bytes=1024"])
    parts = prepare([str(src)], workdir, config, force=False)
    stage = workdir.root / "parts"
    for part in parts:
        _map_task(part, config, stage)
    merged = merge(stage / "keys", parts, 50, stage / "merge")
    with open(src, "a") as handle:
        handle.write(json.dumps({"id": "late", "title": "Appended"}) + "\n")
    with pytest.raises(PartitionError, match="changed .* while it was partitioned"):
        finish(workdir, config, parts, merged)
    assert workdir.manifest().partition == {"state": "running"}
    summary = partition([str(src)], workdir, config, progress=False)  # a re-run plans anew
    assert summary.articles == 101


def test_partition_workers_end_when_the_command_is_killed_alone(tmp_path):
    """SIGKILL to the command only (not its process group): its worker processes stop too,
    instead of mapping on with nobody to gather their parts."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    src = tmp_path / "many.jsonl"
    rng = random.Random(5)
    with open(src, "w") as handle:
        for i in range(60_000):
            handle.write(json.dumps({"id": f"m{i}", "title": f"T {i}",
                                     "abstract": _sentences(rng, 6)}) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "infer_corpus", "partition", "--input",
                             str(src), "--workdir", str(tmp_path / "w"), "--workers", "2",
                             "--set", "shards.part_bytes=1000000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while len(children := parent.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(children) >= 2, "the workers never started"
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"workers still running: {alive}"
