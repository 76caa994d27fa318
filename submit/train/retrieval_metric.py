"""The retrieval metric of embedder sweeps (`metric: ndcg@10`): how well the project's own
search finds the judged documents of a BEIR-layout collection with a fine-tuned model.

`infer-corpus eval` does the judging, in a process of its own (the HTCondor layer never
imports the search stack): it embeds the collection's corpus with the model, indexes it and
scores every search mode over one half of the queries, split by a hash of the query id.
Trials are ranked on the dev half; the best one is reported on the test half only, against
the model it started from, with a paired randomization test, so the figure that is reported
was never used to choose.

Each judgement is kept as the eval's JSON beside what it judged (`FOLDER-dev-eval.json` next
to a model folder, `base-SPLIT-eval.json` in the sweep directory), with what it depends on:
the model, the state of its folder's files (a folder written again is judged again) and the
collection. Asked again for the same, it is read back, not recomputed. The eval's own
workdir (the embedded corpus and its index) is temporary.
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from inference.errors import Failure
from inference.workdir import write_json_atomic

from . import TrainError

NDCG = "ndcg@10"
COLLECTION_FILES = ("corpus.jsonl", "queries.jsonl", "qrels.tsv")


def check_collection(given: str) -> Path:
    """The collection folder, absolute (DAG scripts run from the DAG's directory), once it is
    known to hold a corpus, queries and at least one positive relevance judgement."""
    folder = Path(given).expanduser().resolve()
    if not folder.is_dir():
        raise TrainError(f"retrieval.collection: {given} is not a folder (a BEIR-layout "
                         f"collection: {', '.join(COLLECTION_FILES)})")
    for name in COLLECTION_FILES[:2]:
        if not (folder / name).is_file():
            raise TrainError(f"retrieval.collection: {given} is not a BEIR-layout collection: "
                             f"no {name}")
    if not _has_judgements(folder / "qrels.tsv"):
        raise TrainError(f"retrieval.collection: {given} has no relevance judgements "
                         "(qrels.tsv: query-id, corpus-id and a score > 0 per line), which "
                         f"metric {NDCG} needs")
    return folder


def _has_judgements(qrels: Path) -> bool:
    if not qrels.is_file():
        return False
    with open(qrels, encoding="utf-8", newline="") as handle:
        return any(len(row) >= 3 and row[2].strip().isdigit() and int(row[2]) > 0
                   for row in csv.reader(handle, delimiter="\t"))


def _eval_file(model_dir: Path, split: str) -> Path:
    """Where a model folder's judgement on `split` is kept: beside the folder."""
    return model_dir.with_name(f"{model_dir.name}-{split}-eval.json")


def _identity(collection: Path, model: str) -> dict[str, str | None]:
    """What a kept judgement must match to be read back: the model, its folder's files
    (names, sizes, modification times; None for a model that is not a folder) and the
    collection."""
    folder = Path(model)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    listing = "".join(f"{p.relative_to(folder)}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}\n"
                      for p in files)
    return {"model": model, "collection": str(collection),
            "model_files": hashlib.sha256(listing.encode()).hexdigest()[:16] if files else None}


def _judge(collection: Path, model: str, split: str, out: Path, workdir: Path,
          against: Path | None = None) -> dict[str, Any]:
    """`infer-corpus eval` of `model` on the `split` half of `collection` (with `--against`
    an earlier judgement of the same half), kept in `out`, and read back from there while
    what it depends on is unchanged. `workdir` is the eval's, which a second split of the
    same model reuses without embedding again."""
    depends = {**_identity(collection, model), "split": split}
    if against:
        base = json.loads(against.read_text(encoding="utf-8"))
        depends["against_depends"] = base["depends"]
    if out.is_file():
        kept = json.loads(out.read_text(encoding="utf-8"))
        if kept.get("depends") == depends:
            return kept
    command = [sys.executable, "-m", "infer_corpus", "eval", "--collection", str(collection),
               "--workdir", str(workdir), "--split", split, "--set", f"model.name={model}",
               "--set", "predictions.kind=none", "--json"]
    if against:
        command += ["--against", str(against)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise Failure(f"judging {model} on {collection} ({split} queries) failed: {why}")
    report = {**json.loads(proc.stdout.strip().splitlines()[-1]), "depends": depends}
    if not report["queries"]:
        raise TrainError(f"retrieval.collection: {collection} has no judged query in its "
                         f"{split} half (queries are split by a hash of their id): it needs "
                         "more judged queries")
    write_json_atomic(out, report)
    return report


def _default_ndcg(report: dict[str, Any]) -> float:
    """A judgement's figure: nDCG@10 of the default search mode, the one users get."""
    return float(report["modes"][report["default"]][NDCG])


def ndcg_on_dev(collection: Path, model_dir: Path) -> float:
    """nDCG@10 (default search mode) of a model folder on the dev half of `collection`,
    judged once and kept beside the folder."""
    model_dir = model_dir.resolve()
    with tempfile.TemporaryDirectory(prefix=".eval-", dir=model_dir.parent) as scratch:
        return _default_ndcg(_judge(collection, str(model_dir), "dev",
                                    _eval_file(model_dir, "dev"), Path(scratch) / "work"))


def compare_on_test(collection: Path, base_model: str, tuned: Path,
                    sweep_dir: Path) -> dict[str, Any]:
    """The tuned model folder against the model it started from, on the test half: per
    search mode (the default first) both nDCG@10s, the change and the paired randomization
    test's p-value; the dev half's default-mode figures beside them."""
    tuned = tuned.resolve()
    with tempfile.TemporaryDirectory(prefix=".eval-", dir=sweep_dir) as scratch:
        work = Path(scratch) / "work"
        base = {split: _judge(collection, base_model, split,
                             sweep_dir / f"base-{split}-eval.json", work)
                for split in ("dev", "test")}
    with tempfile.TemporaryDirectory(prefix=".eval-", dir=tuned.parent) as scratch:
        tested = _judge(collection, str(tuned), "test", _eval_file(tuned, "test"),
                       Path(scratch) / "work", against=sweep_dir / "base-test-eval.json")
    modes = tested["against"]["modes"]
    default = tested["default"]
    return {"collection": str(collection), "split": "test", "queries": tested["queries"],
            "base_model": base_model, "model": str(tuned), "default": default,
            "modes": {default: modes[default],
                      **{mode: row for mode, row in modes.items() if mode != default}},
            "dev": {"base": _default_ndcg(base["dev"]),
                    "tuned": ndcg_on_dev(collection, tuned)}}


def describe(comparison: dict[str, Any]) -> list[str]:
    """The test-half comparison as lines for people, the default mode first."""
    lines = [f"test half of {comparison['collection']} ({comparison['queries']} queries), "
             f"{NDCG} against the base model {comparison['base_model']}:"]
    width = max(map(len, comparison["modes"]))
    for mode, row in comparison["modes"].items():
        mark = " (default)" if mode == comparison["default"] else ""
        lines.append(f"  {mode:<{width}}  base {row['base']:.4f}  tuned {row[NDCG]:.4f}  "
                     f"change {row['change']:+.4f}  p = {row['p']:.4f}{mark}")
    return lines
