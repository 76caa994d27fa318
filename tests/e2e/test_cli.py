"""Usage mistakes get a one-line error and exit code 2, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli, write_jsonl


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--workdir", "{tmp}/w"], "no input"),
        (["run", "--input", "{tmp}/missing.jsonl", "--workdir", "{tmp}/w"], "no such file"),
        (["run", "--input", "{tmp}/x.txt", "--workdir", "{tmp}/w"], "unsupported input format"),
        (["partition", "--demo", "--workdir", "{tmp}/w", "--set", "model.bach=1"],
         "unknown config key model.bach"),
        (["status", "--workdir", "{tmp}/nothing"], "no manifest.json"),
        (["shard", "--workdir", "{tmp}/nothing", "--shard", "0"], "no manifest.json"),
    ],
)
def test_usage_errors(tmp_path, args, message):
    (tmp_path / "x.txt").write_text("hello")
    proc = run_cli(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shard_number_out_of_range(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "title": "T", "abstract": "A."}])
    run_cli("partition", "--input", str(src), "--workdir", str(tmp_path / "w"))
    proc = run_cli("shard", "--workdir", str(tmp_path / "w"), "--shard", "7", check=False)
    assert proc.returncode == 2 and "shards 0..0" in proc.stderr


def test_help_explains_the_commands():
    out = run_cli("--help").stdout
    for command in ("run", "partition", "shard", "status"):
        assert command in out
    assert "--set" in run_cli("run", "--help").stdout


def test_pipeline_and_retrieval_never_import_the_layers_above_them():
    """inference/ and retrieval/ stand alone (lint-imports checks the whole layering)."""
    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"^\s*(from|import)\s+(submit|qa_api|infer_corpus)\b", re.MULTILINE)
    offenders = [str(path.relative_to(root)) for package in ("inference", "retrieval")
                 for path in (root / package).rglob("*.py") if pattern.search(path.read_text())]
    assert offenders == []


def test_submit_is_an_infer_corpus_command(capsys):
    from infer_corpus.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--help"])
    assert exit_info.value.code == 0 and "--dry-run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setting, message",
    [
        ("model.name=", "model name is empty"),
        ("model.name=https://example.org/model", "is a URL"),
        ("model.name={tmp}/x.txt", "is a file, not a model folder"),
        ("model.device=tpu", "model.device must be auto, cpu, cuda or cuda:N"),
        # known before any work, without loading weights (HF_HUB_OFFLINE in the tests)
        ("model.name=no-such-model-xyz", "'no-such-model-xyz' is not a local folder, a "
         "packaged model (all-MiniLM-L6-v2) or in the Hugging Face cache"),
        ("model.name={tmp}", "holds no config.json"),
        ("model.max_seq_length=100000", "model.max_seq_length 100,000 is beyond the limit "
         "of model 'all-MiniLM-L6-v2', 512 tokens"),
    ],
)
def test_run_with_a_bad_model_exits_2_in_one_line(tmp_path, setting, message):
    (tmp_path / "x.txt").write_text("not a model")
    proc = run_cli("run", "--demo", "--workdir", str(tmp_path / "w"), "--set",
                   setting.format(tmp=tmp_path), check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()  # refused before any work


def test_run_on_cuda_without_a_gpu_exits_2_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli("run", "--demo", "--workdir", str(tmp_path / "w"), "--set",
                   "model.device=cuda", check=False)
    assert proc.returncode == 2 and "no CUDA GPU is visible" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_closed_stdout_ends_quietly(demo_run):
    """`infer-corpus status --json | head`: the reader is gone; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # nobody will read: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "infer_corpus", "status", "--workdir",
                               str(demo_run[0]), "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_search_with_an_unknown_topic_exits_2_and_lists_the_topics(demo_run):
    proc = run_cli("search", "--workdir", str(demo_run[0]), "ice", "--topic", "nope",
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "unknown topic 'nope'; the index's topics: climate-change, covid-19" in proc.stderr
    known = run_cli("search", "--workdir", str(demo_run[0]), "ice", "--topic", "geoarchives")
    assert known.stdout.startswith(" 1.")


def test_a_hit_is_one_line_whatever_its_id_holds(tmp_path):
    articles = write_jsonl(tmp_path / "a.jsonl", [
        {"id": "line\nbreak", "title": "Glacier ice\r\ncores", "abstract": "Ice cores hold "
         "bubbles of ancient air that record past climate."},
        {"id": "tab\tbed", "title": "Tree rings", "abstract": "Tree rings record droughts."},
    ])
    workdir = tmp_path / "w"
    run_cli("run", "--input", str(articles), "--workdir", str(workdir),
            "--set", "predictions.kind=none", "--set", "model.max_seq_length=64")
    out = run_cli("search", "--workdir", str(workdir), "ice cores tree rings", "--mode",
                  "bm25").stdout
    assert out.splitlines() == [line for line in out.splitlines() if line[:3] in (" 1.", " 2.")]
    assert "[line\\nbreak#0]" in out and "[tab\\tbed#0]" in out


def test_the_eval_table_is_aligned(capsys):
    from infer_corpus.cli import _print_eval

    scores = {"ndcg@10": 0.41234, "recall@100": 0.8}
    against = {"base": 0.4, "change": 0.0123, "p": 0.031}
    _print_eval({"queries": 112, "split": "test", "model": "tuned", "default": "feedback",
                 "modes": {mode: scores for mode in ("feedback", "hybrid", "rrf", "bm25")},
                 "against": {"modes": {"feedback": against, "hybrid": against}}})
    head, *rows = capsys.readouterr().out.splitlines()
    assert head == "112 judged queries (test); model tuned; default mode: feedback"
    assert len(rows) == 4 and len({row.index("nDCG@10") for row in rows}) == 1
    assert len({row.index("recall@100") for row in rows}) == 1
    assert rows[0].endswith("against 0.4000: +0.0123 (p = 0.0310)")
    assert "against" not in rows[2]  # rrf: not in the earlier run


def test_the_summary_counts_kept_articles_and_duplicates_on_their_own_line(tmp_path):
    """An article given twice is one article kept and one duplicate dropped, in the text
    summary as in --json (it counted as two articles, with the drop shown nowhere)."""
    same = {"id": "a", "title": "Same", "abstract": "Identical abstract text."}
    src = write_jsonl(tmp_path / "x.jsonl", [same, same, {"id": "b", "title": "Other"}])
    proc = run_cli("partition", "--input", str(src), "--workdir", str(tmp_path / "w"))
    lines = proc.stdout.splitlines()
    assert re.search(r"^articles\s+2\s+kept$", lines[0]), proc.stdout
    assert re.search(r"^duplicates\s+1\s+articles seen before, dropped$", lines[1]), proc.stdout
    assert re.search(r"^passages\s+2\s", lines[2]), proc.stdout
