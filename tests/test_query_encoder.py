"""Query embeddings: ONNX Runtime on a CPU gives PyTorch's vectors; a model that does not
export stays on PyTorch."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from inference.config import ModelConfig
from inference.embed import Encoder
from retrieval.query_encoder import QueryEncoder

TEXTS = ["", "ice", "How do ice cores preserve ancient air bubbles?", "Ünïcödé — 数学 ✓",
         "boundary layer flow " * 200, "ice"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return Encoder(ModelConfig(dtype="float32"), device="cpu").encode_texts(TEXTS)


def test_queries_on_a_cpu_go_through_onnx_runtime_with_pytorchs_embeddings(reference):
    encoder = QueryEncoder(ModelConfig(), device="cpu", low_latency=True)
    assert encoder.backend == "onnxruntime"
    got = encoder.encode(TEXTS * 30)  # more than one batch, in input order
    assert got.shape == (len(TEXTS) * 30, 384)
    assert np.linalg.norm(got, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert cosines(got, np.tile(reference, (30, 1))).min() > 0.9999
    # exporting left the PyTorch model as it was (in evaluation mode: no dropout)
    assert cosines(encoder._torch.encode_texts(TEXTS), reference).min() > 0.9999
    assert encoder.encode([]).shape == (0, 384)


def test_a_model_that_does_not_export_stays_on_pytorch(reference, caplog):
    with caplog.at_level(logging.WARNING, logger="retrieval.query_encoder"):
        encoder = QueryEncoder(ModelConfig(dtype="bfloat16"), device="cpu", low_latency=True)
    assert encoder.backend == "torch"
    assert "query embeddings stay on PyTorch" in caplog.text
    assert cosines(encoder.encode(TEXTS), reference).min() > 0.99  # bfloat16, not float32


def test_without_low_latency_queries_stay_on_pytorch(reference):
    encoder = QueryEncoder(ModelConfig(), device="cpu")
    assert encoder.backend == "torch"
    assert cosines(encoder.encode(TEXTS), reference).min() > 0.9999
