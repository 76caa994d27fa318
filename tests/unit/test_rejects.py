"""Bad input never crashes a run and is never silently dropped: each bad row is a reject."""

from __future__ import annotations

import csv
import datetime
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from inference.config import FieldsConfig, load_config
from inference.partition import partition
from inference.records import Rejected, to_article
from inference.workdir import Workdir


def read_rejects(workdir: Workdir) -> list[dict]:
    path = workdir.rejects_dir / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def shard_rows(workdir: Workdir) -> list[dict]:
    rows = []
    for path in sorted(workdir.shards_dir.glob("shard-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def test_each_bad_jsonl_case_is_rejected_with_its_line_and_reason(tmp_path):
    good = {"id": "a1", "title": "Ice cores", "abstract": "Air bubbles keep old air."}
    src = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(good),                                                # 1 valid
        '{"id": "broken", "title": "no closing brace"',                  # 2 malformed json
        json.dumps([1, 2, 3]),                                           # 3 not an object
        json.dumps({"id": "empty", "title": "  ", "abstract": ""}),      # 4 no text
        json.dumps({"id": "t-only", "title": "Title without abstract"}),  # 5 valid
        json.dumps({"id": "long", "title": "x", "abstract": "y " * 600}),  # 6 too long
        json.dumps({"id": "typed", "abstract": {"nested": True}}),       # 7 bad type
    ]
    with open(src, "wb") as handle:
        for line in lines:
            handle.write(line.encode() + b"\n")
        handle.write(b'{"id": "bytes", "title": "caf\xe9 au lait"}\n')  # 8 undecodable
        handle.write(b"\n")                                              # blank: not a row
        handle.write(json.dumps({"id": "a1", "title": "Ice cores",
                                 "abstract": "Different text, same id."}).encode() + b"\n")  # 10
    workdir = Workdir(tmp_path / "work")
    config = load_config(None, ["passages.max_field_chars=1000"])
    summary = partition([str(src)], workdir, config, progress=False)

    rejects = read_rejects(workdir)
    found = {(r["line"], r["reason"]) for r in rejects}
    assert found == {
        (2, "malformed_json"), (3, "malformed_json"), (4, "no_text"), (6, "field_too_long"),
        (7, "bad_field_type"), (8, "undecodable_bytes"), (10, "duplicate_id"),
    }
    assert all(r["source"] == str(src) and r["detail"] for r in rejects)
    assert summary.rejected == 7
    assert summary.articles == 2
    assert summary.reject_reasons == {"bad_field_type": 1, "duplicate_id": 1, "field_too_long": 1,
                                      "malformed_json": 2, "no_text": 1, "undecodable_bytes": 1}
    ids = {row["passage_id"] for row in shard_rows(workdir)}
    assert ids == {"a1#0", "t-only#0"}
    manifest = workdir.manifest().data
    assert manifest["partition"]["rejected"] == 7


def test_csv_parquet_and_gzip_inputs_with_their_own_bad_rows(tmp_path):
    csv_path = tmp_path / "a.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "abstract", "authors", "year"])
        writer.writerow(["c1", "Lithium brines", "Evaporation ponds concentrate lithium.",
                         "Ana Ruiz; Li Wei", "2021"])
        writer.writerow(["c2", "Too few fields"])
        writer.writerow(["c3", "", "", "", ""])
    pq.write_table(pa.table({"doc_id": ["p1", "p2"], "title": ["Speleothems", None],
                             "text": ["Cave stones grow in layers.", None]}),
                   tmp_path / "b.parquet")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "g1", "title": "Varves", "abstract": "Lake layers."}))
        handle.write("\nnot json\n")
    workdir = Workdir(tmp_path / "work")
    summary = partition([str(tmp_path / "*")], workdir, load_config(), progress=False)

    reasons = {(r["source"].rsplit("/", 1)[-1], r["line"], r["reason"])
               for r in read_rejects(workdir)}
    assert reasons == {("a.csv", 3, "malformed_row"), ("a.csv", 4, "no_text"),
                       ("b.parquet", 2, "no_text"), ("c.jsonl.gz", 2, "malformed_json")}
    assert summary.articles == 3 and summary.rejected == 4
    rows = {row["article_id"]: row for row in shard_rows(workdir)}
    assert rows["c1"]["authors"] == ["Ana Ruiz", "Li Wei"] and rows["c1"]["year"] == 2021
    assert set(rows) == {"c1", "p1", "g1"}


def test_truncated_gzip_keeps_the_good_rows_and_rejects_the_rest(tmp_path):
    blob = gzip.compress(b"".join(
        json.dumps({"id": f"r{i}", "title": f"Title {i}", "abstract": "word " * 50}).encode()
        + b"\n" for i in range(2000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    workdir = Workdir(tmp_path / "work")
    summary = partition([str(tmp_path / "cut.jsonl.gz")], workdir, load_config(),
                        progress=False)
    rejects = read_rejects(workdir)
    assert [r["reason"] for r in rejects] == ["unreadable_file"]
    assert summary.articles > 0 and summary.rejected == 1


def test_a_bad_rows_raw_text_is_kept_for_inspection(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", ['{"id": 1, "title": oops}'])
    workdir = Workdir(tmp_path / "work")
    partition([str(src)], workdir, load_config(), progress=False)
    (reject,) = read_rejects(workdir)
    assert reject["raw"].startswith('{"id": 1')


def test_nan_and_infinite_years_become_null_and_the_run_goes_on(tmp_path):
    """pandas writes a missing integer as NaN: common in Parquet inputs."""
    table = pa.table({"id": ["a", "b", "c", "d"], "title": ["Alpha", "Beta", "Gamma", "Delta"],
                      "abstract": ["one text", "two text", "three text", "four text"],
                      "year": [2001.0, float("nan"), float("inf"), float("-inf")]})
    pq.write_table(table, tmp_path / "years.parquet")
    workdir = Workdir(tmp_path / "w")
    summary = partition([str(tmp_path / "years.parquet")], workdir, load_config(), progress=False)
    assert summary.articles == 4 and summary.rejected == 0
    assert {r["article_id"]: r["year"] for r in shard_rows(workdir)} == {
        "a": 2001, "b": None, "c": None, "d": None}
    assert workdir.manifest().partitioned


def test_authors_given_as_an_object_are_names_not_reprs(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [
        {"id": "1", "title": "One", "authors": {"name": "Ada Lovelace"}},
        {"id": "2", "title": "Two", "authors": [{"given": "Alan", "family": "Turing"}, "Grace"]},
        {"id": "3", "title": "Three", "authors": {"affiliation": "somewhere"}},
    ])
    workdir = Workdir(tmp_path / "w")
    partition([str(tmp_path / "a.jsonl")], workdir, load_config(), progress=False)
    assert {r["article_id"]: r["authors"] for r in shard_rows(workdir)} == {
        "1": ["Ada Lovelace"], "2": ["Alan Turing", "Grace"], "3": []}


def test_byte_order_marks_lose_no_column_and_no_record(tmp_path):
    (tmp_path / "b.csv").write_bytes('\ufeff"id","title"\r\nx1,First\r\nx2,Second\r\n'
                                     .encode("utf-8"))
    (tmp_path / "b.jsonl").write_bytes("\ufeff".encode() + b'{"id": "j1", "title": "Third"}\n'
                                       b'{"id": "j2", "title": "Fourth"}\n')
    workdir = Workdir(tmp_path / "w")
    summary = partition([str(tmp_path / "b.csv"), str(tmp_path / "b.jsonl")], workdir,
                        load_config(), progress=False)
    assert summary.rejected == 0
    assert sorted(r["article_id"] for r in shard_rows(workdir)) == ["j1", "j2", "x1", "x2"]


# --- every field's wrong types are rejects, naming the field; odd values of the right type are not

@pytest.mark.parametrize("field, value", [
    ("id", [1]), ("id", {"doi": "x"}), ("id", True),
    ("title", {"nested": [1, 2]}), ("title", [1, 2]), ("title", True),
    ("abstract", {"p": "text"}), ("abstract", ["one", 2]),
    ("topic", {"name": "x"}), ("topic", ["a", 1]),
    ("year", [1, 2]), ("year", {"y": 1999}), ("year", True),
    ("doi", ["10.1/x"]), ("url", 5), ("url", {"href": "https://x"}), ("url", False),
    ("authors", 7), ("authors", True), ("authors", [["Ada"]]), ("authors", ["Ada", 3]),
])
def test_a_wrong_field_type_is_a_reject_naming_the_field(field, value):
    record = {"id": "r1", "title": "Ice cores", "abstract": "Old air in bubbles.", field: value}
    with pytest.raises(Rejected, match=rf"field '{field}' must be") as info:
        to_article(record, FieldsConfig(), 10_000)
    assert info.value.reason == "bad_field_type"


@pytest.mark.parametrize("field, value, attribute, expected", [
    ("year", "1999-05", "year", 1999), ("year", 2001.0, "year", 2001),
    ("year", float("nan"), "year", None), ("year", "n.d.", "year", None),
    ("year", 10**12, "year", None), ("year", datetime.date(2004, 5, 1), "year", 2004),
    ("authors", {"name": "Ada"}, "authors", ["Ada"]), ("authors", "A; B", "authors", ["A", "B"]),
    ("authors", [{"given": "Alan", "family": "Turing"}, None], "authors", ["Alan Turing"]),
    ("doi", "10.1/x", "url", "https://doi.org/10.1/x"), ("id", 42, "article_id", "42"),
    ("abstract", ["Two", "paragraphs."], "text", "Two paragraphs."), ("topic", 7, "topic", "7"),
])
def test_values_of_the_right_type_are_kept(field, value, attribute, expected):
    record = {"id": "r1", "title": "Ice cores", "abstract": "Old air in bubbles.", field: value}
    assert getattr(to_article(record, FieldsConfig(), 10_000), attribute) == expected


def test_a_year_that_is_a_list_goes_to_the_rejects_file(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [
        {"id": "ok", "title": "Kept", "year": 2001},
        {"id": "bad", "title": "Listed year", "year": [1, 2]},
    ])
    workdir = Workdir(tmp_path / "work")
    summary = partition([str(src)], workdir, load_config(), progress=False)
    assert summary.rejected == 1
    (reject,) = read_rejects(workdir)
    assert (reject["line"], reject["reason"]) == (2, "bad_field_type")
    assert "'year'" in reject["detail"]
    assert [row["article_id"] for row in shard_rows(workdir)] == ["ok"]
