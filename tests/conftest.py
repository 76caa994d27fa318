"""Shared fixtures. Data under ../shared is read in place and tests skip cleanly without it.

The tests by kind: `unit/` (modules in this process), `e2e/` (the commands, servers, the
browser and the replay harness, as users and the pool run them; a file sits with the kind of
most of its tests) and `support/` (the replay harness and reference implementations, which
tests import by module name). One kind alone: `./dev test tests/unit`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
CRANFIELD = SHARED / "corpora" / "cranfield"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `infer-corpus` as a user would, in a separate process."""
    proc = subprocess.run(
        [sys.executable, "-m", "infer_corpus", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"infer-corpus {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record if isinstance(record, str) else json.dumps(record))
            handle.write("\n")
    return path


@pytest.fixture(scope="session")
def demo_path() -> Path:
    from inference.demo import demo_corpus_path

    return demo_corpus_path()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The demo corpus run once end to end through the CLI, shared by the tests that read it."""
    workdir = tmp_path_factory.mktemp("demo") / "work"
    proc = run_cli("run", "--demo", "--workdir", str(workdir), "--json",
                   "--set", "shards.passages_per_shard=30")
    return workdir, last_json(proc.stdout)


@pytest.fixture(scope="session")
def cranfield() -> Path:
    if not (CRANFIELD / "corpus.jsonl").is_file():
        pytest.skip("../shared/corpora/cranfield is not present")
    return CRANFIELD
