"""Query embeddings: ONNX Runtime on a CPU gives PyTorch's vectors; a model that does not
export stays on PyTorch; queries and passages go through the same ONNX check."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from inference import embed, onnx_model
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
    model = encoder.encoder.model
    with torch.inference_mode():
        features = model.tokenize(TEXTS)
        pytorch = model(features)["sentence_embedding"].numpy()
    assert cosines(pytorch, reference).min() > 0.9999
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


def test_queries_and_passages_go_through_the_one_onnx_check(monkeypatch, caplog):
    """The query encoder's float32 session and the passage encoder's int8 one both come from
    `verified_session`; when its check fails, both keep PyTorch for the reason it gives."""
    checked = []
    verified_session = onnx_model.verified_session

    def recorded(*args, **kwargs):
        result = verified_session(*args, **kwargs)
        checked.append((kwargs["precision"], result[0] is not None))
        return result

    monkeypatch.setattr(onnx_model, "verified_session", recorded)
    query = QueryEncoder(ModelConfig(), device="cpu", low_latency=True)
    passages = Encoder(ModelConfig(), device="cpu")
    assert checked == [("float32", True), ("int8", True)]
    assert (query.encoder.runtime, query.encoder.precision) == ("onnx", "float32")
    assert (passages.runtime, passages.precision) == ("onnx-int8", "int8")
    assert query.encoder.fallback is None and passages.fallback is None

    # no ONNX runtime agrees this well with PyTorch
    monkeypatch.setattr(embed, "ONNX_MIN_COSINE", 1.01)
    monkeypatch.setattr(embed, "INT8_MIN_COSINE", 1.01)
    with caplog.at_level(logging.WARNING):
        query = QueryEncoder(ModelConfig(), device="cpu", low_latency=True)
        passages = Encoder(ModelConfig(), device="cpu")
    assert checked[2:] == [("float32", False), ("int8", False)]
    for encoder, precision in ((query.encoder, "float32"), (passages, "int8")):
        assert (encoder.runtime, encoder.precision) == ("torch", "float32")
        assert encoder.fallback.startswith(f"in ONNX {precision} its embeddings differ")
    assert query.backend == "torch"
    assert f"query embeddings stay on PyTorch: {query.encoder.fallback}" in caplog.text
    assert f"the model runs in float32 on PyTorch: {passages.fallback}" in caplog.text
