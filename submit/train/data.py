"""Training data: each labelled passage's embedding and topic, read from a finished workdir.

The sweep exports them once to one `dataset.npz`, which every trial reads (and which an
HTCondor job receives by file transfer), so trials never need the workdir itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from inference.workdir import Workdir, atomic_path

from . import TrainError


@dataclass
class Dataset:
    features: np.ndarray  # float32 [N, dim]
    labels: np.ndarray  # int64 [N], index into classes
    validation: np.ndarray  # bool [N]: held out for evaluation
    classes: list[str]
    embedding_model: str

    def part(self, validation: bool) -> tuple[np.ndarray, np.ndarray]:
        mask = self.validation if validation else ~self.validation
        return self.features[mask], self.labels[mask]


def _held_out(passage_id: str, fraction: float) -> bool:
    """A stable split: the same passage is always on the same side, whatever the order."""
    digest = hashlib.sha256(passage_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_workdir(workdir: Workdir, val_fraction: float) -> Dataset:
    """Passages with a topic from the input, with their embeddings from the result files
    (every shard's result must be current: made with the run's settings, all rows there)."""
    manifest = workdir.manifest().require_partitioned()
    key = manifest.result_key()
    vectors, topics, held = [], [], []
    for entry in manifest.shards:
        result_path = workdir.result_path(entry.shard)
        if not workdir.result_is_current(entry, key):
            raise TrainError(f"{result_path} is missing or out of date: finish the run first "
                             f"(infer-corpus run --workdir {workdir.root})")
        shard = pq.read_table(workdir.shard_path(entry.shard), columns=["passage_id", "topic"])
        result = pq.read_table(result_path, columns=["passage_id", "embedding"])
        if shard.column("passage_id") != result.column("passage_id"):
            raise TrainError(f"{result_path} does not match its shard: rerun infer-corpus run")
        embedding = result.column("embedding").combine_chunks()
        matrix = embedding.values.to_numpy(zero_copy_only=False).reshape(len(embedding), -1)
        for row, (pid, topic) in enumerate(zip(shard.column("passage_id").to_pylist(),
                                               shard.column("topic").to_pylist())):
            if topic:
                vectors.append(matrix[row])
                topics.append(topic)
                held.append(_held_out(pid, val_fraction))
    classes = sorted(set(topics))
    if len(classes) < 2:
        raise TrainError(f"{workdir.root}: training needs passages of at least two topics "
                         f"(the input's topic field); found {len(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    validation = np.asarray(held, dtype=bool)
    if validation.all() or not validation.any():
        raise TrainError(f"{workdir.root}: too few passages ({len(topics)}) to hold out "
                         f"{val_fraction:.0%} for validation")
    return Dataset(np.stack(vectors).astype(np.float32),
                   np.asarray([index[t] for t in topics], dtype=np.int64),
                   validation, classes, manifest.config.model.name)


def save_dataset(dataset: Dataset, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, features=dataset.features, labels=dataset.labels,
                 validation=dataset.validation, classes=np.asarray(dataset.classes),
                 embedding_model=np.asarray(dataset.embedding_model))


def load_dataset(path: Path) -> Dataset:
    try:
        with np.load(path) as data:
            return Dataset(data["features"], data["labels"], data["validation"],
                           [str(c) for c in data["classes"]], str(data["embedding_model"]))
    except (OSError, KeyError, ValueError) as exc:
        raise TrainError(f"cannot read training data {path}: {exc}") from None
