"""The embedded index and search modes, on the demo run; quality figures on Cranfield."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import last_json, run_cli

from inference.workdir import Workdir
from retrieval import MODES, QueryError, Searcher, build_index, embedded
from retrieval.search import feedback_terms, query_words, regularise


@pytest.fixture(scope="module")
def searcher(demo_run):
    workdir, _ = demo_run
    return Searcher(Workdir(workdir))


def test_run_ends_by_indexing_and_indexing_again_is_a_no_op(demo_run):
    workdir, summary = demo_run
    assert summary["indexed"] == summary["passages"]
    again = build_index(Workdir(workdir))
    assert not again.built and again.passages == summary["passages"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_finds_the_article_about_the_question(searcher, mode):
    hits = searcher.search("How do ice cores preserve ancient air bubbles?", mode=mode, top_k=5)
    assert 1 <= len(hits) <= 5
    assert hits[0].passage["topic"] == "geoarchives"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    first = hits[0].to_dict()
    for key in ("title", "authors", "year", "url", "text", "passage_id", "score"):
        assert key in first
    assert first["url"].startswith("https://example.org/demo/")


def test_topic_filter_keeps_to_the_topic(searcher):
    hits = searcher.search("rock formation", topic="critical-minerals", top_k=5)
    assert hits and {h.passage["topic"] for h in hits} == {"critical-minerals"}
    assert searcher.search("rock formation", topic="no-such-topic") == []


@pytest.mark.parametrize("query", ['title:"wing" AND (NOT', "+vaccine -mask ~2 ^3 [a TO b]",
                                   "OR", "ünïcödé Dolomites?!", "x" * 1999])
def test_query_syntax_characters_never_raise(searcher, query):
    searcher.search(query, mode="bm25")


@pytest.mark.parametrize("query, message", [("", "empty"), ("   ", "empty"),
                                            ("?!*:", "no searchable words"),
                                            ("a" * 2001, "limit 2,000")])
def test_unusable_queries_get_a_clear_error(searcher, query, message):
    with pytest.raises(QueryError, match=message):
        searcher.search(query)


def test_bad_settings_get_a_clear_error(searcher):
    with pytest.raises(QueryError, match="unknown mode"):
        searcher.search("lithium", mode="magic")
    with pytest.raises(QueryError, match="between 1 and"):
        searcher.search("lithium", top_k=0)
    with pytest.raises(QueryError, match="at least top_k"):
        searcher.search("lithium", top_k=10, screening_top_k=5)


def test_regularising_lifts_a_candidate_whose_neighbours_score_well():
    # 0 and 1 are alike and both score well; 2 scores a little higher than 1 alone
    vectors = np.array([[1.0, 0.0, 0.0], [0.96, 0.28, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    scores = np.array([1.0, 0.5, 0.6], dtype=np.float32)
    smoothed = regularise(scores, vectors)
    assert smoothed[1] > smoothed[2]  # 1 borrows from 0, 2 has no close neighbour
    one = np.array([0.7], dtype=np.float32)
    assert regularise(one, vectors[:1]) == one  # nothing to blend with


def test_query_words_drop_function_words_unless_nothing_else_is_left():
    assert query_words("What are the effects of heat on the wing?") == "effects heat wing"
    assert query_words("To be or not to be") == "to be or not to be"


def test_feedback_terms_are_the_top_passages_frequent_content_words():
    passages = [{"title": "Ice cores", "text": "Bubbles of ancient air are trapped in ice; "
                 "the bubbles record the air of past climates."},
                {"title": None, "text": "Ice sheets hold bubbles of air for a long time."}]
    terms = feedback_terms(passages, "ice cores", limit=3).split()
    assert terms[:2] == ["bubbles", "air"]  # the query's own words are not repeated
    assert not {"ice", "cores", "the", "of", "for"} & set(terms)


def test_search_command(demo_run):
    workdir, _ = demo_run
    out = last_json(run_cli("search", "--workdir", str(workdir), "lithium brines",
                            "--top-k", "3", "--json").stdout)
    assert len(out["hits"]) == 3 and out["hits"][0]["topic"] == "critical-minerals"
    text = run_cli("search", "--workdir", str(workdir), "lithium brines").stdout
    assert " 1. " in text
    dense = run_cli("search", "--workdir", str(workdir), "lithium brines", "--mode", "dense")
    assert " 1. " in dense.stdout and "Warning" not in dense.stderr, dense.stderr
    bad = run_cli("search", "--workdir", str(workdir), "", check=False)
    assert bad.returncode == 2 and "empty" in bad.stderr


def test_eval_on_cranfield(cranfield, tmp_path):
    out = last_json(run_cli("eval", "--collection", str(cranfield), "--workdir",
                            str(tmp_path / "w"), "--json", "--set", "predictions.kind=none",
                            "--set", "model.max_seq_length=64").stdout)  # CPU time in CI
    assert out["default"] in out["modes"] and set(out["modes"]) == set(MODES)
    assert out["queries"] == 225
    # one shard: embedded in the eval's own process, which loads the model for the queries
    assert not (tmp_path / "w" / "logs" / "worker-0.log").exists()
    for scores in out["modes"].values():
        assert 0.2 < scores["ndcg@10"] < 1 and 0.5 < scores["recall@100"] <= 1
    best = max(out["modes"], key=lambda m: out["modes"][m]["ndcg@10"])
    assert out["modes"][out["default"]]["ndcg@10"] >= out["modes"][best]["ndcg@10"] - 0.01
    for mode, scores in out["per_query"].items():  # what --against compares
        assert len(scores) == 225
        assert abs(sum(scores.values()) / 225 - out["modes"][mode]["ndcg@10"]) < 1e-3


def test_eval_splits_queries_and_compares_two_runs(tmp_path):
    """--split dev|test halves the queries by their ids' hash; --against an earlier run's
    JSON gives each mode's change and a paired randomization test's p-value."""
    import json

    from infer_corpus.evaluate import in_split, paired_randomization

    ids = [f"q{i}" for i in range(400)]
    dev = {q for q in ids if in_split(q, "dev")}
    assert 160 < len(dev) < 240 and not dev & {q for q in ids if in_split(q, "test")}
    assert paired_randomization([0.5] * 30, [0.5] * 30) == 1.0
    assert paired_randomization([0.2] * 30, [0.8] * 30) < 0.001

    collection = tmp_path / "collection"
    collection.mkdir()
    topics = ["lithium brine extraction", "wing flutter in supersonic flow",
              "protein folding energy", "glacier melt and sea level"]
    with open(collection / "corpus.jsonl", "w") as corpus:
        for i in range(24):
            topic = topics[i % 4]
            corpus.write(json.dumps({"_id": f"d{i}", "title": f"{topic} study {i}",
                                     "text": f"We report on {topic}, case {i}."}) + "\n")
    with open(collection / "queries.jsonl", "w") as queries, \
            open(collection / "qrels.tsv", "w") as qrels:
        for i in range(16):
            queries.write(json.dumps({"_id": f"q{i}", "text": topics[i % 4]}) + "\n")
            for doc in range(i % 4, 24, 4):
                qrels.write(f"q{i}\td{doc}\t1\n")
    first = run_cli("eval", "--collection", str(collection), "--workdir", str(tmp_path / "a"),
                    "--split", "dev", "--set", "predictions.kind=none", "--json").stdout
    (tmp_path / "base.json").write_text(first)
    base = last_json(first)
    assert base["split"] == "dev" and base["queries"] == sum(
        in_split(f"q{i}", "dev") for i in range(16))
    again = last_json(run_cli(
        "eval", "--collection", str(collection), "--workdir", str(tmp_path / "b"), "--split",
        "dev", "--against", str(tmp_path / "base.json"), "--set", "predictions.kind=none",
        "--json").stdout)
    for row in again["against"]["modes"].values():  # the same model: no change
        assert row["change"] == 0 and row["p"] == 1.0 and row["queries"] == base["queries"]
    other = run_cli("eval", "--collection", str(collection), "--workdir", str(tmp_path / "c"),
                    "--split", "test", "--against", str(tmp_path / "base.json"),
                    "--set", "predictions.kind=none", check=False)
    assert other.returncode == 2 and "compare like with like" in other.stderr


def test_eval_rejects_a_folder_that_is_not_a_collection(tmp_path):
    proc = run_cli("eval", "--collection", str(tmp_path), "--workdir", str(tmp_path / "w"),
                   check=False)
    assert proc.returncode == 2 and "not a BEIR-layout collection" in proc.stderr


def test_a_corpus_with_no_valid_rows_gives_an_empty_searchable_index(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": 1}\nnot json\n')
    out = last_json(run_cli("run", "--input", str(src), "--workdir", str(tmp_path / "w"),
                            "--json").stdout)
    assert out["rejected"] == 2 and out["passages"] == 0 and out["indexed"] == 0
    text = run_cli("search", "--workdir", str(tmp_path / "w"), "anything").stdout
    assert "no passage matches" in text
    assert embedded.EmbeddedIndex(Workdir(tmp_path / "w")).dense(np.ones(384) / 384**0.5,
                                                                 5) == []


def test_bm25_within_scores_only_the_given_passages(searcher):
    index = searcher.index
    everything = index.bm25("ice cores air bubbles", 20)
    chosen = [key for key, _ in everything[5:12:2]]
    within = index.bm25("ice cores air bubbles", 20, within=chosen)
    assert [key for key, _ in within] == chosen  # same scores, same order, nothing else
    assert [score for _, score in within] == pytest.approx(
        [score for key, score in everything if key in chosen])
    assert index.bm25("ice cores air bubbles", 20, within=[]) == []


def test_candidates_are_the_bm25_hits_with_their_vectors(searcher):
    index, words = searcher.index, "ice cores air bubbles"
    candidates = index.candidates(words, 20, topic="geoarchives")
    assert list(zip(candidates.keys, candidates.scores.tolist())) == index.bm25(
        words, 20, topic="geoarchives")
    assert candidates.vectors.dtype == np.float32
    assert np.array_equal(candidates.vectors, index.vectors(candidates.keys).astype(np.float32))
    assert np.linalg.norm(candidates.vectors, axis=1) == pytest.approx(1.0, abs=1e-2)
    assert len(index.candidates("zzzunknownword", 5)) == 0


def test_topics_are_those_the_passages_are_indexed_under(searcher):
    assert searcher.index.topics() == ["climate-change", "covid-19", "critical-minerals",
                                       "dolomites-geology", "geoarchives"]


def test_bm25_scores_as_the_query_parser_less_terms_found_in_most_passages(searcher,
                                                                             monkeypatch):
    index = searcher.index
    everything = index.searcher.num_docs

    def parsed(text: str, limit: int) -> list:
        hits = index.searcher.search(index.index.parse_query(text, ["title", "text"]),
                                     limit).hits
        rows = index.searcher.fast_field_values("row", [address for _, address in hits])
        return [(row, score) for row, (score, _) in zip(rows, hits)]

    def same(got: list, expected: list) -> None:
        assert got and [key for key, _ in got] == [key for key, _ in expected]
        assert [score for _, score in got] == pytest.approx([score for _, score in expected])

    words = "ice core air core"  # words the English stemmer leaves as they are
    same(index.bm25(words, 50), parsed(words, 50))
    frequency = {(field, word): index.searcher.doc_freq(field, word)
                 for field in ("title", "text") for word in ("ice", "core", "air")}
    *_, second, most = sorted(frequency.values())
    assert most > second > 0
    # the term in the most passages is left out of a search the others fill...
    monkeypatch.setattr(embedded, "COMMON_TERM_SHARE", second / everything)
    kept = " ".join(f"{field}:{word}" for (field, word), n in frequency.items() if 0 < n < most)
    same(index.bm25(words, 3), parsed(kept, 3))
    # ...but kept when they find fewer passages than asked for, and in a query of common
    # terms only
    same(index.bm25(words, everything), parsed(words, everything))
    monkeypatch.setattr(embedded, "COMMON_TERM_SHARE", 0.0)
    same(index.bm25(words, 50), parsed(words, 50))
    assert index.bm25("zzzunknownword", 5) == []


def test_threads_searching_at_once_get_what_one_at_a_time_gets(searcher):
    from concurrent.futures import ThreadPoolExecutor

    queries = ["ice cores air bubbles", "lithium brines", "tree rings climate",
               "deep ocean temperature", "greenhouse gas"] * 4
    modes = [MODES[i % len(MODES)] for i in range(len(queries))]

    def keys(query: str, mode: str) -> list:
        return [hit.key for hit in searcher.search(query, mode=mode)]

    one_at_a_time = [keys(q, m) for q, m in zip(queries, modes)]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(keys, queries, modes)) == one_at_a_time



def test_dense_is_the_exact_float32_scan_though_half_precision_screens_it(demo_run,
                                                                          monkeypatch):
    """Half-precision scores can rank a passage below one whose exact cosine is lower; those
    near the cut are scored again in float32, so the result is the exact scan's. Passages
    whose cosines lie about where float16 rounding turns (0.5 + 2^-12) give many such cases,
    and put them all near the cut; the demo's own passages check the topic filter."""
    import torch

    workdir, _ = demo_run
    index = embedded.EmbeddedIndex(Workdir(workdir))
    topic = index.passages.column("topic").to_numpy(zero_copy_only=False) == "geoarchives"
    matrix = index.vectors(np.arange(len(index))).astype(np.float32)
    vector = matrix[3] + matrix[40]
    vector /= np.linalg.norm(vector)
    exact = np.einsum("ij,j->i", matrix, vector)
    best = [r for r in np.lexsort((np.arange(len(exact)), -exact)) if topic[r]][:7]
    assert index.dense(vector, 7, topic="geoarchives") == [(r, float(exact[r])) for r in best]

    rng = np.random.default_rng(0)
    other = rng.standard_normal((20000, len(vector))).astype(np.float32)
    other -= np.outer(other @ vector, vector)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    turn = 0.5 + 2.0**-12
    rows = (turn * vector + np.sqrt(1 - turn**2) * other).astype(np.float16)
    exact = np.einsum("ij,j->i", rows.astype(np.float32), vector)
    rows, exact = rows[np.abs(exact - turn) < 2e-6], exact[np.abs(exact - turn) < 2e-6]
    index.matrices = [rows[:1000], rows[1000:]]  # two pieces
    index.starts = np.array([0, 1000, len(rows)])
    order = np.lexsort((np.arange(len(rows)), -exact))
    rough = torch.mv(torch.from_numpy(rows), torch.from_numpy(vector.astype(np.float16)))
    monkeypatch.setattr(embedded, "SCAN_BLOCK_ROWS", 300)  # near the cut: several blocks
    erred = 0
    for limit in (1, 10, 100, 1000):
        best = order[:limit]
        erred += int(rough[best].min() < rough.sort().values[-limit])
        assert index.dense(vector, limit) == [(int(r), float(exact[r])) for r in best]
    assert erred == 2  # at 100 and 1000 half precision alone would have lost passages
