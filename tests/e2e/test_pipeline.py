"""End to end through the CLI: the demo corpus, Cranfield, repeat runs, status, errors."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from conftest import last_json, run_cli

from inference.schema import result_schema
from inference.workdir import Workdir


def test_demo_run_summary(demo_run):
    _, summary = demo_run
    assert summary["articles"] >= 60
    assert summary["passages"] > summary["articles"]  # long articles were split
    assert summary["rejected"] == 0
    assert summary["shards"] == summary["shards_run"] >= 3


def test_demo_results_match_shards_and_carry_normalised_embeddings(demo_run):
    workdir, summary = demo_run
    wd = Workdir(workdir)
    total = 0
    for shard in range(summary["shards"]):
        shard_table = pq.read_table(wd.shard_path(shard))
        result = pq.read_table(wd.result_path(shard))
        assert result.schema.equals(result_schema(384, "float16"))
        assert result.column("passage_id").equals(shard_table.column("passage_id"))
        vectors = np.stack(result.column("embedding").to_numpy(zero_copy_only=False))
        assert vectors.dtype == np.float16 and vectors.shape[1] == 384
        assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1, atol=1e-2)
        total += result.num_rows
    assert total == summary["passages"]


def test_zero_shot_topics_recover_the_demo_topics(demo_run):
    workdir, summary = demo_run
    wd = Workdir(workdir)
    hits = count = 0
    for shard in range(summary["shards"]):
        truth = pq.read_table(wd.shard_path(shard)).column("topic").to_pylist()
        result = pq.read_table(wd.result_path(shard))
        labels = result.column("label").to_pylist()
        assert all(-1 <= s <= 1 for s in result.column("label_score").to_pylist())
        hits += sum(a == b for a, b in zip(truth, labels))
        count += len(truth)
    assert hits / count >= 0.85


def test_second_run_does_no_new_work(demo_run):
    workdir, first = demo_run
    wd = Workdir(workdir)
    mtimes = {p.name: p.stat().st_mtime_ns for p in wd.results_dir.glob("*.parquet")}
    again = last_json(run_cli("run", "--demo", "--workdir", str(workdir), "--json",
                              "--set", "shards.passages_per_shard=30").stdout)
    assert again["shards_run"] == 0 and not again["partitioned"]
    assert {k: again[k] for k in ("articles", "passages", "rejected", "shards")} == \
        {k: first[k] for k in ("articles", "passages", "rejected", "shards")}
    assert {p.name: p.stat().st_mtime_ns for p in wd.results_dir.glob("*.parquet")} == mtimes


def test_status_reports_every_shard_done(demo_run):
    workdir, summary = demo_run
    report = last_json(run_cli("status", "--workdir", str(workdir), "--json").stdout)
    assert report["counts"] == {"done": summary["shards"], "partial": 0, "pending": 0}
    assert report["passages_done"] == summary["passages"]
    text = run_cli("status", "--workdir", str(workdir)).stdout
    assert f"{summary['shards']} done" in text


def test_changed_prediction_settings_rerun_only_the_results(demo_run, tmp_path):
    workdir, summary = demo_run
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(workdir, copy)
    out = last_json(run_cli("run", "--demo", "--workdir", str(copy), "--json",
                            "--set", "shards.passages_per_shard=30",
                            "--set", "predictions.kind=none").stdout)
    assert not out["partitioned"] and out["shards_run"] == summary["shards"]
    labels = pq.read_table(Workdir(copy).result_path(0)).column("label")
    assert labels.null_count == len(labels)


def test_cranfield_end_to_end(cranfield, tmp_path):
    out = last_json(run_cli("run", "--input", str(cranfield / "corpus.jsonl"),
                            "--workdir", str(tmp_path / "w"), "--json",
                            "--set", "predictions.kind=none",
                            "--set", "model.max_seq_length=64").stdout)  # CPU time in CI
    assert out["articles"] + out["rejected"] == 1400
    assert out["passages"] >= out["articles"] - out["duplicate_articles"]
    assert out["shards_done"] == out["shards"] == out["shards_run"]
    result = pq.read_table(Workdir(tmp_path / "w").result_path(0))
    assert result.num_rows == out["passages"]


def test_a_failing_worker_is_reported_and_the_next_run_resumes(demo_path, tmp_path):
    workdir = tmp_path / "w"
    settings = ["--set", "shards.passages_per_shard=40", "--set", "model.max_seq_length=32",
                "--set", "predictions.kind=none"]
    run_cli("partition", "--input", str(demo_path), "--workdir", str(workdir), *settings)
    shard = Workdir(workdir).shard_path(1)
    good = shard.read_bytes()
    shard.write_bytes(b"not parquet")
    proc = run_cli("run", "--input", str(demo_path), "--workdir", str(workdir), *settings,
                   check=False)
    assert proc.returncode == 1
    assert "worker-0.log" in proc.stderr and "Traceback" not in proc.stderr
    assert "cannot read shard" in (workdir / "logs" / "worker-0.log").read_text()
    status = last_json(run_cli("status", "--workdir", str(workdir), "--json").stdout)
    assert status["counts"]["pending"] == 1  # the other shards were still computed
    shard.write_bytes(good)
    out = last_json(run_cli("run", "--input", str(demo_path), "--workdir", str(workdir),
                            *settings, "--json").stdout)
    assert out["shards_done"] == out["shards"] and out["shards_run"] == 1
