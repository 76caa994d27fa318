"""pelicanfs against a local Pelican federation (tests/support/pelican_federation.py): discovery,
the director, caches and an origin over HTTPS on 127.0.0.1, and what pelicanfs does when they
fail. Where pelicanfs surprised us, the test pins what it does and says so."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiowebdav2.exceptions import AccessDeniedError
from pelican_federation import DEFAULT_TOKEN, Federation
from pelicanfs.core import PelicanFileSystem
from pelicanfs.exceptions import InvalidMetadata, NoAvailableSource

BLOB = bytes(range(256)) * 40  # 10 KiB
ROWS_PER_GROUP = 20_000
ROW_GROUPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the origin and caches serve: bytes, a folder, and a Parquet file of 4 row groups
    (incompressible, ~400 KB each, so that pyarrow's 64 KiB footer read is not the file)."""
    root = tmp_path_factory.mktemp("federation")
    (root / "a.bin").write_bytes(BLOB)
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("hello")
    (root / "sub" / "c.txt").write_text("world!")
    rng = np.random.default_rng(0)
    n = ROWS_PER_GROUP * ROW_GROUPS
    table = pa.table({"x": rng.random(n), "y": rng.integers(0, 2**62, n)})
    pq.write_table(table, root / "rows.parquet", row_group_size=ROWS_PER_GROUP,
                   compression="none")
    return root


@pytest.fixture
def fed(data: Path) -> Iterator[Federation]:
    with Federation(data, namespace="/test/namespace", caches=2) as federation:
        yield federation
        assert federation.errors == []


def span(row_group: pq.RowGroupMetaData) -> tuple[int, int]:
    """(first, last) byte of a row group's column chunks."""
    starts, ends = [], []
    for j in range(row_group.num_columns):
        column = row_group.column(j)
        start = column.dictionary_page_offset if column.has_dictionary_page \
            else column.data_page_offset
        starts.append(start)
        ends.append(start + column.total_compressed_size)
    return min(starts), max(ends) - 1


def covered(spans: list[tuple[int, int]], first: int, last: int) -> bool:
    """Whether the ranges cover every byte from first to last."""
    at = first
    for a, b in sorted(spans):
        if a > at:
            return False
        at = max(at, b + 1)
    return at > last


# reads


def test_info_ls_and_byte_ranges(fed: Federation) -> None:
    fs = fed.filesystem()
    url = fed.url("a.bin")

    info = fs.info(url)
    assert (info["name"], info["type"], info["size"]) == ("/test/namespace/a.bin", "file",
                                                          len(BLOB))
    listing = {e["name"]: e for e in fs.ls(fed.url())}
    assert listing["/test/namespace/a.bin"]["size"] == len(BLOB)
    assert listing["/test/namespace/sub/"]["type"] == "directory"
    assert sorted(fs.ls(fed.url("sub"), detail=False)) == ["/test/namespace/sub/b.txt",
                                                          "/test/namespace/sub/c.txt"]

    assert fs.cat_file(url, 10, 20) == BLOB[10:20]
    assert fs.cat_file(url, start=-7) == BLOB[-7:]
    assert fs.cat_file(url) == BLOB
    assert fed.log.ranges_for("a.bin") == [(10, 19), (len(BLOB) - 7, len(BLOB) - 1), None]
    assert [e.range for e in fed.log.gets_for("a.bin")] == ["bytes=10-19", "bytes=-7", None]
    assert [e.status for e in fed.log.gets_for("a.bin")] == [206, 206, 200]
    assert fed.log.bytes_for("a.bin", server="cache-1") == 10 + 7 + len(BLOB)

    # info() asks the cache (PROPFIND Depth 1 on the object), ls() the origin (the
    # collections-url), reads the first cache in the director's Link list
    assert {e.server for e in fed.log.select(method="PROPFIND")} == {"cache-1", "origin"}
    assert {e.server for e in fed.log.gets_for("a.bin")} == {"cache-1"}

    missing = fed.url("missing.bin")
    with pytest.raises(FileNotFoundError):
        fs.info(missing)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(missing)
    assert fs.exists(missing) is False
    with pytest.raises(FileNotFoundError):
        fs.ls(fed.url("missing"))
    assert fed.log.select(path="missing.bin", server="cache-1", method="GET")[0].status == 404

    # surprises, pinned: info() says "file" for a collection whatever it is (isdir() asks
    # properly), and ls() of an object is an empty set, not the object's entry
    assert fs.info(fed.url("sub"))["type"] == "file"
    assert fs.isdir(fed.url("sub")) is True
    assert fs.ls(url) == set()


def test_discovery_once_per_instance_and_director_once_per_namespace(fed: Federation) -> None:
    fs = fed.filesystem()
    for name in ("a.bin", "sub/b.txt", "sub/c.txt", "rows.parquet"):
        fs.cat_file(fed.url(name), 0, 4)
    assert fed.log.discoveries() == 1
    # pelicanfs remembers the caches per namespace (X-Pelican-Namespace), not per object: the
    # director is asked about the first object only, and the cache probed (HEAD) once
    assert fed.log.director_lookups() == 1
    assert fed.log.director_lookups("a.bin") == 1
    assert fed.log.director_lookups("sub/b.txt") == 0
    assert len(fed.log.select(method="HEAD")) == 1

    # a new instance discovers again; fsspec.filesystem("pelican", ...) takes the same options
    other = fsspec.filesystem("pelican", **fed.storage_options())
    assert isinstance(other, PelicanFileSystem) and other is not fs
    assert other.cat_file(fed.url("a.bin"), 0, 4) == BLOB[:4]
    assert fed.log.discoveries() == 2
    assert fed.log.director_lookups() == 2


def test_direct_reads_ask_the_origin_api_every_time(fed: Federation) -> None:
    fs = fed.filesystem(direct_reads=True)
    for _ in range(2):
        assert fs.cat_file(fed.url("a.bin"), 0, 8) == BLOB[:8]
    # no memory of the origin: each read is a lookup on /api/v1.0/director/origin/...
    lookups = fed.log.select(server="director", method="GET")
    assert [e.path for e in lookups[1:]] == ["/api/v1.0/director/origin/test/namespace/a.bin"] * 2
    assert fed.log.director_lookups("a.bin") == 2
    assert {e.server for e in fed.log.requests_for("a.bin")} == {"origin"}


# Parquet


def test_parquet_row_groups_are_read_as_ranges(fed: Federation, data: Path) -> None:
    fs = fed.filesystem()
    url, size = fed.url("rows.parquet"), (data / "rows.parquet").stat().st_size

    # a surprise, pinned: PelicanFileSystem.open() makes `mode` a required argument
    with pytest.raises(TypeError, match="mode"):
        fs.open(url)

    # cache_type="none": each read is its own range request (the default is below)
    with fs.open(url, "rb", cache_type="none") as handle:
        parquet = pq.ParquetFile(handle)
        assert parquet.num_row_groups == ROW_GROUPS
        footer = fed.log.ranges_for("rows.parquet")
        assert len(footer) == 1 and footer[0][1] == size - 1  # the footer, read from the end
        for i in range(ROW_GROUPS):
            before = len(fed.log.gets_for("rows.parquet"))
            assert parquet.read_row_group(i).num_rows == ROWS_PER_GROUP
            new = fed.log.ranges_for("rows.parquet")[before:]
            first, last = span(parquet.metadata.row_group(i))
            assert new and all(r is not None and first <= r[0] <= r[1] <= last for r in new)
            assert covered(new, first, last)

    gets = fed.log.gets_for("rows.parquet")
    assert all(e.status == 206 and e.range for e in gets)  # never the whole object
    # each row group once; only the footer read (the last 64 KiB) overlaps the last one
    assert sum(e.bytes_sent for e in gets) <= size + gets[0].bytes_sent
    assert {e.server for e in gets} == {"cache-1"}


def test_parquet_default_open_reads_ahead(fed: Federation, data: Path) -> None:
    # with fsspec's defaults (a 5 MiB block, the "bytes" read-ahead cache) the first row group
    # pulls everything up to 5 MiB ahead: here the whole file in two requests
    fs = fed.filesystem()
    with fs.open(fed.url("rows.parquet"), "rb") as handle:
        parquet = pq.ParquetFile(handle)
        parquet.read_row_group(0)
        after_first = len(fed.log.gets_for("rows.parquet"))
        for i in range(1, ROW_GROUPS):
            parquet.read_row_group(i)
    ranges = fed.log.ranges_for("rows.parquet")
    assert after_first == len(ranges) == 2
    last = span(parquet.metadata.row_group(ROW_GROUPS - 1))[1]
    assert covered(ranges, 4, last)


def test_read_table_with_filesystem_fails_where_open_works(fed: Federation) -> None:
    fs = fed.filesystem()
    url = fed.url("rows.parquet")
    # the trap: pyarrow wraps fs in an FSSpecHandler, whose get_file_info() hands info()'s
    # "mtime" to pyarrow.fs.FileInfo; pelicanfs gives the HTTP date string, pyarrow wants a
    # number or datetime
    assert isinstance(fs.info(url)["mtime"], str)
    with pytest.raises(TypeError, match="must be real number, not str"):
        pq.read_table(url, filesystem=fs)
    with pytest.raises(TypeError):
        pq.read_table(fed.path("rows.parquet"), filesystem=fs)

    # what works: a file object from fs.open(), or ParquetFile (which opens without info())
    with fs.open(url, "rb") as handle:
        assert pq.read_table(handle).num_rows == ROWS_PER_GROUP * ROW_GROUPS
    assert pq.ParquetFile(url, filesystem=fs).metadata.num_rows == ROWS_PER_GROUP * ROW_GROUPS


# faults


def test_cut_body_in_cat_file_raises_and_drops_the_cache(fed: Federation) -> None:
    fs = fed.filesystem()
    url = fed.url("a.bin")
    fed.faults.cut_body(100)
    with pytest.raises(aiohttp.ClientPayloadError, match="received 100 of 10240"):
        fs.cat_file(url)
    # no retry: one GET, cut after 100 bytes
    assert [(e.server, e.bytes_sent) for e in fed.log.gets_for("a.bin")] == [("cache-1", 100)]
    # the failing cache is dropped from the namespace's list: the next read goes to cache-2,
    # without asking the director again
    assert fs.cat_file(url) == BLOB
    assert [e.server for e in fed.log.gets_for("a.bin")] == ["cache-1", "cache-2"]
    assert fed.log.director_lookups() == 1


def test_cut_body_in_open_file_raises_and_keeps_the_cache(fed: Federation) -> None:
    fs = fed.filesystem()
    url = fed.url("a.bin")
    fed.faults.cut_body(1000)
    with fs.open(url, "rb", cache_type="none") as handle:
        with pytest.raises(aiohttp.ClientPayloadError):
            handle.read(5000)
        # the same file object reads again (the position did not move)
        assert handle.read(5000) == BLOB[:5000]
    # a surprise, pinned: a failure inside a file's read() does not drop the cache, because
    # pelicanfs's _io_wrapper hands _bad_cache the namespace path, not the cache's URL
    assert fs.cat_file(url, 0, 10) == BLOB[:10]
    assert {e.server for e in fed.log.gets_for("a.bin")} == {"cache-1"}


def test_5xx_on_read_raises_without_retry_then_uses_the_next_cache(fed: Federation) -> None:
    fs = fed.filesystem()
    url = fed.url("a.bin")
    fed.faults.fail("cache-1", method="GET", times=1, status=503)
    with pytest.raises(aiohttp.ClientResponseError) as error:
        fs.cat_file(url, 0, 10)
    assert error.value.status == 503
    assert fs.cat_file(url, 0, 10) == BLOB[:10]
    assert [(e.server, e.status) for e in fed.log.gets_for("a.bin")] == [("cache-1", 503),
                                                                        ("cache-2", 206)]


@pytest.mark.parametrize("how", ["503", "refused"])
def test_first_cache_down_falls_back_to_the_next(fed: Federation, how: str) -> None:
    if how == "503":
        fed.faults.fail("cache-1", times=None, status=503)
    else:
        fed.faults.refuse("cache-1")
    fs = fed.filesystem()
    # pelicanfs probes the Link list in priority order with HEAD (2xx, 3xx and 404 count as
    # working; another status or a connection error moves on) and uses the first that works
    assert fs.cat_file(fed.url("a.bin"), 0, 10) == BLOB[:10]
    probes = [(e.server, e.status) for e in fed.log.select(method="HEAD")]
    assert probes == ([("cache-1", 503), ("cache-2", 200)] if how == "503"
                      else [("cache-2", 200)])
    assert {e.server for e in fed.log.gets_for("a.bin")} == {"cache-2"}

    fed.faults.clear()  # a refused cache listens again, on the same port
    assert fed.filesystem().cat_file(fed.url("a.bin"), 0, 10) == BLOB[:10]
    assert fed.log.gets_for("a.bin")[-1].server == "cache-1"


def test_all_caches_down(fed: Federation) -> None:
    fed.faults.fail("cache-1", times=None, status=500)
    fed.faults.refuse("cache-2")
    with pytest.raises(NoAvailableSource):
        fed.filesystem().cat_file(fed.url("a.bin"))


def test_discovery_and_director_5xx(fed: Federation) -> None:
    fs = fed.filesystem()
    url = fed.url("a.bin")
    fed.faults.fail("director", path="/.well-known/pelican-configuration")
    with pytest.raises(InvalidMetadata):
        fs.cat_file(url, 0, 4)
    assert fs.cat_file(url, 0, 4) == BLOB[:4]  # the same instance discovers again
    assert fed.log.discoveries() == 2

    fs = fed.filesystem()
    fed.faults.fail("director", path="a.bin")
    # a 503 from the director has no Link header: no caches, and no retry
    with pytest.raises(NoAvailableSource):
        fs.cat_file(url, 0, 4)
    assert fs.cat_file(url, 0, 4) == BLOB[:4]
    assert fed.log.director_lookups("a.bin") == 3

    with pytest.raises(NoAvailableSource):  # outside every namespace: 404 from the director
        fs.cat_file(f"pelican://127.0.0.1:{fed.port()}/elsewhere/a.bin")


def test_namespace_that_requires_a_token(fed: Federation, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # no token for pelicanfs to discover here (env, the default bearer token file,
    # .condor_creds), and a short OIDC timeout in case a `pelican` binary is on PATH
    for name in ("BEARER_TOKEN", "BEARER_TOKEN_FILE", "TOKEN", "_CONDOR_CREDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    fed.faults.require_token()
    url = fed.url("a.bin")

    anonymous = fed.filesystem(oidc_timeout_seconds=1)
    # every cache answers the HEAD probe 403, so pelicanfs reports no source, not a denial
    with pytest.raises(NoAvailableSource):
        anonymous.cat_file(url)
    assert [(e.server, e.status) for e in fed.log.select(method="HEAD")] == [("cache-1", 403),
                                                                            ("cache-2", 403)]
    # a listing reaches the origin and fails there; the WebDAV client sends "Bearer None"
    with pytest.raises(AccessDeniedError):
        anonymous.ls(fed.url())
    denied = fed.log.select(server="origin", method="PROPFIND")[-1]
    assert (denied.status, denied.authorization) == (403, "Bearer None")

    fed.log.clear()
    fs = fed.filesystem(headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    assert fs.cat_file(url, 0, 4) == BLOB[:4]
    assert fs.info(url)["size"] == len(BLOB)
    assert len(fs.ls(fed.url())) == 3
    with fs.open(url, "rb") as handle:
        assert handle.read(4) == BLOB[:4]
    data_requests = [e for e in fed.log if e.server != "director"]
    assert data_requests and all(e.status < 400 for e in data_requests)
    assert {e.authorization for e in data_requests} == {f"Bearer {DEFAULT_TOKEN}"}


# caching and trust


def test_filecache_fetches_once(fed: Federation, tmp_path: Path) -> None:
    cached = fsspec.filesystem("filecache", fs=fed.filesystem(), cache_storage=str(tmp_path),
                               skip_instance_cache=True)
    url = fed.url("rows.parquet")
    first = cached.cat_file(url)
    assert cached.cat_file(url) == first
    with cached.open(url, "rb") as handle:
        assert pq.ParquetFile(handle).metadata.num_row_groups == ROW_GROUPS
    gets = fed.log.gets_for("rows.parquet")
    assert [(e.range, e.status, e.bytes_sent) for e in gets] == [(None, 200, len(first))]


def test_tls_trust_takes_both_client_hooks(fed: Federation) -> None:
    url = fed.url("a.bin")
    # without the hooks pelicanfs verifies against the default trust store: discovery fails,
    # and the obvious options do not reach the session that discovery uses
    for options in ({}, {"verify_ssl": fed.ssl_context}, {"ssl": fed.ssl_context}):
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            PelicanFileSystem(skip_instance_cache=True, **options).cat_file(url, 0, 4)
    assert fed.log.discoveries() == 0  # refused in the handshake, before any request

    # SSL_CERT_FILE works in a process that sets it before aiohttp is imported (aiohttp
    # builds its default context at import)
    code = ("import fsspec; fs = fsspec.filesystem('pelican');"
            f"print(fs.cat_file({url!r}, 0, 4).hex(), fs.info({url!r})['size'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SSL_CERT_FILE": str(fed.ca_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [BLOB[:4].hex(), str(len(BLOB))]


# the fixture itself, seen by a plain HTTPS client


def fetch(fed: Federation, url: str, method: str = "GET",
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=fed.ssl_context),
                                         NoRedirect())
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_fixture_speaks_http_as_pelicanfs_expects(fed: Federation) -> None:
    director = fed.server_url("director")
    status, _, body = fetch(fed, f"{director}/.well-known/pelican-configuration")
    assert status == 200 and b'"director_endpoint": "' + director.encode() in body

    status, headers, _ = fetch(fed, f"{director}/test/namespace/a.bin")
    cache1, cache2 = fed.server_url("cache-1"), fed.server_url("cache-2")
    assert status == 307 and headers["Location"] == f"{cache1}/test/namespace/a.bin"
    assert headers["Link"] == (f'<{cache1}/test/namespace/a.bin>; rel="duplicate"; pri=1; depth=2, '
                               f'<{cache2}/test/namespace/a.bin>; rel="duplicate"; pri=2; depth=2')
    assert headers["X-Pelican-Namespace"] == (
        f"namespace=/test/namespace, require-token=false, "
        f"collections-url={fed.server_url('origin')}")
    assert fetch(fed, f"{director}/elsewhere/a.bin")[0] == 404

    obj = f"{cache1}/test/namespace/a.bin"
    for spec, expected in (("bytes=0-9", BLOB[:10]), ("bytes=10230-", BLOB[10230:]),
                           ("bytes=-5", BLOB[-5:]), ("bytes=10000-99999", BLOB[10000:])):
        status, headers, body = fetch(fed, obj, headers={"Range": spec})
        assert (status, body) == (206, expected), spec
        assert headers["Content-Range"].endswith(f"/{len(BLOB)}")
    assert fetch(fed, obj, headers={"Range": "bytes=20000-"})[0] == 416
    assert fetch(fed, obj, headers={"Range": "bytes=0-1,5-6"})[2] == BLOB  # several: whole
    assert fetch(fed, obj, "HEAD")[1]["Content-Length"] == str(len(BLOB))
    assert fetch(fed, f"{cache1}/test/namespace/nope")[0] == 404

    folder = f"{fed.server_url('origin')}/test/namespace/sub/"
    status, _, body = fetch(fed, folder, "PROPFIND", {"Depth": "1"})
    assert status == 207 and body.count(b"<D:response>") == 3
    assert fetch(fed, folder, "PROPFIND", {"Depth": "0"})[2].count(b"<D:response>") == 1
    assert fetch(fed, folder, "PROPFIND", {"Depth": "infinity"})[0] == 403
    assert fetch(fed, f"{obj}/", "PROPFIND", {"Depth": "0"})[0] == 500


def test_fixture_stops_cleanly_with_clients_connected(data: Path) -> None:
    def handlers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "process_request_thread" in t.name}

    before = handlers()
    with Federation(data, caches=1) as federation:
        fs = federation.filesystem()  # kept open: its pooled connections stay up
        fs.cat_file(federation.url("a.bin"), 0, 4)
        fs.ls(federation.url())
        ports = [federation.port(name) for name in ("director", "origin", "cache-1")]
        context = ssl.create_default_context(cafile=str(federation.ca_path))
        idle = context.wrap_socket(socket.create_connection(("127.0.0.1", ports[0])),
                                   server_hostname="127.0.0.1")  # a connection never used
    assert handlers() <= before
    assert not [t for t in threading.enumerate() if t.name.startswith("pelican-")]
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    idle.close()
