"""The typed manifest: a workdir's record of its inputs, settings and shards.

`manifest.json` stays plain JSON on disk (its format is documented in docs/formats.md); every
module reads it through this class rather than parsing the dict itself, so the questions "has
the partition finished?", "which config made it?" and "which result key is current?" have one
answer each.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .config import InferenceConfig, config_from_dict
from .config_loader import build
from .errors import WorkdirError
from .results import result_key

T = TypeVar("T")


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    shard: int
    rows: int
    file: str = ""
    state: str = "pending"

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "file": self.file, "rows": self.rows, "state": self.state}


class Manifest:
    """A workdir's `manifest.json`, read once."""

    def __init__(self, data: dict[str, Any], path: Path | None = None) -> None:
        if not isinstance(data, dict):
            raise WorkdirError(f"{path or 'manifest'} is not a manifest (not a JSON object)")
        self.data = data
        self.path = path

    @property
    def partition(self) -> dict[str, Any]:
        """The partition step's state and counts (`state`: running or done)."""
        return self.data.get("partition") or {}

    @property
    def partitioned(self) -> bool:
        return self.partition.get("state") == "done"

    def require_partitioned(self) -> Manifest:
        """This manifest, or a WorkdirError when the partition step has not finished."""
        if not self.partitioned:
            where = self.path.parent if self.path else "the workdir"
            raise WorkdirError(f"{where}: the partition step has not finished (run the same "
                               "partition or run command again)")
        return self

    @property
    def partition_key(self) -> str:
        return self.data.get("partition_key", "")

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.data.get("inputs") or []

    @property
    def tokenizer(self) -> dict[str, Any] | None:
        """Which tokenizer made the token ids stored in the shards (None: no ids stored)."""
        return self.data.get("tokenizer")

    @functools.cached_property
    def shards(self) -> list[ShardEntry]:
        entries = []
        for item in self.data.get("shards") or []:
            try:
                entries.append(ShardEntry(int(item["shard"]), int(item["rows"]),
                                          item.get("file", ""), item.get("state", "pending")))
            except (KeyError, TypeError, ValueError):
                raise WorkdirError(f"{self.path or 'manifest'}: damaged shard entry "
                                   f"{item!r}") from None
        return entries

    def shard(self, number: int) -> ShardEntry:
        """One shard's entry, or a WorkdirError naming the shards that exist."""
        if not 0 <= number < len(self.shards):
            raise WorkdirError(f"shard {number} does not exist: this workdir has shards "
                               f"0..{len(self.shards) - 1}")
        return self.shards[number]

    @property
    def passages(self) -> int:
        return sum(entry.rows for entry in self.shards)

    @property
    def config_data(self) -> dict[str, Any]:
        """The whole config the run was made with, every package's sections, as plain data."""
        return self.data.get("config") or {}

    @functools.cached_property
    def config(self) -> InferenceConfig:
        """The inference sections of the run's config."""
        return config_from_dict(self.config_data)

    def section(self, cls: type[T], name: str) -> T:
        """Another package's section of the run's config (e.g. retrieval's `index`)."""
        return build(cls, self.config_data.get(name) or {}, name)

    def result_key(self, config: InferenceConfig | None = None) -> str:
        """The key a current result file carries (see `inference.results`); `config` defaults
        to the one the run recorded."""
        return result_key(self.partition_key, config or self.config)

    def with_shards(self, shards: list[ShardEntry]) -> Manifest:
        """A copy listing other shards (a job's parts, or new states)."""
        return Manifest({**self.data, "shards": [entry.to_dict() for entry in shards]}, self.path)
