"""LangChain interop (needs `langchain-core`, the `langchain` extra).

- `CorpusRetriever`: the index as a LangChain retriever (documents with the passage fields and
  scores as metadata), for LangChain chains and agents.
- `LangChainLLM`: any LangChain chat model as the agent's model, e.g.
  `Agent(search, LangChainLLM(ChatOpenAI(...)), "gpt", max_steps=4, max_seconds=60,
  embed=SentenceVectors(searcher.embed))` (`embed`: sentence vectors for extractive answers).
- `ChatModel`: the other way round, one of our models (`OpenAIChat`, `LocalChat`) as a
  LangChain chat model.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForLLMRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict

from retrieval import DEFAULT_MODE, Searcher

from .llms import ChatLLM, LLMError

_ROLES = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
DEFAULT_TIMEOUT = 120.0


class CorpusRetriever(BaseRetriever):
    """Passages from a `Searcher`: `page_content` is the passage text, `metadata` the rest.

    The constructor's settings are the defaults; one call may ask for another number of
    passages, as LangChain's retrievers take it: `retriever.invoke(query, k=3)` (or `top_k=3`).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    searcher: Searcher
    top_k: int = 5
    screening_top_k: int = 100
    mode: str = DEFAULT_MODE
    topic: str | None = None

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, top_k: int | None = None
                                ) -> list[Document]:
        wanted = k if k is not None else top_k if top_k is not None else self.top_k
        hits = self.searcher.search(query, top_k=wanted, mode=self.mode, topic=self.topic,
                                    screening_top_k=max(self.screening_top_k, wanted))
        documents = []
        for hit in hits:
            fields = hit.to_dict()
            text = fields.pop("text")
            documents.append(Document(page_content=text, id=fields["passage_id"],
                                      metadata=fields))
        return documents

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None, top_k: int | None = None
                                       ) -> list[Document]:
        """The same in a thread (LangChain's default passes no `k` on)."""
        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), k=k, top_k=top_k)


class LangChainLLM:
    """A LangChain chat model driving the agent; its errors become `LLMError` (extractive
    fallback), like those of our own models."""

    def __init__(self, model: BaseChatModel) -> None:
        self.model = model

    def complete(self, messages: list[dict[str, str]], stop: list[str],
                 timeout: float) -> str:
        converted = [_ROLES[m["role"]](content=m["content"]) for m in messages]
        try:
            reply = self.model.invoke(converted, stop=stop)
        except Exception as exc:  # any provider's error: the agent falls back and says why
            raise LLMError(f"the LangChain model failed ({type(exc).__name__}: {exc})") from None
        return reply.text if isinstance(reply, BaseMessage) else str(reply)


class ChatModel(BaseChatModel):
    """One of our chat models (`OpenAIChat`, `LocalChat`) as a LangChain chat model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    llm: Any
    timeout: float = DEFAULT_TIMEOUT

    @property
    def _llm_type(self) -> str:
        return "infer-corpus"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        roles = {"system": "system", "human": "user", "ai": "assistant"}
        converted = [{"role": roles.get(m.type, "user"), "content": m.text} for m in messages]
        llm: ChatLLM = self.llm
        text = llm.complete(converted, stop or [], self.timeout)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])
