"""The workdir: the unit of a run, and atomic file writes so a killed run never leaves half a file.

Layout: `manifest.json`, `shards/`, `results/`, `rejects/`, `logs/`. A file that exists under
its final name is complete; work in progress lives under a hidden temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFullError, WorkdirError
from .manifest import Manifest, ShardEntry
from .results import result_is_current

MANIFEST = "manifest.json"
LOCK = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # this process's workdir locks: root -> (fd, depth)
__all__ = ["Manifest", "ShardEntry", "Workdir", "WorkdirError", "atomic_path",
           "write_json_atomic"]

# A write refused because the file system is mounted read-only or the user may not write there.
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _why(exc: OSError) -> str:
    return "read-only" if exc.errno == errno.EROFS else f"not writable ({exc.strerror})"


def _read_only(folder: Path, exc: OSError) -> WorkdirError:
    """The one-line refusal of a writer whose workdir refused the lock (or the folder)."""
    return WorkdirError(f"workdir {folder} is {_why(exc)}: readers (search, status, qa-api) "
                        "work on it; run this command on a writable copy or another --workdir")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success fsync it and rename it into place.

    Every workdir file is written through here, so a full disk (or quota) while writing one,
    inside the block or at the fsync, is reported here as one DiskFullError naming the file."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        if DiskFullError.caused(exc):
            raise DiskFullError.writing(str(final)) from None
        if exc.errno in READ_ONLY:
            raise WorkdirError(f"cannot write {final}: {final.parent} is {_why(exc)}") from None
        raise
    finally:
        with contextlib.suppress(OSError):
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

    def manifest(self) -> Manifest:
        """The manifest as it is on disk now (a WorkdirError when missing or unreadable)."""
        if not self.manifest_path.is_file():
            raise WorkdirError(
                f"{self.root} has no {MANIFEST}: run `infer-corpus partition` (or `run`) first"
            )
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkdirError(f"cannot read {self.manifest_path}: {exc}") from None
        return Manifest(data, self.manifest_path)

    def write_manifest(self, manifest: Manifest | dict[str, Any]) -> None:
        data = manifest.data if isinstance(manifest, Manifest) else manifest
        write_json_atomic(self.manifest_path, data)

    @contextlib.contextmanager
    def lock(self, existing: bool = False) -> Iterator[None]:
        """Be the workdir's only writer (partition, run, index) while the block runs.

        A second writer gets a WorkdirError naming the process that holds the workdir, at
        once; readers (`search`, `qa-api`) and shard workers need no lock. The lock is an
        advisory `flock` that the kernel drops when its holder dies, so a killed run never
        leaves the workdir locked. It is re-entrant within one process (run -> partition).

        `existing`: the command works on a partitioned workdir (`index`), so a folder without
        a manifest is refused before anything is created in it, lock file included. A path
        that is a file, or a read-only workdir, is refused in one line."""
        if existing:
            self.manifest()  # a WorkdirError when this is no workdir
        if self.root.exists() and not self.root.is_dir():
            raise WorkdirError(f"workdir {self.root} is a file, not a folder: give a folder "
                               "(it is created if missing)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise WorkdirError(f"workdir {self.root} cannot be created: a part of its path "
                               "is a file") from None
        except OSError as exc:
            if exc.errno in READ_ONLY:
                raise _read_only(self.root, exc) from None
            raise
        key = self.root.resolve()
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            try:
                fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno in READ_ONLY:
                    raise _read_only(self.root, exc) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise WorkdirError(f"workdir {self.root} in use by PID {holder}: wait for it "
                                   "to finish, or use another --workdir") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[key] = (fd, 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                os.close(fd)  # closing releases the flock

    def result_is_current(self, entry: ShardEntry, key: str) -> bool:
        """The shard's result file is done: made with `key` and holding all its rows."""
        return result_is_current(self.result_path(entry.shard), entry.rows, key)
