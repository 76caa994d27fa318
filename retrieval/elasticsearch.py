"""The Elasticsearch backend: the workdir's passages, BM25 and embeddings in a cluster.

Loading (`load_elasticsearch`): an index template gives every index named `NAME-*` the mapping
(English-analysed title and text; keyword ids, topic and year; the embedding as a `dense_vector`
of the model's dimension, indexed for kNN by cosine). A build bulk-loads a new concrete index
`NAME-KEY` (KEY names the results it holds; its mapping's `_meta.model` records the model that
embedded them, see `index_model`), refreshes it, checks its document count, then moves
the alias NAME to it with one `_aliases` call (remove + add, atomic) and deletes the index it
replaced. Searches go through the alias, so they never see a half-built index; loading the same
results again is a no-op; documents are keyed by passage id, so a retried bulk request rewrites
rather than duplicates.

Reading (`ElasticsearchIndex`): the `PassageIndex` of `retrieval.index`, keyed by passage id.
The BM25 screening request also fetches the candidates' embeddings, so re-ranking them costs
no second request (`candidates`); dense search is an approximate kNN search with the topic as a
filter; the topics come from an aggregation.

The 9.x client speaks to Elasticsearch 9 and the 8.x client to Elasticsearch 8 (see
docs/elasticsearch.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow.parquet as pq
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TlsError
from elasticsearch import (
    ApiError,
    AuthenticationException,
    AuthorizationException,
    Elasticsearch,
    UnsupportedProductError,
)
from elasticsearch import __versionstr__ as CLIENT_VERSION
from elasticsearch.helpers import streaming_bulk
from tqdm import tqdm

from inference.errors import Failure, UsageError
from inference.manifest import Manifest
from inference.workdir import Workdir, WorkdirError

from .embedded import SHARD_COLUMNS, IndexSummary, finished_results, read_shards
from .index import Candidates
from .index_model import model_record

VECTOR_FIELD = "embedding"
BM25_FIELDS = ["title", "text"]
KNN_CANDIDATES_PER_HIT = 10  # approximate kNN looks at this many candidates per hit wanted
RETRY_STATUSES = (429, 502, 503, 504)
TOPICS_PER_PAGE = 1000  # topic buckets per aggregation request
_ERRNO = re.compile(r"\[Errno -?\d+\][^)'\"]*")


class ElasticsearchUnavailable(Failure):
    """The cluster could not be reached or stayed overloaded: trying again later can help."""


class ElasticsearchRefused(UsageError):
    """The cluster refused what was asked (credentials, version, mapping): a setting must change."""


def redact(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def connect(url: str, api_key_env: str | None = None, **options: Any) -> Elasticsearch:
    """A client for `url`; the API key, if any, comes from the environment variable named
    `api_key_env` (a key never sits in a config file). `options` go to `Elasticsearch(...)`."""
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)  # retry notes with tracebacks
    api_key = os.environ.get(api_key_env) if api_key_env else None
    options.setdefault("request_timeout", 60)
    options.setdefault("max_retries", 2)
    options.setdefault("retry_on_timeout", True)
    return Elasticsearch(url, api_key=api_key or None, **options)


def _reason(exc: ApiError) -> str:
    error = exc.body.get("error") if isinstance(exc.body, dict) else exc.body
    if isinstance(error, dict):
        causes = error.get("root_cause") or [error]
        return str(causes[0].get("reason") or causes[0].get("type") or error)
    return str(error or exc.message)


@contextmanager
def _answers(url: str, doing: str, api_key_env: str | None = None) -> Iterator[None]:
    """Turn the client's exceptions into one-line errors that say what to do."""
    where = f"Elasticsearch at {redact(url)}"
    try:
        yield
    except (TransportConnectionError, ConnectionTimeout) as exc:
        if isinstance(exc, TlsError):
            raise ElasticsearchRefused(
                f"{where}: TLS failed while {doing}: {exc.message}") from None
        found = _ERRNO.search(str(exc))
        detail = found.group(0).strip() if found else type(exc).__name__
        raise ElasticsearchUnavailable(f"cannot reach {where} while {doing} ({detail})") from None
    except AuthenticationException:
        hint = f"set the API key in ${api_key_env}" if api_key_env else "check the credentials"
        raise ElasticsearchRefused(f"{where} refused the credentials (401): {hint}") from None
    except AuthorizationException as exc:
        raise ElasticsearchRefused(f"{where} does not allow {doing} (403): {_reason(exc)}") \
            from None
    except UnsupportedProductError:
        raise ElasticsearchRefused(f"{redact(url)} is not an Elasticsearch server") from None
    except ApiError as exc:
        reason = _reason(exc)
        if "compatible-with" in reason or "media_type_header" in str(exc.body):
            raise ElasticsearchRefused(
                f"{where} does not speak the API of this client ({CLIENT_VERSION}): install the "
                "client of the server's major version, e.g. pip install 'elasticsearch>=8,<9' "
                f"for Elasticsearch 8 ({reason})") from None
        error = ElasticsearchUnavailable if exc.meta.status in RETRY_STATUSES else \
            ElasticsearchRefused
        raise error(f"{where} answered {exc.meta.status} while {doing}: {reason}") from None


def index_template(name: str, dims: int | None,
                   vector_mapping: dict[str, Any] | None = None) -> dict[str, Any]:
    """The composable index template for `NAME-*`. Strict: a field the mapping does not know
    fails the bulk request instead of being guessed."""
    # int8_hnsw named, not left to the server: Elasticsearch 9.1+ would pick bbq_hnsw, whose
    # recall and memory differ from what docs/scale.md sizes
    vector = vector_mapping or {"type": "dense_vector", "index": True, "similarity": "cosine",
                                "index_options": {"type": "int8_hnsw"},
                                **({"dims": dims} if dims else {})}
    return {
        "index_patterns": [f"{name}-*"],
        "priority": 100,
        "template": {"mappings": {"dynamic": "strict", "properties": {
            "passage_id": {"type": "keyword"},
            "article_id": {"type": "keyword"},
            "title": {"type": "text", "analyzer": "english"},
            "text": {"type": "text", "analyzer": "english"},
            "authors": {"type": "keyword"},
            "year": {"type": "keyword"},
            "url": {"type": "keyword", "index": False},
            "topic": {"type": "keyword"},
            VECTOR_FIELD: vector,
        }}},
        "_meta": {"description": "infer-corpus passages: title, text, fields and embeddings"},
    }


def _alias_holders(client: Elasticsearch, name: str) -> list[str]:
    if not client.indices.exists_alias(name=name):
        return []
    return sorted(client.indices.get_alias(name=name).body)


def _documents(concrete: str, workdir: Workdir,
               manifest: Manifest) -> Iterator[list[dict[str, Any]]]:
    """Bulk index actions, one list per shard; `_id` is the passage id."""
    for table, matrix in read_shards(workdir, manifest):
        vectors = np.round(matrix.astype(np.float64), 6).tolist()  # float16 holds ~4 digits
        rows = table.to_pylist()
        yield [{"_index": concrete, "_id": row["passage_id"],
                "_source": {**row, VECTOR_FIELD: vector}} for row, vector in zip(rows, vectors)]


def load_elasticsearch(workdir: Workdir, client: Elasticsearch, name: str, *, url: str = "",
                       api_key_env: str | None = None, retries: int = 5,
                       chunk_size: int = 500, backoff: float = 1.0, max_backoff: float = 60.0,
                       vector_mapping: dict[str, Any] | None = None,
                       shards: list[int] | None = None, swap: bool = True,
                       progress: bool | None = None) -> IndexSummary:
    """Load every passage of a finished workdir into index `NAME-KEY` and point alias NAME at it;
    a no-op when the alias already holds these results. `vector_mapping` replaces the embedding
    field's mapping, for servers whose vector type differs. `progress`: a bar of the passages
    loaded (default: on a terminal). A whole load holds the workdir's
    lock, so two never collide; the jobs of a parallel load (below) share the workdir by design.

    A parallel load (one job per group of shards): each job loads its `shards` (which need
    current results; the others need not be there) with `swap=False`, creating NAME-KEY if no
    other job has yet and never deleting it; then one step with `shards=[]` and `swap=True`
    checks the count and moves the alias."""
    with workdir.lock(existing=True) if shards is None else nullcontext():
        return _load(workdir, client, name, url=url, api_key_env=api_key_env, retries=retries,
                     chunk_size=chunk_size, backoff=backoff, max_backoff=max_backoff,
                     vector_mapping=vector_mapping, shards=shards, swap=swap,
                     progress=progress)


def _load(workdir: Workdir, client: Elasticsearch, name: str, *, url: str,
          api_key_env: str | None, retries: int, chunk_size: int, backoff: float,
          max_backoff: float, vector_mapping: dict[str, Any] | None,
          shards: list[int] | None, swap: bool, progress: bool | None) -> IndexSummary:
    started = time.perf_counter()
    url = url or "the configured URL"
    if swap:
        manifest, key = finished_results(workdir)
    else:
        manifest = workdir.manifest().require_partitioned()
        key = manifest.result_key()
    entries = manifest.shards if shards is None else [manifest.shard(n) for n in shards]
    missing = [e.shard for e in entries if not workdir.result_is_current(e, key)]
    if missing:
        raise WorkdirError(f"{workdir.root}: shards {missing[:10]} have no current result")
    first = (entries or manifest.shards or [None])[0]
    dims = (pq.read_schema(workdir.result_path(first.shard)).field("embedding").type.list_size
            if first else None)
    template = index_template(name, dims, vector_mapping)
    meta = {"model": model_record(manifest.config.model, dims)}
    digest = json.dumps([key, template, meta], sort_keys=True).encode()
    concrete = f"{name}-{hashlib.sha256(digest).hexdigest()[:16]}"
    where = f"{redact(url)} {name} -> {concrete}"
    loaded = sum(e.rows for e in entries)

    def call(doing: str, request: Callable[[], Any]) -> Any:
        with _answers(url, doing, api_key_env):
            return request()

    holders = call(f"reading alias {name}", lambda: _alias_holders(client, name))
    if holders == [concrete]:
        return IndexSummary(loaded, False, where, time.perf_counter() - started)
    exists = call("checking for the new index", lambda: client.indices.exists(index=concrete))
    if shards is None and exists:  # one writer: an earlier build that did not finish
        call("removing an unfinished build", lambda: client.indices.delete(index=concrete))
        exists = False
    if entries:
        call("writing the index template", lambda: client.indices.put_index_template(
            name=name, **template))
        if not exists:
            _create(client, concrete, meta, url, api_key_env)
    elif not exists:
        raise WorkdirError(f"{redact(url)} has no index {concrete} to point {name} at: load "
                           "the shards first (infer-corpus index --shards A-B --no-swap)")
    with tqdm(total=loaded, desc="index", unit=" passages", mininterval=0.5,
              disable=None if progress is None else not progress) as bar:
        for actions in _documents(concrete, workdir, manifest.with_shards(entries)):
            _bulk(client, actions, url=url, api_key_env=api_key_env, retries=retries,
                  chunk_size=chunk_size, backoff=backoff, max_backoff=max_backoff)
            bar.update(len(actions))
    if not swap:
        return IndexSummary(loaded, True, where, time.perf_counter() - started)
    total = manifest.passages
    call("refreshing the new index", lambda: (
        client.indices.put_settings(index=concrete, settings={"index": {"refresh_interval": None}}),
        client.indices.refresh(index=concrete)))
    count = call("counting the new index", lambda: client.count(index=concrete)["count"])
    if count != total:
        raise ElasticsearchUnavailable(f"{concrete} holds {count:,} passages, not {total:,}; "
                                       "run `infer-corpus index` again")
    actions = [{"remove": {"index": old, "alias": name}} for old in holders]
    actions.append({"add": {"index": concrete, "alias": name}})
    call(f"moving alias {name}", lambda: client.indices.update_aliases(actions=actions))
    for old in holders:
        if old != concrete:
            call(f"deleting the replaced index {old}", lambda old=old: client.indices.delete(
                index=old, ignore_unavailable=True))
    return IndexSummary(total, True, where, time.perf_counter() - started)


def _create(client: Elasticsearch, concrete: str, meta: dict[str, Any], url: str,
            api_key_env: str | None) -> None:
    """Create the new index, loading (refresh off); another load job creating it at the same
    moment is not an error."""
    try:
        with _answers(url, f"creating index {concrete}", api_key_env):
            client.indices.create(index=concrete, settings={"index": {"refresh_interval": "-1"}},
                                  mappings={"_meta": meta})
    except ElasticsearchRefused:
        with _answers(url, f"checking index {concrete}", api_key_env):
            if not client.indices.exists(index=concrete):
                raise


def _bulk(client: Elasticsearch, actions: list[dict[str, Any]], *, url: str,
          api_key_env: str | None, retries: int, chunk_size: int, backoff: float,
          max_backoff: float) -> None:
    """One shard's documents. 429 answers (whole request or single documents) are retried by the
    helper with exponential backoff; a lost connection or overloaded node resends the shard
    after a backoff (harmless: documents are keyed by passage id)."""
    for attempt in range(retries + 1):
        try:
            with _answers(url, "bulk loading passages", api_key_env):
                failed = [info for ok, info in streaming_bulk(
                    client, actions, chunk_size=chunk_size, max_retries=retries,
                    initial_backoff=backoff, max_backoff=max_backoff, raise_on_error=False)
                    if not ok]
            break
        except ElasticsearchUnavailable:
            if attempt == retries:
                raise
            time.sleep(min(max_backoff, backoff * 2**attempt))
    if failed:
        first = next(iter(failed[0].values()))
        raise ElasticsearchRefused(
            f"Elasticsearch at {redact(url)} rejected {len(failed):,} passages, e.g. "
            f"{first.get('_id')}: {first.get('error', {}).get('reason', first.get('error'))}")


class ElasticsearchIndex:
    """Read side over alias `name`: BM25 candidates with their embeddings in one request, kNN
    dense search, stored fields by passage id, topics by aggregation."""

    def __init__(self, client: Elasticsearch, name: str, *, url: str = "",
                 api_key_env: str | None = None) -> None:
        self.client, self.name = client, name
        self.url, self.api_key_env = url or "the configured URL", api_key_env
        with self._answers(f"opening index {name}"):
            if not _alias_holders(client, name):
                raise WorkdirError(f"Elasticsearch at {redact(self.url)} has no index {name}: "
                                   "run `infer-corpus index --backend elasticsearch` first")

    def _answers(self, doing: str):
        return _answers(self.url, doing, self.api_key_env)

    def model_record(self) -> dict[str, Any] | None:
        """The model that embedded the passages: the index mapping's `_meta.model`."""
        with self._answers(f"reading the mapping of {self.name}"):
            mappings = self.client.indices.get_mapping(index=self.name).body
        (mapping,) = mappings.values() or [{}]  # the alias names one index
        return (mapping.get("mappings", {}).get("_meta") or {}).get("model")

    def __len__(self) -> int:
        with self._answers("counting passages"):
            return int(self.client.count(index=self.name)["count"])

    @staticmethod
    def _filtered(query: dict[str, Any], topic: str | None,
                  within: list[str] | None = None) -> dict[str, Any]:
        filters: list[dict[str, Any]] = [{"term": {"topic": topic}}] if topic else []
        if within is not None:
            filters.append({"ids": {"values": list(within)}})
        return {"bool": {"must": [query], "filter": filters}} if filters else query

    def _bm25_hits(self, words: str, limit: int, topic: str | None,
                   within: list[str] | None = None, **options: Any) -> list[dict[str, Any]]:
        with self._answers("searching"):
            return self.client.search(index=self.name,
                                      query=self._filtered(_match(words), topic, within),
                                      size=limit, source=False, track_total_hits=False,
                                      **options)["hits"]["hits"]

    def bm25(self, words: str, limit: int, topic: str | None = None,
             within: list[str] | None = None) -> list[tuple[str, float]]:
        """(passage id, score) of the best `limit` passages for already-sanitised query words;
        only passages of `topic` and among the ids `within`, when given."""
        return [(hit["_id"], float(hit["_score"]))
                for hit in self._bm25_hits(words, limit, topic, within)]

    def candidates(self, words: str, limit: int, topic: str | None = None) -> Candidates:
        """What `bm25` finds, with the passages' (unit) embeddings as float32: they come back
        in the same response; any the response lacks is fetched by id."""
        hits = self._bm25_hits(words, limit, topic, fields=[VECTOR_FIELD])
        found = [(hit["_id"], float(hit["_score"])) for hit in hits]
        known = _vectors_of(hits)
        missing = [key for key, _ in found if key not in known]
        if missing:
            known.update(self._fetch_vectors(missing))
        vectors = np.stack([known[key] for key, _ in found]) if found else np.zeros((0, 0))
        return Candidates.of(found, vectors)

    def _fetch_vectors(self, keys: list[str]) -> dict[str, np.ndarray]:
        with self._answers("fetching embeddings"):
            hits = self.client.search(index=self.name, query={"ids": {"values": keys}},
                                      size=len(keys), source=False,
                                      fields=[VECTOR_FIELD])["hits"]["hits"]
        found = _vectors_of(hits)
        lost = [key for key in keys if key not in found]
        if lost:
            raise ElasticsearchRefused(f"Elasticsearch at {redact(self.url)} returned no "
                                       f"embedding for passage {lost[0]}")
        return found

    def topics(self) -> list[str]:
        """The passages' topics, collected page by page with a composite terms aggregation
        (a plain terms aggregation stops at its `size`)."""
        found: list[str] = []
        after: dict[str, Any] | None = None
        while True:
            composite: dict[str, Any] = {"size": TOPICS_PER_PAGE,
                                         "sources": [{"topic": {"terms": {"field": "topic"}}}]}
            if after:
                composite["after"] = after
            with self._answers("listing topics"):
                page = self.client.search(index=self.name, size=0, track_total_hits=False,
                                          aggs={"topics": {"composite": composite}})
            result = page["aggregations"]["topics"]
            found += [bucket["key"]["topic"] for bucket in result["buckets"]]
            after = result.get("after_key")
            if not result["buckets"] or not after:
                return sorted(topic for topic in found if topic)

    def dense(self, vector: np.ndarray, limit: int,
              topic: str | None = None) -> list[tuple[str, float]]:
        """Approximate nearest passages by cosine (kNN on the indexed vectors)."""
        knn: dict[str, Any] = {
            "field": VECTOR_FIELD, "query_vector": np.asarray(vector, dtype=np.float64).tolist(),
            "k": limit, "num_candidates": min(10_000, max(limit, KNN_CANDIDATES_PER_HIT * limit))}
        if topic:
            knn["filter"] = {"term": {"topic": topic}}
        with self._answers("searching"):
            hits = self.client.search(index=self.name, knn=knn, size=limit,
                                      source=False)["hits"]["hits"]
        return [(hit["_id"], 2.0 * float(hit["_score"]) - 1.0) for hit in hits]  # (1+cos)/2

    def passages_for(self, keys: list[str]) -> list[dict[str, Any]]:
        """The stored fields of the given passages, in order."""
        if not keys:
            return []
        with self._answers("fetching passages"):
            docs = self.client.mget(index=self.name, ids=keys,
                                    source_excludes=[VECTOR_FIELD])["docs"]
        gone = [doc["_id"] for doc in docs if not doc.get("found")]
        if gone:
            raise ElasticsearchUnavailable(f"passage {gone[0]} is no longer in index {self.name} "
                                           "(it was rebuilt during the search): search again")
        return [{column: doc["_source"].get(column) for column in SHARD_COLUMNS} for doc in docs]


def _match(text: str) -> dict[str, Any]:
    """Words matched in title and text, field scores added (as the embedded index scores)."""
    return {"multi_match": {"query": text, "type": "most_fields", "fields": BM25_FIELDS}}


def _vectors_of(hits: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Embeddings returned with search hits; a value that is not numbers is left out (and
    fetched again by `candidates`, which says so if it cannot get it)."""
    out = {}
    for hit in hits:
        try:
            out[hit["_id"]] = np.asarray(hit["fields"][VECTOR_FIELD], dtype=np.float32).ravel()
        except (KeyError, TypeError, ValueError):
            continue
    return out
