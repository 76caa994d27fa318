"""The inference package's config sections, and the config of a workdir's shard work.

Loading goes through the one strict loader, `inference.config_loader`; other packages own
their sections (`retrieval.config`, `qa_api.config`, `submit.config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_loader import MODEL_DTYPES, ConfigError, build, load, own_sections

__all__ = ["ConfigError", "InferenceConfig", "ModelConfig", "PredictionsConfig", "FieldsConfig",
           "PassagesConfig", "ShardsConfig", "ExecutorConfig", "load_config", "config_from_dict"]


@dataclass
class FieldsConfig:
    """Which input fields hold what. Each entry lists candidates; the first present one wins."""

    id: list[str] = field(default_factory=lambda: ["id", "_id", "doc_id", "article_id"])
    title: list[str] = field(default_factory=lambda: ["title"])
    text: list[str] = field(default_factory=lambda: ["abstract", "text", "body", "content"])
    authors: list[str] = field(default_factory=lambda: ["authors", "author"])
    year: list[str] = field(default_factory=lambda: ["year", "publication_year"])
    url: list[str] = field(default_factory=lambda: ["url", "link", "doi"])
    topic: list[str] = field(default_factory=lambda: ["topic", "category"])


@dataclass
class PassagesConfig:
    """How articles are split: sentence-aware passages of about min..max words."""

    min_words: int = 100
    max_words: int = 250
    max_field_chars: int = 1_000_000
    max_line_bytes: int = 64 << 20  # an input line over this is a reject, never read whole


@dataclass
class ShardsConfig:
    """Shard sizing: one shard is one GPU job, so size it to a few minutes of GPU work."""

    passages_per_shard: int = 50_000
    tokenize: bool = False
    # inputs are partitioned in parts of about this many bytes, in parallel (see parts.py)
    part_bytes: int = 128 << 20


# Far beyond any machine, but small enough that a typo (1e30, 100000) is one line, not an
# allocation or a fork bomb.
MAX_BATCH_SIZE = 65_536
MAX_WORKERS = 1_024


@dataclass
class ModelConfig:
    """The embedding model. `name` is a local path, a known packaged model, or a hub id."""

    name: str = "all-MiniLM-L6-v2"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 512
    batch_tokens: int = 0
    max_seq_length: int = 256
    embedding_dtype: str = "float16"
    tokenize_processes: int = -1


@dataclass
class PredictionsConfig:
    """Per-passage predictions: zero-shot topics (offline) or a text-classification model."""

    kind: str = "zero-shot"
    model: str | None = None
    topics: dict[str, str] = field(
        default_factory=lambda: {
            "covid-19": "COVID-19, SARS-CoV-2, coronavirus infection, vaccines, epidemiology "
                        "and public health",
            "dolomites-geology": "Dolomites geology, Triassic carbonate platforms, dolomite rock, "
                                 "Alpine stratigraphy and tectonics",
            "climate-change": "climate change, global warming, greenhouse gas emissions, "
                              "sea-level rise, extreme weather",
            "critical-minerals": "critical minerals, lithium, cobalt, rare earth elements, mining, "
                                 "supply chains and recycling",
            "geoarchives": "geoarchives, paleoclimate records from ice cores, lake sediments, "
                           "speleothems, tree rings and peat",
        }
    )


@dataclass
class ExecutorConfig:
    """Local execution: worker processes (0 = one per GPU, or one on CPU) and CPU threads each."""

    workers: int = 0
    threads_per_worker: int = 0


@dataclass
class InferenceConfig:
    """The inference sections: input fields, passages, shards, model, predictions, executor.
    Commands compose it with the sections of the packages they use (see infer_corpus.config)."""

    fields: FieldsConfig = field(default_factory=FieldsConfig)
    passages: PassagesConfig = field(default_factory=PassagesConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    predictions: PredictionsConfig = field(default_factory=PredictionsConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections: decides whether earlier work is still valid."""
        data = {name: dataclasses.asdict(getattr(self, name)) for name in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self) -> None:
        """Cross-field checks that a type alone cannot express."""
        p = self.passages
        if not 1 <= p.min_words <= p.max_words:
            raise ConfigError("passages: need 1 <= min_words <= max_words")
        if p.max_line_bytes < 1024:
            raise ConfigError("passages.max_line_bytes must be at least 1024")
        if self.shards.part_bytes < 1024:
            raise ConfigError("shards.part_bytes must be at least 1024")
        if p.max_field_chars < 1:
            raise ConfigError("passages.max_field_chars must be positive")
        if self.shards.passages_per_shard < 1:
            raise ConfigError("shards.passages_per_shard must be positive")
        if self.model.batch_size < 1 or self.model.max_seq_length < 8:
            raise ConfigError("model: batch_size must be >= 1 and max_seq_length >= 8")
        if self.model.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"model.batch_size must be at most {MAX_BATCH_SIZE:,}, not "
                              f"{self.model.batch_size:,}")
        if self.model.tokenize_processes < -1:
            raise ConfigError("model.tokenize_processes must be -1 (auto), 0 (a thread) or more")
        if self.model.batch_tokens < 0:
            raise ConfigError("model.batch_tokens must be >= 0 (0 = fit to the device)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.model.device):
            raise ConfigError(f"model.device must be auto, cpu, cuda or cuda:N, not "
                              f"{self.model.device[:40]!r}")
        if self.model.dtype not in (*MODEL_DTYPES, "int8"):
            raise ConfigError(f"model.dtype must be one of {', '.join(MODEL_DTYPES)} or int8")
        if self.model.embedding_dtype not in ("float16", "float32"):
            raise ConfigError("model.embedding_dtype must be float16 or float32")
        if self.predictions.kind not in ("zero-shot", "classifier", "head", "none"):
            raise ConfigError("predictions.kind must be zero-shot, classifier, head or none")
        if self.predictions.kind in ("classifier", "head") and not self.predictions.model:
            raise ConfigError(f"predictions.model is required when predictions.kind is "
                              f"{self.predictions.kind}")
        if self.predictions.kind == "zero-shot" and not self.predictions.topics:
            raise ConfigError("predictions.topics must name at least one topic for zero-shot")
        if self.executor.workers < 0 or self.executor.threads_per_worker < 0:
            raise ConfigError("executor.workers and executor.threads_per_worker must be >= 0")
        if max(self.executor.workers, self.executor.threads_per_worker) > MAX_WORKERS:
            raise ConfigError(f"executor.workers and executor.threads_per_worker must be at "
                              f"most {MAX_WORKERS:,}")


def load_config(path: str | Path | None = None,
                overrides: list[str] | None = None) -> InferenceConfig:
    """The inference sections alone, from defaults, a YAML file and overrides."""
    return load(InferenceConfig, path, overrides)


def config_from_dict(data: dict[str, Any]) -> InferenceConfig:
    """The inference sections of a config saved in a manifest (other packages' sections are
    theirs to rebuild)."""
    return build(InferenceConfig, own_sections(InferenceConfig, data))
