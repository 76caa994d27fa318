"""The Elasticsearch backend against a real cluster, end to end: load, search in every mode,
rebuild behind the alias. Runs when ES_URL is set (with ES_API_KEY if the cluster needs a key),
for example ES_URL=http://localhost:9200; skipped otherwise. It creates and then deletes indices
and a template named infer-corpus-test-*."""

from __future__ import annotations

import os
import uuid

import pytest

from inference.workdir import Workdir
from retrieval import MODES, EmbeddedIndex, Searcher
from retrieval.elasticsearch import (
    ElasticsearchIndex,
    _vectors_of,
    connect,
    load_elasticsearch,
)

pytestmark = pytest.mark.skipif(not os.environ.get("ES_URL"),
                                reason="set ES_URL to test against an Elasticsearch cluster")


@pytest.fixture(scope="module")
def cluster(demo_run):
    url = os.environ["ES_URL"]
    client = connect(url, "ES_API_KEY")
    name = f"infer-corpus-test-{uuid.uuid4().hex[:8]}"
    yield Workdir(demo_run[0]), client, name, url
    client.indices.delete(index=f"{name}-*", ignore_unavailable=True, allow_no_indices=True)
    client.options(ignore_status=404).indices.delete_index_template(name=name)


def test_load_search_and_rebuild(cluster):
    workdir, client, name, url = cluster
    client.indices.create(index=f"{name}-stale")  # what an earlier build left behind the alias
    client.indices.update_aliases(actions=[{"add": {"index": f"{name}-stale", "alias": name}}])

    summary = load_elasticsearch(workdir, client, name, url=url, api_key_env="ES_API_KEY")
    concrete = summary.path.split(" -> ")[1]
    assert summary.built and list(client.indices.get_alias(name=name).body) == [concrete]
    assert not client.indices.exists(index=f"{name}-stale")
    assert not load_elasticsearch(workdir, client, name, url=url).built

    index = ElasticsearchIndex(client, name, url=url)
    assert len(index) == summary.passages
    searcher = Searcher(workdir, index=index)
    for mode in MODES:
        hits = searcher.search("How do ice cores preserve ancient air bubbles?", mode=mode)
        assert hits and hits[0].passage["topic"] == "geoarchives", mode
    # the server returns the embeddings with the BM25 hits (the `fields` option): none is
    # fetched again by id
    hits = index._bm25_hits("lithium brines", 10, None, fields=["embedding"])
    assert hits and set(_vectors_of(hits)) == {hit["_id"] for hit in hits}
    assert index.candidates("lithium brines", 10).vectors.shape == (len(hits), 384)
    assert index.topics() == EmbeddedIndex(workdir).topics()
    hits = searcher.search("rock formation", topic="critical-minerals", mode="dense")
    assert hits and {h.passage["topic"] for h in hits} == {"critical-minerals"}
