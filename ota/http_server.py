"""A static HTTP server for update repositories on the bench, with faults to test clients by.

Serves the files under one directory (GET and HEAD) with what a resuming client needs:
``Range: bytes=a-b`` / ``a-`` / ``-n`` answered 206 with ``Content-Range`` (416 with
``Content-Range: bytes */size`` when no requested byte exists), ``If-Range``, ``ETag``,
``Last-Modified``, ``Content-Length`` and ``Accept-Ranges``. Nothing outside the directory is
reachable (``..``, symlinks out, encoded slashes), nor hidden files (``.lock``, temporaries) nor
private keys (``*.pem``, ``*.key``), nor directory listings.

Bench faults, for tests of the update client:

* *throttle* — at most that many body bytes per second per response (a slow-retrieval attack);
* *fail_after* — the first response for each path (matching the glob *fail_match*) whose body
  is longer stops after that many body bytes and the connection is dropped, as a network cut
  would; later requests for that path are served normally (to test resuming).

Usage, in a test (sync or async)::

    with RepositoryServer(repo_dir) as server:           # a free loopback port
        urllib3.request("GET", server.url + "metadata/timestamp.json")
    async with RepositoryServer(repo_dir, fail_after=4096, fail_match="targets/*") as server:
        ...
        server.requests   # what was served: method, path, range, status, body bytes sent

or from the shell: ``tbox ota serve DIR [--port 8080] [--throttle 20000]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import fnmatch
import http.server
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final
from urllib.parse import unquote, urlsplit

from ota.errors import OtaIOError, OtaUsageError
from ota.http_range import NOT_SATISFIABLE, parse_range

__all__ = ["RepositoryServer", "ServedRequest"]

_CHUNK: Final = 64 * 1024
_REFUSED_SUFFIXES: Final = frozenset({".pem", ".key"})


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request as answered; *path* is relative to the served directory, as requested.

    *body_bytes* is what was sent of the body; *dropped* says the connection was cut before the
    whole body went out (a ``fail_after`` fault, a client that went away, or :meth:`stop`).
    """

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int
    dropped: bool = False


class RepositoryServer:
    """Serve directory *root* over HTTP on *host*:*port* (0: a free port) from a thread."""

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        throttle: int | None = None,
        fail_after: int | None = None,
        fail_match: str = "*",
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not root.is_dir():
            raise OtaUsageError(f"{root}: no such directory to serve")
        if throttle is not None and throttle < 1:
            raise OtaUsageError(f"throttle {throttle} must be at least 1 byte per second")
        if fail_after is not None and fail_after < 0:
            raise OtaUsageError(f"fail-after {fail_after} must not be negative")
        self.root = root.resolve()
        self.host = host
        self._port = port
        self.throttle = throttle
        self.fail_after = fail_after
        self.fail_match = fail_match
        self._log = log
        self._lock = threading.Lock()
        self._requests: list[ServedRequest] = []
        self._failed: set[str] = set()
        self._stopping = threading.Event()
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("server already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._server = _HttpServer((self.host, self._port), _Handler, self, family)
        except OSError as e:
            raise OtaIOError(f"cannot listen on {self.host}:{self._port}: {e.strerror or e}") from e
        self._stopping.clear()
        self._thread = threading.Thread(
            # A short poll interval: stop() returns within it.
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="ota-http-server",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; responses in progress are cut at their next chunk."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> RepositoryServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> RepositoryServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # --- what tests look at --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when started with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/``, the base URL of the served directory."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def requests(self) -> list[ServedRequest]:
        """Every request answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    # --- used by the handler -------------------------------------------------------------------

    def _resolve(self, request_path: str) -> tuple[str, Path] | None:
        """The file a request path names, or None when it names nothing servable."""
        raw = urlsplit(request_path).path
        if not raw.startswith("/"):
            return None
        try:
            decoded = unquote(raw, errors="strict") if "%" in raw else raw
        except UnicodeDecodeError:
            return None
        parts = [p for p in decoded.split("/") if p]
        if not parts or any(p.startswith(".") or "\0" in p for p in parts):
            return None
        relative = "/".join(parts)
        try:
            candidate = self.root.joinpath(*parts).resolve()
        except (OSError, RuntimeError):  # symlink loops
            return None
        if not candidate.is_relative_to(self.root) or candidate.suffix.lower() in _REFUSED_SUFFIXES:
            return None
        return (relative, candidate) if candidate.is_file() else None

    def _arm_failure(self, relative: str, body: int) -> int | None:
        """Bytes of body to send before dropping the connection, or None to send it all."""
        if self.fail_after is None or body <= self.fail_after:
            return None
        if not fnmatch.fnmatchcase(relative, self.fail_match):
            return None
        with self._lock:
            if relative in self._failed:
                return None
            self._failed.add(relative)
        return self.fail_after

    def _record(self, request: ServedRequest) -> int:
        # Recorded before the response goes out: a client that has read a whole response then
        # finds it in `requests` (recording afterwards would race with the client).
        with self._lock:
            self._requests.append(request)
            return len(self._requests) - 1

    def _amend(self, index: int, request: ServedRequest) -> None:
        with self._lock:
            self._requests[index] = request


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        owner: RepositoryServer,
        family: socket.AddressFamily,
    ) -> None:
        self.address_family = family
        self.owner = owner
        super().__init__(address, handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client fetches many files per refresh
    server: _HttpServer

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        log = self.server.owner._log
        if log is not None:
            log(f"{self.address_string()} {format % args}")

    def _answer(self, *, body: bool) -> None:
        owner = self.server.owner
        range_header = self.headers.get("Range")
        found = owner._resolve(self.path)
        if found is None:
            asked = unquote(urlsplit(self.path).path, errors="replace").lstrip("/")
            owner._record(ServedRequest(self.command, asked, range_header, 404, 0))
            self._empty(404, "Not Found")
            return
        relative, path = found
        try:
            f: BinaryIO = path.open("rb")
        except OSError:
            owner._record(ServedRequest(self.command, relative, range_header, 404, 0))
            self._empty(404, "Not Found")
            return
        with f:
            stat = path.stat()
            size = stat.st_size
            # Strong validator: size and modification time, as Apache and nginx do.
            etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
            last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
            if_range = self.headers.get("If-Range")
            wanted = None if if_range not in (None, etag, last_modified) else range_header
            chosen = parse_range(wanted, size)
            if chosen is NOT_SATISFIABLE:
                owner._record(ServedRequest(self.command, relative, range_header, 416, 0))
                self.send_response(416, "Range Not Satisfiable")
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                return
            start, stop = (0, size) if chosen is None else (chosen.start, chosen.stop)
            status = 200 if chosen is None else 206
            cut = owner._arm_failure(relative, stop - start) if body else None
            planned = ServedRequest(
                self.command,
                relative,
                range_header,
                status,
                (stop - start if cut is None else cut) if body else 0,
                dropped=cut is not None,
            )
            index = owner._record(planned)
            self.send_response(status)
            self.send_header("Content-Type", _content_type(path))
            self.send_header("Content-Length", str(stop - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
            if chosen is not None:
                self.send_header("Content-Range", chosen.content_range(size))
            self.end_headers()
            if not body:
                return
            sent = self._send_body(f, start, stop, cut)
            if sent != planned.body_bytes:  # the client went away, or the server stopped
                owner._amend(index, replace(planned, body_bytes=sent, dropped=True))

    def _send_body(self, f: BinaryIO, start: int, stop: int, cut: int | None) -> int:
        """Send bytes start..stop of *f* (throttled, cut after *cut*); the bytes sent."""
        owner = self.server.owner
        rate = owner.throttle
        chunk = _CHUNK if rate is None else max(1, min(_CHUNK, rate // 20))
        limit = stop - start if cut is None else cut
        f.seek(start)
        sent = 0
        began = time.monotonic()
        try:
            while sent < limit and not owner._stopping.is_set():
                data = f.read(min(chunk, limit - sent))
                if not data:
                    break
                self.wfile.write(data)
                sent += len(data)
                if rate is not None:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        owner._stopping.wait(ahead)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return sent
        if cut is not None or sent < stop - start:
            self._drop()
        return sent

    def _drop(self) -> None:
        # A cut mid-body: the client sees the connection close before Content-Length bytes.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _empty(self, status: int, reason: str) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _content_type(path: Path) -> str:
    return "application/json" if path.suffix == ".json" else "application/octet-stream"
