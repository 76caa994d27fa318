"""Retrieval quality on a BEIR-layout collection: nDCG@10 (graded) and recall@100, per mode.

Passages are scored, documents are judged: a document's score is its best passage's score.
"""

from __future__ import annotations

import csv
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


def evaluate_collection(folder: str | Path, workdir: Workdir, config: Config,
                        modes: tuple[str, ...] = MODES, depth: int = 100,
                        progress: bool | None = None) -> dict[str, Any]:
    """Run the pipeline on the collection's corpus, index it (in the backend the config's
    `index` section names), and score every mode."""
    folder = Path(folder)
    queries, qrels = read_collection(folder)
    run_pipeline([str(folder / "corpus.jsonl")], workdir, config, progress=progress)
    build(workdir)  # the backend the config names
    searcher = Searcher(workdir)
    judged = [q for q in queries if qrels.get(str(q["_id"]))]
    vectors = searcher.embed([q["text"] for q in judged])
    article_of: dict = {}
    results: dict[str, dict[str, float]] = {}
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
    return {"default": DEFAULT_MODE, "queries": len(judged), "modes": results}
