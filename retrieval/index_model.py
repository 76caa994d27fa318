"""Which model embeds the queries: the very one that embedded the passages.

An index records that model when it is built (`model_record`: the model section of the config,
a fingerprint of the model's files, the embedding dimension), in the embedded index's build
and in an Elasticsearch index's mapping `_meta`. A searcher loads exactly that model
(`recorded_model`), whatever the workdir's config names now, or refuses in one line when the
model is gone or its files have changed: embeddings of another model would rank passages by
nothing (or fail on a dimension that does not match).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from inference.config import ModelConfig
from inference.config_loader import build
from inference.errors import WorkdirError
from inference.models import resolve_model

# A model's files are fingerprinted whole up to this size, larger ones (the weights) by
# FINGERPRINT_SAMPLES blocks spread over the file: a few MB read however big the model, and
# retrained weights of the same size differ in every block.
FINGERPRINT_WHOLE_BYTES = 16 << 20
FINGERPRINT_SAMPLES = 32
FINGERPRINT_BLOCK = 64 << 10


def model_fingerprint(name: str) -> str | None:
    """A digest of the model's files (their names, sizes and contents; README and hidden files
    left out), or None for a hub id that is not in the local cache."""
    folder = Path(resolve_model(name))
    if not folder.is_dir():
        folder = _hub_snapshot(name)
        if folder is None:
            return None
    digest = hashlib.sha256()
    files = sorted(path for path in folder.rglob("*") if path.is_file()
                   and not any(part.startswith(".") for part in path.relative_to(folder).parts)
                   and path.suffix != ".md")
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= FINGERPRINT_WHOLE_BYTES:
                digest.update(handle.read())
                continue
            step = (size - FINGERPRINT_BLOCK) // (FINGERPRINT_SAMPLES - 1)
            for sample in range(FINGERPRINT_SAMPLES):
                handle.seek(sample * step)
                digest.update(handle.read(FINGERPRINT_BLOCK))
    return digest.hexdigest()[:16]


def _hub_snapshot(name: str) -> Path | None:
    """The local cache's copy of a hub model, if it has one."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (OSError, ValueError):
        return None


def model_record(model: ModelConfig, dimension: int | None) -> dict[str, Any]:
    """What an index records about the model that embedded its passages (`dimension`: None
    when there were no passages to embed)."""
    return {"name": model.name, "fingerprint": model_fingerprint(model.name),
            "dimension": dimension, "config": dataclasses.asdict(model)}


def recorded_model(record: dict[str, Any] | None, where: str) -> ModelConfig:
    """The model section an index was built with, once its files are checked to be the same;
    a one-line WorkdirError when the index records no model or the model has changed."""
    if not record:
        raise WorkdirError(f"{where} does not record the model that embedded its passages "
                           "(an older index): rebuild it with `infer-corpus index`")
    model = build(ModelConfig, record["config"], "model")
    found = model_fingerprint(model.name)
    if record.get("fingerprint") and found != record["fingerprint"]:
        state = "is no longer there" if found is None else "has changed since"
        raise WorkdirError(
            f"{where} was built with model {model.name!r}, which {state} (fingerprint "
            f"{found}, not {record['fingerprint']}): restore that model, or re-embed and "
            "re-index with `infer-corpus run`")
    return model
