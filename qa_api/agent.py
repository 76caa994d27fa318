"""The ReAct agent: the LLM thinks, searches, reads what it found, and answers with citations.

The loop is explicit: each step the model writes `Thought:`, then `Action: search[query]` or
`Final Answer: ...`; the agent runs the search and replies with an `Observation:` listing the
passages it found, numbered [1], [2], ... across the whole conversation. Steps and time are
bounded. Small models often write malformed steps, so replies are parsed tolerantly (other tool
names, `Action Input:` lines, `Finish[...]`, missing brackets) and a model that still fails
gets an extractive answer instead, with the reason in `fallback`.

Citations can only point at retrieved passages: numbers in the answer that name no retrieved
passage are removed, and an answer left with no citation (or with nothing but citations) is
not accepted. A search the model already made is not run again: it is told to answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from retrieval import QueryError

from .extractive import extractive_answer
from .llms import ChatLLM, LLMError

SearchTool = Callable[[str], list[dict[str, Any]]]
EXTRACTIVE = "extractive"
OBSERVATION_CHARS = 320
STOP = ["Observation:"]
MIN_ANSWER_WORDS = 3

SYSTEM_PROMPT = ("You answer questions by searching research articles. Always reply with a "
                 "Thought and then either Action: search[query] or Final Answer: with "
                 "citations like [1].")
# One worked example as earlier turns: even a 135M-parameter model then keeps to the format.
EXAMPLE = [
    {"role": "user", "content": "Question: How do ice cores store old air?"},
    {"role": "assistant", "content": "Thought: I should search for ice cores and air.\n"
                                     "Action: search[ice core air bubbles]"},
    {"role": "user", "content": "Observation: [1] Air bubbles in polar ice (2019): Bubbles "
                                "trapped in ice preserve samples of the past atmosphere."},
    {"role": "assistant", "content": "Thought: I can answer now.\nFinal Answer: Bubbles trapped "
                                     "in polar ice keep samples of the past atmosphere [1]."},
]

_FINAL = re.compile(r"final\s*answer\s*:?", re.IGNORECASE)
_ACTION = re.compile(r"^\W*action\s*\d*\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_ACTION_INPUT = re.compile(r"^\W*action\s*input\s*\d*\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_BARE_SEARCH = re.compile(r"\bsearch\s*\[([^\]\n]+)\]?", re.IGNORECASE)
_TOOL_CALL = re.compile(r"^(\w+)?\s*[\[(]\s*(.*?)\s*[\])]?\s*$")
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_WORDS = re.compile(r"[^\W\d_]{2,}")
_THOUGHT_PREFIX = re.compile(r"^\W*thought\s*\d*\s*:\s*", re.IGNORECASE)


@dataclass
class Reply:
    """One model reply, read tolerantly: at most one of `search` and `answer` is set."""

    thought: str
    search: str | None = None
    answer: str | None = None


def parse_reply(text: str) -> Reply:
    """Read a model's step. An action that comes before a final answer wins (the model then
    went on to imagine the observation); `Finish[...]` is a final answer."""
    text = text.split("Observation:")[0].strip()
    final = _FINAL.search(text)
    action = _ACTION.search(text) or _BARE_SEARCH.search(text)
    first = min((m for m in (final, action) if m), key=lambda m: m.start(), default=None)
    thought = _THOUGHT_PREFIX.sub("", text[: first.start()] if first else text).strip()
    if first is None:
        return Reply(thought)
    if first is final:
        return Reply(thought, answer=text[final.end():].strip())
    if first.re is _BARE_SEARCH:
        return Reply(thought, search=_clean_query(first.group(1)))
    tool, argument = _tool_call(first.group(1))
    if tool in ("finish", "final", "answer"):
        return Reply(thought, answer=argument)
    if not argument:  # LangChain style: "Action: search" then "Action Input: query"
        given = _ACTION_INPUT.search(text, first.end())
        argument = given.group(1) if given else ""
    query = _clean_query(argument)
    return Reply(thought, search=query) if query else Reply(thought)


def _tool_call(action: str) -> tuple[str, str]:
    """('search', 'ice cores') from 'search[ice cores]', 'Search(ice cores)', 'search: ice
    cores' or 'search ice cores'; a bare tool name gives an empty argument."""
    action = action.strip()
    match = _TOOL_CALL.match(action)
    if match and match.group(1) and ("[" in action or "(" in action):
        return match.group(1).lower(), match.group(2)
    head, _, rest = action.partition(":") if ":" in action else action.partition(" ")
    if head.lower() in ("search", "lookup", "retrieve", "finish", "final", "answer"):
        return head.lower(), rest
    return "search", action


def _clean_query(query: str) -> str:
    return query.strip().strip("\"'`[]()").strip()


def keep_citations(answer: str, count: int) -> tuple[str, list[int]]:
    """The answer with citations of passages 1..count only, and the numbers cited."""
    cited: list[int] = []

    def replace(match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.findall(r"\d+", match.group(1)) if 1 <= int(n) <= count]
        cited.extend(n for n in numbers if n not in cited)
        return "".join(f"[{n}]" for n in numbers)

    text = _CITATION.sub(replace, answer)
    return re.sub(r"\s+([.,;:])", r"\1", re.sub(r"[ \t]{2,}", " ", text)).strip(), cited


class Agent:
    """Answers one question at a time with a model (or extractively) over a search tool."""

    def __init__(self, search: SearchTool, llm: ChatLLM | None, model: str,
                 max_steps: int, max_seconds: float) -> None:
        self.search_tool = search
        self.llm = llm
        self.model = model
        self.max_steps = max_steps
        self.max_seconds = max_seconds

    def run(self, question: str) -> dict[str, Any]:
        """The final result of `events`."""
        result: dict[str, Any] = {}
        for event in self.events(question):
            result = event
        return {k: v for k, v in result.items() if k != "event"}

    def events(self, question: str) -> Iterator[dict[str, Any]]:
        """`{"event": "step", "step": {...}}` as each step happens, then `{"event": "result"}`."""
        run = _Run(self, question)
        yield from run.steps()
        yield {"event": "result", **run.result()}


class _Run:
    """The state of answering one question: the conversation, the numbered sources, timings."""

    def __init__(self, agent: Agent, question: str) -> None:
        self.agent = agent
        self.question = question
        self.started = time.perf_counter()
        self.sources: list[dict[str, Any]] = []
        self.numbers: dict[str, int] = {}
        self.searched: set[str] = set()
        self.trace: list[dict[str, Any]] = []
        self.search_seconds = 0.0
        self.llm_seconds = 0.0
        self.llm_calls = 0
        self.answer = ""
        self.cited: list[int] = []
        self.fallback: str | None = None

    def _step(self, kind: str, text: str, **extra: Any) -> dict[str, Any]:
        step = {"kind": kind, "text": text, **extra}
        self.trace.append(step)
        return {"event": "step", "step": step}

    def steps(self) -> Iterator[dict[str, Any]]:
        if self.agent.llm is None:
            yield from self._extractive(None)
            return
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *EXAMPLE,
                    {"role": "user", "content": f"Question: {self.question}"}]
        for _ in range(self.agent.max_steps):
            remaining = self.agent.max_seconds - (time.perf_counter() - self.started)
            if remaining <= 0:
                yield from self._extractive(f"the model ran out of time "
                                            f"({self.agent.max_seconds:g} s)")
                return
            started = time.perf_counter()
            try:
                text = self.agent.llm.complete(messages, STOP, remaining)
            except LLMError as exc:
                yield from self._extractive(str(exc))
                return
            finally:
                self.llm_seconds += time.perf_counter() - started
                self.llm_calls += 1
            reply = parse_reply(text)
            if reply.thought:
                yield self._step("thought", reply.thought)
            if reply.search and reply.search.lower() in self.searched:
                observation = ("You already searched for that. Answer now: Final Answer: ... "
                               "citing the passages above by number, like [1].")
                yield self._step("observation", observation)
                said = f"Thought: {reply.thought}\nAction: search[{reply.search}]"
            elif reply.search:
                self.searched.add(reply.search.lower())
                yield self._step("action", f"search[{reply.search}]", query=reply.search)
                observation, numbers = self._search(reply.search)
                yield self._step("observation", observation, sources=numbers)
                said = f"Thought: {reply.thought}\nAction: search[{reply.search}]"
            elif reply.answer and self.sources:
                answer, cited = keep_citations(reply.answer, len(self.sources))
                if cited and len(_WORDS.findall(_CITATION.sub("", answer))) >= MIN_ANSWER_WORDS:
                    self.answer, self.cited = answer, cited
                    yield self._step("answer", answer, sources=cited)
                    return
                observation = ("Your answer cites no passage. Answer again and cite the "
                               "passages you used by number, like [1]." if not cited else
                               "Your answer says nothing. Answer the question in a sentence "
                               "and cite the passages you used, like [1].")
                yield self._step("observation", observation)
                said = text.strip()
            else:
                observation = ("Search first: reply with Action: search[your query]."
                               if reply.answer else "I could not read that. Reply with "
                               "Action: search[query] or Final Answer: ... with citations.")
                # what the model wrote, so a verbose trace shows why its step was refused
                yield self._step("observation", observation, reply=text.strip()[:500])
                said = text.strip() or "(no reply)"
            messages += [{"role": "assistant", "content": said},
                         {"role": "user", "content": f"Observation: {observation}"}]
        yield from self._extractive(
            f"the model gave no cited final answer in {self.agent.max_steps} steps")

    def _search(self, query: str) -> tuple[str, list[int]]:
        """Run the search tool; new passages get the next numbers."""
        started = time.perf_counter()
        try:
            hits = self.agent.search_tool(query)
        except QueryError as exc:
            return f"The search failed: {exc}.", []
        finally:
            self.search_seconds += time.perf_counter() - started
        if not hits:
            return "No passage matched that search. Try other words.", []
        lines, numbers = [], []
        for hit in hits:
            number = self.numbers.get(hit["passage_id"])
            if number is None:
                self.sources.append(hit)
                number = self.numbers[hit["passage_id"]] = len(self.sources)
            numbers.append(number)
            year = f" ({hit['year']})" if hit.get("year") else ""
            text = " ".join(hit["text"].split())
            if len(text) > OBSERVATION_CHARS:
                text = text[:OBSERVATION_CHARS].rsplit(" ", 1)[0] + " ..."
            lines.append(f"[{number}] {hit.get('title') or 'Untitled'}{year}: {text}")
        return "\n".join(lines), numbers

    def _extractive(self, reason: str | None) -> Iterator[dict[str, Any]]:
        """The extractive answer over what was retrieved (searching for the question itself
        when nothing was); `reason` says why the model's answer is not used."""
        self.fallback = reason
        if reason:
            yield self._step("fallback", f"Extractive answer instead: {reason}.")
        if not self.sources:
            yield self._step("action", f"search[{self.question}]", query=self.question)
            observation, numbers = self._search(self.question)
            yield self._step("observation", observation, sources=numbers)
        answer = extractive_answer(self.question, [s["text"] for s in self.sources])
        self.answer, self.cited = keep_citations(answer, len(self.sources))
        if not self.answer:
            self.answer = "None of the retrieved passages answers this question."
        yield self._step("answer", self.answer, sources=self.cited)

    def result(self) -> dict[str, Any]:
        sources = [{"n": n, **source, "cited": n in self.cited}
                   for n, source in enumerate(self.sources, start=1)]
        answered_by = EXTRACTIVE if self.agent.llm is None or self.fallback else self.agent.model
        return {
            "question": self.question,
            "answer": self.answer,
            "model": self.agent.model,
            "answered_by": answered_by,
            "fallback": self.fallback,
            "sources": sources,
            "trace": self.trace,
            "timings": {
                "search_ms": round(self.search_seconds * 1000, 1),
                "llm_ms": round(self.llm_seconds * 1000, 1),
                "llm_calls": self.llm_calls,
                "total_ms": round((time.perf_counter() - self.started) * 1000, 1),
            },
        }
