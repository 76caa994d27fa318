"""A Pelican federation on 127.0.0.1, over HTTPS, for tests of code that reads `pelican://` URLs.

A test tool, not Pelican: it answers the requests `pelicanfs` (the fsspec implementation,
`pelicanfs/core.py`) makes, the way a federation answers them, so that a test sees what our
reading code does against a director, caches and an origin, and what it does when they fail.

    with Federation(folder, namespace="/test/namespace", caches=2) as fed:
        fs = fed.filesystem()                      # a PelicanFileSystem that trusts the test CA
        fs.cat_file(fed.url("a.parquet"), 0, 100)  # pelican://127.0.0.1:PORT/test/namespace/...
        fed.log.bytes_for("a.parquet")             # what the servers sent for it

What it serves (one HTTPS server per role, each in its own threads, on an ephemeral port, with a
certificate for 127.0.0.1 and localhost from a `trustme` test CA):

- `director` (also the discovery host, as on the OSDF, so `fed.url()` names it):
  `GET /.well-known/pelican-configuration` answers JSON with `director_endpoint`,
  `namespace_registration_endpoint` and `jwks_uri` (pelicanfs reads only the first).
  `GET`/`HEAD` of a path under the namespace answers 307 with `Location` (the first cache),
  `Link` (every cache, `<https://127.0.0.1:P/ns/obj>; rel="duplicate"; pri=N; depth=D`, the
  priorities in cache order, D the namespace's number of path components) and
  `X-Pelican-Namespace` (`namespace=/ns, require-token=false, collections-url=<origin>`), the
  headers `pelicanfs/dir_header_parser.py` parses; with `caches=0` the origin is the only
  server listed. `PROPFIND` (pelicanfs's question for listings) answers 307 to the origin
  with the same headers, its `Link` naming the origin; so does `GET
  /api/v1.0/director/origin/<path>` (pelicanfs's `direct_reads=True` and writes). A path
  outside the namespace answers 404 with none of these headers, as the director does for a
  path no namespace serves. The director never checks that an object exists: it redirects,
  and the cache answers 404.
- `origin`, `cache-1`, `cache-2`, ...: the same local folder under the namespace prefix.
  `HEAD` (Content-Length, Accept-Ranges, Last-Modified, ETag), `GET` whole (200) or with one
  `Range` (`a-b`, `a-`, `-n`: 206 with `Content-Range`; unsatisfiable: 416; several ranges:
  the whole object, 200, as RFC 9110 allows), `GET` of a collection (a small HTML listing),
  WebDAV `PROPFIND` with `Depth: 0` or `1` (207 multistatus with displayname,
  getcontentlength, getlastmodified, getetag, getcontenttype and resourcetype, collections'
  hrefs ending in "/"; `Depth: infinity` is refused with 403, and an object's path with a
  trailing slash answers 500, the convention pelicanfs uses to tell objects from collections),
  404 for what is not there. Caches serve the folder as it is now: no cache fill, no eviction.
- A request log (`fed.log`): for each request, the server, method, path, Range header,
  Authorization header, status and body bytes sent, with counts of discoveries, director
  lookups, and requests, ranges and bytes per object.
- Faults, set per test through `fed.faults` and cleared by `fed.faults.clear()`: cut a body
  after N bytes (the connection is closed mid-body, so aiohttp sees a short read), answer a
  status (5xx) to the next K requests to a server, refuse connections to a server (its
  listening socket closed), and a namespace that requires a token (`require-token=true`, and
  origin and caches answer 403 unless `Authorization: Bearer <token>`).

TLS trust: `fed.ca_path` (PEM) and `fed.ssl_context`. pelicanfs talks through two aiohttp
sessions, and neither takes a context from a single option: its HTTP filesystem's session
(discovery, director, cache probes, reads) is built by fsspec's `get_client` hook, and its
WebDAV client (info, ls, exists) by pelicanfs's `get_webdav_client` hook, which passes an
option `verify_ssl` on to aiohttp as its `ssl` argument. `fed.storage_options()` sets both
(`aiohttp_client_factory`, `webdav_client_factory`); `fed.filesystem()` builds a
PelicanFileSystem with them, and `fsspec.filesystem("pelican", **fed.storage_options())`
does the same. `PelicanFileSystem(verify_ssl=ctx)` or `ssl=ctx` does not work: those go to
the HTTP filesystem's reads only, and discovery fails first. `SSL_CERT_FILE=fed.ca_path` works
only in a process that sets it before importing aiohttp, which builds its default context at
import (a subprocess, say).

What it does not model: several namespaces or origins, the registry, issuers and token
contents (any request carrying the configured bearer token is allowed; no scopes, no
`X-Pelican-Token-Generation` or `X-Pelican-Authorization` headers), the director's cache
selection by location and its health checks, `X-Pelican-Timeout`, writes (`PUT` answers 405
everywhere), cache fills from the origin and their headers (`Age`, `X-Cache`...), checksums
(`Digest`), HTTP/2, compression, multipart ranges, and OSDF's real names and ports.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import html
import http.server
import json
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import trustme

if TYPE_CHECKING:
    from pelicanfs.core import PelicanFileSystem

HOST = "127.0.0.1"
DIRECTOR, ORIGIN = "director", "origin"
DISCOVERY_PATH = "/.well-known/pelican-configuration"
ORIGIN_API = "/api/v1.0/director/origin/"
DEFAULT_TOKEN = "test-token"
# a connection idle this long is closed, so a handler thread never outlives a test by much
IDLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    """One request as a server saw it and answered it."""

    server: str  # "director", "origin", "cache-1", ...
    method: str
    path: str  # unquoted, without the query
    range: str | None  # the Range header as sent
    status: int
    bytes_sent: int  # body bytes written (fewer than Content-Length for a cut body)
    authorization: str | None = None
    served: tuple[int, int] | None = None  # (first, last) byte of a 206 answer

    @property
    def byte_range(self) -> tuple[int, int] | None:
        """(first, last) byte served, or asked for by a `bytes=a-b` Range header that was not
        served (a fault); None for a request of the whole object."""
        if self.served is not None:
            return self.served
        if self.range and (parsed := _parse_simple_range(self.range)):
            return parsed
        return None


class RequestLog:
    """Every request the federation's servers answered. A request is logged just before its
    reply's last bytes go out, so a client that holds its answer always finds it here."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self._lock = threading.Lock()
        self._entries: list[Request] = []

    def add(self, entry: Request) -> None:
        with self._lock:
            self._entries.append(entry)

    def replace(self, old: Request, new: Request) -> None:
        """Correct an entry logged before its reply was sent (the client went away)."""
        with self._lock:
            self._entries[self._entries.index(old)] = new

    def clear(self) -> None:
        """Forget what was logged, so a test counts only what its next step does."""
        with self._lock:
            self._entries.clear()

    @property
    def entries(self) -> list[Request]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.entries)

    def object_path(self, name: str) -> str:
        """A path as the servers see it: names relative to the namespace get its prefix."""
        return name if name.startswith("/") else f"{self._namespace}/{name}"

    def select(self, *, server: str | None = None, method: str | None = None,
               path: str | None = None) -> list[Request]:
        """The requests matching all that is given; `server="cache"` means any cache."""
        wanted = self.object_path(path) if path is not None else None
        return [e for e in self.entries
                if (server is None or e.server == server
                    or (server == "cache" and e.server.startswith("cache-")))
                and (method is None or e.method == method)
                and (wanted is None or e.path == wanted)]

    def discoveries(self) -> int:
        """How many times a client fetched the federation's discovery document."""
        return len(self.select(server=DIRECTOR, path=DISCOVERY_PATH))

    def director_lookups(self, name: str | None = None, *, method: str | None = None) -> int:
        """Questions to the director about objects (discovery excluded), for one object if
        named; lookups through the origin API count for the object they name."""
        lookups = [e for e in self.select(server=DIRECTOR, method=method)
                   if e.path != DISCOVERY_PATH]
        if name is None:
            return len(lookups)
        wanted = self.object_path(name)
        return sum(1 for e in lookups
                   if e.path == wanted or e.path == ORIGIN_API.rstrip("/") + wanted)

    def requests_for(self, name: str, *, server: str | None = None,
                     method: str | None = None) -> list[Request]:
        """Requests for one object to the data servers (origin and caches) unless `server`."""
        return [e for e in self.select(server=server, method=method, path=name)
                if server is not None or e.server != DIRECTOR]

    def gets_for(self, name: str, *, server: str | None = None) -> list[Request]:
        return self.requests_for(name, server=server, method="GET")

    def ranges_for(self, name: str, *, server: str | None = None) -> list[tuple[int, int] | None]:
        """The byte ranges (first, last) of the GETs for an object (`Request.byte_range`);
        None for a GET of the whole object."""
        return [e.byte_range for e in self.gets_for(name, server=server)]

    def bytes_for(self, name: str, *, server: str | None = None,
                  method: str | None = "GET") -> int:
        """Body bytes of an object's data sent by the data servers (or by `server`); with
        `method=None`, PROPFIND answers and error bodies too."""
        return sum(e.bytes_sent for e in self.requests_for(name, server=server, method=method))

    def bytes_by_server(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.server] = out.get(e.server, 0) + e.bytes_sent
        return out


@dataclass
class _Cut:
    after: int
    server: str | None
    path: str | None
    times: int | None


@dataclass
class _Fail:
    server: str
    status: int
    times: int | None
    method: str | None
    path: str | None


class Faults:
    """What goes wrong, set by a test; each fault is used up by the requests it hits."""

    def __init__(self, federation: Federation) -> None:
        self._federation = federation
        self._lock = threading.Lock()
        self._cuts: list[_Cut] = []
        self._fails: list[_Fail] = []
        self._refused: set[str] = set()
        self.token: str | None = None  # set by require_token()

    def cut_body(self, after: int, *, server: str | None = None, path: str | None = None,
                 times: int | None = 1) -> None:
        """Send only the first `after` bytes of the next `times` GET bodies longer than that
        (from `server`, for `path`; None: any data server, any object, every time), then
        close the connection: the client reads fewer bytes than Content-Length promised."""
        with self._lock:
            self._cuts.append(_Cut(after, server, self._path(path), times))

    def fail(self, server: str, *, times: int | None = 1, status: int = 503,
             method: str | None = None, path: str | None = None) -> None:
        """Answer `status` to the next `times` requests to `server` (None: all of them until
        cleared), only those with `method` and for `path` if given."""
        with self._lock:
            self._fails.append(_Fail(server, status, times, method, self._path(path)))

    def refuse(self, server: str) -> None:
        """Stop `server` listening: connections to its port are refused until clear(), as
        for a cache that is down."""
        with self._lock:
            self._refused.add(server)
        self._federation._stop_node(server)

    def require_token(self, token: str = DEFAULT_TOKEN) -> None:
        """The namespace requires a token: the director says `require-token=true`, and the
        origin and caches answer 403 unless `Authorization: Bearer <token>`."""
        with self._lock:
            self.token = token

    def clear(self) -> None:
        """No faults: refused servers listen again on the same ports."""
        with self._lock:
            self._cuts.clear()
            self._fails.clear()
            self.token = None
            refused, self._refused = self._refused, set()
        for name in sorted(refused):
            self._federation._start_node(name)

    def _path(self, path: str | None) -> str | None:
        return None if path is None else self._federation.log.object_path(path)

    def take_fail(self, server: str, method: str, path: str) -> int | None:
        """The status to answer instead, if a fail() fault hits this request."""
        with self._lock:
            for fault in self._fails:
                if (fault.server == server and fault.method in (None, method)
                        and fault.path in (None, path)):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._fails.remove(fault)
                    return fault.status
        return None

    def take_cut(self, server: str, path: str, length: int) -> int | None:
        """Where to cut this GET body, if a cut_body() fault hits it."""
        with self._lock:
            for fault in self._cuts:
                if (fault.server in (None, server) and fault.path in (None, path)
                        and length > fault.after):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._cuts.remove(fault)
                    return fault.after
        return None


def aiohttp_client_factory(context: ssl.SSLContext) -> Callable[..., Any]:
    """fsspec's `get_client` hook for an HTTP filesystem whose session trusts `context`:
    pelicanfs makes discovery, director and cache requests through that session, without the
    per-request options an `ssl=` storage option would reach."""

    async def get_client(**kwargs: Any) -> Any:
        import aiohttp

        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), **kwargs)

    return get_client


def webdav_client_factory(context: ssl.SSLContext) -> Callable[[dict], Any]:
    """pelicanfs's `get_webdav_client` hook with `verify_ssl` set to `context`: pelicanfs
    never sets that option itself, so without this info(), ls() and exists() verify against
    the default trust store."""
    from pelicanfs.core import get_webdav_client

    def factory(options: dict) -> Any:
        return get_webdav_client({**options, "verify_ssl": context})

    return factory


class Federation:
    """A director (and discovery host), an origin and `caches` caches serving `root` under
    `namespace`; a context manager that starts them and stops them."""

    def __init__(self, root: str | Path, namespace: str = "/test/namespace", caches: int = 2,
                 *, listings: bool = True, bandwidth: float | None = None) -> None:
        if not namespace.startswith("/") or namespace.endswith("/"):
            raise ValueError(f"namespace {namespace!r}: want /a/b, without a trailing slash")
        self.root = Path(root).resolve()
        self.namespace = namespace
        self.listings = listings  # whether the director gives a collections-url
        self.bandwidth = bandwidth  # bytes/s of each data server's answer (None: loopback's)
        self.cache_names = [f"cache-{i}" for i in range(1, caches + 1)]
        self.log = RequestLog(namespace)
        self.faults = Faults(self)
        self.errors: list[str] = []  # unexpected exceptions in handlers; a test may assert none
        self._ports: dict[str, int] = {}
        self._servers: dict[str, _TLSServer] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._tmp: Path | None = None
        self._server_context: ssl.SSLContext | None = None
        self.ca_path: Path | None = None
        self.ssl_context: ssl.SSLContext | None = None

    # lifecycle

    def __enter__(self) -> Federation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="pelican-fed-"))
        ca = trustme.CA()
        self.ca_path = self._tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(HOST, "localhost").configure_cert(server_context)
        self._server_context = server_context
        self.ssl_context = ssl.create_default_context(cafile=str(self.ca_path))
        for name in [DIRECTOR, ORIGIN, *self.cache_names]:
            self._start_node(name)

    def stop(self) -> None:
        for name in list(self._servers):
            self._stop_node(name)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _start_node(self, name: str) -> None:
        assert self._server_context is not None, "start() the federation first"
        server = _TLSServer((HOST, self._ports.get(name, 0)), self._server_context,
                            _Node(self, name))
        self._ports[name] = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                  name=f"pelican-{name}", daemon=True)
        self._servers[name], self._threads[name] = server, thread
        thread.start()

    def _stop_node(self, name: str) -> None:
        server, thread = self._servers.pop(name, None), self._threads.pop(name, None)
        if server is None or thread is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins the handler threads
        thread.join()

    # addresses

    def port(self, server: str = DIRECTOR) -> int:
        return self._ports[server]

    def server_url(self, server: str) -> str:
        return f"https://{HOST}:{self._ports[server]}"

    @property
    def discovery_url(self) -> str:
        return f"pelican://{HOST}:{self._ports[DIRECTOR]}/"

    def path(self, name: str = "") -> str:
        """The namespace path of an object named relative to the namespace."""
        return f"{self.namespace}/{name.lstrip('/')}" if name else self.namespace

    def url(self, name: str = "") -> str:
        """`pelican://127.0.0.1:PORT/<namespace>/<name>`, the discovery host being the director."""
        return f"pelican://{HOST}:{self._ports[DIRECTOR]}{self.path(name)}"

    # clients

    def storage_options(self, **kwargs: Any) -> dict[str, Any]:
        """Options for `PelicanFileSystem(**...)` or `fsspec.filesystem("pelican", **...)`
        that trust the test CA; a fresh instance each time (fsspec would otherwise hand back
        a cached one, with its discovery and director answers already known)."""
        assert self.ssl_context is not None, "start() the federation first"
        return {"get_client": aiohttp_client_factory(self.ssl_context),
                "get_webdav_client": webdav_client_factory(self.ssl_context),
                "skip_instance_cache": True, **kwargs}

    def filesystem(self, **kwargs: Any) -> PelicanFileSystem:
        """A new `pelicanfs.PelicanFileSystem` that trusts the test CA."""
        from pelicanfs.core import PelicanFileSystem

        return PelicanFileSystem(**self.storage_options(**kwargs))


class _TLSServer(http.server.ThreadingHTTPServer):
    """A threaded HTTPS server that does each TLS handshake in the connection's own thread
    and can close its open connections, so that stopping it never waits on a client."""

    daemon_threads = False  # server_close() joins them
    block_on_close = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, node: _Node) -> None:
        self.context = context
        self.node = node
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IDLE_TIMEOUT_S)
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except OSError:  # a client that gave up, or did not trust us
            return
        with self._live_lock:
            self._live.add(conn)
        try:
            _Handler(conn, client_address, self)
        except OSError:
            pass
        except Exception as exc:  # kept for the test to see
            self.node.federation.errors.append(f"{self.node.name}: {exc!r}")
        finally:
            with self._live_lock:
                self._live.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def close_connections(self) -> None:
        with self._live_lock:
            live = list(self._live)
        for conn in live:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the federation keeps its own log

    def _serve(self) -> None:
        self.server.node.serve(self)

    do_GET = do_HEAD = do_PROPFIND = do_PUT = do_DELETE = do_OPTIONS = do_MKCOL = _serve


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    served: tuple[int, int] | None = None


class _Node:
    """One server's answers: the director's or a data server's (origin or cache)."""

    def __init__(self, federation: Federation, name: str) -> None:
        self.federation = federation
        self.name = name

    def serve(self, h: _Handler) -> None:
        fed = self.federation
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)  # a PROPFIND body; the answer does not depend on it
        parts = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parts.path)
        method = h.command
        status = fed.faults.take_fail(self.name, method, path)
        if status is not None:
            reply = _Reply(status, f"injected fault: {status}\n".encode(),
                           {"Content-Type": "text/plain"})
        elif self.name == DIRECTOR:
            reply = self._director(method, path)
        else:
            reply = self._data(method, path, h.headers)
        cut = None
        if method == "GET" and self.name != DIRECTOR and reply.status < 300:
            cut = fed.faults.take_cut(self.name, path, len(reply.body))
        body = b"" if method == "HEAD" else reply.body if cut is None else reply.body[:cut]
        entry = Request(self.name, method, path, h.headers.get("Range"), reply.status,
                        len(body), h.headers.get("Authorization"), reply.served)
        # logged before the reply's last bytes: the client may read the log as soon as it has
        # them, before this thread would get to a line after the send
        fed.log.add(entry)
        sent = self._send(h, reply, body, cut=cut,
                          rate=None if self.name == DIRECTOR else fed.bandwidth)
        if sent < len(body):  # the client went away: log what it was sent
            fed.log.replace(entry, replace(entry, bytes_sent=sent))

    @staticmethod
    def _send(h: _Handler, reply: _Reply, body: bytes, *, cut: int | None,
              rate: float | None = None) -> int:
        """Send the reply with `body` (cut short of the headers' Content-Length when `cut` is
        set); the body bytes written, fewer when the client went away."""
        h.send_response(reply.status)
        for key, value in reply.headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(reply.body)))
        h.end_headers()
        step = 1 << 18 if rate else max(len(body), 1)  # `rate` bytes/s: 256 KiB when due
        began, written = time.monotonic(), 0
        for offset in range(0, len(body), step):
            try:
                h.wfile.write(body[offset:offset + step])
            except OSError:
                h.close_connection = True
                return written
            written += len(body[offset:offset + step])
            if rate:
                time.sleep(max(0.0, began + written / rate - time.monotonic()))
        if cut is not None:
            h.wfile.flush()
            h.close_connection = True  # the socket closes with Content-Length unmet
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
        return written

    # the director

    def _director(self, method: str, path: str) -> _Reply:
        fed = self.federation
        if path == DISCOVERY_PATH and method in ("GET", "HEAD"):
            director = fed.server_url(DIRECTOR)
            doc = {"director_endpoint": director,
                   "namespace_registration_endpoint": director,
                   "jwks_uri": f"{director}/.well-known/issuer.jwks"}
            return _Reply(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        to_origin = path.startswith(ORIGIN_API)
        if to_origin:
            path = "/" + path[len(ORIGIN_API):].lstrip("/")
        if not _under(path, fed.namespace):
            return _Reply(404, b'{"status":"error","msg":"No namespace found for path"}',
                          {"Content-Type": "application/json"})
        if method not in ("GET", "HEAD", "PROPFIND"):
            return _Reply(405, b"", {"Allow": "GET, HEAD, PROPFIND"})
        servers = [ORIGIN] if to_origin or method == "PROPFIND" or not fed.cache_names \
            else fed.cache_names
        quoted = urllib.parse.quote(path)
        depth = fed.namespace.count("/")
        links = ", ".join(f'<{fed.server_url(s)}{quoted}>; rel="duplicate"; pri={i}; '
                          f"depth={depth}" for i, s in enumerate(servers, 1))
        namespace = [f"namespace={fed.namespace}",
                     f"require-token={'true' if fed.faults.token else 'false'}"]
        if fed.listings:
            namespace.append(f"collections-url={fed.server_url(ORIGIN)}")
        return _Reply(307, b"", {"Location": f"{fed.server_url(servers[0])}{quoted}",
                                 "Link": links, "X-Pelican-Namespace": ", ".join(namespace)})

    # the origin and the caches

    def _data(self, method: str, path: str, headers: Any) -> _Reply:
        fed = self.federation
        token = fed.faults.token
        if token is not None and headers.get("Authorization") != f"Bearer {token}":
            return _Reply(403, b"a token is required\n", {"Content-Type": "text/plain"})
        target = self._local(path)
        if method == "PROPFIND":
            return self._propfind(path, target, headers.get("Depth", "1"))
        if method not in ("GET", "HEAD"):
            return _Reply(405, b"", {"Allow": "GET, HEAD, PROPFIND"})
        if target is None or not target.exists():
            return _Reply(404, b"not found\n", {"Content-Type": "text/plain"})
        if target.is_dir():
            names = "".join(f'<a href="{html.escape(urllib.parse.quote(_href(path, p)))}">'
                            f"{html.escape(p.name)}</a>\n" for p in sorted(target.iterdir()))
            return _Reply(200, f"<html><body>\n{names}</body></html>\n".encode(),
                          {"Content-Type": "text/html"})
        data = target.read_bytes()
        size = len(data)
        common = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                  "Last-Modified": _http_date(target), "ETag": _etag(target)}
        spec = headers.get("Range")
        if not spec or "," in spec:
            return _Reply(200, data, common)
        span = _parse_range(spec, size)
        if span is None:
            return _Reply(416, b"", {**common, "Content-Range": f"bytes */{size}"})
        first, last = span
        return _Reply(206, data[first:last + 1],
                      {**common, "Content-Range": f"bytes {first}-{last}/{size}"}, (first, last))

    def _local(self, path: str) -> Path | None:
        """The file behind a namespace path, or None outside the namespace or the folder."""
        fed = self.federation
        if not _under(path, fed.namespace):
            return None
        rest = path[len(fed.namespace):].strip("/")
        target = (fed.root / rest).resolve() if rest else fed.root
        if target != fed.root and fed.root not in target.parents:
            return None
        return target

    def _propfind(self, path: str, target: Path | None, depth: str) -> _Reply:
        if depth not in ("0", "1"):
            return _Reply(403, b"Depth infinity is not supported\n")
        if target is None or not target.exists():
            return _Reply(404, b"not found\n", {"Content-Type": "text/plain"})
        if target.is_file() and path.endswith("/"):
            return _Reply(500, b"not a collection\n", {"Content-Type": "text/plain"})
        base = path.rstrip("/") or "/"
        entries = [(base, target)]
        if depth == "1" and target.is_dir():
            entries += [(_href(base, p), p) for p in sorted(target.iterdir())]
        body = "".join(_dav_response(href, p) for href, p in entries)
        xml = ('<?xml version="1.0" encoding="utf-8"?>\n'
               f'<D:multistatus xmlns:D="DAV:">\n{body}</D:multistatus>\n')
        return _Reply(207, xml.encode(), {"Content-Type": 'application/xml; charset="utf-8"'})


def _under(path: str, namespace: str) -> bool:
    return path == namespace or path.startswith(namespace + "/")


def _href(base: str, child: Path) -> str:
    return f"{base.rstrip('/')}/{child.name}"


def _http_date(path: Path) -> str:
    return email.utils.formatdate(path.stat().st_mtime, usegmt=True)


def _etag(path: Path) -> str:
    stat = path.stat()
    return '"' + hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode(),
                              usedforsecurity=False).hexdigest()[:16] + '"'


def _dav_response(href: str, path: Path) -> str:
    is_dir = path.is_dir()
    quoted = urllib.parse.quote(href + ("/" if is_dir and not href.endswith("/") else ""))
    size = 0 if is_dir else path.stat().st_size
    kind = "<D:resourcetype><D:collection/></D:resourcetype>" if is_dir \
        else "<D:resourcetype/><D:getcontenttype>application/octet-stream</D:getcontenttype>"
    return (f"<D:response><D:href>{escape(quoted)}</D:href><D:propstat><D:prop>"
            f"<D:displayname>{escape(path.name)}</D:displayname>"
            f"<D:getcontentlength>{size}</D:getcontentlength>"
            f"<D:getlastmodified>{_http_date(path)}</D:getlastmodified>"
            f"<D:getetag>{escape(_etag(path))}</D:getetag>{kind}"
            "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>\n")


def _parse_simple_range(spec: str) -> tuple[int, int] | None:
    """(first, last) of `bytes=a-b`; None for any other form."""
    unit, _, rest = spec.partition("=")
    first, _, last = rest.strip().partition("-")
    if unit.strip() != "bytes" or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last)


def _parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single-range header for an object of `size` bytes; None if it
    cannot be satisfied (416)."""
    unit, _, rest = spec.partition("=")
    first_s, dash, last_s = rest.strip().partition("-")
    if unit.strip() != "bytes" or not dash:
        return None
    try:
        if not first_s:  # bytes=-n: the last n bytes
            count = int(last_s)
            if count <= 0 or size == 0:
                return None
            return max(size - count, 0), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first >= size or last < first:
        return None
    return first, min(last, size - 1)
