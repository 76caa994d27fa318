"""The workdir: the unit of a run, and atomic file writes so a killed run never leaves half a file.

Layout: `manifest.json`, `shards/`, `results/`, `rejects/`, `logs/`. A file that exists under
its final name is complete; work in progress lives under a hidden temporary name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class WorkdirError(RuntimeError):
    """The workdir is missing, damaged, or belongs to a different run."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success fsync it and rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


class Workdir:
    """Paths inside one run's directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def rejects_dir(self) -> Path:
        return self.root / "rejects"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def shard_path(self, shard: int) -> Path:
        return self.shards_dir / f"shard-{shard:05d}.parquet"

    def result_path(self, shard: int) -> Path:
        return self.results_dir / f"shard-{shard:05d}.parquet"

    def create(self) -> None:
        for path in (self.shards_dir, self.results_dir, self.rejects_dir, self.logs_dir):
            path.mkdir(parents=True, exist_ok=True)

    def has_manifest(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            raise WorkdirError(
                f"{self.root} has no {MANIFEST}: run `infer-corpus partition` (or `run`) first"
            )
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkdirError(f"cannot read {self.manifest_path}: {exc}") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path, manifest)
