"""Sentence embeddings from token ids, batched by length, on CUDA when present, else CPU.

Any sentence-transformers model works: it supplies the tokenizer and the pooling. Tokenizing
is kept apart from the forward pass so that token ids made earlier (in the partition step)
can be fed straight to the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .config import ModelConfig
from .devices import pick_device
from .models import ModelError, resolve_model
from .tokenize import load_tokenizer, tokenize

log = logging.getLogger(__name__)


def _pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Encoder:
    """Runs a sentence-transformers model over batches of token ids."""

    def __init__(self, model: ModelConfig, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.config = model
        self.device = pick_device(device or model.device)
        path = resolve_model(model.name)
        try:
            self.model = SentenceTransformer(path, device=str(self.device))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load embedding model {model.name!r}: {exc}") from None
        self.model.max_seq_length = model.max_seq_length
        self.dtype = _pick_dtype(model.dtype, self.device)
        self.model.to(self.dtype)
        self.model.eval()
        self.tokenizer = load_tokenizer(model)
        dimension = getattr(self.model, "get_embedding_dimension", None) or getattr(
            self.model, "get_sentence_embedding_dimension")
        self.dimension = int(dimension())
        self.batch_size = model.batch_size
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return tokenize(self.tokenizer, texts)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_ids(self.tokenize(texts))

    def encode_ids(
        self, ids: Sequence[Sequence[int]], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Embed token id lists; rows come back in input order as float32."""
        out = np.zeros((len(ids), self.dimension), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        start = 0
        while start < len(order):
            chunk = order[start : start + self.batch_size]
            try:
                out[chunk] = self._forward([ids[i] for i in chunk])
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
                log.warning("out of GPU memory: batch size lowered to %d", self.batch_size)
                continue
            start += len(chunk)
            if progress is not None:
                progress(len(chunk))
        return out

    def _forward(self, batch: list[Sequence[int]]) -> np.ndarray:
        length = max(1, max(len(x) for x in batch))
        input_ids = np.full((len(batch), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.int64)
        for row, seq in enumerate(batch):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        features = {
            "input_ids": torch.from_numpy(input_ids).to(self.device, non_blocking=True),
            "attention_mask": torch.from_numpy(mask).to(self.device, non_blocking=True),
        }
        with torch.inference_mode():
            embedding = self.model(features)["sentence_embedding"]
        return embedding.float().cpu().numpy()
