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
    """inference/ and retrieval/ stand alone; `submit` reaches the CLI as a plugin."""
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"^\s*(from|import)\s+(submit|qa_api)\b", re.MULTILINE)
    offenders = [str(path.relative_to(root)) for package in ("inference", "retrieval")
                 for path in (root / package).rglob("*.py") if pattern.search(path.read_text())]
    assert offenders == []


def test_submit_is_a_plugin_command(capsys):
    from inference.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--help"])
    assert exit_info.value.code == 0 and "--dry-run" in capsys.readouterr().out
