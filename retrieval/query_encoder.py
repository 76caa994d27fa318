"""Query embeddings at low latency.

A search embeds one short query while BM25 screens, so the query's forward pass sets the
search's latency. On a CPU, PyTorch's matrix products of a dozen token rows against the model's
weights are slow (all-MiniLM-L6-v2: 13-30 ms per query on a 2-core EPYC), while ONNX Runtime
gives the same vectors (cosine 1.0000) in 5-11 ms on one thread. So with `low_latency` on a
CPU, queries go through an in-memory ONNX export of the workdir's model, made when the encoder
starts (about 2 s for MiniLM: worth it in a server, not for one query) and checked against
PyTorch on two texts of different lengths. Otherwise, on a GPU, or when the export or that
check fails, they go through PyTorch (`inference.embed.Encoder`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from inference import onnx_model
from inference.config import ModelConfig
from inference.embed import DeviceTokens, Encoder

log = logging.getLogger(__name__)
BATCH = 64  # queries per ONNX Runtime call (padded to the longest of them)


class QueryEncoder:
    """Unit-length embeddings of query texts with the workdir's model; `backend` says which
    runtime serves them ("onnxruntime" or "torch")."""

    def __init__(self, model: ModelConfig, device: str = "cpu",
                 low_latency: bool = False) -> None:
        # float32: a query is a few tokens, where int8 saves nothing
        self._torch = Encoder(model, device=device, tokenize_processes=0, quantize=False)
        self._session = (self._onnx_session()
                         if low_latency and self._torch.device.type == "cpu" else None)
        self.backend = "torch" if self._session is None else "onnxruntime"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = (self._torch.encode_texts(texts) if self._session is None
                   else self._run(self._session, texts))
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _run(self, session: Any, texts: Sequence[str]) -> np.ndarray:
        """The texts through the ONNX session, in length-sorted, padded batches."""
        chunk = DeviceTokens(self._torch.tokenize(texts), 0, self._torch.pad_id,
                             torch.device("cpu"))
        out = np.zeros((len(texts), self._torch.dimension), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            rows, ids, mask, _ = chunk.batch(start, min(start + BATCH, len(texts)), 1)
            out[rows.numpy()] = onnx_model.run(session, ids, mask)
        return out

    def _onnx_session(self) -> Any | None:
        """An ONNX Runtime session of the model, or None (with a warning) where the model does
        not export or its exported embeddings differ from PyTorch's."""
        texts = ["a query of a few more words than the other", "one word"]
        # padded: the export must keep the mask
        _, ids, mask, _ = DeviceTokens(self._torch.tokenize(texts), 0, self._torch.pad_id,
                                       torch.device("cpu")).batch(0, 2, 1)
        try:
            # one thread: the query is embedded while BM25 screens on another core (hybrid
            # search measured p50/p95 16/25 ms with one, 20-25/29-35 ms with two on 2 cores)
            session = onnx_model.session(onnx_model.export(self._torch.model, ids, mask),
                                         threads=1)
            got = self._run(session, texts)
        except Exception as exc:  # noqa: BLE001 - any model still works, through PyTorch
            log.warning("query embeddings stay on PyTorch: the ONNX export failed (%s)", exc)
            return None
        expected = self._torch.encode_texts(texts)
        agreement = (got * expected).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1) + 1e-12)
        if agreement.min() < 0.9999:
            log.warning("query embeddings stay on PyTorch: the ONNX export's embeddings differ "
                        "(cosine %.4f)", agreement.min())
            return None
        return session
