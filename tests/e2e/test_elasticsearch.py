"""The Elasticsearch backend.

- Request bodies: the real client, with its `node_class` hook pointing at an in-process node that
  records each request and answers like a small cluster.
- Bulk loading, the alias swap and BM25: against osmem-server, an in-memory OpenSearch-API server
  started on 127.0.0.1. It rejects the 9.x client's versioned media types
  (`application/vnd.elasticsearch+json; compatible-with=9`) and has no `dense_vector`, so the
  tests talk to it through a node class that sends plain `application/json` and load it with
  OpenSearch's `knn_vector` in place of `dense_vector`.
- The command line: one-line errors and exit codes for a closed port, refused credentials and a
  server that is not Elasticsearch.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, write_jsonl
from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders, Urllib3HttpNode
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport._node import NodeApiResponse
from elasticsearch import Elasticsearch
from elasticsearch import __versionstr__ as CLIENT_VERSION

from infer_corpus.config import load_config
from inference.config_loader import ConfigError
from inference.workdir import Workdir
from retrieval import MODES, EmbeddedIndex, Searcher, elasticsearch
from retrieval.elasticsearch import (
    ElasticsearchIndex,
    ElasticsearchRefused,
    ElasticsearchUnavailable,
    connect,
    load_elasticsearch,
)
from retrieval.search import query_words

NAME = "passages"


def passage_ids(workdir: Workdir) -> list[str]:
    return [pid for e in workdir.manifest().shards
            for pid in pq.read_table(workdir.shard_path(e.shard),
                                     columns=["passage_id"]).column(0).to_pylist()]


# --- an in-process cluster behind the client's node_class hook ------------------------------

class FakeCluster:
    """Answers the requests the backend makes, records them, and can fail on purpose."""

    def __init__(self, holders: list[str] | None = None) -> None:
        self.requests: list[tuple[str, str, Any, HttpHeaders]] = []
        self.aliases: dict[str, list[str]] = {NAME: list(holders or [])}
        self.indices: dict[str, dict[str, dict]] = {name: {} for name in holders or []}
        self.mappings: dict[str, dict] = {}  # each index's mappings, as created
        self.failures: list[Callable[[str, str], Any]] = []  # each: returns an answer or None
        self.search_answer: Callable[[dict], dict] = lambda body: {"hits": {"hits": []}}

    def node_class(self) -> type[BaseNode]:
        cluster = self

        class FakeNode(BaseNode):
            def perform_request(self, method, target, body=None, headers=None, **_):
                status, payload = cluster.handle(method, target, body, headers)
                meta = ApiResponseMeta(status=status, http_version="1.1", duration=0.0,
                                       node=self.config, headers=HttpHeaders({
                                           "content-type": "application/json",
                                           "x-elastic-product": "Elasticsearch"}))
                return NodeApiResponse(meta, json.dumps(payload).encode())

        return FakeNode

    def client(self) -> Elasticsearch:
        return connect("http://es.test:9200", node_class=self.node_class(), max_retries=0)

    def calls(self, method: str, pattern: str) -> list[Any]:
        return [body for m, path, body, _ in self.requests
                if m == method and re.fullmatch(pattern, path.split("?")[0])]

    def handle(self, method: str, target: str, raw: bytes | None, headers: HttpHeaders):
        path = target.split("?")[0]
        if path.endswith("/_bulk"):
            body: Any = [json.loads(line) for line in raw.decode().splitlines() if line]
        else:
            body = json.loads(raw) if raw else None
        self.requests.append((method, target, body, headers))
        for failure in list(self.failures):
            answer = failure(method, path)
            if answer is not None:
                self.failures.remove(failure)
                if isinstance(answer, Exception):
                    raise answer
                return answer
        parts = path.strip("/").split("/")
        if parts[0] == "_alias":
            holders = self.aliases.get(parts[1], [])
            if not holders:
                return 404, {"error": "alias missing", "status": 404}
            return 200, {index: {"aliases": {parts[1]: {}}} for index in holders}
        if parts[0] in ("_index_template", "_aliases") or parts[-1] in ("_settings", "_refresh"):
            if parts[0] == "_aliases":
                for action in body["actions"]:
                    (kind, spec), = action.items()
                    holders = self.aliases.setdefault(spec["alias"], [])
                    holders.remove(spec["index"]) if kind == "remove" else holders.append(
                        spec["index"])
            return 200, {"acknowledged": True}
        if parts[-1] == "_bulk":
            items = []
            for action, doc in zip(body[::2], body[1::2]):
                self.indices[action["index"]["_index"]][action["index"]["_id"]] = doc
                items.append({"index": {"_id": action["index"]["_id"], "status": 201}})
            return 200, {"errors": False, "items": items}
        if parts[-1] == "_count":
            return 200, {"count": sum(len(self.indices.get(i, {}))
                                      for i in self.aliases.get(parts[0]) or [parts[0]])}
        if parts[-1] == "_search":
            return 200, self.search_answer(body)
        if parts[-1] == "_mapping":
            return 200, {index: {"mappings": self.mappings.get(index, {})}
                         for index in self.aliases.get(parts[0]) or [parts[0]]}
        if parts[-1] == "_mget":
            docs = self.indices[self.aliases[parts[0]][0]]
            return 200, {"docs": [{"_id": i, "found": i in docs, "_source": docs.get(i)}
                                  for i in body["ids"]]}
        if len(parts) == 1:  # the index itself
            if method == "HEAD":
                return (200 if parts[0] in self.indices else 404), {}
            if method == "PUT":
                self.indices[parts[0]] = {}
                self.mappings[parts[0]] = (body or {}).get("mappings", {})
            if method == "DELETE":
                self.indices.pop(parts[0], None)
            return 200, {"acknowledged": True}
        raise AssertionError(f"unexpected request {method} {target}")


@pytest.fixture(scope="module")
def loaded(demo_run):
    """The demo run loaded through the fake node, replacing an index the alias held before."""
    workdir = Workdir(demo_run[0])
    cluster = FakeCluster(holders=[f"{NAME}-old"])
    summary = load_elasticsearch(workdir, cluster.client(), NAME, url="http://es.test:9200")
    return workdir, cluster, summary


def test_loader_writes_the_mapping_then_bulk_then_swaps_the_alias(loaded):
    workdir, cluster, summary = loaded
    assert summary.built and summary.passages == len(passage_ids(workdir))
    (template,) = cluster.calls("PUT", f"/_index_template/{NAME}")
    assert template["index_patterns"] == [f"{NAME}-*"]
    fields = template["template"]["mappings"]["properties"]
    assert template["template"]["mappings"]["dynamic"] == "strict"
    assert fields["title"] == fields["text"] == {"type": "text", "analyzer": "english"}
    for name in ("passage_id", "article_id", "topic", "year"):
        assert fields[name]["type"] == "keyword"
    assert fields["embedding"] == {"type": "dense_vector", "dims": 384, "index": True,
                                   "similarity": "cosine", "index_options": {"type": "int8_hnsw"}}

    concrete = summary.path.split(" -> ")[1]
    assert re.fullmatch(f"{NAME}-[0-9a-f]{{16}}", concrete)
    (created,) = cluster.calls("PUT", f"/{concrete}")
    assert created["settings"]["index"]["refresh_interval"] == "-1"
    # the model that embedded the passages, which searches must embed queries with
    model = created["mappings"]["_meta"]["model"]
    assert model == EmbeddedIndex(workdir).model_record()
    assert model["name"] == "all-MiniLM-L6-v2" and model["dimension"] == 384
    assert ElasticsearchIndex(cluster.client(), NAME).model_record() == model
    lines = [line for body in cluster.calls("PUT", "/_bulk") for line in body]
    actions, docs = lines[::2], lines[1::2]
    assert [a["index"]["_id"] for a in actions] == passage_ids(workdir)
    assert {a["index"]["_index"] for a in actions} == {concrete}
    assert all(a["index"]["_id"] == d["passage_id"] and len(d["embedding"]) == 384
               for a, d in zip(actions, docs))
    assert set(docs[0]) == {"passage_id", "article_id", "title", "text", "authors", "year",
                            "url", "topic", "embedding"}

    # the alias moves in one request, after the new index is refreshed and counted; then the
    # replaced index goes
    order = [(m, t.split("?")[0]) for m, t, _, _ in cluster.requests]
    (swap,) = cluster.calls("POST", "/_aliases")
    assert swap["actions"] == [{"remove": {"index": f"{NAME}-old", "alias": NAME}},
                               {"add": {"index": concrete, "alias": NAME}}]
    assert order.index(("POST", f"/{concrete}/_refresh")) < order.index(("POST", "/_aliases")) \
        < order.index(("DELETE", f"/{NAME}-old"))
    assert cluster.aliases[NAME] == [concrete] and f"{NAME}-old" not in cluster.indices
    # the 9.x client asks for its API version; that is what ties it to Elasticsearch 9
    major = CLIENT_VERSION.split(".")[0]
    assert all(h["accept"] == f"application/vnd.elasticsearch+json; compatible-with={major}"
               for _, _, _, h in cluster.requests)


def test_loading_the_same_results_again_is_a_no_op(loaded):
    workdir, cluster, summary = loaded
    before = len(cluster.requests)
    again = load_elasticsearch(workdir, cluster.client(), NAME)
    assert not again.built and again.path.endswith(summary.path.split(" -> ")[1])
    assert [m for m, *_ in cluster.requests[before:]] == ["HEAD", "GET"]  # only the alias look-up



def test_a_load_shows_the_passages_it_sends(demo_run, capsys):
    workdir = Workdir(demo_run[0])
    load_elasticsearch(workdir, FakeCluster().client(), NAME, progress=True)
    total = len(passage_ids(workdir))
    bar = capsys.readouterr().err.split("\r")[-1]
    assert bar.startswith("index: 100%") and f" {total}/{total} " in bar, bar

def test_overload_and_lost_connections_are_retried_with_backoff(demo_run):
    workdir = Workdir(demo_run[0])
    cluster = FakeCluster()
    busy = {"error": {"type": "es_rejected_execution_exception", "reason": "queue full"},
            "status": 429}
    cluster.failures = [
        lambda m, p: (429, busy) if p == "/_bulk" else None,  # the whole request
        lambda m, p: TransportConnectionError("connection reset") if p == "/_bulk" else None,
    ]
    summary = load_elasticsearch(workdir, cluster.client(), NAME, backoff=0.01, chunk_size=1000)
    assert summary.built and not cluster.failures
    shards = len(workdir.manifest().shards)
    assert len(cluster.calls("PUT", "/_bulk")) == shards + 2  # one answered 429, one lost
    concrete = cluster.aliases[NAME][0]
    assert sorted(cluster.indices[concrete]) == sorted(passage_ids(workdir))

    def always_down(method, path):
        if path != "/_bulk":
            return None
        cluster.failures.append(always_down)  # answered ones are removed: stay down
        return TransportConnectionError("refused")

    cluster.failures = [always_down]
    with pytest.raises(ElasticsearchUnavailable, match="cannot reach Elasticsearch"):
        load_elasticsearch(workdir, cluster.client(), "other", retries=2, backoff=0.01)
    assert len(cluster.calls("PUT", "/_bulk")) == shards + 2 + 3  # tried, then 2 retries


def test_rejected_documents_stop_the_load_before_the_alias_moves(demo_run):
    workdir = Workdir(demo_run[0])
    cluster = FakeCluster()

    def reject_one(method, path):
        if path != "/_bulk":
            return None
        body = cluster.requests[-1][2]
        items = [{"index": {"_id": a["index"]["_id"], "status": 201}} for a in body[::2]]
        items[0] = {"index": {"_id": body[0]["index"]["_id"], "status": 400, "error": {
            "type": "document_parsing_exception", "reason": "bad vector"}}}
        return 200, {"errors": True, "items": items}

    cluster.failures = [reject_one]
    with pytest.raises(ElasticsearchRefused, match="rejected 1 passages, e.g. .*: bad vector"):
        load_elasticsearch(workdir, cluster.client(), NAME)
    assert not cluster.calls("POST", "/_aliases") and cluster.aliases[NAME] == []


def test_search_requests(loaded):
    workdir, cluster, _ = loaded
    index = ElasticsearchIndex(cluster.client(), NAME)
    docs = cluster.indices[cluster.aliases[NAME][0]]
    ids = list(docs)[:3]
    cluster.search_answer = lambda body: {"hits": {"hits": [
        {"_id": i, "_score": 3.0 - n, "fields": {"embedding": docs[i]["embedding"]}}
        for n, i in enumerate(ids)]}}
    before = len(cluster.requests)
    candidates = index.candidates("lithium brines", 3, topic="critical-minerals")
    assert candidates.keys == ids and candidates.scores.tolist() == [3.0, 2.0, 1.0]
    assert len(cluster.requests) == before + 1  # the vectors came with the hits
    body = cluster.calls("POST", f"/{NAME}/_search")[-1]
    assert body == {"query": {"bool": {
        "must": [{"multi_match": {"query": "lithium brines", "type": "most_fields",
                                  "fields": ["title", "text"]}}],
        "filter": [{"term": {"topic": "critical-minerals"}}]}},
        "size": 3, "_source": False, "fields": ["embedding"], "track_total_hits": False}
    # plain BM25 (the bm25 mode) sends the same query without asking for the vectors
    assert index.bm25("lithium brines", 3, topic="critical-minerals") == [
        (ids[0], 3.0), (ids[1], 2.0), (ids[2], 1.0)]
    assert cluster.calls("POST", f"/{NAME}/_search")[-1] == {
        key: value for key, value in body.items() if key != "fields"}

    # feedback's second round scores only the first's candidates, for the added words
    cluster.search_answer = lambda body: {"hits": {"hits": [{"_id": ids[1], "_score": 0.5}]}}
    assert index.bm25("spodumene salar", 3, within=ids[:2]) == [(ids[1], 0.5)]
    assert cluster.calls("POST", f"/{NAME}/_search")[-1]["query"] == {"bool": {
        "must": [{"multi_match": {"query": "spodumene salar", "type": "most_fields",
                                  "fields": ["title", "text"]}}],
        "filter": [{"ids": {"values": ids[:2]}}]}}

    # re-ranking uses the vectors that came with the BM25 hits
    vector = np.asarray(docs[ids[1]]["embedding"], dtype=np.float32)
    vector /= np.linalg.norm(vector)
    sims = candidates.vectors @ vector
    assert candidates.vectors.dtype == np.float32 and sims.argmax() == 1
    assert sims[1] == pytest.approx(1.0, abs=1e-3)
    # a candidate whose vector the response lacks is fetched by id
    other = list(docs)[5]
    answers = iter([
        {"hits": {"hits": [{"_id": ids[0], "_score": 2.0,
                            "fields": {"embedding": docs[ids[0]]["embedding"]}},
                           {"_id": other, "_score": 1.0}]}},
        {"hits": {"hits": [{"_id": other, "_score": 1.0,
                            "fields": {"embedding": docs[other]["embedding"]}}]}}])
    cluster.search_answer = lambda body: next(answers)
    candidates = index.candidates("lithium", 2)
    assert candidates.keys == [ids[0], other] and candidates.vectors.shape == (2, 384)
    assert candidates.vectors[1] == pytest.approx(docs[other]["embedding"], abs=1e-6)
    assert cluster.calls("POST", f"/{NAME}/_search")[-1]["query"] == {"ids": {"values": [other]}}
    cluster.search_answer = lambda body: {"hits": {"hits": [{"_id": other, "_score": 1.0}]}}
    with pytest.raises(ElasticsearchRefused, match=f"returned no embedding for passage {other}"):
        index.candidates("lithium", 1)
    cluster.search_answer = lambda body: {"hits": {"hits": []}}
    assert len(index.candidates("lithium", 5)) == 0

    cluster.search_answer = lambda body: {"hits": {"hits": [{"_id": ids[0], "_score": 0.9}]}}
    assert index.dense(vector, 5, topic="geoarchives") == [(ids[0], pytest.approx(0.8))]
    knn = cluster.calls("POST", f"/{NAME}/_search")[-1]
    assert knn["knn"]["field"] == "embedding" and knn["knn"]["k"] == 5
    assert knn["knn"]["num_candidates"] == 50 and len(knn["knn"]["query_vector"]) == 384
    assert knn["knn"]["filter"] == {"term": {"topic": "geoarchives"}}
    assert knn["size"] == 5 and knn["_source"] is False

    passages = index.passages_for(ids[::-1])
    assert [p["passage_id"] for p in passages] == ids[::-1] and "embedding" not in passages[0]
    (mget_target,) = [t for m, t, _, _ in cluster.requests if t.startswith(f"/{NAME}/_mget")]
    assert "_source_excludes=embedding" in mget_target


def test_every_mode_ranks_alike_over_elasticsearch_and_embedded(loaded):
    """A cluster that answers BM25 and kNN as the embedded index does gives the same ranking:
    what the backend adds (ids as keys, vectors from hits, kNN scores) loses nothing."""
    workdir, cluster, _ = loaded
    embedded = EmbeddedIndex(workdir)
    row_of = {pid: row for row, pid in enumerate(embedded.passages.column("passage_id")
                                                  .to_pylist())}
    docs = cluster.indices[cluster.aliases[NAME][0]]

    def answer(body):
        if "knn" in body:
            found = embedded.dense(np.asarray(body["knn"]["query_vector"], np.float32),
                                   body["knn"]["k"])
            scores = [(1 + s) / 2 for _, s in found]
        else:
            query, within = body["query"], None
            if "must" in query.get("bool", {}):  # filtered to candidate ids
                (ids_filter,) = query["bool"]["filter"]
                within = [row_of[pid] for pid in ids_filter["ids"]["values"]]
                query = query["bool"]["must"][0]
            found = embedded.bm25(query["multi_match"]["query"], body["size"], within=within)
            scores = [s for _, s in found]
        ids = embedded.passages.column("passage_id").to_pylist()
        return {"hits": {"hits": [{"_id": ids[row], "_score": score,
                                   "fields": {"embedding": docs[ids[row]]["embedding"]}}
                                  for (row, _), score in zip(found, scores)]}}

    cluster.search_answer = answer
    es_index = ElasticsearchIndex(cluster.client(), NAME)
    over_es = Searcher(workdir, index=es_index)
    over_embedded = Searcher(workdir)
    query = "How do ice cores preserve ancient air bubbles?"
    words, vector = query_words(query), over_embedded.embed([query])[0]  # one model load
    for mode in MODES:
        es_hits = over_es.rank(words, vector, mode=mode, depth=5, screening_top_k=100)
        em_hits = over_embedded.rank(words, vector, mode=mode, depth=5, screening_top_k=100)
        assert [row_of[h.key] for h in es_hits] == [h.key for h in em_hits], mode
        assert [h.score for h in es_hits] == pytest.approx([h.score for h in em_hits], abs=1e-3)
    assert es_index.passages_for([es_hits[0].key]) == embedded.passages_for([em_hits[0].key])


def test_a_missing_index_says_how_to_build_it():
    cluster = FakeCluster()
    with pytest.raises(Exception, match="has no index passages: run `infer-corpus index"):
        ElasticsearchIndex(cluster.client(), NAME)


def test_topics_are_read_page_by_page_from_a_composite_terms_aggregation(loaded, monkeypatch):
    _, cluster, _ = loaded
    index = ElasticsearchIndex(cluster.client(), NAME)
    stored = ["", "climate-change", "covid-19", "geoarchives"]  # "": a passage with no topic

    def answer(body):
        composite = body["aggs"]["topics"]["composite"]
        start = stored.index(composite["after"]["topic"]) + 1 if "after" in composite else 0
        page = stored[start : start + composite["size"]]
        topics = {"buckets": [{"key": {"topic": topic}, "doc_count": 3} for topic in page]}
        if page:
            topics["after_key"] = {"topic": page[-1]}
        return {"hits": {"hits": []}, "aggregations": {"topics": topics}}

    cluster.search_answer = answer
    monkeypatch.setattr(elasticsearch, "TOPICS_PER_PAGE", 2)
    assert index.topics() == ["climate-change", "covid-19", "geoarchives"]
    first, *others = cluster.calls("POST", f"/{NAME}/_search")[-3:]
    assert first == {"size": 0, "track_total_hits": False, "aggs": {"topics": {"composite": {
        "size": 2, "sources": [{"topic": {"terms": {"field": "topic"}}}]}}}}
    assert [body["aggs"]["topics"]["composite"]["after"] for body in others] == [
        {"topic": "climate-change"}, {"topic": "geoarchives"}]


# --- osmem-server: a real HTTP server speaking the OpenSearch API ---------------------------

class OsmemNode(Urllib3HttpNode):
    """Speaks osmem-server's dialect of the API: sends `application/json` instead of the
    client's versioned media types (an OpenSearch-API server rejects those with 406), and reads
    the vectors it returns in a hit's `fields` as a string ("[0.1 0.2 ...]") as the list of
    numbers Elasticsearch returns. Keeps the body of every search request in `searches`."""

    searches: list[dict[str, Any]] = []

    def perform_request(self, method, target, body=None, headers=None, **kwargs):
        headers = headers.copy() if headers else HttpHeaders()
        for name in ("accept", "content-type"):
            if name in headers:
                headers[name] = re.sub(r"vnd\.elasticsearch\+([\w-]+);.*", r"\1", headers[name])
        if target.split("?")[0].endswith("/_search"):
            OsmemNode.searches.append(json.loads(body))
        response = super().perform_request(method, target, body=body, headers=headers, **kwargs)
        if b'"fields"' not in response.body:
            return response
        answer = json.loads(response.body)
        for hit in answer["hits"]["hits"]:
            vector = hit.get("fields", {}).get("embedding")
            if vector and isinstance(vector[0], str):
                hit["fields"]["embedding"] = [float(x) for x in vector[0].strip("[]").split()]
        return NodeApiResponse(response.meta, json.dumps(answer).encode())


KNN_VECTOR = {"type": "knn_vector", "dimension": 384,
              "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene"}}


@pytest.fixture(scope="module")
def osmem():
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False)
    yield server
    server.close()


def test_osmem_rejects_the_versioned_media_type_and_accepts_plain_json(osmem):
    with pytest.raises(ElasticsearchRefused, match="does not speak the API of this client"):
        _create_probe(connect(osmem.url), osmem.url)
    _create_probe(connect(osmem.url, node_class=OsmemNode), osmem.url)


def _create_probe(client: Elasticsearch, url: str) -> None:
    from retrieval.elasticsearch import _answers

    with _answers(url, "creating an index"):
        client.indices.create(index="probe", settings={"index": {"refresh_interval": "-1"}})
        client.indices.delete(index="probe")


@pytest.fixture(scope="module")
def osmem_loaded(osmem, demo_run):
    workdir = Workdir(demo_run[0])
    client = connect(osmem.url, node_class=OsmemNode)
    client.indices.create(index=f"{NAME}-stale")
    client.indices.update_aliases(actions=[{"add": {"index": f"{NAME}-stale", "alias": NAME}}])
    summary = load_elasticsearch(workdir, client, NAME, url=osmem.url, chunk_size=20,
                                 vector_mapping=KNN_VECTOR)
    return workdir, client, summary


def test_osmem_bulk_load_swaps_the_alias_and_is_idempotent(osmem_loaded):
    workdir, client, summary = osmem_loaded
    concrete = summary.path.split(" -> ")[1]
    assert summary.built and list(client.indices.get_alias(name=NAME).body) == [concrete]
    assert not client.indices.exists(index=f"{NAME}-stale")
    assert client.count(index=NAME)["count"] == len(passage_ids(workdir))
    ids = [h["_id"] for h in client.search(index=NAME, size=1000, source=False)["hits"]["hits"]]
    assert sorted(ids) == sorted(passage_ids(workdir))
    mappings = client.indices.get_mapping(index=concrete)[concrete]["mappings"]
    mapping = mappings["properties"]
    assert mapping["text"]["analyzer"] == "english" and mapping["topic"]["type"] == "keyword"
    # the model is recorded in the mapping's _meta, and read back through the alias
    assert mappings["_meta"]["model"] == EmbeddedIndex(workdir).model_record()
    assert ElasticsearchIndex(client, NAME).model_record()["dimension"] == 384
    again = load_elasticsearch(workdir, client, NAME, vector_mapping=KNN_VECTOR)
    assert not again.built and again.path.endswith(concrete)
    assert client.count(index=NAME)["count"] == len(ids)


def test_osmem_bm25_search_with_topic_filter(osmem_loaded):
    workdir, client, _ = osmem_loaded
    index = ElasticsearchIndex(client, NAME)
    assert len(index) == len(passage_ids(workdir))
    hits = index.bm25("ice cores ancient air bubbles", 5)
    assert len(hits) == 5 and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    passages = index.passages_for([k for k, _ in hits])
    assert passages[0]["topic"] == "geoarchives"
    embedded = EmbeddedIndex(workdir)
    rows = {p: r for r, p in enumerate(embedded.passages.column("passage_id").to_pylist())}
    assert passages == embedded.passages_for([rows[k] for k, _ in hits])  # the same fields
    filtered = index.bm25("rock formation", 10, topic="critical-minerals")
    assert filtered and {p["topic"] for p in index.passages_for([k for k, _ in filtered])} \
        == {"critical-minerals"}
    assert index.bm25("rock formation", 10, topic="no-such-topic") == []


def test_osmem_topics_are_the_embedded_index_topics(osmem_loaded):
    workdir, client, _ = osmem_loaded
    topics = ElasticsearchIndex(client, NAME).topics()
    assert topics == EmbeddedIndex(workdir).topics() and len(topics) == 5


@pytest.mark.parametrize("backend", ["embedded", "elasticsearch"])
def test_one_searcher_serves_threads_at_once_as_it_serves_one_query(backend, request):
    """8 threads share one Searcher, as in qa-api: each gets what its query gets alone, and
    over Elasticsearch no candidate's vector is fetched again (nothing passes between calls)."""
    from concurrent.futures import ThreadPoolExecutor

    if backend == "embedded":
        workdir = Workdir(request.getfixturevalue("demo_run")[0])
        searcher, modes = Searcher(workdir), MODES
    else:
        workdir, client, _ = request.getfixturevalue("osmem_loaded")
        searcher = Searcher(workdir, index=ElasticsearchIndex(client, NAME))
        modes = tuple(m for m in MODES if m not in ("dense", "rrf"))  # osmem has no kNN search
    queries = ["ice cores ancient air bubbles", "lithium brines", "tree rings climate",
               "rock formation", "vaccination protection", "sea level rise", "rare earth",
               "wastewater surveillance"]
    jobs = [(query, mode) for query in queries for mode in modes]

    def search(job: tuple[str, str]) -> list[dict]:
        return [hit.to_dict() for hit in searcher.search(job[0], mode=job[1], top_k=5)]

    alone = [search(job) for job in jobs]
    assert all(alone)
    before = len(OsmemNode.searches)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(search, jobs * 2)) == alone * 2
    fetched = [body for body in OsmemNode.searches[before:] if "ids" in body.get("query", {})]
    assert not fetched


# --- the command line ------------------------------------------------------------------------

def _serve(status: int, headers: dict[str, str], body: dict) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"content-type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_errors_are_one_line(demo_run):
    workdir = str(demo_run[0])
    url = f"http://127.0.0.1:{_closed_port()}"
    for args in (["index"], ["search", "lithium"]):
        proc = run_cli(*args, "--workdir", workdir, "--backend", "elasticsearch",
                       "--es-url", url, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
        assert f"cannot reach Elasticsearch at {url}" in proc.stderr

    unauthorized = _serve(401, {"x-elastic-product": "Elasticsearch"}, {
        "error": {"type": "security_exception", "reason": "missing authentication credentials"},
        "status": 401})
    not_elasticsearch = _serve(200, {}, {"hello": "world"})
    try:
        for server, message in ((unauthorized, "refused the credentials (401): set the API key "
                                               "in $ES_API_KEY"),
                                (not_elasticsearch, "is not an Elasticsearch server")):
            proc = run_cli("index", "--workdir", workdir, "--backend", "elasticsearch",
                           "--es-url", f"http://user:secret@127.0.0.1:{server.server_port}",
                           check=False)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr
            assert proc.stderr.strip().count("\n") == 0 and "secret" not in proc.stderr
    finally:
        unauthorized.shutdown()
        not_elasticsearch.shutdown()

    proc = run_cli("search", "--workdir", workdir, "--backend", "elasticsearch", "x",
                   check=False)
    assert proc.returncode == 2 and "needs a URL: give --es-url" in proc.stderr


@pytest.mark.parametrize("override, message", [
    ("index.backend=solr", "index.backend must be embedded or elasticsearch"),
    ("index.url=localhost:9200", "index.url must be an http"),
    ("index.name=Passages", "index.name must be lower case"),
    ("index.password=x", "unknown config key index.password"),
])
def test_index_config_is_checked(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_eval_loads_the_chosen_backend(tmp_path):
    collection = tmp_path / "tiny"
    collection.mkdir()
    write_jsonl(collection / "corpus.jsonl", [
        {"_id": "d1", "title": "Ice cores", "text": "Air bubbles in polar ice keep old air."},
        {"_id": "d2", "title": "Tree rings", "text": "Ring widths record past droughts."}])
    write_jsonl(collection / "queries.jsonl", [{"_id": "q1", "text": "old air in ice"}])
    (collection / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    url = f"http://127.0.0.1:{_closed_port()}"
    proc = run_cli("eval", "--collection", str(collection), "--workdir", str(tmp_path / "w"),
                   "--set", "predictions.kind=none", "--backend", "elasticsearch",
                   "--es-url", url, check=False)
    assert proc.returncode == 1 and f"cannot reach Elasticsearch at {url}" in proc.stderr
    assert "Traceback" not in proc.stderr
