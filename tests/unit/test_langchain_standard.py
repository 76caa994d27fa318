"""LangChain's own standard tests for retrievers (`langchain-tests`), run on the demo's index:
what LangChain users expect of any retriever holds for `CorpusRetriever`."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from qa_api.langchain_interop import CorpusRetriever
from retrieval import Searcher


class TestCorpusRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _demo_index(self, demo_run) -> None:
        if not hasattr(type(self), "searcher"):
            type(self).searcher = Searcher(demo_run[0])  # a path, as users may give it

    @property
    def retriever_constructor(self) -> type[CorpusRetriever]:
        return CorpusRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"searcher": self.searcher}  # the default mode, embedding queries

    @property
    def retriever_query_example(self) -> str:
        return "how do ice cores record past climate?"

    @property
    def num_results_arg_name(self) -> str:
        return "top_k"  # the constructor's name; a call also takes `k`

