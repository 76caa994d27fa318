"""Turn one raw input record into a clean article, or say exactly why it is rejected."""

from __future__ import annotations

import datetime
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from .config import FieldsConfig

_YEAR = re.compile(r"^\s*(\d{4})")


class Rejected(ValueError):
    """A record that cannot become an article; `reason` is a stable code for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Article:
    article_id: str
    title: str
    text: str  # whitespace-normalised
    words: int
    authors: list[str]
    year: int | None
    url: str | None
    topic: str | None
    digest: bytes  # SHA-256 of title and text: tells a repeated article from an id clash


def _pick(record: dict[str, Any], candidates: list[str]) -> tuple[str | None, Any]:
    for name in candidates:
        value = record.get(name)
        if value is not None and value != "" and value != []:
            return name, value
    return None, None


def _as_text(name: str | None, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)  # paragraphs stored as a list
    raise Rejected("bad_field_type", f"field {name!r} must be text, got {type(value).__name__}")


def _wrong_type(name: str | None, value: Any, wanted: str) -> Rejected:
    return Rejected("bad_field_type", f"field {name!r} must be {wanted}, got "
                                      f"{type(value).__name__}")


def _person(item: Any) -> str:
    """One author: a name, or an object with `name` or `given`/`family` (CSL, Crossref)."""
    if isinstance(item, dict):
        item = item.get("name") or " ".join(
            str(item[k]) for k in ("given", "family") if item.get(k)
        )
    if item is None or isinstance(item, (dict, list)):
        return ""
    return str(item).strip()


def _authors(name: str | None, value: Any) -> list[str]:
    """Names from text ("A; B"), a list of names or of author objects, or one object."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(";") if ";" in value else [value]
        return [p.strip() for p in parts if p.strip()]
    items = value if isinstance(value, list) else [value]
    if not all(item is None or isinstance(item, (str, dict)) for item in items):
        raise _wrong_type(name, value, "names or author objects")
    return [person for person in map(_person, items) if person]


def _year(name: str | None, value: Any) -> int | None:
    """A year; None for a value that is not one ("n.d.", 0, and missing numbers, which
    arrive as NaN); a reject for a value of the wrong type (a list, an object, a boolean)."""
    if value is None:
        return None
    if isinstance(value, (bool, list, dict, bytes)):
        raise _wrong_type(name, value, "a year (a number or text)")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float)):
        year = int(value)
    elif isinstance(value, (datetime.date, datetime.datetime)):
        year = value.year
    else:
        match = _YEAR.match(str(value))
        if not match:
            return None
        year = int(match.group(1))
    return year if 0 < year < 10000 else None


def _url(name: str | None, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _wrong_type(name, value, "a URL or DOI as text")
    url = value.strip()
    if url.startswith("10.") or (name == "doi" and not url.startswith(("http://", "https://"))):
        url = f"https://doi.org/{url}"
    return url or None


def content_digest(title: str, text: str) -> bytes:
    return hashlib.sha256(f"{title}\x1f{text}".encode()).digest()


def to_article(record: dict[str, Any], fields: FieldsConfig, max_field_chars: int) -> Article:
    """Map fields, normalise values and validate; raise `Rejected` with a reason otherwise."""
    title_name, title_value = _pick(record, fields.title)
    text_name, text_value = _pick(record, fields.text)
    title = _as_text(title_name, title_value)
    if not title.isprintable() or "  " in title or title[:1].isspace() or title[-1:].isspace():
        title = " ".join(title.split())
    text = _as_text(text_name, text_value)
    for name, value in ((title_name, title), (text_name, text)):
        if len(value) > max_field_chars:
            raise Rejected(
                "field_too_long",
                f"field {name!r} has {len(value):,} characters (limit {max_field_chars:,})",
            )
    if not title and (not text or text.isspace()):
        raise Rejected("no_text", "neither a title nor any text in fields "
                       f"{fields.title + fields.text}")
    words = text.split()
    text = " ".join(words)
    digest = content_digest(title, text)
    id_name, id_value = _pick(record, fields.id)
    if id_value is None:
        article_id = f"sha256:{digest.hex()[:24]}"
    elif isinstance(id_value, (str, int)) and not isinstance(id_value, bool):
        article_id = str(id_value).strip()
        if len(article_id) > 1000:
            raise Rejected("field_too_long", f"id field {id_name!r} is over 1,000 characters")
    else:
        raise Rejected("bad_field_type", f"id field {id_name!r} must be a string or an integer")
    topic_name, topic_value = _pick(record, fields.topic)
    url_name, url_value = _pick(record, fields.url)
    year_name, year_value = _pick(record, fields.year)
    authors_name, authors_value = _pick(record, fields.authors)
    return Article(
        article_id=article_id or f"sha256:{digest.hex()[:24]}",
        title=title,
        text=text,
        words=len(words),
        authors=_authors(authors_name, authors_value),
        year=_year(year_name, year_value),
        url=_url(url_name, url_value),
        topic=_as_text(topic_name, topic_value).strip() or None,
        digest=digest,
    )
