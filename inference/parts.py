"""The partition's map plan: the inputs cut into parts that can be partitioned independently.

A part is a whole file, a byte range of a large JSONL file cut at line boundaries, or a run
of a large Parquet file's row groups. Gzipped files cannot be cut without reading them from
their start, nor can CSV files (a quoted field may hold line breaks), so each is one part.
Making the plan reads every input once (the SHA-256 that identifies the inputs is computed
in the same pass); a plan is reused while the inputs keep their size and mtime. Each part
carries the SHA-256 of the bytes it reads, so a map that reads anything else refuses.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .readers import Span, input_format

CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class Part:
    """One map task: which bytes (or row groups) of which input it reads."""

    index: int
    source: str  # the input as it was given: what shards and rejects name
    path: str  # the input file, absolute
    format: str
    sha256: str  # of the bytes the part reads (the whole file, for whole files and Parquet)
    size: int  # bytes it reads (Parquet: the file's bytes in proportion to its rows)
    start: int = 0  # byte offset, or first row group (Parquet)
    end: int | None = None  # exclusive; None: to the end of the file
    first: int = 1  # line (row) number of its first record in the whole file

    @property
    def span(self) -> Span:
        return Span(self.start, self.end, self.first)

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Part:
        return cls(**data)


def plan(paths: list[Path], part_bytes: int,
         previous: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[Part]]:
    """The inputs' fingerprints (path, format, size, mtime, SHA-256: what the manifest
    records) and the parts, in input order. `previous` is an earlier plan's record (see
    `plan_record`): an input whose size and mtime are unchanged keeps its fingerprint and
    cuts without being read again."""
    known = {item["input"]["path"]: item for item in (previous or {}).get("files", [])
             if previous and previous.get("part_bytes") == part_bytes}
    inputs: list[dict[str, Any]] = []
    parts: list[Part] = []
    for path in paths:
        stat = path.stat()
        key = os.path.abspath(path)
        old = known.get(key)
        if old and old["input"]["size"] == stat.st_size and \
                old["input"]["mtime_ns"] == stat.st_mtime_ns:
            fingerprint, cuts = old["input"], old["cuts"]
        else:
            fmt = input_format(path) or ""
            sha, cuts = _read_plan(path, fmt, stat.st_size, part_bytes)
            fingerprint = {"path": key, "format": fmt, "size": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns, "sha256": sha}
        inputs.append(fingerprint)
        for cut in cuts:
            parts.append(Part(index=len(parts), source=str(path), path=key,
                              format=fingerprint["format"], **cut))
    return inputs, parts


def plan_record(inputs: list[dict[str, Any]], parts: list[Part],
                part_bytes: int) -> dict[str, Any]:
    """The plan as plain data, per input, for `plan(previous=...)` and the pool's map jobs."""
    files = []
    for fingerprint in inputs:
        cuts = [{k: v for k, v in part.to_dict().items()
                 if k not in ("index", "source", "path", "format")}
                for part in parts if part.path == fingerprint["path"]]
        files.append({"input": fingerprint, "cuts": cuts})
    return {"part_bytes": part_bytes, "files": files, "parts": [p.to_dict() for p in parts]}


def _read_plan(path: Path, fmt: str, size: int, part_bytes: int) -> tuple[str, list[dict]]:
    """The file's SHA-256 and its cuts, in one pass over its bytes."""
    if fmt == "jsonl" and not str(path).lower().endswith(".gz") and size > part_bytes:
        return _cut_lines(path, part_bytes)
    with open(path, "rb") as handle:
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
    if fmt == "parquet" and size > part_bytes:
        return sha, _cut_row_groups(path, sha, size, part_bytes)
    return sha, [{"sha256": sha, "size": size}]


def _cut_lines(path: Path, part_bytes: int) -> tuple[str, list[dict]]:
    """Byte ranges of about `part_bytes`, each ending just after a newline."""
    whole, piece = hashlib.sha256(), hashlib.sha256()
    cuts: list[dict] = []
    start, first, lines, position, target = 0, 1, 0, 0, part_bytes
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            whole.update(chunk)
            offset = 0
            while position + len(chunk) > target:
                newline = chunk.find(b"\n", max(offset, target - position))
                if newline < 0:
                    break  # the cut is at the first newline of a later chunk
                end = newline + 1
                piece.update(chunk[offset:end])
                lines += chunk.count(b"\n", offset, end)
                cut = position + end
                cuts.append({"sha256": piece.hexdigest(), "size": cut - start,
                             "start": start, "end": cut, "first": first})
                piece, start, first, offset = hashlib.sha256(), cut, lines + 1, end
                target = cut + part_bytes
            piece.update(chunk[offset:])
            lines += chunk.count(b"\n", offset)
            position += len(chunk)
    if position > start or not cuts:
        cuts.append({"sha256": piece.hexdigest(), "size": position - start,
                     "start": start, "end": position, "first": first})
    return whole.hexdigest(), cuts


def _cut_row_groups(path: Path, sha: str, size: int, part_bytes: int) -> list[dict]:
    """Runs of row groups holding about `part_bytes` of the file each (by their rows)."""
    metadata = pq.ParquetFile(path).metadata
    total = max(1, metadata.num_rows)
    cuts: list[dict] = []
    start, first, rows, part_rows = 0, 1, 0, 0
    for group in range(metadata.num_row_groups):
        count = metadata.row_group(group).num_rows
        rows += count
        part_rows += count
        if part_rows * size / total >= part_bytes or group == metadata.num_row_groups - 1:
            cuts.append({"sha256": sha, "size": round(part_rows * size / total),
                         "start": start, "end": group + 1, "first": first})
            start, first, part_rows = group + 1, rows + 1, 0
    return cuts or [{"sha256": sha, "size": size}]


def read_sha256(part: Part, path: Path | None = None) -> str:
    """The SHA-256 of the bytes `part` reads, as they are now (in `path`, or its own)."""
    digest = hashlib.sha256()
    with open(path or part.path, "rb") as handle:
        if part.format == "jsonl" and not part.whole:
            handle.seek(part.start)
            left = (part.end or 0) - part.start
            while left > 0 and (chunk := handle.read(min(CHUNK_BYTES, left))):
                digest.update(chunk)
                left -= len(chunk)
        else:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    return digest.hexdigest()


def fingerprint_inputs(paths: list[Path], previous: list[dict[str, Any]] | None) -> list[dict]:
    """Size, mtime and SHA-256 of each input; an unchanged size+mtime reuses the stored hash."""
    known = {item["path"]: item for item in previous or []}
    prints = []
    for path in paths:
        stat = path.stat()
        key = os.path.abspath(path)
        old = known.get(key)
        if old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
            digest = old["sha256"]
        else:
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        prints.append({"path": key, "format": input_format(path), "size": stat.st_size,
                       "mtime_ns": stat.st_mtime_ns, "sha256": digest})
    return prints
