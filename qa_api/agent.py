"""The agent: answers with citations from an LLM over a search tool, or extractively.

Two ways to use a model, chosen per model in the config (`qa.models.NAME.mode`):

- `react`: the loop is explicit. Each step the model writes `Thought:`, then `Action:
  search[query]` or `Final Answer: ...`; the agent runs the search and replies with an
  `Observation:` listing what it found. Steps and time are bounded. Small models often write
  malformed steps, so replies are parsed tolerantly (other tool names, `Action Input:` lines,
  `Finish[...]`, missing brackets).
- `grounded`: one step. The agent searches for the question, shows the model what in the
  passages found answers it (the sentences an extractive answer would quote, under their
  articles' numbers) and asks for a cited answer (or "The indexed articles do not answer
  this."). Small models manage one such step where they lose their way in a loop.

Sources are articles: citation [n] is the n-th article retrieved, with every passage of it
that was found listed under it. Citations can only point at retrieved articles: numbers in an
answer that name none are removed, and an answer left with no citation (or with nothing but
citations) is not accepted. An answer is held to the passages: a sentence citing an article
that does not say it (fewer than SUPPORTED_SHARE of its content words there) gets the answer
refused; an uncited sentence cites the article that says it, or is dropped. Article text never
cites: the model is shown passages without their own markers and ReAct labels, and markers an
answer copies from a passage are dropped (`citations`). A reply that is not accepted is in the
trace with the reason; a model that fails gets an extractive answer instead, with the reason in
`fallback`. When the retrieved
passages do not answer the question (`extractive.select` finds no relevant sentence), the
answer says so plainly and cites nothing; in grounded mode the model is then not asked.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from retrieval import QueryError

from .citations import CITATION, drop_quoted, for_model, keep_citations
from .config import ANSWER_MODES
from .extractive import DECLINE, Embed, Sentence, select, supported
from .llms import ChatLLM, LLMError

SearchTool = Callable[[str], list[dict[str, Any]]]
EXTRACTIVE = "extractive"
OBSERVATION_CHARS = 320  # of each passage, in a ReAct observation
STOP = ["Observation:"]
GROUNDED_STOP = ["\nQuestion:", "\nPassages:"]
MIN_ANSWER_WORDS = 3
SUPPORTED_SHARE = 0.8  # of a cited text's content words, found in the passages it cites
# (benchmarks/qa_quality.py measures citation precision with this same share)
REPLY_CHARS = 500  # of a refused reply, in the trace
# A hit's own fields; the rest (title, authors, year, url, topic, ...) describe its article.
PASSAGE_FIELDS = ("passage_id", "ordinal", "text", "score", "bm25", "dense")

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
GROUNDED_PROMPT = ("You answer questions from the numbered research passages you are given. "
                   "Answer in one to three sentences using only the passages, and cite each "
                   "sentence's passage by its number, like [1]. If the passages do not answer "
                   f"the question, reply exactly: {DECLINE}")
GROUNDED_EXAMPLE = [
    {"role": "user", "content": "Passages:\n[1] Air bubbles in polar ice (2019): Bubbles "
                                "trapped in ice preserve samples of the past atmosphere.\n"
                                "[2] Lithium brines (2021): Lithium is pumped from salar "
                                "brines.\n\nQuestion: How do ice cores store old air?"},
    {"role": "assistant", "content": "Bubbles trapped in polar ice keep samples of the past "
                                     "atmosphere [1]."},
]

_WORDS = re.compile(r"[^\W\d_]{2,}")
_SENTENCE = re.compile(r"(?<=[.!?\]])\s+(?=[A-Z0-9\"'(])")
_END = re.compile(r"([.!?]*)$")
_CLOSED = re.compile(r"[.!?\]]\W*$")
_ANSWER_LABEL = re.compile(r"^\W*(?:final\s*)?answer\s*:\s*", re.IGNORECASE)
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


class Agent:
    """Answers one question at a time with a model (or extractively, `llm` None) over a search
    tool; `embed` gives the sentence vectors of extractive answers and of the relevance check
    (`Searcher.embed`, through a `SentenceVectors` cache in the server)."""

    def __init__(self, search: SearchTool, llm: ChatLLM | None, model: str,
                 max_steps: int, max_seconds: float, *, embed: Embed,
                 mode: str = "react") -> None:
        if mode not in ANSWER_MODES:
            raise ValueError(f"mode must be one of {', '.join(ANSWER_MODES)}, not {mode!r}")
        self.search_tool = search
        self.llm = llm
        self.model = model
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.embed = embed
        self.mode = mode

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
        self.articles: list[dict[str, Any]] = []  # citation [n] is articles[n - 1]
        self.numbers: dict[str, int] = {}  # article id -> n
        self.passages: list[tuple[int, dict[str, Any]]] = []  # (n, passage), as retrieved
        self.searched: set[str] = set()
        self.trace: list[dict[str, Any]] = []
        self.search_seconds = 0.0
        self.llm_seconds = 0.0
        self.llm_calls = 0
        self.answer = ""
        self.cited: list[int] = []
        self.answered_by = EXTRACTIVE
        self.fallback: str | None = None

    def _step(self, kind: str, text: str, **extra: Any) -> dict[str, Any]:
        step = {"kind": kind, "text": text, **extra}
        self.trace.append(step)
        return {"event": "step", "step": step}

    def steps(self) -> Iterator[dict[str, Any]]:
        if self.agent.llm is None:
            yield from self._extractive(None)
        elif self.agent.mode == "grounded":
            yield from self._grounded(self.agent.llm)
        else:
            yield from self._react(self.agent.llm)

    def _remaining(self) -> float:
        return self.agent.max_seconds - (time.perf_counter() - self.started)

    def _complete(self, llm: ChatLLM, messages: list[dict[str, str]], stop: list[str]) -> str:
        started = time.perf_counter()
        try:
            return llm.complete(messages, stop, self._remaining())
        finally:
            self.llm_seconds += time.perf_counter() - started
            self.llm_calls += 1

    def _react(self, llm: ChatLLM) -> Iterator[dict[str, Any]]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *EXAMPLE,
                    {"role": "user", "content": f"Question: {self.question}"}]
        for _ in range(self.agent.max_steps):
            if self._remaining() <= 0:
                yield from self._extractive(f"the model ran out of time "
                                            f"({self.agent.max_seconds:g} s)")
                return
            try:
                text = self._complete(llm, messages, STOP)
            except LLMError as exc:
                yield from self._extractive(str(exc))
                return
            reply = parse_reply(text)
            if reply.thought:
                yield self._step("thought", reply.thought)
            said = f"Thought: {reply.thought}\nAction: search[{reply.search}]"
            if reply.search and reply.search.lower() in self.searched:
                observation = ("You already searched for that. Answer now: Final Answer: ... "
                               "citing the passages above by number, like [1].")
                yield self._step("observation", observation)
            elif reply.search:
                self.searched.add(reply.search.lower())
                yield self._step("action", f"search[{reply.search}]", query=reply.search)
                observation, numbers = self._search(reply.search)
                yield self._step("observation", observation, sources=numbers)
            elif reply.answer and self.articles:
                answer, cited, problem = self._check(reply.answer)
                if problem is None:
                    yield self._accepted(answer, cited, reply.answer)
                    return
                observation = (f"Your answer {problem}. Answer again and cite the passages "
                               "you used by number, like [1].")
                yield self._refused(observation, text)
                said = text.strip()
            else:
                observation = ("Search first: reply with Action: search[your query]."
                               if reply.answer else "I could not read that. Reply with "
                               "Action: search[query] or Final Answer: ... with citations.")
                yield self._refused(observation, text)
                said = text.strip() or "(no reply)"
            messages += [{"role": "assistant", "content": said},
                         {"role": "user", "content": f"Observation: {observation}"}]
        yield from self._extractive(
            f"the model gave no cited final answer in {self.agent.max_steps} steps")

    def _grounded(self, llm: ChatLLM) -> Iterator[dict[str, Any]]:
        """One search for the question; the model gets what in it answers the question (the
        sentences an extractive answer would quote, with their articles' numbers) and
        writes the answer in one reply. Measured on the SmolLM2 model, this focus beat showing
        it the whole passages (benchmarks/qa_quality.py)."""
        yield self._step("action", f"search[{self.question}]", query=self.question)
        found, numbers = self._search(self.question)
        chosen = self._select()
        evidence = self._evidence(chosen)
        yield self._step("observation", evidence or found, sources=numbers)
        if not chosen:  # nothing relevant: the model is not asked
            yield from self._extractive(None, chosen)
            return
        messages = [{"role": "system", "content": GROUNDED_PROMPT}, *GROUNDED_EXAMPLE,
                    {"role": "user", "content": f"Passages:\n{evidence}\n\n"
                                                f"Question: {self.question}"}]
        try:
            text = self._complete(llm, messages, GROUNDED_STOP)
        except LLMError as exc:
            yield from self._extractive(str(exc), chosen)
            return
        reply = _ANSWER_LABEL.sub("", text.strip())
        if DECLINE.lower().rstrip(".") in reply.lower() and not CITATION.search(reply):
            self.answer, self.answered_by = DECLINE, self.agent.model
            yield self._step("answer", DECLINE, sources=[])
            return
        answer, cited, problem = self._check(reply)
        if problem is None:
            yield self._accepted(answer, cited, reply)
            return
        yield from self._extractive(f"the model's answer {problem}", chosen, reply=text)

    def _evidence(self, chosen: list[Sentence]) -> str:
        """The chosen sentences as the model reads them: a line per article, by number."""
        said: dict[int, list[str]] = {}
        for sentence in chosen:
            said.setdefault(self.passages[sentence.passage][0], []).append(
                for_model(sentence.text))
        return "\n".join(f"{self._heading(n)}: {' '.join(texts)}"
                         for n, texts in sorted(said.items()))

    def _heading(self, number: int) -> str:
        """[n] Title (year), as the model sees an article."""
        article = self.articles[number - 1]
        year = f" ({article['year']})" if article.get("year") else ""
        return f"[{number}] {for_model(article.get('title') or '') or 'Untitled'}{year}"

    def _check(self, text: str) -> tuple[str, list[int], str | None]:
        """A model's answer held to the passages: its own citations of retrieved articles only;
        a sentence it left uncited cites the article whose passages hold it, or goes (what no
        passage says is not an answer from the articles). Also the numbers cited and what is
        wrong with the answer (None: nothing)."""
        answer, _ = keep_citations(drop_quoted(text, self._quotable()), len(self.articles))
        kept = []
        sentences = _SENTENCE.split(answer)
        if len(sentences) > 1 and not _CLOSED.search(sentences[-1]):
            sentences.pop()  # cut off by the token limit: not a claim of the model's
        for sentence in sentences:
            said = CITATION.sub("", sentence)
            numbers = [int(n) for n in re.findall(r"\d+", " ".join(CITATION.findall(sentence)))]
            if numbers and not all(supported(said, self._text_of(n), SUPPORTED_SHARE)
                                   for n in numbers):
                return answer, [], "cites a source for what its passages do not say"
            if not numbers:
                holding = [n for n in range(1, len(self.articles) + 1)
                           if supported(said, self._text_of(n), SUPPORTED_SHARE)]
                if not holding or not _WORDS.search(said):
                    continue
                sentence = _END.sub(f" [{holding[0]}]\\1", sentence.rstrip(), count=1)
            kept.append(sentence)
        answer, cited = keep_citations(" ".join(kept), len(self.articles))
        if not cited:
            return answer, cited, "cites no passage"
        if len(_WORDS.findall(CITATION.sub("", answer))) < MIN_ANSWER_WORDS:
            return answer, cited, "says nothing but citations"
        return answer, cited, None

    def _accepted(self, answer: str, cited: list[int], wrote: str) -> dict[str, Any]:
        """The model's answer as accepted; when checking it changed it, with what it wrote."""
        self.answer, self.cited, self.answered_by = answer, cited, self.agent.model
        extra = {} if answer == wrote.strip() else {"reply": wrote.strip()[:REPLY_CHARS]}
        return self._step("answer", answer, sources=cited, **extra)

    def _text_of(self, number: int) -> str:
        """The passages of article `number` that were found: what a citation of it vouches
        for (its title is not: a model that echoes a title has not answered)."""
        return " ".join(p["text"] for p in self.articles[number - 1]["passages"])

    def _refused(self, observation: str, reply: str) -> dict[str, Any]:
        """An observation that refuses a reply, with the model's own text for the trace."""
        return self._step("observation", observation, reply=reply.strip()[:REPLY_CHARS])

    def _search(self, query: str) -> tuple[str, list[int]]:
        """Run the search tool: the passages it found for the model to read, grouped by article
        (at most OBSERVATION_CHARS of each), and the articles' numbers; a new article gets the
        next."""
        started = time.perf_counter()
        try:
            hits = self.agent.search_tool(query)
        except QueryError as exc:
            return f"The search failed: {exc}.", []
        finally:
            self.search_seconds += time.perf_counter() - started
        if not hits:
            return "No passage matched that search. Try other words.", []
        found: dict[int, list[str]] = {}
        for hit in hits:
            found.setdefault(self._add(hit), []).append(
                _cut(for_model(hit["text"]), OBSERVATION_CHARS))
        return ("\n".join(f"{self._heading(n)}: {' ... '.join(texts)}"
                          for n, texts in found.items()), list(found))

    def _add(self, hit: dict[str, Any]) -> int:
        """File a hit under its article (numbered on first sight); the article's number."""
        key = str(hit.get("article_id") or hit["passage_id"])
        number = self.numbers.get(key)
        if number is None:
            self.articles.append({**{k: v for k, v in hit.items() if k not in PASSAGE_FIELDS},
                                  "passages": []})
            number = self.numbers[key] = len(self.articles)
        article = self.articles[number - 1]
        if all(p["passage_id"] != hit["passage_id"] for p in article["passages"]):
            passage = {k: hit[k] for k in PASSAGE_FIELDS if k in hit}
            article["passages"].append(passage)
            self.passages.append((number, passage))
        return number

    def _quotable(self) -> list[str]:
        """The retrieved titles and texts as written, markers included: what a model's answer
        may quote from."""
        return [*(a.get("title") or "" for a in self.articles),
                *(p["text"] for _, p in self.passages)]

    def _select(self) -> list[Sentence]:
        return select(self.question, [(str(n), p["text"]) for n, p in self.passages],
                      self.agent.embed)

    def _extractive(self, reason: str | None, chosen: list[Sentence] | None = None,
                    reply: str | None = None) -> Iterator[dict[str, Any]]:
        """The extractive answer over what was retrieved (searching for the question itself
        when nothing was); `reason` says why the model's answer is not used, `reply` is the
        model's refused text."""
        self.fallback = reason
        self.answered_by = EXTRACTIVE
        if reason:
            extra = {"reply": reply.strip()[:REPLY_CHARS]} if reply is not None else {}
            yield self._step("fallback", f"Extractive answer instead: {reason}.", **extra)
        if not self.passages:
            yield self._step("action", f"search[{self.question}]", query=self.question)
            observation, numbers = self._search(self.question)
            yield self._step("observation", observation, sources=numbers)
        if chosen is None:
            chosen = self._select()
        answer = " ".join(f"{s.text} [{self.passages[s.passage][0]}]" for s in chosen)
        self.answer, self.cited = keep_citations(answer, len(self.articles))
        if not self.cited:
            self.answer = DECLINE
        yield self._step("answer", self.answer, sources=self.cited)

    def result(self) -> dict[str, Any]:
        sources = [{"n": n, **article, "cited": n in self.cited}
                   for n, article in enumerate(self.articles, start=1)]
        return {
            "question": self.question,
            "answer": self.answer,
            "model": self.agent.model,
            "answered_by": self.answered_by,
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


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars].rsplit(" ", 1)[0] + " ..."
