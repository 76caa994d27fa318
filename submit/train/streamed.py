"""Streaming a training dataset from a federation (`condor.data_source: stream`), with no copy
on scratch: see `StreamedDataset`; the other data sources read the file whole (`data`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from inference.errors import CorpusError

from ..datasource import parquet_metadata, read_row_groups
from . import TrainError
from .data import Batch, arrays, read_layout

STREAM_WORKERS = 2  # DataLoader worker processes of a streamed dataset; batches do not depend on it


class StreamedDataset(IterableDataset):
    """A dataset object in a federation, read row group by row group on every pass, with no
    copy on scratch.

    A pass is one epoch's training rows or the validation rows. Each of STREAM_WORKERS
    DataLoader worker processes (kept for the whole trial, each with its own federation
    filesystem) reads its share of the pass's row groups, worker i the groups i, i + n, ...
    of the pass's order (`read_row_groups` reads the next one in a thread while the last is
    handed over). The training order is drawn from the epoch's seed: the row groups' order,
    and the rows' order within each row group; batches are cut within a row group. The
    DataLoader hands the groups on in the pass's order, so batches depend on the seed alone,
    not on the number of workers or on when the trial was last restarted. Workers hand over
    numpy arrays, pickled through the DataLoader's pipe: tensors would go through shared
    memory, whose file descriptors pass over a Unix socket in TMPDIR, and a job's scratch
    path can be longer than such a socket's name may be.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        try:
            self.footer = parquet_metadata(url)
        except pa.ArrowInvalid as exc:
            raise TrainError(f"cannot read training data {url}: {exc}") from None
        layout = read_layout(self.footer, url)
        self.classes, self.embedding_model, self.dim = (layout.classes, layout.embedding_model,
                                                        layout.dim)
        self.train_groups, self.validation_groups = (layout.train_groups,
                                                     layout.validation_groups)
        # the pass the workers read next: (epoch seed, 1 for validation), shared with them
        self._pass = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._loader = DataLoader(self, batch_size=None, num_workers=STREAM_WORKERS,
                                  persistent_workers=True, generator=torch.Generator(),
                                  collate_fn=_as_is)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray] | CorpusError]:
        """A worker's share of the pass: (features, labels) of each of its row groups."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        seed, validation = int(self._pass[0]), bool(self._pass[1])
        groups = self.validation_groups if validation else [
            self.train_groups[i] for i in np.random.default_rng(seed).permutation(
                len(self.train_groups))]
        mine = groups[worker::workers]
        if not mine:
            return
        try:
            for group, table in read_row_groups(self.url, metadata=self.footer, groups=mine):
                x, y = arrays(table, self.dim)
                if not validation:
                    order = np.random.default_rng([seed, group]).permutation(len(y))
                    x, y = x[order], y[order]
                yield x, y
        except CorpusError as exc:  # raised in the trial's process, as one line
            yield exc

    def _read(self, seed: int, validation: bool) -> Iterator[Batch]:
        self._pass[0], self._pass[1] = seed, int(validation)
        for item in self._loader:
            if isinstance(item, CorpusError):
                raise item
            yield torch.from_numpy(item[0]), torch.from_numpy(item[1])

    def batches(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        """The training rows in the epoch's order (drawn from `generator`'s seed)."""
        for x, y in self._read(generator.initial_seed(), validation=False):
            for start in range(0, len(y), batch_size):
                yield x[start : start + batch_size], y[start : start + batch_size]

    def validation(self) -> Iterator[Batch]:
        return self._read(0, validation=True)


def _as_is(item: object) -> object:
    """The DataLoader's collate function: items stay as the worker made them."""
    return item
