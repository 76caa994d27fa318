"""Reading job inputs through a Pelican federation (OSDF) from Python, with pelicanfs.

Two ways a job reads a `pelican://` or `osdf:///` object itself, instead of HTCondor's file
transfer bringing it before the job starts:

- `read_row_groups(url)`: a Parquet file row group by row group (from one on, or those
  listed), each one ranged GET of its bytes, the next fetched while the last is decoded,
  with no copy on scratch. A read cut short or refused is tried again for that row group
  only; a file whose size changed between reads is refused (objects published to a
  federation must never change in place: caches never invalidate).
- `fetch(url, target)`: one whole-object read into a local file (a cache for data read many
  times, e.g. training epochs).

`prefetched(items)` reads the next item (row group) in a thread while the caller works on
the current one. `stage(local, target)` puts a file into the folder behind a data URL (an
origin's export, e.g. `/ospool/apNN/data/USER/...`).

What pelicanfs (1.5) needs, learnt against a local federation (tests/support/
pelican_federation.py): a Parquet footer is read through `fs.open(url, "rb",
cache_type="none")`, not `pyarrow.parquet.read_table(url, filesystem=fs)` (its `info()` gives
an mtime pyarrow cannot use; the default read-ahead fetches megabytes); a row group's bytes
come from `fs.cat_file(url, start, end)`, one GET with no per-open PROPFIND and HEAD; a cut
body raises `aiohttp.ClientPayloadError` and is not retried; a namespace
that needs a token fails as "no available source" without one. The token comes from the
standard places, `BEARER_TOKEN_FILE` or HTCondor's `_CONDOR_CREDS` folder; nothing here starts
an interactive token flow. One filesystem, so one federation discovery and one director
lookup per namespace, serves a process; a forked child (a DataLoader worker) makes its own,
since the parent's event loop does not survive the fork.

Every failure is one line naming the URL (`DataSourceError`, exit 1: worth a retry).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from queue import Full, Queue
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from inference.errors import Failure
from inference.workdir import atomic_path

RETRIES = 3  # reopenings of one read before it fails
RETRY_DELAY_S = 0.5
# by process and federation: a forked child (a DataLoader worker) makes its own, and keeps its
# parent's referenced, since their finalizers would wait on an event loop the fork left behind
_FILESYSTEMS: dict[tuple[int, str], Any] = {}
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
    key = (os.getpid(),
           url.split("://", 1)[0] + "://" + url.split("://", 1)[-1].split("/", 1)[0])
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


def _after_failure(url: str, fs: Any, size: int, exc: BaseException, failures: int) -> None:
    """What follows a failed read: a pause before the next try, or the refusal once RETRIES
    tries in a row failed or the object changed size."""
    if isinstance(exc, DataSourceError):
        raise exc
    if failures > RETRIES:
        raise _refusal(url, exc) from None
    time.sleep(RETRY_DELAY_S)
    if _size(fs, url) != size:
        raise DataSourceError(f"{url}: its size changed while it was read (an object in a "
                              "federation must never change in place: publish it under a new "
                              "name)") from None


def parquet_metadata(url: str, *, fs: Any = None) -> pq.FileMetaData:
    """The Parquet object's footer (schema, row groups and their rows): small ranged reads
    at its end, no row group."""
    fs = fs or filesystem(url)
    size, failures = _size(fs, url), 0
    while True:
        try:
            with fs.open(url, "rb", cache_type="none") as handle:
                return pq.ParquetFile(handle).metadata
        except pa.ArrowInvalid:
            raise  # read whole but not Parquet: damaged, which no retry mends
        except Exception as exc:
            failures += 1
            _after_failure(url, fs, size, exc, failures)


class _Span(io.RawIOBase):
    """A file of `size` bytes of which only `data`, from byte `first` on, is here: what
    pyarrow reads to decode the row group stored there, given the file's metadata."""

    def __init__(self, size: int, first: int, data: bytes) -> None:
        self.size, self.first, self.data, self.position = size, first, memoryview(data), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        begin = self.position - self.first
        count = min(len(buffer), len(self.data) - begin)
        if begin < 0 or count < 0:
            raise OSError(f"byte {self.position} is outside the row group read")
        buffer[:count] = self.data[begin:begin + count]
        self.position += count
        return count


def _span(metadata: pq.FileMetaData, group: int) -> tuple[int, int]:
    """The bytes [first, end) a row group's column chunks take in the file."""
    row_group = metadata.row_group(group)
    chunks = [row_group.column(i) for i in range(row_group.num_columns)]
    firsts = [c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset
              for c in chunks]
    return min(firsts), max(f + c.total_compressed_size for f, c in zip(firsts, chunks))


def _read_span(fs: Any, url: str, size: int, first: int, end: int) -> bytes:
    """Bytes [first, end) of the object in one ranged GET, tried again (up to RETRIES times)
    when a read fails or comes back short."""
    failures = 0
    while True:
        try:
            data = fs.cat_file(url, start=first, end=end)
            if len(data) != end - first:
                raise OSError(f"read {len(data):,} bytes of {end - first:,}")
            return data
        except Exception as exc:
            failures += 1
            _after_failure(url, fs, size, exc, failures)


def read_row_groups(url: str, start: int = 0, *, fs: Any = None,
                    metadata: pq.FileMetaData | None = None,
                    groups: Sequence[int] | None = None) -> Iterator[tuple[int, pa.Table]]:
    """(number, table) of each row group of the Parquet object `url` from `start` on, or of
    those `groups` lists in their order (a DataLoader worker's share). Each row group is one
    ranged GET of its bytes, the next one fetched in a thread while this one is decoded; a
    failed or short read is tried again for that row group only. `metadata` (from
    `parquet_metadata`) saves reading the footer again."""
    fs = fs or filesystem(url)
    size = _size(fs, url)
    metadata = metadata or parquet_metadata(url, fs=fs)
    wanted = range(start, metadata.num_row_groups) if groups is None else groups
    spans = ((group, *_span(metadata, group)) for group in wanted)
    fetched = prefetched((group, first, _read_span(fs, url, size, first, end))
                         for group, first, end in spans)
    for group, first, data in fetched:
        yield group, pq.ParquetFile(_Span(size, first, data), metadata=metadata) \
            .read_row_group(group)


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
    a failed read is tried again from the start, up to RETRIES times. A `target` already
    holding the object (a job restarted in place after its checkpoint) is kept: objects in a
    federation never change in place, so the same size is the same object."""
    fs = fs or filesystem(url)
    size = _size(fs, url)
    if target.is_file() and target.stat().st_size == size:
        return target
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


def stage(source: Path, target: Path) -> bool:
    """Put `source` at `target` in the folder a data URL serves (hard-linked where it can be,
    else copied; renamed into place); False when it is already there."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return True
