"""Sentence embeddings from token ids: length-sorted batches, padded on the device.

Any sentence-transformers model works: it supplies the tokenizer and the pooling. Tokenizing is
kept apart from the forward pass so that token ids made earlier (in the partition step) go
straight to the model; otherwise texts are tokenized chunk by chunk (on a GPU machine in a pool
of processes, elsewhere in a helper thread) while the device embeds the previous chunk.

A chunk's token ids go to the device once, and each batch is cut and padded there, so the
thread that drives a GPU only launches work: nothing in the loop waits for the GPU, which
therefore never idles between batches. A GPU runs the model in bf16 (or fp16); a CPU in int8,
through ONNX Runtime (`inference.onnx_model`), where PyTorch's float32 is already at its peak,
or, for short texts such as queries, in ONNX Runtime's float32.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import onnx_model
from .config import ModelConfig
from .demo import demo_corpus_path
from .devices import pick_device, usable_cpus
from .models import ModelError, resolve_model
from .text import embedding_text
from .tokenize import TokenIds, TokenizerPool, load_tokenizer, tokenize

log = logging.getLogger(__name__)

CPU_BATCH_TOKENS = 2048  # small batches keep a CPU's caches warm: faster than big ones
GPU_MAX_BATCH_TOKENS = 1 << 17
RUNTIMES = ("torch", "onnx", "onnx-int8")
INT8_REFERENCE_TEXTS = 16  # demo abstracts on which int8 must agree with PyTorch's float32
INT8_MIN_COSINE = 0.995  # on those: leaves a margin for 0.99 on any text
ONNX_REFERENCE_TEXTS = 2  # float32 gives PyTorch's vectors on any text: two of unlike length
ONNX_MIN_COSINE = 0.9999
SMALL_INPUT = 256  # passages below which helper threads cost more than they save
TOKENIZE_CHUNK = 16384  # passages tokenized at a time while the device works on the last ones


def in_background(items: Iterable, depth: int) -> Iterator:
    """Iterate `items` in a helper thread, up to `depth` ahead of the consumer.

    Tokenizing (Rust on all cores, or waiting for the tokenizing processes) releases the GIL
    for most of its work, so it runs while the main thread keeps the device fed.
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


def _pick_runtime(dtype: str, device: torch.device, runtime: str | None) -> tuple[str, str]:
    """(runtime, PyTorch dtype) for `model.dtype` on the device.

    ONNX Runtime serves CPUs only: a GPU runs PyTorch, in 16 bits for auto or int8. On a CPU,
    `runtime` is the caller's choice, or (None) what `model.dtype` says: auto or int8 mean
    int8 in ONNX Runtime. The PyTorch model (exported to ONNX, and the fallback) is float32
    unless `model.dtype` names a 16-bit type.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    if device.type == "cuda":
        if dtype == "int8":
            log.warning("model.dtype=int8 runs on a CPU only: this GPU runs the model in 16 bits")
        if dtype in ("auto", "int8"):
            return "torch", "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "torch", dtype
    if runtime is None:
        runtime = "onnx-int8" if dtype in ("auto", "int8") else "torch"
    if runtime == "onnx-int8" or dtype in ("auto", "int8"):
        return runtime, "float32"
    return runtime, dtype


class Encoder:
    """Runs a sentence-transformers model over token ids, in input order.

    `tokenize_processes` (default: the config's): processes that tokenize texts for
    `encode_texts`; -1 picks all but two of the job's cores on a GPU (where tokenizing is the
    bottleneck) and none on a CPU (where the model is, and a helper thread suffices).
    `runtime`: "torch", "onnx" (a float32 export in ONNX Runtime, `onnx_threads` threads,
    default PyTorch's) or "onnx-int8" (the same quantized, see `inference.onnx_model`);
    default: what `model.dtype` says (auto on a CPU: onnx-int8). A GPU runs PyTorch. An ONNX
    runtime runs only if its embeddings agree with PyTorch's on abstracts of the demo corpus
    (cosine `ONNX_MIN_COSINE`, int8 `INT8_MIN_COSINE`); otherwise the model runs in PyTorch,
    `fallback` says why, and, where `model.dtype` made the choice, a warning does too (a
    caller that passes `runtime` reports it in its own terms). `runtime` and `precision` say
    what runs; `agreement` is that check's lowest cosine (None when no ONNX graph ran).
    """

    def __init__(self, model: ModelConfig, device: str | None = None,
                 tokenize_processes: int | None = None, runtime: str | None = None,
                 onnx_threads: int | None = None) -> None:
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
        wanted, dtype = _pick_runtime(model.dtype, self.device, runtime)
        self.dtype = getattr(torch, dtype)
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
        self._session = None  # an ONNX Runtime session, when the model runs in one
        self.prepared_mask = self._takes_prepared_mask()
        if tokenize_processes is None:
            tokenize_processes = model.tokenize_processes
        if tokenize_processes < 0:
            tokenize_processes = max(1, usable_cpus() - 2) if self.device.type == "cuda" else 0
        self.tokenize_processes = tokenize_processes
        self._pool: TokenizerPool | None = None
        self.runtime, self.precision, self.fallback = "torch", dtype, None
        self.agreement: float | None = None
        if wanted != "torch":
            self._start_onnx(wanted, onnx_threads or torch.get_num_threads(),
                             warn=runtime is None)

    def _start_onnx(self, runtime: str, threads: int, warn: bool) -> None:
        """Run the model in ONNX Runtime, where it agrees with PyTorch (else say why not)."""
        int8 = runtime == "onnx-int8"
        with open(demo_corpus_path(), encoding="utf-8") as handle:
            texts = [embedding_text(a.get("title"), a["abstract"])
                     for a in map(json.loads, itertools.islice(handle, 0, None, 4))]
        # every fourth article: all five topics
        texts = texts[:INT8_REFERENCE_TEXTS if int8 else ONNX_REFERENCE_TEXTS]
        # a padded example batch: the exported graph keeps the mask
        _, ids, mask, _ = DeviceTokens(self.tokenize([texts[0], "one word"]), 0, self.pad_id,
                                       self.device).batch(0, 2, 1)

        vectors: dict[str, np.ndarray] = {}  # by runtime: kept for `agreement`

        def embed(session: Any) -> np.ndarray:
            self._session = session
            key = "torch" if session is None else runtime
            try:
                vectors[key] = self.encode_texts(texts)
                return vectors[key]
            finally:
                self._session = None

        self._session, self.fallback = onnx_model.verified_session(
            self.model, (ids, mask), precision="int8" if int8 else "float32", threads=threads,
            embed=embed, min_cosine=INT8_MIN_COSINE if int8 else ONNX_MIN_COSINE)
        if len(vectors) == 2:
            self.agreement = onnx_model.lowest_cosine(vectors[runtime], vectors["torch"])
        if self._session is not None:
            self.runtime, self.precision = runtime, "int8" if int8 else self.precision
        elif warn:
            log.warning("the model runs in %s on PyTorch: %s", self.precision, self.fallback)

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

    def _takes_prepared_mask(self) -> bool:
        """Whether the model's transformer takes our 4D mask for PyTorch's SDPA attention.

        Given a 2D padding mask, transformers first asks whether any token is padded, which
        waits for the GPU on every batch; a ready-made 4D mask skips that question.
        """
        from sentence_transformers.models import Transformer

        first = self.model[0]
        config = getattr(getattr(first, "auto_model", None), "config", None)
        if not (isinstance(first, Transformer)
                and getattr(config, "_attn_implementation", None) == "sdpa"):
            return False
        # a model's own code may read masks differently: check on two padded texts once
        chunk = DeviceTokens(self.tokenize(["one two three four", "one"]), 0, self.pad_id,
                              self.device)
        _, ids, mask, _ = chunk.batch(0, 2, self.pad_multiple)
        with torch.inference_mode():
            self.prepared_mask = False
            expected = self._embed(ids, mask, True).float()
            self.prepared_mask = True
            try:
                got = self._embed(ids, mask, True).float()
            except (RuntimeError, TypeError, ValueError):
                return False
        agreement = torch.nn.functional.cosine_similarity(got, expected, dim=1)
        return bool(agreement.min() > 0.999)

    def tokenize(self, texts: Sequence[str]) -> TokenIds:
        return tokenize(self.tokenizer, texts)

    def encode(self, tokens: TokenIds,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed token id sequences, in input order."""
        return self._run(len(tokens), [(0, tokens)], progress)

    def encode_texts(self, texts: Sequence[str],
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed texts, tokenizing chunk by chunk on the CPU while the device embeds."""
        if len(texts) <= SMALL_INPUT:  # e.g. one search query: no helpers
            return self.encode(self.tokenize(texts), progress)
        if self.tokenize_processes:
            chunks: Iterable[tuple[int, TokenIds]] = self.tokenizer_pool().chunks(
                texts, TOKENIZE_CHUNK)
        else:
            chunks = ((start, self.tokenize(texts[start : start + TOKENIZE_CHUNK]))
                      for start in range(0, len(texts), TOKENIZE_CHUNK))
        return self._run(len(texts), in_background(chunks, depth=2), progress)

    def tokenizer_pool(self) -> TokenizerPool:
        """The tokenizing processes, started on first use (they live as long as the encoder)."""
        if self._pool is None:
            self._pool = TokenizerPool(self.config, self.tokenize_processes)
        return self._pool

    def close(self) -> None:
        """Stop the tokenizing processes, if any were started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _run(self, count: int, chunks: Iterable[tuple[int, TokenIds]],
             progress: Callable[[int], None] | None) -> np.ndarray:
        out = torch.zeros((count, self.dimension), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for offset, tokens in chunks:
                chunk = DeviceTokens(tokens, offset, self.pad_id, self.device)
                start = 0
                while start < len(tokens):
                    longest = max(1, int(chunk.lengths[start]))
                    stop = start + max(1, min(self.batch_size, self.batch_tokens // longest))
                    self._forward_into(out, chunk, start, min(stop, len(tokens)))
                    if progress is not None:
                        progress(min(stop, len(tokens)) - start)
                    start = stop
        return out.cpu().numpy()

    def _forward_into(self, out: torch.Tensor, chunk: DeviceTokens, start: int,
                      stop: int) -> None:
        """Sorted rows start..stop of a chunk; on a GPU out-of-memory error, lower the batch
        size and split the batch."""
        try:
            rows, ids, mask, padded = chunk.batch(start, stop, self.pad_multiple)
            out[rows] = self._embed(ids, mask, padded).float()
        except torch.cuda.OutOfMemoryError:
            if stop - start == 1:
                raise
            torch.cuda.empty_cache()
            self.batch_tokens = max(self.config.max_seq_length, self.batch_tokens // 2)
            self.batch_size = max(1, min(self.batch_size, stop - start) // 2)
            log.warning("out of GPU memory: batches lowered to %d tokens", self.batch_tokens)
            middle = (start + stop) // 2
            self._forward_into(out, chunk, start, middle)
            self._forward_into(out, chunk, middle, stop)

    def _embed(self, ids: torch.Tensor, mask: torch.Tensor, padded: bool) -> torch.Tensor:
        """One batch through the model: its sentence embeddings."""
        if self._session is not None:
            return torch.from_numpy(onnx_model.run(self._session, ids, mask))
        features = {"input_ids": ids, "attention_mask": mask}
        if not self.prepared_mask:
            return self.model(features)["sentence_embedding"]
        width = ids.shape[1]
        # attend to real tokens only; with no padding, no mask at all (the fastest kernels)
        attention = mask.bool()[:, None, None, :].expand(-1, 1, width, -1) if padded else None
        first, *rest = self.model
        features = first(features, attention_mask=attention)
        for module in rest:  # pooling and normalising read the 2D mask in `features`
            features = module(features)
        return features["sentence_embedding"]


class DeviceTokens:
    """One chunk of token ids on the device, sorted longest first, cut into padded batches."""

    def __init__(self, tokens: TokenIds, offset: int, pad_id: int,
                 device: torch.device) -> None:
        lengths = tokens.lengths()
        order = np.argsort(-lengths, kind="stable")
        self.lengths = lengths[order]  # on the host: batch shapes never wait for the device
        self.pad_id = pad_id
        values = tokens.values if len(tokens.values) else np.array([pad_id], dtype=np.int32)
        if not values.flags.writeable:  # ids read from a shard: torch wants its own buffer
            values = values.copy()
        self.values = torch.from_numpy(values).to(device)
        self.starts = torch.from_numpy(tokens.offsets[:-1][order]).to(device)
        self.device_lengths = torch.from_numpy(self.lengths).to(device)
        self.rows = torch.from_numpy(order + offset).to(device)

    def batch(self, start: int, stop: int,
              multiple: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Rows start..stop as (output rows, [batch, width] ids, mask, any row padded)."""
        longest = max(1, int(self.lengths[start]))
        width = -(-longest // multiple) * multiple
        positions = torch.arange(width, device=self.values.device)
        mask = positions[None, :] < self.device_lengths[start:stop, None]
        index = (self.starts[start:stop, None] + positions[None, :]).clamp_(
            max=len(self.values) - 1)
        ids = torch.where(mask, self.values[index], self.pad_id).long()
        padded = width > int(self.lengths[stop - 1])
        return self.rows[start:stop], ids, mask.long(), padded
