"""Streaming readers for JSONL, JSONL.gz, CSV and Parquet that never stop on a bad row.

Each reader yields one `RawRow` per input record, in file order, carrying either the decoded
record or the reason it could not be decoded, so the partitioner can quarantine it with its
file and line (or row) number. Memory stays bounded: files are read line by line or batch by batch.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from .errors import UsageError

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson.gz": "jsonl",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
}
RAW_PREVIEW_CHARS = 500
MAX_LINE_BYTES = 64 << 20  # a longer line is a reject, never read whole (passages.max_line_bytes)


class InputError(UsageError):
    """An input path that does not exist, matches nothing, or has an unsupported format."""


@dataclass(slots=True)
class RawRow:
    """One input record: `record` when decodable, else `reason` and `detail` say why not."""

    source: str
    line: int
    record: dict[str, Any] | None
    reason: str | None = None
    detail: str | None = None
    raw: str | None = None


def input_format(path: str | Path) -> str | None:
    name = str(path).lower()
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Resolve paths, globs and directories to a sorted, de-duplicated list of input files."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = [p for p in sorted(path.rglob("*")) if p.is_file() and input_format(p)]
            if not matches:
                raise InputError(f"{pattern}: directory holds no {', '.join(SUFFIXES)} files")
        elif path.is_file():
            if not input_format(path):
                raise InputError(
                    f"{pattern}: unsupported input format (use one of {', '.join(SUFFIXES)})"
                )
            matches = [path]
        else:
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            matches = [p for p in matches if p.is_file() and input_format(p)]
            if not matches:
                raise InputError(f"{pattern}: no such file, or the pattern matches no input file")
        found.extend(matches)
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), path)
    return [Path(p) for p in unique]


@dataclass(frozen=True)
class Span:
    """Which records of a file to read: a byte range cut at line boundaries (JSONL), or a
    range of row groups (Parquet); `first` is the line (row) number of its first record, so
    every record keeps the number it has in the whole file. The default is the whole file."""

    start: int = 0
    end: int | None = None  # exclusive; None: to the end of the file
    first: int = 1


WHOLE = Span()


def read_rows(path: Path, span: Span = WHOLE, *,
              max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[RawRow]:
    """Yield every record of one input file (or of its `span`), whatever its format."""
    fmt = input_format(path)
    if fmt == "jsonl":
        yield from _read_jsonl(path, span, max_line_bytes)
    elif fmt == "csv":
        if span != WHOLE:
            raise InputError(f"{path}: a CSV file is read whole (quoted fields may hold line "
                             "breaks, so it cannot be cut without reading it from its start)")
        yield from _read_csv(path, max_line_bytes)
    elif fmt == "parquet":
        yield from _read_parquet(path, span)
    else:  # expand_inputs filters these out; kept for direct callers
        raise InputError(f"{path}: unsupported input format")


class _ByteRange(io.RawIOBase):
    """The bytes [start, end) of an open file, as a file of their own."""

    def __init__(self, handle: io.BufferedIOBase, start: int, end: int | None) -> None:
        handle.seek(start)
        self.handle = handle
        self.left = None if end is None else end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self.left is not None:
            view = view[: max(0, min(len(view), self.left))]
        if not len(view):
            return 0
        count = self.handle.readinto(view) or 0
        if self.left is not None:
            self.left -= count
        return count


def _lines(handle: io.BufferedIOBase, limit: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, size) for each line; a line over `limit` bytes comes as (None, size) and is
    skipped in pieces, never held whole."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line, len(line)
            continue
        size = len(line)
        while not line.endswith(b"\n"):
            line = handle.readline(1 << 20)
            if not line:
                break
            size += len(line)
        yield None, size


def _open_binary(path: Path) -> io.BufferedIOBase:
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


_FILE_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile)
BOM = b"\xef\xbb\xbf"


def _preview(data: bytes | str) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    return data[:RAW_PREVIEW_CHARS]


def _too_long(source: str, line_no: int, size: int, limit: int) -> RawRow:
    return RawRow(source, line_no, None, "line_too_long",
                  f"line of {size:,} bytes (limit {limit:,}: passages.max_line_bytes)")


def _read_jsonl(path: Path, span: Span, max_line_bytes: int) -> Iterator[RawRow]:
    source = str(path)
    line_no = span.first - 1
    try:
        with _open_binary(path) as raw:
            handle = raw if span == WHOLE else io.BufferedReader(
                _ByteRange(raw, span.start, span.end), 1 << 20)
            for line_no, (line, size) in enumerate(_lines(handle, max_line_bytes),
                                                   start=span.first):
                if line is None:
                    yield _too_long(source, line_no, size, max_line_bytes)
                    continue
                if line_no == 1 and line.startswith(BOM):  # written by some Windows tools
                    line = line[len(BOM):]
                if not line.strip():
                    continue
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield RawRow(source, line_no, None, "undecodable_bytes",
                                 f"invalid UTF-8 at byte {exc.start}", _preview(line))
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield RawRow(source, line_no, None, "malformed_json", str(exc), _preview(line))
                    continue
                if not isinstance(record, dict):
                    yield RawRow(source, line_no, None, "malformed_json",
                                 f"expected a JSON object, got {type(record).__name__}",
                                 _preview(line))
                    continue
                yield RawRow(source, line_no, record)
    except _FILE_ERRORS as exc:
        yield RawRow(source, line_no + 1, None, "unreadable_file",
                     f"file could not be read past this point: {exc}")


def _read_csv(path: Path, max_line_bytes: int) -> Iterator[RawRow]:
    source = str(path)
    csv.field_size_limit(2**31 - 1)  # over-long fields are judged by the partitioner's limit
    line_no = 0
    too_long: list[int] = []  # sizes of lines the parser was given as blank

    def lines(text: io.TextIOWrapper) -> Iterator[str]:
        """The text's lines, a line over the limit (in characters) as a blank one."""
        while line := text.readline(max_line_bytes + 1):
            if len(line) <= max_line_bytes or line.endswith(("\n", "\r")):
                yield line
                continue
            size = len(line.encode("utf-8", "surrogateescape"))
            while line and not line.endswith(("\n", "\r")):
                line = text.readline(1 << 20)
                size += len(line.encode("utf-8", "surrogateescape"))
            too_long.append(size)
            yield "\n"

    try:
        with _open_binary(path) as binary:
            # utf-8-sig: a byte-order mark goes before the CSV parser sees a quoted header
            text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape",
                                    newline="")
            reader = csv.reader(lines(text))
            try:
                header = next(reader)
            except StopIteration:
                return
            header = [h.strip() for h in header]
            while True:
                line_no = reader.line_num + 1
                try:
                    values = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    yield RawRow(source, line_no, None, "malformed_row", f"CSV error: {exc}")
                    continue
                if too_long:
                    yield _too_long(source, line_no, too_long.pop(), max_line_bytes)
                    continue
                if not values or (len(values) == 1 and not values[0].strip()):
                    continue
                joined = ",".join(values)
                if _has_surrogates(joined):
                    yield RawRow(source, line_no, None, "undecodable_bytes", "invalid UTF-8",
                                 _preview(joined.encode("utf-8", "surrogateescape")))
                    continue
                if len(values) != len(header):
                    yield RawRow(source, line_no, None, "malformed_row",
                                 f"expected {len(header)} fields, got {len(values)}",
                                 _preview(joined))
                    continue
                yield RawRow(source, line_no, dict(zip(header, values)))
    except _FILE_ERRORS as exc:
        yield RawRow(source, line_no, None, "unreadable_file",
                     f"file could not be read past this point: {exc}")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_parquet(path: Path, span: Span, batch_rows: int = 8192) -> Iterator[RawRow]:
    source = str(path)
    row_no = span.first - 1
    try:
        parquet = pq.ParquetFile(path)
        groups = range(span.start, parquet.num_row_groups if span.end is None else span.end)
        for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=list(groups)):
            for record in batch.to_pylist():
                row_no += 1
                yield RawRow(source, row_no, record)
    except Exception as exc:  # pyarrow raises many types for damaged files
        yield RawRow(source, row_no + 1, None, "unreadable_file",
                     f"file could not be read past this point: {exc}")
