"""Chat models the agent can drive: OpenAI-compatible endpoints and local transformers models,
on the LLM layer batch generation uses too (`inference.llm_backends`: the endpoint client with
its key and retry rules, the stop-string cut; `inference.causal_lm`: where a local model
loads from).

Every model answers `complete(messages, stop, timeout)` with the assistant's text. Failures of any
kind (network, HTTP status, malformed reply, a model that cannot load) become `LLMError`, which
the agent turns into an extractive answer that says what went wrong.
"""

from __future__ import annotations

import threading
from typing import Protocol

from inference import causal_lm
from inference.errors import Failure
from inference.llm_backends import ChatEndpoint, EndpointError, cut_at_stop
from inference.models import ModelError

from .config import QAModelConfig


class LLMError(Failure):
    """The model could not produce a reply; the message says why."""


class ChatLLM(Protocol):
    def complete(self, messages: list[dict[str, str]], stop: list[str],
                 timeout: float) -> str: ...


class OpenAIChat:
    """Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, vLLM, Ollama, llama.cpp),
    through the client batch generation uses too (`inference.llm_backends.ChatEndpoint`): one
    try per reply, within the agent's time budget.

    The key comes from the server's environment and is only ever sent to the configured
    `base_url`: clients choose a model by name, never by address."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None,
                 max_tokens: int = 128) -> None:
        self.endpoint = ChatEndpoint(base_url, model, api_key_env)
        self.max_tokens = max_tokens

    def complete(self, messages: list[dict[str, str]], stop: list[str],
                 timeout: float) -> str:
        body = {"messages": messages, "stop": stop, "max_tokens": self.max_tokens,
                "temperature": 0}
        try:
            response = self.endpoint.request(body, timeout=timeout)
        except EndpointError as exc:
            if exc.status is not None:
                raise LLMError(f"the model endpoint answered HTTP {exc.status}") from None
            raise LLMError(f"the model endpoint did not answer ({exc.problem.split(':')[0]})"
                           ) from None
        if response.status_code != 200:
            raise LLMError(f"the model endpoint answered HTTP {response.status_code}")
        reply = self.endpoint.reply(response, stop)
        if reply.text is None:  # "the endpoint's reply is not a chat completion: ..."
            raise LLMError(f"the model {(reply.error or '').split(':')[0].removeprefix('the ')}")
        return reply.text


class LocalChat:
    """A chat model run on this machine with transformers (on the GPU when CUDA is visible),
    loaded on first use and kept: loading takes seconds, a step far less. One generation at a
    time."""

    def __init__(self, model: str, max_new_tokens: int = 128) -> None:
        self.name = model
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        self._loaded: tuple | None = None

    def _load(self) -> tuple:
        if self._loaded is None:
            try:
                tokenizer, model = causal_lm.load_causal_lm(self.name)
            except ModelError as exc:
                raise LLMError(str(exc)) from None
            import torch

            model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    def complete(self, messages: list[dict[str, str]], stop: list[str],
                 timeout: float) -> str:
        import torch

        with self._lock:
            tokenizer, model = self._load()
            inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)
            inputs = inputs.to(model.device)
            try:
                with torch.inference_mode():
                    output = model.generate(
                        **inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                        max_time=max(timeout, 1.0), stop_strings=stop or None,
                        tokenizer=tokenizer,
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory, a too-long prompt
                raise LLMError(f"the local model failed ({type(exc).__name__}: {exc})") from None
        prompt_length = inputs["input_ids"].shape[1]
        text = tokenizer.decode(output[0][prompt_length:], skip_special_tokens=True)
        return cut_at_stop(text, stop)[0]  # generation ends on a stop string, which it holds


def build_llm(spec: QAModelConfig) -> ChatLLM | None:
    """The configured model; None for `extractive` (no LLM)."""
    if spec.backend == "openai":
        return OpenAIChat(spec.base_url or "", spec.model or "", spec.api_key_env,
                          spec.max_new_tokens)
    if spec.backend == "transformers":
        return LocalChat(spec.model or "", spec.max_new_tokens)
    return None
