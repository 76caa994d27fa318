"""The demo corpus that ships inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def demo_corpus_path() -> Path:
    """The bundled demo corpus (60+ articles on five topics, written for this project)."""
    return Path(str(resources.files("inference") / "data" / "demo_articles.jsonl"))
