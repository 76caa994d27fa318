#!/usr/bin/env python
"""QA quality: the project's question set answered over the demo index, per answer model.

The question set (`qa_api/data/qa_questions.jsonl`, shipped with the package) holds questions
the demo corpus answers, each with its gold article and key facts, and questions it cannot
answer. A key fact is a list of alternatives; it is present when the answer holds one of them
(lower case, punctuation as spaces, matched at the start of a word, so "calibrat" matches
"calibration"). Each question is asked as a user would, without a topic, with the API's
default settings, through the same `QAService` that `qa-api` runs.

What it prints, per model (and with --json, one JSON line at the end):
  gold cited   answerable questions whose answer cites the gold article (%)
  key facts    answerable questions whose answer holds every key fact (%)
  declined     unanswerable questions answered without any citation (%)
  precision    citations whose cited text comes from the article cited: at least 80% of the
               text's content words occur in that article's retrieved passages (verbatim
               quotes score 1; a paraphrase that keeps the passage's words also counts)
  mean, p95    latency per question in ms, search included, measured around the agent's run

    .venv/bin/python benchmarks/qa_quality.py                      # every model in the config
    .venv/bin/python benchmarks/qa_quality.py --model extractive --json
    .venv/bin/python benchmarks/qa_quality.py --model smollm2 --set qa.models.smollm2.mode=react
    .venv/bin/python benchmarks/qa_quality.py --model extractive \
        --questions qa_api/data/qa_questions_heldout.jsonl      # the held-out set
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qa_api.agent import SUPPORTED_SHARE  # noqa: E402  (after the path is set)
from qa_api.citations import cited_pieces  # noqa: E402
from qa_api.extractive import supported  # noqa: E402

QUESTIONS = ROOT / "qa_api" / "data" / "qa_questions.jsonl"  # package data of qa_api


def normalise(text: str) -> str:
    """Lower case, citation markers dropped, anything but letters and digits a single space;
    with a leading space so a match can be anchored at a word start."""
    text = re.sub(r"\[\d+(?:\s*,\s*\d+)*\]", " ", text.lower())
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def has_fact(answer: str, alternatives: list[str]) -> bool:
    text = normalise(answer)
    return any(normalise(alternative) in text for alternative in alternatives)


def score(question: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """What one answer achieved: gold cited, facts held, declined, citations checked/right."""
    sources = {s["n"]: s for s in result["sources"]}
    cited = {s["article_id"] for s in result["sources"] if s["cited"]}
    checked = right = 0
    for text, numbers in cited_pieces(result["answer"]):
        for n in numbers:
            checked += 1
            source = sources.get(n)
            passages = " ".join(p["text"] for p in source["passages"]) if source else ""
            right += bool(source) and supported(text, passages, SUPPORTED_SHARE)
    return {"id": question["id"], "question": question["question"],
            "answer": result["answer"], "answered_by": result["answered_by"],
            "gold": question["article"] in cited if question["article"] else None,
            "facts": all(has_fact(result["answer"], f) for f in question["facts"])
            if question["article"] else None,
            "declined": not cited, "checked": checked, "right": right}


def ensure_demo(workdir: Path) -> None:
    """The demo corpus run and indexed in `workdir`, unless it already is."""
    if (workdir / "index").is_dir():
        return
    subprocess.run([sys.executable, "-m", "infer_corpus", "run", "--demo", "--workdir",
                    str(workdir)], check=True, stdout=subprocess.DEVNULL)


def run_model(service: Any, name: str, questions: list[dict[str, Any]],
              verbose: bool) -> dict[str, Any]:
    from qa_api.app import ReactRequest

    service.agent(ReactRequest(question="warm up", model=name)).run("warm up")
    rows, seconds = [], []
    for question in questions:
        agent = service.agent(ReactRequest(question=question["question"], model=name))
        started = time.perf_counter()
        result = agent.run(question["question"])
        seconds.append(time.perf_counter() - started)
        rows.append(score(question, result))
        row = rows[-1]
        if verbose and (row["gold"] is False or row["facts"] is False
                        or (row["gold"] is None and not row["declined"])
                        or row["right"] < row["checked"]):
            print(f"  {row['id']} {row['question']}\n    -> {row['answer']}", flush=True)
    answerable = [r for r in rows if r["gold"] is not None]
    unanswerable = [r for r in rows if r["gold"] is None]
    checked = sum(r["checked"] for r in rows)
    ms = np.array(seconds) * 1000
    return {
        "model": name,
        "mode": "-" if service.config.models[name].backend == "extractive"
        else service.config.models[name].mode,
        "answerable": len(answerable), "unanswerable": len(unanswerable),
        "gold_cited_pct": round(100 * sum(r["gold"] for r in answerable) / len(answerable), 1),
        "key_facts_pct": round(100 * sum(r["facts"] for r in answerable) / len(answerable), 1),
        "declined_pct": round(100 * sum(r["declined"] for r in unanswerable)
                              / len(unanswerable), 1),
        "citation_precision": round(sum(r["right"] for r in rows) / checked, 3)
        if checked else None,
        "model_answers_pct": round(100 * sum(r["answered_by"] == name for r in rows)
                                   / len(rows), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[],
                        help="an answer model of the config's qa.models (repeatable; default: all)")
    parser.add_argument("--config", help="YAML config (its qa section); default: built-in")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config option (repeatable)")
    parser.add_argument("--workdir", default=str(ROOT / "bench-work" / "qa-demo"),
                        help="an indexed workdir of the demo corpus (made when missing)")
    parser.add_argument("--questions", default=str(QUESTIONS),
                        help="a question set in the same format (default: the shipped one; "
                        "qa_api/data/qa_questions_heldout.jsonl was written after the "
                        "extractive settings were chosen, and never used to choose them)")
    parser.add_argument("--verbose", action="store_true", help="print each missed question")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from infer_corpus.config import load_config
    from qa_api.app import QAService

    config = load_config(args.config, args.overrides).qa
    names = args.model or list(config.models)
    unknown = [n for n in names if n not in config.models]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (known: {', '.join(config.models)})")
    workdir = Path(args.workdir)
    ensure_demo(workdir)
    questions = [json.loads(line) for line in Path(args.questions).read_text().splitlines()
                 if line]
    service = QAService(workdir, config)
    service.warm_up()
    results = []
    print(f"{'model':<12} {'mode':<9} {'gold cited':>10} {'key facts':>9} {'declined':>8} "
          f"{'precision':>9} {'mean ms':>8} {'p95 ms':>8}", flush=True)
    for name in names:
        row = run_model(service, name, questions, args.verbose)
        results.append(row)
        precision = "-" if row["citation_precision"] is None else row["citation_precision"]
        print(f"{name:<12} {row['mode']:<9} {row['gold_cited_pct']:>9}% "
              f"{row['key_facts_pct']:>8}% {row['declined_pct']:>7}% {precision:>9} "
              f"{row['mean_ms']:>8} {row['p95_ms']:>8}", flush=True)
    if args.json:
        print(json.dumps({"question_set": Path(args.questions).name,
                          "questions": len(questions), "models": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
