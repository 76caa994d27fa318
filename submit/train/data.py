"""Training data: each labelled passage's embedding and topic, read from a finished workdir.

The sweep exports them once to one `dataset.parquet` (schema `infer-corpus.dataset`, see
docs/formats.md): the training rows first, then the validation rows, in row groups of
ROW_GROUP_ROWS that never mix the two, so that a trial can read either part row group by row
group. A trial gets it by its data source (`condor.data_source`; `trial.open_dataset`):

- `transfer`: the local file (on a pool, the one HTCondor transferred), read whole;
- `cache`: its federation URL fetched once into the trial's `cache/` folder, then read whole;
  a job restarted in place finds the copy there and does not read the object again;
- `stream`: its federation URL read row group by row group every epoch
  (`streamed.StreamedDataset`), with no copy on scratch.

Both kinds of dataset give a trial the same three things: the classes and embedding model,
the epoch's training batches in an order drawn from the epoch's generator, and the validation
rows in chunks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inference.workdir import Workdir, atomic_path

from ..config import federation_url
from ..datasource import fetch
from . import TrainError

if TYPE_CHECKING:  # torch loads where batches are made, not where a sweep reads its files
    import torch

DATASET = "dataset.parquet"  # in the sweep (or multinode run) directory
SCHEMA, VERSION = "infer-corpus.dataset", "1"  # in the file's schema metadata
ROW_GROUP_ROWS = 4096  # rows per row group: what one streamed read brings
CACHE_DIR = "cache"  # in the trial directory: the fetched dataset (cache)
Batch = tuple["torch.Tensor", "torch.Tensor"]


@dataclass
class Dataset:
    """The whole dataset in memory: rows [0, train_rows) train, the rest validate."""

    features: np.ndarray  # float32 [N, dim]
    labels: np.ndarray  # int64 [N], index into classes
    train_rows: int
    classes: list[str]
    embedding_model: str

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def part(self, validation: bool) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(self.train_rows, None) if validation else slice(0, self.train_rows)
        return self.features[rows], self.labels[rows]

    def batches(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        """The training rows in the epoch's order (a permutation drawn from `generator`)."""
        import torch

        x, y = (torch.from_numpy(a) for a in self.part(validation=False))
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            yield x[batch], y[batch]

    def validation(self) -> Iterator[Batch]:
        import torch

        x, y = self.part(validation=True)
        yield torch.from_numpy(x), torch.from_numpy(y)


def held_out(key: str, fraction: float) -> bool:
    """A stable split: the same passage (or article, for pairs) is always on the same side,
    whatever the order."""
    digest = hashlib.sha256(key.encode()).digest()
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
                held.append(held_out(pid, val_fraction))
    classes = sorted(set(topics))
    if len(classes) < 2:
        raise TrainError(f"{workdir.root}: training needs passages of at least two topics "
                         f"(the input's topic field); found {len(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    validation = np.asarray(held, dtype=bool)
    if validation.all() or not validation.any():
        raise TrainError(f"{workdir.root}: too few passages ({len(topics)}) to hold out "
                         f"{val_fraction:.0%} for validation")
    order = np.argsort(validation, kind="stable")  # training rows first, each part in order
    return Dataset(np.stack(vectors).astype(np.float32)[order],
                   np.asarray([index[t] for t in topics], dtype=np.int64)[order],
                   int((~validation).sum()), classes, manifest.config.model.name)


def dataset_schema(dim: int, classes: list[str], embedding_model: str) -> pa.Schema:
    return pa.schema(
        [pa.field("features", pa.list_(pa.field("element", pa.float32()), dim), nullable=False),
         pa.field("label", pa.int64(), nullable=False),
         pa.field("validation", pa.bool_(), nullable=False)],
        metadata={"schema": SCHEMA, "schema_version": VERSION,
                  "classes": json.dumps(classes), "embedding_model": embedding_model})


def save_dataset(dataset: Dataset, path: Path, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """Write `dataset` as Parquet, atomically: the training rows, then the validation rows,
    each part in row groups of its own."""
    schema = dataset_schema(dataset.dim, dataset.classes, dataset.embedding_model)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for validation in (False, True):
            x, y = dataset.part(validation)
            features = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dataset.dim)
            writer.write_table(pa.Table.from_arrays(
                [features, pa.array(y), pa.array(np.full(len(y), validation))], schema=schema),
                row_group_size=row_group_rows)


def object_name(path: Path) -> str:
    """The dataset's name under `condor.data_url`: `dataset-` and 16 hex digits of its
    SHA-256, so a changed dataset is a new object (federation caches never invalidate one)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return f"dataset-{digest.hexdigest()[:16]}.parquet"


@dataclass
class Layout:
    """What a dataset file's footer says: its classes, embedding model and dimension, and
    which row groups hold training rows and which validation rows."""

    classes: list[str]
    embedding_model: str
    dim: int
    train_groups: list[int]
    validation_groups: list[int]


def read_layout(metadata: pq.FileMetaData, where: str) -> Layout:
    """The layout of a dataset file from its footer; anything else is a TrainError."""
    schema = metadata.schema.to_arrow_schema()
    meta = schema.metadata or {}
    found = (meta.get(b"schema", b"?").decode(), meta.get(b"schema_version", b"?").decode())
    if found != (SCHEMA, VERSION):
        raise TrainError(f"{where}: not a training dataset of schema {SCHEMA} version "
                         f"{VERSION} (found {found[0]} version {found[1]})")
    try:
        classes = json.loads(meta[b"classes"])
        features = schema.field("features").type
        column = schema.get_field_index("validation")
        dim, model = features.list_size, meta[b"embedding_model"].decode()
    except (KeyError, ValueError, AttributeError) as exc:
        raise TrainError(f"{where}: a damaged training dataset ({exc})") from None
    train: list[int] = []
    validation: list[int] = []
    for number in range(metadata.num_row_groups):
        stats = metadata.row_group(number).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min != stats.max:
            raise TrainError(f"{where}: row group {number} mixes training and validation rows")
        (validation if stats.min else train).append(number)
    if not train or not validation or train[-1] > validation[0]:
        raise TrainError(f"{where}: want training rows, then validation rows")
    return Layout(classes, model, dim, train, validation)


def arrays(table: pa.Table, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32 [rows, dim]) and labels of a table of dataset rows, writable."""
    features = table.column("features").combine_chunks().flatten()
    return (features.to_numpy(zero_copy_only=False).reshape(-1, dim).copy(),
            table.column("label").to_numpy().copy())


def load_dataset(path: Path) -> Dataset:
    """A dataset file, whole; a damaged one is a TrainError (bad input: no retry mends it)."""
    try:
        parquet = pq.ParquetFile(path)
        layout = read_layout(parquet.metadata, str(path))
        features, labels = arrays(parquet.read(), layout.dim)
    except (OSError, pa.ArrowException) as exc:
        raise TrainError(f"cannot read training data {path}: {exc}") from None
    train_rows = sum(parquet.metadata.row_group(g).num_rows for g in layout.train_groups)
    return Dataset(features, labels, train_rows, layout.classes, layout.embedding_model)


def federation_source(url: str, data_source: str, option: str) -> str:
    """`url`, which `--data-source` stream or cache reads through a federation; anything
    else is a one-line error naming `option`."""
    if not federation_url(url):
        raise TrainError(f"--data-source {data_source} reads through a federation: "
                         f"{option} must be an osdf:/// or pelican:// URL, not {url!r}")
    return url


def cached(url: str, trial_dir: Path) -> Path:
    """The object `url` fetched once into the trial's cache/ folder (kept there across
    restarts in place)."""
    return fetch(url, trial_dir / CACHE_DIR / url.rsplit("/", 1)[-1])
