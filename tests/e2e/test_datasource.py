"""Job inputs read through a Pelican federation (submit.datasource) against the local one
(tests/support/pelican_federation.py): row groups by ranged reads, a cut read resumed at its
row group, whole-object fetches, tokens, and one-line refusals naming the URL."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pelican_federation import DEFAULT_TOKEN, Federation

from submit import datasource
from submit.datasource import DataSourceError, fetch, read_row_groups

GROUPS, ROWS = 6, 5_000


@pytest.fixture
def federation(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(datasource, "RETRY_DELAY_S", 0.01)
    monkeypatch.delenv("BEARER_TOKEN_FILE", raising=False)
    monkeypatch.delenv("_CONDOR_CREDS", raising=False)
    folder = tmp_path / "origin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    table = pa.table({"passage_id": [f"p{i}" for i in range(GROUPS * ROWS)],
                      "text": [f"text {i} " * 8 for i in range(GROUPS * ROWS)],
                      "x": rng.standard_normal(GROUPS * ROWS)})
    pq.write_table(table, folder / "shard.parquet", row_group_size=ROWS)
    with Federation(folder) as fed:
        yield fed, table


def fs_of(fed: Federation, url: str):
    return datasource.filesystem(url, **fed.storage_options())


def test_row_groups_are_ranged_reads_with_no_copy(federation):
    fed, table = federation
    url = fed.url("shard.parquet")
    groups = list(read_row_groups(url, fs=fs_of(fed, url)))
    assert [n for n, _ in groups] == list(range(GROUPS))
    assert pa.concat_tables([t for _, t in groups]).equals(table)
    assert None not in fed.log.ranges_for("shard.parquet")  # never the whole object
    assert fed.log.discoveries() == 1
    later = list(read_row_groups(url, start=4, fs=fs_of(fed, url)))
    assert [n for n, _ in later] == [4, 5]


def test_a_cut_read_goes_on_from_its_row_group(federation):
    fed, table = federation
    url = fed.url("shard.parquet")
    fs = fs_of(fed, url)
    clean = list(read_row_groups(url, fs=fs))
    per_group = len(fed.log.gets_for("shard.parquet"))
    fed.log.clear()
    reading = read_row_groups(url, fs=fs)
    first = [next(reading), next(reading)]
    fed.faults.cut_body(after=1000, times=1, path="shard.parquet")  # the next group read
    cut = first + list(reading)
    assert [n for n, _ in cut] == list(range(GROUPS))
    assert pa.concat_tables([t for _, t in cut]).equals(pa.concat_tables(
        [t for _, t in clean]))
    ranges = fed.log.ranges_for("shard.parquet")
    # only the cut group is read again: one GET more, for a range already asked for
    assert len(ranges) == per_group + 1, ranges
    assert len(set(ranges)) == per_group


def test_an_object_that_changed_size_is_refused(federation, tmp_path):
    fed, table = federation
    url = fed.url("shard.parquet")
    reading = read_row_groups(url, fs=fs_of(fed, url))
    next(reading)
    pq.write_table(pa.concat_tables([table, table]), tmp_path / "origin" / "shard.parquet",
                   row_group_size=ROWS)
    fed.faults.cut_body(after=1000, times=1, path="shard.parquet")
    with pytest.raises(DataSourceError, match="size changed while it was read"):
        list(reading)


def test_fetch_reads_the_object_once(federation, tmp_path):
    fed, table = federation
    url = fed.url("shard.parquet")
    target = fetch(url, tmp_path / "copy.parquet", fs=fs_of(fed, url))
    assert pq.read_table(target).equals(table)
    assert len(fed.log.gets_for("shard.parquet")) >= 1
    fed.log.clear()
    fed.faults.cut_body(after=1000, times=1, path="shard.parquet")
    assert pq.read_table(fetch(url, tmp_path / "again.parquet", fs=fs_of(fed, url))).equals(
        table)


def test_a_token_comes_from_bearer_token_file(federation, tmp_path, monkeypatch):
    fed, _ = federation
    fed.faults.require_token()
    url = fed.url("shard.parquet")
    with pytest.raises(DataSourceError, match="no cache or origin would serve it .no token"):
        list(read_row_groups(url, fs=fs_of(fed, url)))
    (tmp_path / "token").write_text(DEFAULT_TOKEN + "\n")
    monkeypatch.setenv("BEARER_TOKEN_FILE", str(tmp_path / "token"))
    assert len(list(read_row_groups(url, fs=fs_of(fed, url)))) == GROUPS


def test_refusals_are_one_line_naming_the_url(federation, tmp_path):
    fed, _ = federation
    url = fed.url("missing.parquet")
    with pytest.raises(DataSourceError) as missing:
        list(read_row_groups(url, fs=fs_of(fed, url)))
    assert url in str(missing.value) and "\n" not in str(missing.value)
    fed.faults.fail("director", times=None)
    url = fed.url("shard.parquet")
    with pytest.raises(DataSourceError) as unreachable:
        fetch(url, tmp_path / "x", fs=fs_of(fed, url))
    assert url in str(unreachable.value) and "\n" not in str(unreachable.value)


def test_prefetched_reads_one_ahead_and_passes_errors_on():
    from submit.datasource import prefetched

    read = []

    def source():
        for i in range(4):
            read.append(i)
            yield i
        raise DataSourceError("shard.parquet: cannot read it")

    items = prefetched(source())
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(read) < 2 and time.monotonic() < deadline:
        pass
    assert read[:2] == [0, 1]  # the next one is read while the caller holds the first
    assert [next(items) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(DataSourceError, match="shard.parquet"):
        next(items)
