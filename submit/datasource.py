"""Reading job inputs through a Pelican federation (OSDF) from Python, with pelicanfs.

Two ways a job reads a `pelican://` or `osdf:///` object itself, instead of HTCondor's file
transfer bringing it before the job starts:

- `read_row_groups(url)`: a Parquet file row group by row group, each a ranged read, with no
  copy on scratch. A read cut short or refused reopens the file and goes on from the row
  group it was reading; a file whose size changed between reads is refused (objects
  published to a federation must never change in place: caches never invalidate).
- `fetch(url, target)`: one whole-object read into a local file (a cache for data read many
  times, e.g. training epochs).

`prefetched(items)` reads the next item (row group) in a thread while the caller works on
the current one.

What pelicanfs (1.5) needs, learnt against a local federation (tests/support/
pelican_federation.py): a Parquet file is read through `fs.open(url, "rb")`, not
`pyarrow.parquet.read_table(url, filesystem=fs)` (its `info()` gives an mtime pyarrow cannot
use); `cache_type="none"` makes each row group one ranged GET (the default read-ahead fetches
megabytes); a cut body raises `aiohttp.ClientPayloadError` and is not retried; a namespace
that needs a token fails as "no available source" without one. The token comes from the
standard places, `BEARER_TOKEN_FILE` or HTCondor's `_CONDOR_CREDS` folder; nothing here starts
an interactive token flow. One filesystem, so one federation discovery and one director
lookup per namespace, serves a process.

Every failure is one line naming the URL (`DataSourceError`, exit 1: worth a retry).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from queue import Full, Queue
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from inference.errors import Failure
from inference.workdir import atomic_path

RETRIES = 3  # reopenings of one read before it fails
RETRY_DELAY_S = 0.5
_FILESYSTEMS: dict[str, Any] = {}
T = TypeVar("T")


class DataSourceError(Failure):
    """A federation object that cannot be read: unreachable, refused, missing, changed."""

    label = "data source"


def bearer_token() -> str | None:
    """The job's token: the file `BEARER_TOKEN_FILE` names, else the first `*.use` file in
    HTCondor's credential folder `_CONDOR_CREDS`; None without one."""
    path = os.environ.get("BEARER_TOKEN_FILE")
    candidates = [Path(path)] if path else []
    creds = os.environ.get("_CONDOR_CREDS")
    if creds and Path(creds).is_dir():
        candidates += sorted(Path(creds).glob("*.use"))
    for candidate in candidates:
        try:
            token = candidate.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if token:
            return token
    return None


def filesystem(url: str, **options: Any) -> Any:
    """The process's PelicanFileSystem for the federation `url` belongs to (made once, so
    discovery and director lookups are not repeated); `options` go to a new one (tests)."""
    from pelicanfs.core import PelicanFileSystem

    def made(options: dict[str, Any]) -> Any:
        token = bearer_token()
        if token:
            options.setdefault("headers", {"Authorization": f"Bearer {token}"})
        return PelicanFileSystem(**options)

    if options:
        return made(options)
    key = url.split("://", 1)[0] + "://" + url.split("://", 1)[-1].split("/", 1)[0]
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = made({})
    return _FILESYSTEMS[key]


def _refusal(url: str, exc: BaseException) -> DataSourceError:
    from pelicanfs.exceptions import NoAvailableSource

    if isinstance(exc, FileNotFoundError):
        return DataSourceError(f"{url}: no such object in the federation")
    if isinstance(exc, NoAvailableSource):
        hint = "" if bearer_token() else " (no token: set BEARER_TOKEN_FILE if the " \
            "namespace needs one)"
        return DataSourceError(f"{url}: no cache or origin would serve it{hint}")
    return DataSourceError(f"{url}: cannot read it ({type(exc).__name__}: {exc})")


def _size(fs: Any, url: str) -> int:
    try:
        return int(fs.info(url)["size"])
    except Exception as exc:  # pelicanfs and aiohttp raise many kinds
        raise _refusal(url, exc) from None


def read_row_groups(url: str, start: int = 0, *, fs: Any = None) -> Iterator[tuple[int, pa.Table]]:
    """(number, table) of each row group of the Parquet object `url` from `start` on, read
    one at a time; a failed read reopens the object (up to RETRIES times in a row) and goes
    on from the row group it was reading."""
    fs = fs or filesystem(url)
    size = _size(fs, url)
    group, failures = start, 0
    while True:
        try:
            with fs.open(url, "rb", cache_type="none") as handle:
                parquet = pq.ParquetFile(handle)
                while group < parquet.num_row_groups:
                    table = parquet.read_row_group(group)
                    failures = 0
                    yield group, table
                    group += 1
                return
        except DataSourceError:
            raise
        except Exception as exc:
            failures += 1
            if failures > RETRIES:
                raise _refusal(url, exc) from None
            time.sleep(RETRY_DELAY_S)
            if _size(fs, url) != size:
                raise DataSourceError(f"{url}: its size changed while it was read (an "
                                      "object in a federation must never change in place: "
                                      "publish it under a new name)") from None


def prefetched(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """`items` as they come, with the next `depth` read ahead in a thread while the caller
    works on the current one (a row group's network read overlaps the work on the last);
    an error in the reading thread is raised where its item would have come."""
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():  # the consumer may have stopped taking
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer
            put((False, exc))

    reader = threading.Thread(target=read, name="datasource-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            more, value = queue.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        reader.join(timeout=5)


def fetch(url: str, target: Path, *, fs: Any = None) -> Path:
    """The whole object `url` in the local file `target` (written atomically), read once;
    a failed read is tried again from the start, up to RETRIES times."""
    fs = fs or filesystem(url)
    size = _size(fs, url)
    for attempt in range(RETRIES + 1):
        try:
            with atomic_path(target) as tmp, fs.open(url, "rb", block_size=8 << 20) as source, \
                    open(tmp, "wb") as sink:
                shutil.copyfileobj(source, sink, 8 << 20)
            break
        except Exception as exc:
            if attempt == RETRIES:
                raise _refusal(url, exc) from None
            time.sleep(RETRY_DELAY_S)
    if target.stat().st_size != size:
        raise DataSourceError(f"{url}: read {target.stat().st_size:,} bytes of {size:,}")
    return target
