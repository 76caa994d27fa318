"""Per-passage predictions: a label and a score for each passage.

`zero-shot` compares each passage embedding with embeddings of the topic descriptions in the
config, so it needs no extra model and works offline; the score is the cosine similarity.
`classifier` runs any Hugging Face text-classification model; the score is its probability.
`head` runs a topic head trained on the embeddings by `train-models` (linear layers with ReLU
between them, stored as plain tensors); the score is its probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from .config import PredictionsConfig
from .embed import Encoder
from .models import ModelError, resolve_model


class Predictor(Protocol):
    needs_text: bool  # False: works from the embeddings alone, so shard text need not be read

    def predict(
        self, texts: Sequence[str], embeddings: np.ndarray
    ) -> tuple[list[str | None], np.ndarray]: ...


class NoPredictions:
    needs_text = False

    def predict(self, texts, embeddings):  # type: ignore[no-untyped-def]
        return [None] * len(texts), np.full(len(texts), np.nan, dtype=np.float32)


class ZeroShotTopics:
    """Nearest topic description by cosine similarity of embeddings."""

    needs_text = False

    def __init__(self, encoder: Encoder, topics: dict[str, str]) -> None:
        self.labels = list(topics)
        self.vectors = _normalize(encoder.encode_texts([topics[t] for t in self.labels]))

    def predict(self, texts, embeddings):  # type: ignore[no-untyped-def]
        if len(embeddings) == 0:
            return [], np.zeros(0, dtype=np.float32)
        scores = _normalize(embeddings) @ self.vectors.T
        best = scores.argmax(axis=1)
        return [self.labels[i] for i in best], scores.max(axis=1).astype(np.float32)


class TextClassifier:
    """A Hugging Face sequence-classification model, batched, on the encoder's device."""

    needs_text = True

    def __init__(self, model_name: str, device: torch.device, batch_size: int = 64,
                 max_length: int = 256) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model(model_name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load classifier {model_name!r}: {exc}") from None
        self.model.eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.id2label = self.model.config.id2label
        self.multi_label = self.model.config.problem_type == "multi_label_classification"

    def predict(self, texts, embeddings):  # type: ignore[no-untyped-def]
        labels: list[str | None] = []
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            inputs = self.tokenizer(batch, padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**inputs.to(self.device)).logits.float()
            probs = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
            top = probs.max(dim=-1)
            labels.extend(self.id2label[int(i)] for i in top.indices.cpu())
            scores.extend(top.values.cpu().tolist())
        return labels, np.asarray(scores, dtype=np.float32)


class TopicHead:
    """A head trained on this embedding model's passage embeddings (`infer-corpus.head` file)."""

    needs_text = False

    def __init__(self, path: str, embedding_model: str) -> None:
        try:
            head = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot load topic head {path!r}: {exc}") from None
        if not isinstance(head, dict) or head.get("format") != "infer-corpus.head":
            raise ModelError(f"{path!r} is not a topic head written by train-models")
        if head["embedding_model"] != embedding_model:
            raise ModelError(f"topic head {path!r} was trained on {head['embedding_model']!r} "
                             f"embeddings, but model.name is {embedding_model!r}")
        self.labels = list(head["classes"])
        self.layers = [(layer["weight"], layer["bias"]) for layer in head["layers"]]

    def predict(self, texts, embeddings):  # type: ignore[no-untyped-def]
        x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
        with torch.inference_mode():
            for i, (weight, bias) in enumerate(self.layers):
                x = torch.nn.functional.linear(x, weight, bias)
                if i < len(self.layers) - 1:
                    x = x.relu()
            top = x.softmax(dim=-1).max(dim=-1)
        return [self.labels[int(i)] for i in top.indices], top.values.numpy().astype(np.float32)


def _normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def make_predictor(config: PredictionsConfig, encoder: Encoder) -> Predictor:
    if config.kind == "zero-shot":
        return ZeroShotTopics(encoder, config.topics)
    if config.kind == "classifier":
        assert config.model  # checked by Config.validate
        return TextClassifier(config.model, encoder.device)
    if config.kind == "head":
        assert config.model  # checked by Config.validate
        return TopicHead(config.model, encoder.config.name)
    return NoPredictions()
