"""benchmarks/scale_model.py: its figures agree with each other, and docs/scale.md is its output."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scale_model.py"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"scale_model.py {' '.join(args)} failed:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def default_model() -> dict:
    return json.loads(run("--json").stdout)


def test_gpu_figures_follow_from_the_rates(default_model: dict) -> None:
    inputs = default_model["inputs"]
    passages = inputs["passages"]["value"]
    per_shard = inputs["passages per shard"]["value"]
    overhead = inputs["overhead per GPU job (s)"]["value"]
    assert passages == 18_000_000 * 10
    runs = default_model["runs"]
    assert sorted({r["gpus"] for r in runs}) == [10, 50, 200]
    measured = {s["stage"]: s["rate"] for s in default_model["stages"]}
    assert {r["gpu_rate"] for r in runs} == {measured["embed, token ids stored"],
                                             measured["embed, tokenizing in the job"]}
    for r in runs:
        assert r["gpu_hours"] == pytest.approx(passages / r["gpu_rate"] / 3600)
        assert r["jobs"] == math.ceil(passages / per_shard)
        assert r["job_s"] == pytest.approx(overhead + per_shard / r["gpu_rate"])
        assert r["gpu_slot_hours"] == pytest.approx(
            (r["jobs"] * overhead + passages / r["gpu_rate"]) / 3600)
        waves_h = math.ceil(r["jobs"] / r["gpus"]) * r["job_s"] / 3600
        assert r["gpu_stage_h"] == pytest.approx(waves_h) or (  # else transfer-bound
            r["gpu_stage_h"] > waves_h and r["access_point_mb_s"] == pytest.approx(500))
        assert r["total_h"] == pytest.approx(r["partition_h"] + r["gpu_stage_h"] + r["index_h"])
        # no single process sets the pace: the GPU jobs or the access point's transfers do
        assert r["bottleneck"] in {"GPU jobs", "access point transfer"}
    stored = [r for r in runs if r["token_ids"] == "stored"]
    assert [r["gpus"] for r in stored] == [10, 50, 200]
    assert stored[0]["gpu_stage_h"] > stored[1]["gpu_stage_h"] >= stored[2]["gpu_stage_h"]
    assert stored[2]["total_h"] <= 2 and stored[1]["total_h"] <= 3


def test_the_partition_jobs_follow_from_the_part_size(default_model: dict) -> None:
    p = default_model["partition"]
    data = default_model["data"]
    assert p["parts"] == math.ceil(data["articles in (JSONL)"]["gb"] * 1e9 / (256 << 20))
    assert p["part_passages"] * p["parts"] == pytest.approx(180_000_000)
    rates = {s["stage"]: s["rate"] for s in default_model["stages"]}
    overhead = default_model["inputs"]["overhead per CPU job (s)"]["value"]
    assert p["map_job_s"] == pytest.approx(overhead + p["part_passages"]
                                           / rates["partition: map"])
    assert p["merge_s"] == pytest.approx(overhead + 180_000_000 / rates["partition: merge"])
    assert p["merge_memory_gb"] < 32  # fits the sample config's partition_resources cap


def test_data_and_elasticsearch_sizes(default_model: dict) -> None:
    passages = default_model["inputs"]["passages"]["value"]
    data = default_model["data"]
    assert data["embeddings as float16"]["gb"] == pytest.approx(138.24)
    for row in data.values():
        assert row["gb"] == pytest.approx(passages * row["bytes_per_passage"] / 1e9)
    es = {k: v["value"] for k, v in default_model["elasticsearch"].items()}
    assert es["int8 vectors in RAM (GB)"] == pytest.approx(passages * 388 / 1e9)
    assert es["HNSW graph in RAM (GB)"] == pytest.approx(passages * 4 * 16 / 1e9)
    assert es["off-heap RAM, 1 replica (GB)"] == pytest.approx(
        2 * (es["int8 vectors in RAM (GB)"] + es["HNSW graph in RAM (GB)"]))
    shard_gb = es["index size, one copy (GB)"] / es["primary shards"]
    assert 10 <= shard_gb <= 50 and es["passages per primary shard"] <= 200_000_000
    assert es["load time (h)"] == pytest.approx(
        passages / (es["data nodes"] * es["bulk rate per data node (passages/s)"]) / 3600)


def test_every_figure_says_where_it_comes_from(default_model: dict) -> None:
    rows = [*default_model["inputs"].values(), *default_model["stages"],
            *default_model["data"].values(), *default_model["elasticsearch"].values()]
    for row in rows:
        assert row["kind"] in {"measured", "modelled", "assumed", "given"}
        assert row["source"]
    assert all("docs/benchmarks.md" in s["source"] for s in default_model["stages"]
               if s["kind"] == "measured")


def test_docs_scale_md_holds_the_default_output() -> None:
    doc = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    assert run().stdout.strip() in doc


def test_other_arguments() -> None:
    small = json.loads(run("--articles", "1,000,000", "--gpus", "5", "--passages-per-shard",
                           "100000", "--json").stdout)
    assert small["inputs"]["passages"]["value"] == 10_000_000
    assert [r["gpus"] for r in small["runs"]] == [5, 5]
    assert {r["jobs"] for r in small["runs"]} == {100}
    assert small["partition"]["parts"] < 100
    assert 100_000 in [s["passages_per_shard"] for s in small["shard_sizes"]]


@pytest.mark.parametrize("args, message", [
    (["--articles", "0"], "must be at least 1"),
    (["--gpus", "ten"], "is not a whole number"),
    (["--job-overhead-s", "-1"], "must be above 0"),
])
def test_bad_arguments_fail_with_one_error_line(args: list[str], message: str) -> None:
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
