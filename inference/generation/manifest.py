"""The generation manifest (`generations/manifest.json`), typed, as `inference.manifest` is
for the corpus: the prompt step (its state, counts, source and prompt shards), the config a
study runs with, and per model the keys and provenance of its outputs.

`prepare` in `generate` writes it; the local runner, the pool's jobs and POST checks, the
report and `status` read it through `GenerationManifest`, never as raw dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..config_loader import build
from ..errors import WorkdirError
from .config import GenerationConfig

MANIFEST_FORMAT = "infer-corpus.generations"
GENERATIONS_DIR = "generations"  # a study's folder in the workdir
MANIFEST = Path(GENERATIONS_DIR) / "manifest.json"


@dataclass(frozen=True)
class PromptShard:
    shard: int
    rows: int


@dataclass(frozen=True)
class ModelEntry:
    """What made (or will make) one model's outputs: a current output file carries both keys."""

    generation_key: str
    label_key: str
    provenance: dict[str, Any]


class GenerationManifest:
    """One study's manifest, as read from `path`."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise WorkdirError(f"{path} is not a generation manifest")
        self.data, self.path = data, path

    @classmethod
    def from_file(cls, path: Path) -> GenerationManifest:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkdirError(f"cannot read {path}: {exc}") from None
        return cls(data, Path(path))

    @classmethod
    def read(cls, root: Path) -> GenerationManifest | None:
        """The manifest of the study in `root`; None when there is none."""
        path = Path(root) / MANIFEST
        return cls.from_file(path) if path.is_file() else None

    @classmethod
    def require(cls, root: Path) -> GenerationManifest:
        """The manifest of a study whose prompts are prepared; a WorkdirError that says what
        to run otherwise."""
        manifest = cls.read(root)
        if manifest is None or not manifest.prompts_done:
            raise WorkdirError(f"{root} has no prepared prompts: give the prompt set (`infer-"
                               "corpus generate --prompts FILE`, or `submit --generation "
                               "--input FILE`), or set generation.template")
        return manifest

    @property
    def prompts(self) -> dict[str, Any]:
        """The prompt step's entry: state, key, counts, source, shards."""
        return self.data.get("prompts") or {}

    @property
    def prompts_done(self) -> bool:
        return self.prompts.get("state") == "done"

    @property
    def shards(self) -> list[PromptShard]:
        return [PromptShard(int(s["shard"]), int(s["rows"])) for s in self.prompts["shards"]]

    def shard_rows(self, shard: int) -> int:
        shards = self.shards
        if not 0 <= shard < len(shards):
            raise WorkdirError(f"prompt shard {shard} does not exist: there are shards "
                               f"0..{len(shards) - 1}")
        return shards[shard].rows

    @property
    def models(self) -> dict[str, ModelEntry]:
        return {key: ModelEntry(entry["generation_key"], entry["label_key"],
                                entry["provenance"])
                for key, entry in (self.data.get("models") or {}).items()}

    def model(self, key: str) -> ModelEntry:
        models = self.models
        if key not in models:
            raise WorkdirError(f"model {key!r} is not in this study (models: "
                               f"{', '.join(models) or 'none'})")
        return models[key]

    @property
    def config(self) -> GenerationConfig:
        """The `generation` section the study was prepared with."""
        return build(GenerationConfig, (self.data.get("config") or {}).get("generation") or {},
                     "generation")

    @property
    def embedding(self) -> ModelConfig:
        """The `model` section: the embedding model zero-shot labels compare with."""
        return build(ModelConfig, (self.data.get("config") or {}).get("model") or {}, "model")
