"""The HTTP API and web form: search, and questions answered with cited sources.

One `QAService` per server holds the workdir's searcher (loaded once; as many searches run at
once as the server has cores: on 2 cores, two at a time served 1.8x the searches of one at a
time at nearly the same latency, while more only queued inside), the vectors of the sentences
its extractive answers have read (`SentenceVectors`: passages recur across questions) and the
configured answer models. Every request passes `guard.RequestGuard` (the API key, then the
body's size, read time and JSON) and is validated before any work: a bad one gets a 422 whose
`detail` says what is wrong, quoting at most ECHO_CHARS of what it was sent, and no request
gets a traceback.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inference.devices import usable_cpus
from inference.workdir import Workdir
from retrieval import DEFAULT_MODE, MODES, QueryError, Searcher

from .agent import Agent
from .config import KIND_BACKENDS, QAConfig
from .extractive import SentenceVectors
from .guard import API_KEY_HEADER, ECHO_CHARS, RequestGuard
from .llms import build_llm

MAX_QUESTION_CHARS = 2000
MAX_TOP_K = 50
MAX_SCREENING_TOP_K = 1000
STATIC = Path(__file__).parent / "static"
log = logging.getLogger("qa_api")


class RequestError(ValueError):
    """A request that is well-formed but names something this server does not have; `field`
    is the request's field, as in every 422's `errors`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _cut(text: str) -> str:
    """At most ECHO_CHARS of something a client sent, for an error message."""
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."


def _text(value: str, name: str) -> str:
    if not value.strip():
        raise ValueError(f"the {name} is empty")
    if not re.search(r"\w", value):
        raise ValueError(f"the {name} has no words to search for")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchRequest(_Strict):
    query: str = Field(max_length=MAX_QUESTION_CHARS, description="what to search for")
    topic: str | None = Field(None, description="only passages of this topic (GET /topics)")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="passages to return")
    screening_top_k: int = Field(100, ge=1, le=MAX_SCREENING_TOP_K,
                                 description="BM25 candidates re-ranked by embeddings")
    mode: str = Field(DEFAULT_MODE, description=f"one of {', '.join(MODES)}")

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        return _text(value, "query")

    @model_validator(mode="after")
    def _depth(self) -> SearchRequest:
        if self.screening_top_k < self.top_k:
            raise ValueError("screening_top_k must be at least top_k")
        return self


class ReactRequest(_Strict):
    question: str = Field(max_length=MAX_QUESTION_CHARS, description="the question to answer")
    topic: str | None = Field(None, description="only passages of this topic (GET /topics)")
    model: str | None = Field(None, description="an answer model from GET /models")
    retriever_top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="passages per search")
    screening_top_k: int = Field(100, ge=1, le=MAX_SCREENING_TOP_K,
                                 description="BM25 candidates re-ranked by embeddings")
    verbose: bool = Field(False, description="include the Thought/Action/Observation trace")

    @field_validator("question")
    @classmethod
    def _question(cls, value: str) -> str:
        return _text(value, "question")

    @model_validator(mode="after")
    def _depth(self) -> ReactRequest:
        if self.screening_top_k < self.retriever_top_k:
            raise ValueError("screening_top_k must be at least retriever_top_k")
        return self


def _json_safe(value: Any) -> Any:
    """NaN and infinite scores become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class QAService:
    """The searcher over one workdir and the answer models named in the config."""

    def __init__(self, workdir: str | Path, config: QAConfig) -> None:
        self.workdir = Workdir(workdir)
        self.config = config
        self.searcher = Searcher(self.workdir, low_latency=True)
        self.search_slots = threading.BoundedSemaphore(usable_cpus())
        present = set(self.searcher.index.topics())
        self.topics = [t for t in config.questions if t in present] + sorted(
            present - set(config.questions))
        self.llms = {name: build_llm(spec) for name, spec in config.models.items()}
        self.sentence_vectors = SentenceVectors(self.searcher.embed)

    def warm_up(self) -> None:
        """Load the query embedding model now rather than on the first request."""
        self.search("warm up", top_k=1, screening_top_k=1)

    def check(self, topic: str | None, model: str | None = None) -> None:
        if topic is not None and topic not in self.topics:
            known = ", ".join(self.topics) or "none: this index has no topics"
            raise RequestError("topic", f"unknown topic {_cut(topic)!r} (known topics: {known})")
        if model is not None and model not in self.llms:
            raise RequestError("model", f"unknown model {_cut(model)!r} "
                               f"(known models: {', '.join(self.llms)})")

    def search(self, query: str, *, top_k: int, screening_top_k: int,
               topic: str | None = None, mode: str = DEFAULT_MODE) -> list[dict[str, Any]]:
        with self.search_slots:
            hits = self.searcher.search(query, top_k=top_k, screening_top_k=screening_top_k,
                                        mode=mode, topic=topic)
        return [_json_safe(hit.to_dict()) for hit in hits]

    def agent(self, request: ReactRequest) -> Agent:
        self.check(request.topic, request.model)
        name = request.model or self.config.default_model

        def search(query: str) -> list[dict[str, Any]]:
            return self.search(query, top_k=request.retriever_top_k,
                               screening_top_k=request.screening_top_k, topic=request.topic)

        return Agent(search, self.llms[name], name, self.config.max_steps,
                     self.config.max_seconds, embed=self.sentence_vectors,
                     mode=self.config.models[name].mode)


def _unprocessable(detail: str, errors: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": errors}, status_code=422)


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    errors = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        errors.append({"field": _cut(where or "body"),
                       "message": _cut(message.removeprefix("Value error, "))})
    return errors


def _result(result: dict[str, Any], verbose: bool) -> dict[str, Any]:
    if not verbose:
        result = {k: v for k, v in result.items() if k != "trace"}
    return _json_safe(result)


def create_app(service: QAService) -> FastAPI:
    app = FastAPIOffline(  # /docs with its own assets: works without internet
        title="infer-corpus QA",
        summary="Search research passages and answer questions with cited sources.",
        description=f"When the server's `{service.config.api_key_env}` environment variable is "
                    f"set, every endpoint except `/`, `/health` and the docs needs the "
                    f"`{API_KEY_HEADER}` header with that key.",
    )
    api_key = os.environ.get(service.config.api_key_env) or None
    app.add_middleware(RequestGuard, api_key=api_key,
                       max_body_bytes=service.config.max_body_bytes,
                       read_timeout=service.config.read_timeout_seconds)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        return _unprocessable("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)

    @app.exception_handler(RequestError)
    @app.exception_handler(QueryError)
    async def _bad_request(_: Request, exc: Exception) -> JSONResponse:
        field, message = ((exc.field, exc.message) if isinstance(exc, RequestError)
                          else ("body", str(exc)))
        return _unprocessable(str(exc), [{"field": field, "message": message}])

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return JSONResponse({"detail": "internal error; the server log has the details"},
                            status_code=500)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Ready to serve; says whether requests need an API key."""
        return {"status": "ok", "api_key_required": bool(api_key)}

    @app.get("/topics")
    def topics() -> list[dict[str, Any]]:
        """The index's topics with their preset questions."""
        return [{"topic": t, "questions": service.config.questions.get(t, [])}
                for t in service.topics]

    @app.get("/models")
    def models() -> list[dict[str, Any]]:
        """The answer models a request may name, with how an LLM is used (`mode`: react or
        grounded); `default` marks the one used otherwise. `kind` keeps its older words
        (local for the transformers backend), as clients read them."""
        kinds = {backend: kind for kind, backend in KIND_BACKENDS.items()}
        return [{"name": name, "kind": kinds[spec.backend or "extractive"],
                 "mode": None if spec.backend in (None, "extractive") else spec.mode,
                 "default": name == service.config.default_model}
                for name, spec in service.config.models.items()]

    @app.post("/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        """Retrieval only: the best passages for a query, with their scores."""
        service.check(request.topic)
        if request.mode not in MODES:
            raise RequestError("mode", f"unknown mode {_cut(request.mode)!r} "
                               f"(known modes: {', '.join(MODES)})")
        hits = service.search(request.query, top_k=request.top_k,
                              screening_top_k=request.screening_top_k,
                              topic=request.topic, mode=request.mode)
        return {"query": request.query, "hits": hits}

    @app.post("/react")
    def react(request: ReactRequest) -> dict[str, Any]:
        """Answer a question with the ReAct agent; `sources[n-1]` is citation [n]."""
        return _result(service.agent(request).run(request.question), request.verbose)

    @app.post("/react/stream")
    def react_stream(request: ReactRequest) -> StreamingResponse:
        """The same as /react as NDJSON: a `step` event per Thought/Action/Observation as it
        happens, then one `result` event (an `error` event if the server fails midway)."""
        agent = service.agent(request)

        def lines() -> Iterator[bytes]:
            try:
                for event in agent.events(request.question):
                    if event["event"] == "result":
                        event = {"event": "result", **_result(event, request.verbose)}
                    yield orjson.dumps(_json_safe(event)) + b"\n"
            except Exception as exc:  # the status line is already sent: report in the stream
                log.error("stream failed", exc_info=exc)
                yield orjson.dumps({"event": "error", "detail": "internal error; the server "
                                    "log has the details"}) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/", include_in_schema=False)
    def form() -> Response:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
