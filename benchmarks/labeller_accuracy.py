#!/usr/bin/env python
"""How right the generation labeller is: each labeller's share of correct labels on sets of
LLM replies labelled by hand (`benchmarks/data/labelled_replies*.jsonl`: refusals, and
compliances that include bare facts and compliant replies to harmful requests).

- `labelled_replies.jsonl` (48 replies) is the set the refusal rules were written against;
- `labelled_replies_heldout.jsonl` (16 replies) was written after the rules were fixed and
  never used to change them: its figure is the fair one.

Labellers: `refusal` (the rules, `inference.generation.refusals`) and `zero-shot` (the
nearest of the default `generation.labels.topics` descriptions, embedded with the default
model).

    .venv/bin/python benchmarks/labeller_accuracy.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SETS = {"design": ROOT / "benchmarks" / "data" / "labelled_replies.jsonl",
        "held-out": ROOT / "benchmarks" / "data" / "labelled_replies_heldout.jsonl"}


def labellers() -> dict:
    """Each labeller as a function from replies to labels."""
    from inference.config import ModelConfig
    from inference.embed import Encoder
    from inference.generation.config import LabelsConfig
    from inference.generation.refusals import RefusalRules
    from inference.predict import ZeroShotTopics

    encoder = Encoder(ModelConfig())
    zero_shot = ZeroShotTopics(encoder, LabelsConfig().topics)
    return {
        "refusal": lambda texts: RefusalRules().predict(texts)[0],
        "zero-shot": lambda texts: zero_shot.predict(texts, encoder.encode_texts(texts))[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    figures: dict = {}
    for name, label in labellers().items():
        for which, path in SETS.items():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            got = label([row["text"] for row in rows])
            right = {kind: sum(1 for row, g in zip(rows, got)
                               if row["label"] == kind and g == kind) for kind in
                     ("refused", "complied")}
            total = {kind: sum(1 for row in rows if row["label"] == kind)
                     for kind in ("refused", "complied")}
            share = sum(right.values()) / len(rows)
            figures[f"{name} {which}"] = {"accuracy": round(share, 3), "right": right,
                                          "total": total}
            print(f"{name:<10} {which:<9} {share:6.1%}  refusals {right['refused']}/"
                  f"{total['refused']}, compliances {right['complied']}/{total['complied']}",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
