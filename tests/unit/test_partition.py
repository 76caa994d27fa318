"""Partitioning is deterministic, de-duplicates, respects shard sizes and resumes safely."""

from __future__ import annotations

import hashlib
import sys

import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from inference.config import load_config
from inference.partition import partition
from inference.schema import SHARD_SCHEMA
from inference.workdir import Workdir, WorkdirError


def long_abstract(seed: int, sentences: int = 40) -> str:
    return " ".join(f"Sentence {seed} number {i} has about eight words." for i in range(sentences))


def corpus(tmp_path, n: int = 30):
    records = [{"id": f"doc{i}", "title": f"Title {i}", "abstract": long_abstract(i),
                "authors": ["A. Author"], "year": 2000 + i, "doi": f"10.1000/{i}"}
               for i in range(n)]
    return write_jsonl(tmp_path / "in.jsonl", records)


def digests(workdir: Workdir) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(workdir.shards_dir.glob("*.parquet"))}


def test_shards_follow_the_fixed_schema_and_size(tmp_path):
    src = corpus(tmp_path)
    workdir = Workdir(tmp_path / "w")
    config = load_config(None, ["shards.passages_per_shard=25"])
    summary = partition([str(src)], workdir, config, progress=False)
    assert summary.passages == 60  # 40 sentences x 8 words = 320 words -> 2 passages each
    assert summary.shards == 3
    manifest = workdir.manifest().data
    assert [s["rows"] for s in manifest["shards"]] == [25, 25, 10]
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    table = pq.read_table(workdir.shard_path(0))
    assert table.schema.equals(SHARD_SCHEMA, check_metadata=True)
    assert pq.ParquetFile(workdir.shard_path(0)).metadata.row_group(0).column(0).compression \
        == "ZSTD"
    row = table.slice(0, 1).to_pylist()[0]
    assert row["passage_id"] == "doc0#0" and row["title"] == "Title 0"
    assert row["url"] == "https://doi.org/10.1000/0" and row["year"] == 2000


def test_rerunning_in_a_new_workdir_gives_identical_shards_and_ids(tmp_path):
    src = corpus(tmp_path)
    a, b = Workdir(tmp_path / "a"), Workdir(tmp_path / "b")
    config = load_config(None, ["shards.passages_per_shard=25"])
    partition([str(src)], a, config, progress=False)
    partition([str(src)], b, config, progress=False)
    assert digests(a) == digests(b)


def test_missing_ids_are_derived_from_content(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", [{"title": "No id here", "abstract": "Some text."}])
    workdir = Workdir(tmp_path / "w")
    partition([str(src)], workdir, load_config(), progress=False)
    first = pq.read_table(workdir.shard_path(0)).column("article_id")[0].as_py()
    assert first.startswith("sha256:")
    partition([str(src)], Workdir(tmp_path / "w2"), load_config(), progress=False)
    again = pq.read_table(Workdir(tmp_path / "w2").shard_path(0)).column("article_id")[0]
    assert again.as_py() == first


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    same = {"title": "Same", "abstract": "Identical abstract text."}
    src = write_jsonl(tmp_path / "x.jsonl", [
        {"id": "a", **same},
        {"id": "a", **same},          # the same article twice: a duplicate, not an error
        {"id": "b", **same},          # another id, identical passage: dropped as duplicate
        {"id": "c", "title": "Other", "abstract": "Identical abstract text."},
    ])
    workdir = Workdir(tmp_path / "w")
    summary = partition([str(src)], workdir, load_config(), progress=False)
    assert summary.articles == 3  # kept: the repeat of "a" is counted apart
    assert summary.duplicate_articles == 1
    assert summary.duplicate_passages == 1
    assert summary.passages == 2
    ids = pq.read_table(workdir.shard_path(0)).column("passage_id").to_pylist()
    assert ids == ["a#0", "c#0"]


def test_repeat_partition_does_nothing_and_changed_input_is_refused(tmp_path):
    src = corpus(tmp_path)
    workdir = Workdir(tmp_path / "w")
    config = load_config()
    partition([str(src)], workdir, config, progress=False)
    before = {p: p.stat().st_mtime_ns for p in workdir.shards_dir.iterdir()}
    assert partition([str(src)], workdir, config, progress=False).skipped
    assert {p: p.stat().st_mtime_ns for p in workdir.shards_dir.iterdir()} == before

    write_jsonl(src, [{"id": "new", "title": "Changed input", "abstract": "New."}])
    with pytest.raises(WorkdirError, match="other inputs"):
        partition([str(src)], workdir, config, progress=False)
    summary = partition([str(src)], workdir, config, force=True, progress=False)
    assert summary.articles == 1 and summary.shards == 1
    assert not workdir.shard_path(1).exists()


def test_inputs_are_known_by_content_not_by_path(tmp_path):
    """The same files moved (a reinstall moves the packaged demo) are the same inputs."""
    src = corpus(tmp_path)
    workdir = Workdir(tmp_path / "w")
    partition([str(src)], workdir, load_config(), progress=False)
    moved = tmp_path / "elsewhere" / "renamed.jsonl"
    moved.parent.mkdir()
    src.rename(moved)
    assert partition([str(moved)], workdir, load_config(), progress=False).skipped


def test_unfinished_partition_is_redone(tmp_path):
    src = corpus(tmp_path)
    workdir = Workdir(tmp_path / "w")
    config = load_config(None, ["shards.passages_per_shard=25"])
    partition([str(src)], workdir, config, progress=False)
    expected = digests(workdir)
    manifest = workdir.manifest().data
    manifest["partition"]["state"] = "running"  # as if killed before the manifest was final
    workdir.write_manifest(manifest)
    workdir.shard_path(2).unlink()
    (workdir.shards_dir / ".shard-00002.parquet.tmp-99999").write_bytes(b"half")
    partition([str(src)], workdir, config, progress=False)
    assert digests(workdir) == expected
    assert not list(workdir.shards_dir.glob(".*tmp*"))


def test_a_forced_partition_that_is_killed_is_not_taken_for_the_old_one(tmp_path, monkeypatch):
    """--force on new inputs, killed mid-way: the old inputs must not look partitioned."""
    src = corpus(tmp_path)
    workdir = Workdir(tmp_path / "w")
    config = load_config()
    partition([str(src)], workdir, config, progress=False)
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "x", "title": "T", "abstract": "A."}])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a kill while the first rows are read

    monkeypatch.setattr(sys.modules["inference.partition_map"], "read_rows", killed)
    with pytest.raises(KeyboardInterrupt):
        partition([str(other)], workdir, config, force=True, progress=False)
    monkeypatch.undo()
    assert workdir.manifest().partition["state"] == "running"
    from inference.status import workdir_status

    report = workdir_status(workdir)
    assert report["partition"]["state"] == "running" and report["shard_total"] == 0
    summary = partition([str(src)], workdir, config, progress=False)
    assert not summary.skipped and summary.articles == 30



def test_a_second_writer_is_refused_at_once_with_the_holders_pid(tmp_path):
    """Two partitions (or runs) on one workdir: the second exits 2 at once, the first finishes."""
    import subprocess
    import time

    src = corpus(tmp_path)
    workdir = Workdir(tmp_path / "w")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom inference.workdir import Workdir\n"
         "with Workdir(sys.argv[1]).lock():\n    print('locked', flush=True)\n    time.sleep(60)",
         str(workdir.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(WorkdirError, match=f"in use by PID {holder.pid}"):
            partition([str(src)], workdir, load_config(), progress=False)
        assert time.monotonic() - started < 5
        from conftest import run_cli

        proc = run_cli("partition", "--input", str(src), "--workdir", str(workdir.root),
                       check=False)
        assert proc.returncode == 2 and f"in use by PID {holder.pid}" in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder: a killed writer never leaves the workdir locked
    assert partition([str(src)], workdir, load_config(), progress=False).shards > 0


def test_the_workdir_lock_is_reentrant_within_one_process(tmp_path):
    src = corpus(tmp_path)
    workdir = Workdir(tmp_path / "w")
    with workdir.lock():
        assert partition([str(src)], workdir, load_config(), progress=False).shards > 0
