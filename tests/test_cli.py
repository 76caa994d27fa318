"""Usage mistakes get a one-line error and exit code 2, never a traceback."""

from __future__ import annotations

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
