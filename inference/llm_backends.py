"""Generation backends: what turns chat messages into outputs, one row's failure kept as data.

Every backend answers the same two calls. `prepare(prompts)` renders and measures each
prompt (a row whose prompt cannot be rendered, or is too long, gets its error here);
`generate(batch, position)` returns one `Generation` per prepared row. The worker feeds rows in
the order of `prepare`'s lengths, in fixed chunks, so the batches of a resumed shard are the
batches of an uninterrupted one, and greedy outputs come out identical.

- `transformers` (default): in this process; batched `generate` with left padding, bf16 on a
  GPU (fp16 where bf16 is missing), float32 on a CPU. A batch that fails is retried row by row,
  so only the row that makes the model fail is recorded as an error.
- `openai`: any OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp, Ollama, OpenAI)
  with bounded concurrency and retries with backoff; the key comes from an environment
  variable. A request the endpoint refuses (4xx) is that row's error; an endpoint that stays
  unreachable fails the shard (its finished rows stay checkpointed).
- `vllm`: vLLM in this process when it is installed (`pip install 'infer-corpus[vllm]'`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .causal_lm import load_causal_lm, resolve_local_model
from .devices import apply_condor_gpu_assignment, pick_device
from .errors import Failure
from .generation.config import GenerationConfig, GenerationModelConfig
from .models import ModelError

Messages = list[dict[str, str]]
log = logging.getLogger(__name__)


class EndpointError(Failure):
    """A chat endpoint stayed unreachable or kept failing through every retry. `status`: the
    last answer's HTTP status (None: no answer); `problem`: what went wrong last."""

    def __init__(self, message: str, status: int | None = None, problem: str = "") -> None:
        super().__init__(message)
        self.status, self.problem = status, problem


@dataclass
class Generation:
    """One row's outcome: its text, or its error (finish_reason `error`)."""

    text: str | None
    finish_reason: str  # stop, length or error
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None

    @classmethod
    def failed(cls, error: str, prompt_tokens: int | None = None) -> Generation:
        return cls(None, "error", prompt_tokens, None, error[:2000])


@dataclass
class Prepared:
    """A prompt ready for its backend: token ids (transformers, vllm) or messages (openai)."""

    payload: Any
    length: int = 0
    error: str | None = None


class Backend(Protocol):
    def prepare(self, prompts: Sequence[Messages]) -> list[Prepared]: ...

    def generate(self, batch: Sequence[Prepared], position: int) -> list[Generation]: ...

    def provenance(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def messages(prompt: str, system_prompt: str | None) -> Messages:
    """The chat a prompt becomes: the system prompt (if any), then the prompt as the user."""
    chat = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return chat + [{"role": "user", "content": prompt}]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text up to the first stop string (excluded, as OpenAI-compatible servers do)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _chat_template(setting: str | None) -> str | None:
    """A chat template given inline or as a file (None: the model's own; 'none' handled apart)."""
    if setting and setting != "none" and "{" not in setting and Path(setting).is_file():
        return Path(setting).read_text(encoding="utf-8")
    return setting


class TransformersBackend:
    """A causal LM in this process, batched with left padding."""

    def __init__(self, spec: GenerationModelConfig, config: GenerationConfig,
                 threads: int = 0) -> None:
        import torch

        self.spec, self.config = spec, config
        self.device = pick_device("auto")
        if threads:
            torch.set_num_threads(threads)
        dtype = {"auto": None, "float32": torch.float32, "float16": torch.float16,
                 "bfloat16": torch.bfloat16}[spec.dtype]
        if dtype is None:
            dtype = torch.float32
            if self.device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.tokenizer, model = load_causal_lm(spec.model, hub_ids=True, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.dtype = str(dtype).removeprefix("torch.")
        self.template = _chat_template(spec.chat_template)
        if self.template != "none" and not (self.template or self.tokenizer.chat_template):
            raise ModelError(f"model {spec.model!r} has no chat template: set its "
                             "chat_template (a Jinja2 template, a file, or none)")
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else (min(self.eos) if self.eos else 0)
        self.ends = self.eos | {self.pad}
        positions = getattr(self.model.config, "max_position_embeddings", None)
        self.limit = config.max_prompt_tokens or (
            positions - config.max_new_tokens if positions else 0)

    def prepare(self, prompts: Sequence[Messages]) -> list[Prepared]:
        prepared = []
        for chat in prompts:
            try:
                if self.template == "none":
                    text = "\n\n".join(m["content"] for m in chat)
                    ids = self.tokenizer(text)["input_ids"]
                else:
                    text = self.tokenizer.apply_chat_template(
                        chat, chat_template=self.template, add_generation_prompt=True,
                        tokenize=False)
                    ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            except Exception as exc:  # a chat template may raise on one row's messages
                prepared.append(Prepared(None, 0, f"chat template: {type(exc).__name__}: {exc}"))
                continue
            error = None
            if self.limit and len(ids) > self.limit:
                error = (f"the prompt has {len(ids):,} tokens, over the limit of {self.limit:,} "
                         "(generation.max_prompt_tokens, or the model's context less "
                         "max_new_tokens)")
            prepared.append(Prepared(ids, len(ids), error))
        return prepared

    def generate(self, batch: Sequence[Prepared], position: int) -> list[Generation]:
        out: list[Generation] = []
        size = self.spec.batch_size
        for start in range(0, len(batch), size):
            out += self._batch(batch[start:start + size], position + start)
        return out

    def _batch(self, rows: Sequence[Prepared], position: int) -> list[Generation]:
        results: list[Generation | None] = [
            Generation.failed(p.error, p.length or None) if p.error else None for p in rows]
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return results  # type: ignore[return-value]
        try:
            done = self._run([rows[i] for i in todo], position)
        except Exception as exc:
            self._recover()
            if len(todo) == 1:
                done = [Generation.failed(f"{type(exc).__name__}: {exc}", rows[todo[0]].length)]
            else:
                log.warning("a batch of %d failed (%s); running its rows one by one",
                            len(todo), type(exc).__name__)
                done = [self._batch([rows[i]], position + i)[0] for i in todo]
        for i, result in zip(todo, done):
            results[i] = result
        return results  # type: ignore[return-value]

    def _recover(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _run(self, rows: Sequence[Prepared], position: int) -> list[Generation]:
        import torch

        c = self.config
        width = max(p.length for p in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(rows):
            ids[i, width - p.length:] = torch.tensor(p.payload, dtype=torch.long)
            mask[i, width - p.length:] = 1
        torch.manual_seed(c.seed + position)  # sampling repeats when a shard is resumed
        sampling: dict[str, Any] = ({"do_sample": True, "temperature": c.temperature,
                                     "top_p": c.top_p, "top_k": None} if c.temperature > 0
                                    else {"do_sample": False})
        if c.stop:
            sampling.update(stop_strings=list(c.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=c.max_new_tokens, pad_token_id=self.pad, **sampling)
        generated = output[:, width:].tolist()
        results = []
        for p, tokens in zip(rows, generated):
            count = next((i for i, t in enumerate(tokens) if t in self.ends), len(tokens))
            text = self.tokenizer.decode(tokens[:count], skip_special_tokens=True)
            text, stopped = cut_at_stop(text, c.stop)
            finish = "stop" if stopped or count < len(tokens) or count < c.max_new_tokens \
                else "length"
            results.append(Generation(text, finish, p.length, count))
        return results

    def provenance(self) -> dict[str, Any]:
        template = self.template if self.template else self.tokenizer.chat_template
        return {"device": str(self.device), "dtype": self.dtype,
                "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()[:16],
                "transformers": _version("transformers"), "torch": _version("torch")}

    def close(self) -> None:
        del self.model
        self._recover()


class ChatEndpoint:
    """One OpenAI-compatible `/chat/completions` endpoint (vLLM, llama.cpp, Ollama, OpenAI), the
    one client that batch generation and the QA service's answer models share: the URL, the
    key from the environment variable `api_key_env` (read at each request and sent to this URL
    only; unset: no key), retries with exponential backoff and jitter after throttling, server
    errors and lost connections, and the reply read as a `Generation`, cut at the first stop
    string (as servers that honour `stop` do)."""

    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, *,
                 retries: int = 0, timeout: float = 120.0, connections: int = 1) -> None:
        import httpx

        self.url = (base_url or "").rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.retries = model, api_key_env, retries
        self.client = httpx.Client(timeout=timeout,
                                   limits=httpx.Limits(max_connections=connections))
        self.served: set[str] = set()  # the model names the endpoint says it ran

    def request(self, body: dict[str, Any], timeout: float | None = None) -> Any:
        """The endpoint's answer to `body` (the model is added): a 200 or a status no retry
        can change; an EndpointError when every try failed or was throttled."""
        import httpx

        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        extra = {"timeout": timeout} if timeout is not None else {}
        status, problem = None, ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random()))
            try:
                response = self.client.post(self.url, json={"model": self.model, **body},
                                            headers=headers, **extra)
            except httpx.HTTPError as exc:
                status, problem = None, type(exc).__name__ + (f": {exc}" if str(exc) else "")
                continue
            if response.status_code in self.RETRY_STATUS:
                status, problem = response.status_code, f"HTTP {response.status_code}"
                continue
            return response
        raise EndpointError(f"{self.url} failed {self.retries + 1} time(s) (last: {problem})",
                            status, problem)

    def reply(self, response: Any, stop: Sequence[str] = ()) -> Generation:
        """A 200 answer as a Generation: its text cut at the first stop string, its finish
        reason and token counts; a failed Generation when it is no chat completion."""
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            return Generation.failed("the endpoint's reply is not a chat completion: "
                                     + response.text.strip()[:300])
        if not isinstance(text, str):
            return Generation.failed("the endpoint's reply has no text")
        if data.get("model"):
            self.served.add(str(data["model"]))
        text, _ = cut_at_stop(text, stop)
        reason = choice.get("finish_reason") or "stop"
        return Generation(text, "length" if reason == "length" else "stop",
                          usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def close(self) -> None:
        self.client.close()


class OpenAIBackend:
    """An OpenAI-compatible chat endpoint (`ChatEndpoint`), `concurrency` requests in flight
    at a time, `generation.retries` retries each; a named key variable must be set."""

    def __init__(self, spec: GenerationModelConfig, config: GenerationConfig) -> None:
        if spec.api_key_env and not os.environ.get(spec.api_key_env):
            raise ModelError(f"the environment variable {spec.api_key_env} (api_key_env of "
                             f"model {spec.model!r}) is not set")
        self.spec, self.config = spec, config
        self.endpoint = ChatEndpoint(spec.base_url or "", spec.model, spec.api_key_env,
                                     retries=config.retries, timeout=config.timeout,
                                     connections=spec.concurrency)
        self.pool = ThreadPoolExecutor(max_workers=spec.concurrency,
                                       thread_name_prefix="endpoint")

    def prepare(self, prompts: Sequence[Messages]) -> list[Prepared]:
        return [Prepared(chat) for chat in prompts]

    def generate(self, batch: Sequence[Prepared], position: int) -> list[Generation]:
        return list(self.pool.map(self._one, batch, range(position, position + len(batch))))

    def _one(self, prepared: Prepared, position: int) -> Generation:
        c = self.config
        body: dict[str, Any] = {"messages": prepared.payload, "max_tokens": c.max_new_tokens,
                                "temperature": c.temperature, "top_p": c.top_p,
                                "seed": c.seed + position}
        if c.stop:
            body["stop"] = list(c.stop)
        try:
            response = self.endpoint.request(body)
        except EndpointError as exc:
            raise EndpointError(f"{exc}; finished rows are kept: run again to resume",
                                exc.status, exc.problem) from None
        if response.status_code != 200:
            return Generation.failed(f"HTTP {response.status_code}: "
                                     f"{response.text.strip()[:500]}")
        return self.endpoint.reply(response, c.stop)

    def provenance(self) -> dict[str, Any]:
        return {"endpoint": self.spec.base_url, "served_model": sorted(self.endpoint.served)}

    def close(self) -> None:
        self.pool.shutdown()
        self.endpoint.close()


def vllm_visible_devices(visible: str, uuids: Sequence[str]) -> str:
    """CUDA_VISIBLE_DEVICES as vLLM accepts it (indices) from HTCondor's GPU UUIDs, which may
    be short (`GPU-1a2b3c4d`) or whole; `uuids` lists the machine's GPUs in NVML order."""
    indices = []
    for item in (part.strip() for part in visible.split(",") if part.strip()):
        if item.isdigit():
            indices.append(item)
            continue
        found = [i for i, uuid in enumerate(uuids) if uuid.lower().startswith(item.lower())]
        if len(found) != 1:
            raise ModelError(f"GPU {item} from CUDA_VISIBLE_DEVICES is not one of this "
                             f"machine's GPUs ({', '.join(uuids) or 'none found'})")
        indices.append(str(found[0]))
    return ",".join(indices)


def _nvml_uuids() -> list[str]:
    import pynvml  # nvidia-ml-py, a dependency of vLLM

    pynvml.nvmlInit()
    try:
        return [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


class VLLMBackend:
    """vLLM's offline engine in this process (it batches and schedules by itself)."""

    def __init__(self, spec: GenerationModelConfig, config: GenerationConfig) -> None:
        try:
            import vllm
        except ImportError:
            raise ModelError("backend vllm needs the vllm package: pip install "
                             "'infer-corpus[vllm]' (on a CUDA machine)") from None
        visible = apply_condor_gpu_assignment()
        if visible and not all(p.strip().isdigit() for p in visible.split(",")):
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's order
            os.environ["CUDA_VISIBLE_DEVICES"] = vllm_visible_devices(visible, _nvml_uuids())
        self.spec, self.config = spec, config
        folder, gguf = resolve_local_model(spec.model, hub_ids=True)
        model = str(Path(folder) / gguf) if gguf else str(folder)
        self.llm = vllm.LLM(model=model, dtype="auto" if spec.dtype == "auto" else spec.dtype,
                            seed=config.seed)
        self.tokenizer = self.llm.get_tokenizer()
        self.template = _chat_template(spec.chat_template)
        self.version = vllm.__version__

    def prepare(self, prompts: Sequence[Messages]) -> list[Prepared]:
        prepared = []
        for chat in prompts:
            try:
                if self.template == "none":
                    ids = self.tokenizer("\n\n".join(m["content"] for m in chat))["input_ids"]
                else:
                    ids = self.tokenizer.apply_chat_template(
                        chat, chat_template=self.template, add_generation_prompt=True,
                        tokenize=True)
            except Exception as exc:  # a chat template may raise on one row's messages
                prepared.append(Prepared(None, 0, f"chat template: {type(exc).__name__}: {exc}"))
                continue
            prepared.append(Prepared(list(ids), len(ids)))
        return prepared

    def generate(self, batch: Sequence[Prepared], position: int) -> list[Generation]:
        from vllm import SamplingParams

        c = self.config
        results: list[Generation | None] = [
            Generation.failed(p.error) if p.error else None for p in batch]
        todo = [i for i, r in enumerate(results) if r is None]
        params = [SamplingParams(max_tokens=c.max_new_tokens, temperature=c.temperature,
                                 top_p=c.top_p, seed=c.seed + position + i,
                                 stop=list(c.stop) or None) for i in todo]
        prompts = [{"prompt_token_ids": batch[i].payload} for i in todo]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:
            if len(todo) == 1:
                results[todo[0]] = Generation.failed(f"{type(exc).__name__}: {exc}")
                return results  # type: ignore[return-value]
            outputs = None  # row by row
        for k, i in enumerate(todo):
            if outputs is None:
                results[i] = self.generate([batch[i]], position + i)[0]
                continue
            out = outputs[k].outputs[0]
            results[i] = Generation(out.text, "length" if out.finish_reason == "length"
                                    else "stop", batch[i].length, len(out.token_ids))
        return results  # type: ignore[return-value]

    def provenance(self) -> dict[str, Any]:
        return {"vllm": self.version}

    def close(self) -> None:
        del self.llm


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def make_backend(spec: GenerationModelConfig, config: GenerationConfig,
                 threads: int = 0) -> Backend:
    if spec.backend == "openai":
        return OpenAIBackend(spec, config)
    if spec.backend == "vllm":
        return VLLMBackend(spec, config)
    return TransformersBackend(spec, config, threads)
