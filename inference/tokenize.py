"""Partition-time tokenization: CPU work done once, so a GPU job only runs the model.

Shards carry token ids together with the identity of the tokenizer that made them (name,
sequence length and a hash of its full definition, recorded in the manifest). A worker whose
model has another tokenizer re-tokenizes instead of feeding the model wrong ids.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .config import Config, ModelConfig
from .models import ModelError, resolve_model
from .text import embedding_text


def load_tokenizer(model: ModelConfig) -> Tokenizer:
    """The model's fast (Rust) tokenizer, truncating to the configured sequence length."""
    location = resolve_model(model.name)
    definition = Path(location) / "tokenizer.json"
    if definition.is_file():  # a local model: no need to start transformers
        tokenizer = Tokenizer.from_file(str(definition))
    else:
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(location)
        except OSError as exc:
            raise ModelError(f"cannot load the tokenizer of {model.name!r}: {exc}") from None
        if not getattr(hf, "is_fast", False):
            raise ModelError(f"model {model.name!r} has no fast tokenizer (tokenizer.json)")
        tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=model.max_seq_length)
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [encoding.ids for encoding in tokenizer.encode_batch(list(texts))]


@functools.lru_cache(maxsize=8)
def _identity(name: str, max_seq_length: int) -> tuple[tuple[str, Any], ...]:
    model = ModelConfig(name=name, max_seq_length=max_seq_length)
    definition = load_tokenizer(model).to_str()
    digest = hashlib.sha256(definition.encode()).hexdigest()[:16]
    return (("name", name), ("max_seq_length", max_seq_length), ("hash", digest))


class ShardTokenizer:
    """Tokenizes passages the way the embedding model will see them."""

    def __init__(self, model: ModelConfig) -> None:
        self.tokenizer = load_tokenizer(model)

    @classmethod
    def load(cls, config: Config) -> ShardTokenizer:
        return cls(config.model)

    @staticmethod
    def identity(config: Config) -> dict[str, Any]:
        return dict(_identity(config.model.name, config.model.max_seq_length))

    def encode(self, titles: Sequence[str | None], texts: Sequence[str]) -> list[list[int]]:
        return tokenize(self.tokenizer, [embedding_text(t, x) for t, x in zip(titles, texts)])
