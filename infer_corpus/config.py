"""The whole config file of `infer-corpus` and `qa-api`: every package's section in one place.

Each package owns its section (inference's fields, passages, shards, model, predictions,
executor and generation; `index` from retrieval; `qa` from the QA service; `condor` from the
submit layer); this class composes them so one YAML file configures a run end to end, and an
unknown key in any section is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inference.config import InferenceConfig
from inference.config_loader import ConfigError, load
from inference.generation.config import GenerationConfig
from qa_api.config import QAConfig
from retrieval.config import IndexConfig
from submit.config import CondorConfig

__all__ = ["Config", "ConfigError", "load_config"]


@dataclass
class Config(InferenceConfig):
    """Every section of a config file."""

    condor: CondorConfig = field(default_factory=CondorConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults, then the YAML file (if any), then `key.path=value` overrides."""
    return load(Config, path, overrides)
