"""The one definition of what text a passage's embedding sees: its title, then its text."""

from __future__ import annotations


def embedding_text(title: str | None, text: str) -> str:
    """Title and passage text joined, so every passage of an article carries its title."""
    if title and text:
        return f"{title}\n{text}"
    return title or text
