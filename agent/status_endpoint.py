"""The running agent's status: a unix socket for ``tbox status`` and an optional Prometheus port.

:class:`StatusEndpoint` serves a status snapshot (a JSON-able mapping, see README "Status and
metrics") two ways while its context is entered:

* a unix socket (mode 0600): every client that connects gets the snapshot as one JSON line and
  the connection is closed — nothing is read from the client;
* with ``prometheus=(host, port)``: a minimal HTTP/1.1 server answering ``GET /metrics`` with
  the Prometheus text exposition of the snapshot (:func:`agent.prometheus.render_prometheus`)
  and ``GET /healthz`` with 200 while the uplink is connected, 503 otherwise.

::

    async with StatusEndpoint(agent.snapshot, socket_path=path, prometheus=("127.0.0.1", 9464)):
        ...

A client's trouble (a reset, a slow or malformed request) only ends its own connection; the
snapshot function failing is logged and answered with an error, it does not stop the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from agent.errors import UsageError
from agent.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from agent.prometheus import render_prometheus

__all__ = ["AgentAlreadyRunningError", "StatusEndpoint"]

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_PATH: Final = 107
_PROBE_TIMEOUT_S: Final = 1.0
_TEXT: Final = "text/plain; charset=utf-8"


class AgentAlreadyRunningError(UsageError):
    """Another live process is listening on the status socket this endpoint was given."""


class _BadRequestError(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StatusEndpoint:
    """Serves *snapshot* on the unix socket *socket_path* and, optionally, over HTTP.

    *snapshot* is called once per request, on the event loop. *prometheus* is ``(host, port)``
    for the HTTP server (port 0 picks a free one: see :attr:`prometheus_port`); ``None`` turns it
    off. An HTTP client has *request_timeout_s* to send its request head of at most
    *max_request_bytes*, and as long again to read the answer.

    Entering removes a stale socket file left by a killed agent, but raises
    :class:`AgentAlreadyRunningError` if a live process still answers on it. Exiting stops both
    servers, cancels the connections in progress and removes the socket file.
    """

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        socket_path: Path,
        prometheus: tuple[str, int] | None = None,
        request_timeout_s: float = 5.0,
        max_request_bytes: int = 8192,
    ) -> None:
        self.socket_path = socket_path
        self.prometheus = prometheus
        self._snapshot = snapshot
        self._request_timeout_s = request_timeout_s
        self._max_request_bytes = max_request_bytes
        self._servers: list[asyncio.Server] = []
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def prometheus_port(self) -> int | None:
        """The TCP port the Prometheus server is bound to; ``None`` if it is off or not started."""
        if self.prometheus is None or len(self._servers) < 2:
            return None
        port: int = self._servers[1].sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> StatusEndpoint:
        self._closing = False
        # The group first: a client may connect as soon as a server listens.
        group = self._group = asyncio.TaskGroup()
        await group.__aenter__()
        try:
            self._servers.append(await self._start_unix_server())
            if self.prometheus is not None:
                self._servers.append(await self._start_http_server(*self.prometheus))
        except BaseException:
            self._closing = True
            self._close_servers()
            for task in list(self._tasks):
                task.cancel()
            self._group = None
            # Exited as if cleanly: given the error, the group would wrap it in an ExceptionGroup.
            await group.__aexit__(None, None, None)
            raise
        for server, name in zip(self._servers, ("status-socket", "prometheus"), strict=False):
            self._spawn(server.serve_forever(), name=name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._group is not None
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        try:
            # Not the body's exception: our tasks are cancelled already, and given one the group
            # would raise it wrapped in an ExceptionGroup instead of letting it propagate as is.
            await self._group.__aexit__(None, None, None)
        finally:
            self._group = None
            # serve_forever closes its server when cancelled, but not if it was cancelled before
            # it ever ran.
            self._close_servers()

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        if self._group is None:
            coro.close()
            return
        task = self._group.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        self._remove_socket()

    # --- the unix socket ------------------------------------------------------------------------

    async def _start_unix_server(self) -> asyncio.Server:
        path = self.socket_path
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:
            raise UsageError(
                f"status socket path {str(path)!r} is too long for a unix socket "
                f"({len(os.fsencode(path))} bytes, at most {_MAX_UNIX_PATH})"
            )
        if _socket_file_exists(path):
            if await _somebody_listens(path):
                raise AgentAlreadyRunningError(
                    f"another agent is running with status socket {path}"
                )
            _remove_stale_socket(path)
        sock = self._bind(path)
        try:
            return await asyncio.start_unix_server(self._on_status_client, sock=sock)
        except BaseException:
            sock.close()
            self._remove_socket()
            raise

    def _bind(self, path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                # Created between our check and bind: another agent starting at the same time.
                raise AgentAlreadyRunningError(
                    f"another agent is running with status socket {path}"
                ) from None
            raise UsageError(f"cannot create status socket {path}: {e.strerror}") from e
        try:
            # chmod rather than umask: the umask is process-wide and other threads create files.
            # Until then the socket has the umask's mode, which under any usual umask lacks the
            # write permission that connecting needs.
            path.chmod(0o600)
            st = path.stat()
        except OSError:
            sock.close()
            path.unlink(missing_ok=True)
            raise
        self._socket_id = (st.st_dev, st.st_ino)
        return sock

    def _remove_socket(self) -> None:
        if self._socket_id is None:
            return
        socket_id, self._socket_id = self._socket_id, None
        try:
            st = self.socket_path.lstat()
        except FileNotFoundError:
            return
        # Somebody may have replaced the file meanwhile (an operator, a second agent after
        # ours was declared stale); only the socket we bound is ours to remove.
        if (st.st_dev, st.st_ino) == socket_id:
            self.socket_path.unlink(missing_ok=True)

    def _on_status_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        self._spawn(self._answer_status(writer), name="status-client")

    async def _answer_status(self, writer: asyncio.StreamWriter) -> None:
        answered = False
        try:
            async with asyncio.timeout(self._request_timeout_s):
                line = json.dumps(self._snapshot(), separators=(",", ":")) + "\n"
                writer.write(line.encode())
                await writer.drain()
            answered = True
        except (OSError, TimeoutError) as e:
            log.debug("status client went away: %r", e)
        except Exception:
            log.exception("status snapshot failed")
        finally:
            _hang_up(writer, answered=answered)

    # --- HTTP for Prometheus ----------------------------------------------------------------------

    async def _start_http_server(self, host: str, port: int) -> asyncio.Server:
        try:
            return await asyncio.start_server(
                self._on_http_client,
                host,
                port,
                # A request line or header longer than this fails readline(): no unbounded buffer.
                limit=self._max_request_bytes,
            )
        except OSError as e:
            raise UsageError(
                f"cannot listen for Prometheus on {host}:{port}: {e.strerror or e}"
            ) from e

    def _on_http_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        self._spawn(self._answer_http(reader, writer), name="prometheus-client")

    async def _answer_http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        method = ""
        answered = False
        try:
            try:
                async with asyncio.timeout(self._request_timeout_s):
                    method, path = await self._read_request_head(reader)
                status, content_type, body = self._route(method, path)
            except _BadRequestError as e:
                status, content_type, body = e.status, _TEXT, f"{e.reason}\n".encode()
            except TimeoutError:
                status, content_type, body = (
                    HTTPStatus.REQUEST_TIMEOUT,
                    _TEXT,
                    b"request head not received in time\n",
                )
            except asyncio.IncompleteReadError:
                return  # the client hung up before finishing its request
            except Exception:
                log.exception("status snapshot failed")
                status, content_type, body = (
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    _TEXT,
                    b"the agent failed to produce its status; see its log\n",
                )
            allow = "Allow: GET, HEAD\r\n" if status == HTTPStatus.METHOD_NOT_ALLOWED else ""
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"{allow}"
                "Connection: close\r\n\r\n"
            )
            # A HEAD answer announces the body's length but does not send it (RFC 9110 9.3.2).
            writer.write(head.encode("ascii") + (b"" if method == "HEAD" else body))
            async with asyncio.timeout(self._request_timeout_s):
                await writer.drain()
            answered = True
        except (OSError, TimeoutError) as e:
            log.debug("prometheus client went away: %r", e)
        finally:
            _hang_up(writer, answered=answered)

    async def _read_request_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """``(method, path)`` of the request; the headers are read and ignored."""
        size = 0
        lines: list[bytes] = []
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # readline's limit overrun
                raise _BadRequestError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"
                ) from None
            size += len(line)
            if size > self._max_request_bytes:
                raise _BadRequestError(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"
                )
            if not line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(line, None)
            if line in (b"\r\n", b"\n"):
                if not lines:
                    continue  # RFC 9112 2.2: ignore empty lines before the request line
                break
            lines.append(line)
        try:
            request_line = lines[0].decode("ascii").rstrip("\r\n")
            headers = [h.decode("latin-1") for h in lines[1:]]
        except UnicodeDecodeError:
            raise _BadRequestError(HTTPStatus.BAD_REQUEST, "malformed request line") from None
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
            raise _BadRequestError(HTTPStatus.BAD_REQUEST, "malformed request line")
        if any(":" not in h or h[0] in " \t" for h in headers):
            raise _BadRequestError(HTTPStatus.BAD_REQUEST, "malformed header")
        method, target, _ = parts
        return method, target.split("?", 1)[0]

    def _route(self, method: str, path: str) -> tuple[HTTPStatus, str, bytes]:
        if path not in ("/metrics", "/healthz"):
            return HTTPStatus.NOT_FOUND, _TEXT, b"not found; try /metrics or /healthz\n"
        if method not in ("GET", "HEAD"):
            return HTTPStatus.METHOD_NOT_ALLOWED, _TEXT, b"only GET and HEAD are allowed\n"
        snapshot = self._snapshot()
        if path == "/metrics":
            body = render_prometheus(snapshot).encode("utf-8", "replace")
            return HTTPStatus.OK, PROMETHEUS_CONTENT_TYPE, body
        healthy, reason = _health(snapshot)
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return status, _TEXT, f"{reason}\n".encode("utf-8", "replace")


def _hang_up(writer: asyncio.StreamWriter, *, answered: bool) -> None:
    if answered:
        writer.close()
    else:
        # Cancelled, timed out or failed: close() would keep the connection open until a client
        # that does not read had taken the unsent answer.
        writer.transport.abort()


def _socket_file_exists(path: Path) -> bool:
    """Whether *path* is a socket file; creates its directory if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        # Never delete what is not ours to delete, such as a mistyped path in the config.
        raise UsageError(f"status socket path {path} exists and is not a socket")
    return True


def _remove_stale_socket(path: Path) -> None:
    # Nobody listens: the file was left by an agent that was killed.
    log.info("removing stale status socket %s", path)
    path.unlink(missing_ok=True)


async def _somebody_listens(path: Path) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_unix_connection(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except PermissionError:
        raise UsageError(
            f"status socket {path} belongs to another user: cannot tell whether an agent is "
            "running there"
        ) from None
    except TimeoutError:
        return True  # a full backlog still means somebody is listening
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _health(snapshot: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the agent is healthy — its uplink is connected — and, if not, why."""
    uplink = snapshot.get("uplink")
    if not isinstance(uplink, Mapping) or "link" not in uplink:
        return False, "unhealthy: the agent reports no uplink state"
    if uplink["link"] == "connected":
        return True, "ok"
    why = f"unhealthy: uplink is {uplink['link']}"
    broker = uplink.get("broker")
    if broker:
        why += f" from {broker}"
    last_error = uplink.get("last_error")
    if last_error:
        why += f" (last error: {last_error})"
    return False, why
