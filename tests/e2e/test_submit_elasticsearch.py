"""The Elasticsearch parallel load of the pipeline DAG: its load nodes' PRE scripts and
commands, then the swap node's, run against osmem-server (an OpenSearch-API server on
127.0.0.1, see tests/e2e/test_elasticsearch.py) the way the DAG runs them: each load job in a
scratch directory holding only what its group's folder holds."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import htcondor2
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from test_elasticsearch import KNN_VECTOR, OsmemNode, osmem  # noqa: F401 - the fixture

from inference.workdir import Workdir, WorkdirError
from retrieval.elasticsearch import ElasticsearchIndex, connect, load_elasticsearch
from submit.pipeline import load_groups
from submit.steps import shard_range

NAME = "passages"


def node_arguments(condor: Path, node: str) -> list[str]:
    """The arguments of a node's job, its VARS expanded by the bindings."""
    dag = (condor / "pipeline.dag").read_text()
    submit_file = re.search(rf"^JOB {node} (\S+)", dag, re.M).group(1)
    description = htcondor2.Submit((condor / submit_file).read_text())
    line = re.search(rf"^VARS {node} (.*)$", dag, re.M)
    for key, value in re.findall(r'(\w+)="([^"]*)"', line.group(1) if line else ""):
        description[key] = value
    return description.expand("arguments").strip('"').split()


def script_line(condor: Path, when: str, node: str) -> list[str]:
    dag = (condor / "pipeline.dag").read_text()
    return re.search(rf"^SCRIPT {when} {node} (.*)$", dag, re.M).group(1).split()


@pytest.fixture
def es_workdir(demo_run, tmp_path, osmem) -> Path:
    """A copy of the demo run (3 shards with results), its DAG written for Elasticsearch with
    2 load jobs, and its check node run (which records the index settings)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    for name in ("manifest.json", "shards", "results"):
        source = Path(demo_run[0]) / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, workdir / name)
    settings = ["--set", "shards.passages_per_shard=30", "--set", "index.backend=elasticsearch",
                "--set", f"index.url={osmem.url}", "--set", f"index.name={NAME}",
                "--set", "condor.load_jobs=2", "--set", f"condor.python={sys.executable}"]
    run_cli("submit", "--workdir", str(workdir), "--dry-run", *settings)
    check = node_arguments(workdir / "condor", "check")
    assert check[:3] == ["-m", "infer_corpus", "partition"]
    run_cli(*check[2:])
    return workdir


def test_load_nodes_fill_one_index_and_the_swap_node_moves_the_alias(es_workdir, osmem,
                                                                     tmp_path):
    workdir = Workdir(es_workdir)
    condor = es_workdir / "condor"
    client = connect(osmem.url, node_class=OsmemNode)
    shards = len(workdir.manifest().shards)
    assert load_groups(shards, 2) == [(0, 1), (2, 2)]
    for group in ("000", "001"):
        pre = script_line(condor, "PRE", f"load-{group}")
        assert subprocess.run(pre, capture_output=True, text=True).returncode == 0
        args = node_arguments(condor, f"load-{group}")
        assert args[:5] == ["-m", "infer_corpus", "index", "--workdir", "."]
        assert args[5] == "--shards" and args[7] == "--no-swap"
        sandbox = tmp_path / f"sandbox-{group}"  # what `transfer_input_files = DIR/` brings
        shutil.copytree(condor / "load" / f"group-{group}", sandbox)
        numbers = shard_range(args[6])
        assert sorted(p.name for p in (sandbox / "results").iterdir()) == \
            [f"shard-{n:05d}.parquet" for n in numbers]
        summary = load_elasticsearch(Workdir(sandbox), client, NAME, url=osmem.url,
                                     shards=numbers, swap=False, vector_mapping=KNN_VECTOR)
        assert summary.built
        assert not client.indices.exists_alias(name=NAME)  # no alias until the swap
    concrete = summary.path.split(" -> ")[1]
    # a retried load job sends its documents again: keyed by passage id, nothing doubles
    load_elasticsearch(Workdir(tmp_path / "sandbox-000"), client, NAME, shards=[0, 1],
                       swap=False, vector_mapping=KNN_VECTOR)
    swap = node_arguments(condor, "swap")
    assert swap[2:] == ["index", "--workdir", str(es_workdir.resolve()), "--swap-only"]
    swapped = load_elasticsearch(workdir, client, NAME, url=osmem.url, shards=[], swap=True,
                                 vector_mapping=KNN_VECTOR)
    assert swapped.built and swapped.path.endswith(concrete)
    assert list(client.indices.get_alias(name=NAME).body) == [concrete]
    ids = sorted(pid for e in workdir.manifest().shards for pid in pq.read_table(
        workdir.shard_path(e.shard), columns=["passage_id"]).column(0).to_pylist())
    assert len(ElasticsearchIndex(client, NAME)) == len(ids)
    found = client.search(index=NAME, size=1000, source=False)["hits"]["hits"]
    assert sorted(h["_id"] for h in found) == ids
    # the index a one-process load builds is the same one: loading again is a no-op
    again = load_elasticsearch(workdir, client, NAME, vector_mapping=KNN_VECTOR)
    assert not again.built and again.path.endswith(concrete)


def test_swap_before_any_load_says_what_to_run(es_workdir, osmem):
    client = connect(osmem.url, node_class=OsmemNode)
    for index in client.indices.get(index=f"{NAME}-*").body:
        client.indices.delete(index=index)
    with pytest.raises(WorkdirError, match="load the shards first"):
        load_elasticsearch(Workdir(es_workdir), client, "fresh", shards=[], swap=True,
                           vector_mapping=KNN_VECTOR)


ES = ["--backend", "elasticsearch", "--es-url", "http://127.0.0.1:9"]


@pytest.mark.parametrize("args, message", [
    (["--shards", "0-1", *ES], "add --no-swap"),
    (["--swap-only", "--no-swap", *ES], "--swap-only loads nothing"),
    (["--shards", "0-1", "--no-swap"], "are for the elasticsearch backend"),
    (["--swap-only"], "are for the elasticsearch backend"),
    (["--shards", "x", "--no-swap", *ES], "give a range such as 0-9"),
    (["--shards", "x"], "give a range such as 0-9"),
    (["--workers", "-1"], "--workers must be at least 1"),
])
def test_partial_index_options_are_checked(demo_run, args, message):
    proc = run_cli("index", "--workdir", str(demo_run[0]), *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
