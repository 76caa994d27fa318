"""Query embeddings at low latency.

A search embeds one short query while BM25 screens, so the query's forward pass sets the
search's latency. On a CPU, PyTorch's matrix products of a dozen token rows against the model's
weights are slow (all-MiniLM-L6-v2: 13-30 ms per query on a 2-core EPYC), while ONNX Runtime
gives the same vectors (cosine 1.0000) in 5-11 ms on one thread. So with `low_latency` on a
CPU, queries go through the encoder's "onnx" runtime: an in-memory ONNX export of the
workdir's model, made when the encoder starts (about 2 s for MiniLM: worth it in a server, not
for one query) and checked against PyTorch (`inference.onnx_model.verified_session`).
Otherwise, on a GPU, or when the export or that check fails, they go through PyTorch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from inference.config import ModelConfig
from inference.embed import Encoder

log = logging.getLogger(__name__)


class QueryEncoder:
    """Unit-length embeddings of query texts with the given model; `backend` says which
    runtime serves them ("onnxruntime" or "torch")."""

    def __init__(self, model: ModelConfig, device: str = "cpu",
                 low_latency: bool = False) -> None:
        # float32, not int8: a query is a few tokens, where int8 saves nothing; one ONNX
        # thread: the query is embedded while BM25 screens on another core (hybrid search
        # measured p50/p95 16/25 ms with one, 20-25/29-35 ms with two on 2 cores)
        self.encoder = Encoder(model, device=device, tokenize_processes=0,
                               runtime="onnx" if low_latency else "torch", onnx_threads=1)
        if self.encoder.fallback is not None:
            log.warning("query embeddings stay on PyTorch: %s", self.encoder.fallback)
        self.backend = "torch" if self.encoder.runtime == "torch" else "onnxruntime"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.encoder.encode_texts(texts)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
