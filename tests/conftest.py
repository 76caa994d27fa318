"""Shared fixtures. Data under ../shared is read in place and tests skip cleanly without it.

The tests by kind: `unit/` (modules in this process), `e2e/` (the commands, servers, the
browser and the replay harness, as users and the pool run them; a file sits with the kind of
most of its tests) and `support/` (the replay harness and reference implementations, which
tests import by module name). One kind alone: `./dev test tests/unit`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
CRANFIELD = SHARED / "corpora" / "cranfield"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Under `./dev test`'s parallel processes, a test marked `alone` (one that holds wall
    times to a model of them) runs while no other test runs: it takes the room exclusively,
    others share it. It holds the turnstile while it waits, which others pass on the way in,
    so that a steady stream of other tests cannot keep it out."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:  # one process: nothing runs beside a test
        return (yield)
    base = Path(tempfile.gettempdir()) / f"pytest-{run}"
    turnstile, room = base.with_suffix(".turnstile"), base.with_suffix(".room")
    if item.get_closest_marker("alone"):
        with _locked(turnstile, fcntl.LOCK_EX), _locked(room, fcntl.LOCK_EX):
            return (yield)
    with _locked(turnstile, fcntl.LOCK_EX):
        pass
    with _locked(room, fcntl.LOCK_SH):
        return (yield)


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
