"""Training pairs for the embedder trials, from the demo corpus's partitioned workdir."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, write_jsonl

from inference.errors import WorkdirError
from inference.passages import split_sentences
from inference.workdir import Workdir
from submit.train import TrainError
from submit.train.pairs import load_pairs, make_pairs, save_pairs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "run"
    run_cli("partition", "--demo", "--workdir", str(path),
            "--set", "shards.passages_per_shard=30", "--set", "predictions.kind=none")
    return path


def passages(workdir: Path) -> dict[str, dict]:
    """Every passage of the workdir's shards by passage id."""
    work = Workdir(workdir)
    rows = {}
    for entry in work.manifest().shards:
        for row in pq.read_table(work.shard_path(entry.shard)).to_pylist():
            rows[row["passage_id"]] = row
    return rows


def assert_split_by_article(pairs) -> None:
    sides: dict[str, set[bool]] = {}
    for article, held in zip(pairs.column("article_id").to_pylist(),
                             pairs.column("validation").to_pylist()):
        sides.setdefault(article, set()).add(held)
    assert all(len(s) == 1 for s in sides.values()), "an article on both sides"
    assert 0 < sum(pairs.column("validation").to_pylist()) < pairs.num_rows


def test_title_pairs_are_each_passage_with_its_article_title(workdir):
    rows = passages(workdir)
    pairs = make_pairs(workdir, "title", val_fraction=0.2)
    titled = {pid for pid, row in rows.items() if row["title"]}
    assert pairs.num_rows == len(titled) > 0
    by_text = {(row["text"], row["article_id"]): row for row in rows.values()}
    for pair in pairs.to_pylist():
        row = by_text[(pair["positive"], pair["article_id"])]
        assert pair["query"] == row["title"]
    assert_split_by_article(pairs)
    assert make_pairs(workdir, "title", val_fraction=0.2).equals(pairs)  # stable


def test_ict_pairs_take_one_sentence_out_of_the_passage(workdir):
    rows = passages(workdir)
    pairs = make_pairs(workdir, "ict", val_fraction=0.2)
    several = [row for row in rows.values() if len(split_sentences(row["text"])) > 1]
    assert pairs.num_rows == len(several)
    for pair, row in zip(pairs.to_pylist(), several):
        sentences = split_sentences(row["text"])
        assert pair["query"] in sentences
        assert pair["query"] not in pair["positive"]
        assert len(split_sentences(pair["positive"])) == len(sentences) - 1
    assert_split_by_article(pairs)
    assert make_pairs(workdir, "ict", val_fraction=0.2).equals(pairs)  # stable
    other = make_pairs(workdir, "ict", val_fraction=0.2, seed=1)
    assert other.column("query") != pairs.column("query")  # the seed picks the sentence
    assert other.column("validation") == pairs.column("validation")  # not the split


def test_a_cap_keeps_a_stable_seeded_share(workdir, tmp_path):
    every = make_pairs(workdir, "ict", val_fraction=0.3)
    capped = make_pairs(workdir, "ict", val_fraction=0.3, max_pairs=20)
    assert capped.num_rows == 20
    assert capped.equals(make_pairs(workdir, "ict", val_fraction=0.3, max_pairs=20))
    assert set(capped.column("query").to_pylist()) <= set(every.column("query").to_pylist())
    reseeded = make_pairs(workdir, "ict", val_fraction=0.3, max_pairs=20, seed=3)
    assert set(reseeded.column("article_id").to_pylist()) != set(
        capped.column("article_id").to_pylist())
    save_pairs(capped, tmp_path / "pairs.parquet")
    assert load_pairs(tmp_path / "pairs.parquet").equals(capped)


def test_a_workdir_without_titles_is_one_line_naming_it(tmp_path):
    articles = [{"id": f"a{i}", "abstract": f"Sentence one of article {i}. Sentence two."}
                for i in range(20)]
    src = write_jsonl(tmp_path / "untitled.jsonl", articles)
    run_cli("partition", "--input", str(src), "--workdir", str(tmp_path / "w"),
            "--set", "predictions.kind=none")
    with pytest.raises(TrainError, match="no title pairs") as caught:
        make_pairs(tmp_path / "w", "title")
    assert str(tmp_path / "w") in str(caught.value) and "\n" not in str(caught.value)
    assert make_pairs(tmp_path / "w", "ict", val_fraction=0.3).num_rows == 20


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "abstract"}, "pair source must be one of title, ict, generated"),
    ({"source": "title", "val_fraction": 0.0}, "val_fraction must be between 0 and 1"),
    ({"source": "title", "max_pairs": -1}, "max_pairs must be >= 0"),
])
def test_bad_options_are_one_line(workdir, kwargs, message):
    with pytest.raises(TrainError, match=message):
        make_pairs(workdir, **kwargs)


def test_a_file_that_is_not_pairs_is_refused(workdir, tmp_path):
    with pytest.raises(TrainError, match="cannot read pairs file"):
        load_pairs(tmp_path / "missing.parquet")
    shard = Workdir(workdir).shard_path(0)
    with pytest.raises(TrainError, match="not a pairs file of schema infer-corpus.pairs"):
        load_pairs(shard)
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": []}))
    with pytest.raises(WorkdirError, match="partition step has not finished"):
        make_pairs(tmp_path, "title")
