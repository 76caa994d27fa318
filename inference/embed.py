"""Sentence embeddings from token ids: length-bucketed batches, fed to CUDA or the CPU.

Any sentence-transformers model works: it supplies the tokenizer and the pooling. Tokenizing is
kept apart from the forward pass so that token ids made earlier (in the partition step) go
straight to the model; otherwise a helper thread tokenizes chunk by chunk on all CPU cores while
the device embeds the previous chunk. Batches are padded and pinned by that thread while the
GPU computes, copied without blocking, and the embeddings stay on the GPU until the shard is
done, so the GPU never waits for Python between batches.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import ModelConfig
from .devices import pick_device
from .models import ModelError, resolve_model
from .tokenize import TokenIds, load_tokenizer, tokenize

log = logging.getLogger(__name__)

CPU_BATCH_TOKENS = 2048  # small batches keep a CPU's caches warm: faster than big ones
GPU_MAX_BATCH_TOKENS = 1 << 17
PREFETCH_BATCHES = 4
SMALL_INPUT = 256  # passages below which helper threads cost more than they save
TOKENIZE_CHUNK = 16384  # passages tokenized at a time while the device works on the last ones


def in_background(items: Iterable, depth: int) -> Iterator:
    """Iterate `items` in a helper thread, up to `depth` ahead of the consumer.

    Tokenizing (Rust, all cores) and padding release the GIL for most of their work, so they
    run while the main thread keeps the GPU fed.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                ready.put(item)
        except BaseException as exc:  # hand any failure to the consuming thread
            ready.put(_Failure(exc))
            return
        ready.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


@dataclass
class _Failure:
    error: BaseException


def _pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Encoder:
    """Runs a sentence-transformers model over token ids, in input order."""

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
        dimension = (getattr(self.model, "get_embedding_dimension", None)
                     or self.model.get_sentence_embedding_dimension)
        self.dimension = int(dimension())
        pad_id = getattr(getattr(self.model, "tokenizer", None), "pad_token_id", None)
        self.pad_id = int(pad_id if pad_id is not None else 0)  # masked out either way
        self.batch_size = model.batch_size
        self.batch_tokens = model.batch_tokens or self._auto_batch_tokens()
        self.pad_multiple = 8 if self.device.type == "cuda" else 1

    def _auto_batch_tokens(self) -> int:
        """Padded tokens per batch: what fits in a third of free GPU memory, or a CPU default."""
        if self.device.type != "cuda":
            return CPU_BATCH_TOKENS
        free, _ = torch.cuda.mem_get_info(self.device)
        hf_config = getattr(self.model[0], "auto_model", None)
        hidden = getattr(getattr(hf_config, "config", None), "hidden_size", 1024)
        inner = getattr(getattr(hf_config, "config", None), "intermediate_size", 4 * hidden)
        per_token = 2 * (12 * hidden + 2 * inner)  # live activations of one layer, 16-bit
        tokens = int(free / 3 / per_token)
        return max(self.config.max_seq_length, min(GPU_MAX_BATCH_TOKENS, tokens))

    def tokenize(self, texts: Sequence[str]) -> TokenIds:
        return tokenize(self.tokenizer, texts)

    def encode(self, tokens: TokenIds,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed token id sequences (sorted by length over the whole set), in input order."""
        return self._run(len(tokens), [(0, tokens)], progress)

    def encode_texts(self, texts: Sequence[str],
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts, tokenizing chunk by chunk on the CPU while the device embeds."""

        if len(texts) <= SMALL_INPUT:  # e.g. one search query: no helper threads
            return self.encode(self.tokenize(texts), progress)

        def chunks() -> Iterator[tuple[int, TokenIds]]:
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                yield start, self.tokenize(texts[start : start + TOKENIZE_CHUNK])

        return self._run(len(texts), in_background(chunks(), depth=2), progress)

    def _plan(self, lengths: np.ndarray, order: np.ndarray) -> Iterator[np.ndarray]:
        start = 0
        while start < len(order):
            longest = max(1, int(lengths[order[start]]))
            count = max(1, min(self.batch_size, self.batch_tokens // longest))
            yield order[start : start + count]
            start += count

    def _batches(self, chunks: Iterable[tuple[int, TokenIds]]) -> Iterator[tuple]:
        """Padded (and, for a GPU, pinned) batches; each chunk is sorted by length so that a
        batch holds sequences of similar length."""
        pin = self.device.type == "cuda"
        for offset, tokens in chunks:
            lengths = tokens.lengths()
            order = np.argsort(-lengths, kind="stable")
            for rows in self._plan(lengths, order):
                ids, mask = tokens.padded(rows, self.pad_id, self.pad_multiple)
                tensors = [torch.from_numpy(a) for a in (rows + offset, ids, mask)]
                if pin:
                    tensors = [t.pin_memory() for t in tensors]
                yield tuple(tensors)

    def _run(self, count: int, chunks: Iterable[tuple[int, TokenIds]],
             progress: Callable[[int], None] | None) -> np.ndarray:
        out = torch.zeros((count, self.dimension), dtype=torch.float32, device=self.device)
        if count:
            with torch.inference_mode():
                batches = self._batches(chunks)
                if count > SMALL_INPUT:
                    batches = in_background(batches, depth=PREFETCH_BATCHES)
                for rows, ids, mask in batches:
                    self._forward_into(out, rows, ids, mask)
                    if progress is not None:
                        progress(len(rows))
        return out.cpu().numpy()

    def _forward_into(self, out: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor,
                      mask: torch.Tensor) -> None:
        """One batch; on a GPU out-of-memory error, lower the batch size and split the batch."""
        try:
            features = {"input_ids": ids.to(self.device, non_blocking=True),
                        "attention_mask": mask.to(self.device, non_blocking=True)}
            embedding = self.model(features)["sentence_embedding"]
            out[rows.to(self.device, non_blocking=True)] = embedding.float()
        except torch.cuda.OutOfMemoryError:
            if len(rows) == 1:
                raise
            torch.cuda.empty_cache()
            self.batch_tokens = max(self.config.max_seq_length, self.batch_tokens // 2)
            self.batch_size = max(1, min(self.batch_size, len(rows)) // 2)
            log.warning("out of GPU memory: batches lowered to %d tokens", self.batch_tokens)
            half = len(rows) // 2
            self._forward_into(out, rows[:half], ids[:half], mask[:half])
            self._forward_into(out, rows[half:], ids[half:], mask[half:])
