"""The partition as one plain pass over the inputs in order: what the parallel partitioner
must equal, whatever its parts and workers (the passages, their ids, the rejects ledger and
the counts). Deliberately simple: sets and dicts, every record in turn."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from inference.config import InferenceConfig
from inference.passages import split_passages
from inference.readers import expand_inputs, read_rows
from inference.records import Rejected, content_digest, to_article


def reference_partition(patterns: list[str], config: InferenceConfig) -> dict[str, Any]:
    p = config.passages
    passages: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    seen_articles: dict[str, bytes] = {}
    seen_passages: set[bytes] = set()

    def reject(source: str, line: int, reason: str, detail: str) -> None:
        counts["rejected"] += 1
        rejects.append({"source": source, "line": line, "reason": reason, "detail": detail})

    for path in expand_inputs(patterns):
        for row in read_rows(Path(path), max_line_bytes=p.max_line_bytes):
            if row.record is None:
                reject(row.source, row.line, row.reason or "unreadable", row.detail or "")
                continue
            try:
                article = to_article(row.record, config.fields, p.max_field_chars)
            except Rejected as exc:
                reject(row.source, row.line, exc.reason, exc.detail)
                continue
            earlier = seen_articles.get(article.article_id)
            if earlier is not None:
                if earlier == article.digest[:8]:
                    counts["duplicate_articles"] += 1
                else:
                    reject(row.source, row.line, "duplicate_id",
                           f"id {article.article_id!r} is already used by another article")
                continue
            seen_articles[article.article_id] = article.digest[:8]
            counts["articles"] += 1
            texts = ([article.text] if article.words <= p.max_words
                     else split_passages(article.text, p.min_words, p.max_words))
            for ordinal, text in enumerate(texts):
                digest = content_digest(article.title, text)[:16]
                if digest in seen_passages:
                    counts["duplicate_passages"] += 1
                    continue
                seen_passages.add(digest)
                counts["passages"] += 1
                passages.append({"passage_id": f"{article.article_id}#{ordinal}",
                                 "article_id": article.article_id, "ordinal": ordinal,
                                 "title": article.title, "text": text,
                                 "authors": article.authors, "year": article.year,
                                 "url": article.url, "topic": article.topic,
                                 "source": row.source})
    return {"passages": passages, "rejects": rejects, "counts": dict(counts),
            "reasons": dict(Counter(r["reason"] for r in rejects))}


def ledger(path: Path) -> list[dict[str, Any]]:
    """A rejects ledger's records, without the raw preview."""
    return [{k: v for k, v in orjson.loads(line).items() if k != "raw"}
            for line in path.read_bytes().splitlines()]
