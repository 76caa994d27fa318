"""Retrieval quality on a BEIR-layout collection: nDCG@10 (graded) and recall@100, per mode.

Passages are scored, documents are judged: a document's score is its best passage's score.
`split` keeps the dev or test half of the queries (by a hash of the query id, so a model tuned
on the dev half is judged on queries it never saw), and `compare` sets two evaluations of the
same queries side by side with a paired randomization test of their per-query nDCG@10.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from inference.executor import run_pipeline
from inference.readers import InputError
from inference.workdir import Workdir
from retrieval import DEFAULT_MODE, MODES, Searcher, build
from retrieval.search import query_words

from .config import Config


def ndcg_at(ranked: list[str], relevance: dict[str, int], k: int = 10) -> float:
    gain = sum((2 ** relevance.get(doc, 0) - 1) / math.log2(i + 2)
               for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevance.values(), reverse=True)[:k]
    best = sum((2**rel - 1) / math.log2(i + 2) for i, rel in enumerate(ideal))
    return gain / best if best else 0.0


def recall_at(ranked: list[str], relevance: dict[str, int], k: int = 100) -> float:
    relevant = {doc for doc, rel in relevance.items() if rel > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def read_collection(folder: Path) -> tuple[list[dict], dict[str, dict[str, int]]]:
    for name in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"):
        if not (folder / name).is_file():
            raise InputError(f"{folder} is not a BEIR-layout collection: no {name}")
    with open(folder / "queries.jsonl", encoding="utf-8") as handle:
        queries = [json.loads(line) for line in handle if line.strip()]
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with open(folder / "qrels.tsv", encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) >= 3 and row[2].lstrip("-").isdigit():
                qrels[row[0]][row[1]] = int(row[2])
    return queries, qrels


SPLITS = ("all", "dev", "test")
RANDOMIZATION_ROUNDS = 10_000


def in_split(query_id: str, split: str) -> bool:
    """Half of the queries each for dev and test, by a hash of the id: stable whatever the
    order or the other queries."""
    if split == "all":
        return True
    digest = hashlib.sha256(f"split\0{query_id}".encode()).digest()
    return (digest[0] < 128) == (split == "dev")


def paired_randomization(a: list[float], b: list[float], rounds: int = RANDOMIZATION_ROUNDS,
                         seed: int = 0) -> float:
    """Two-sided p-value that per-query scores `a` and `b` (the same queries, in order) come
    from one system: each round swaps each query's pair at random, and counts mean
    differences at least as large as the observed one (Smucker et al., 2007)."""
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if not len(diff):
        return 1.0
    observed = abs(diff.mean())
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(rounds, len(diff)))
    extreme = np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12
    return float((extreme.sum() + 1) / (rounds + 1))


def compare(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Per mode, `other`'s nDCG@10 against `base`'s over the queries both judged, with the
    paired randomization test's p-value."""
    out = {}
    for mode, scores in other["per_query"].items():
        before = base.get("per_query", {}).get(mode)
        if not before:
            continue
        shared = sorted(set(before) & set(scores))
        a, b = [before[q] for q in shared], [scores[q] for q in shared]
        out[mode] = {"queries": len(shared), "base": round(float(np.mean(a)), 4),
                     "ndcg@10": round(float(np.mean(b)), 4),
                     "change": round(float(np.mean(b) - np.mean(a)), 4),
                     "p": round(paired_randomization(a, b), 4)}
    if not out:
        raise InputError("the two evaluations share no mode with per-query scores: run both "
                         "with this version of `infer-corpus eval --json`")
    return out


def evaluate_collection(folder: str | Path, workdir: Workdir, config: Config,
                        modes: tuple[str, ...] = MODES, depth: int = 100,
                        progress: bool | None = None, split: str = "all") -> dict[str, Any]:
    """Run the pipeline on the collection's corpus, index it (in the backend the config's
    `index` section names), and score every mode over the `split` half of the queries."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(folder)
    queries, qrels = read_collection(folder)
    queries = [q for q in queries if in_split(str(q["_id"]), split)]
    # embedded in this process when one worker would do: it loads the model for the queries
    run_pipeline([str(folder / "corpus.jsonl")], workdir, config, progress=progress,
                 in_process=True)
    build(workdir)  # the backend the config names
    searcher = Searcher(workdir)
    judged = [q for q in queries if qrels.get(str(q["_id"]))]
    vectors = searcher.embed([q["text"] for q in judged])
    article_of: dict = {}
    results: dict[str, dict[str, float]] = {}
    per_query: dict[str, dict[str, float]] = {}
    for mode in modes:
        ndcg, recall = [], []
        for query, vector in zip(judged, vectors):
            hits = searcher.rank(query_words(query["text"]), vector, mode=mode, depth=depth,
                                 screening_top_k=depth)
            documents: list[str] = []
            unseen = [hit.key for hit in hits if hit.key not in article_of]
            for key, passage in zip(unseen, searcher.index.passages_for(unseen)):
                article_of[key] = passage["article_id"]
            for hit in hits:
                if article_of[hit.key] not in documents:
                    documents.append(article_of[hit.key])
            relevance = qrels[str(query["_id"])]
            ndcg.append(ndcg_at(documents, relevance))
            recall.append(recall_at(documents, relevance))
        results[mode] = {"ndcg@10": round(float(np.mean(ndcg)), 4),
                         "recall@100": round(float(np.mean(recall)), 4)}
        per_query[mode] = {str(q["_id"]): round(v, 6) for q, v in zip(judged, ndcg)}
    return {"default": DEFAULT_MODE, "split": split, "queries": len(judged),
            "model": config.model.name, "modes": results, "per_query": per_query}
