"""The status endpoint: the unix socket ``tbox status`` reads and the Prometheus HTTP server."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import stat
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.errors import UsageError
from agent.prometheus import render_prometheus
from agent.status_endpoint import AgentAlreadyRunningError, StatusEndpoint
from tests.agent.test_prometheus import SAMPLE_SNAPSHOT, parse_exposition, sample_snapshot

LOOPBACK = ("127.0.0.1", 0)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107 bytes a unix socket path may have.
    path = Path(tempfile.mkdtemp(prefix="tbox-st-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def read_status(path: Path) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def http(port: int | None, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send *request* raw; the status, headers (lower-case names) and body of the answer."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, code, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(code), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


def endpoint(
    sock_dir: Path, snapshot: Mapping[str, Any] | None = None, **kwargs: Any
) -> StatusEndpoint:
    shown = SAMPLE_SNAPSHOT if snapshot is None else snapshot
    return StatusEndpoint(lambda: shown, socket_path=sock_dir / "status.sock", **kwargs)


def leave_stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a killed agent leaves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)


# --- the unix socket -----------------------------------------------------------------------------


async def test_each_client_gets_a_fresh_snapshot_as_one_json_line(sock_dir: Path) -> None:
    calls = 0

    def snapshot() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return sample_snapshot(uptime_s=float(calls))

    path = sock_dir / "status.sock"
    async with StatusEndpoint(snapshot, socket_path=path) as status:
        assert status.prometheus_port is None
        first = await read_status(path)
        second = await read_status(path)
    assert first.endswith(b"\n") and first.count(b"\n") == 1
    assert b", " not in first and b": " not in first  # compact separators
    assert json.loads(first) == sample_snapshot(uptime_s=1.0)
    assert json.loads(second)["uptime_s"] == 2.0


async def test_socket_is_private_its_directory_created_and_removed_on_exit(sock_dir: Path) -> None:
    path = sock_dir / "run" / "tbox" / "status.sock"
    async with StatusEndpoint(lambda: SAMPLE_SNAPSHOT, socket_path=path):
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    assert not path.exists()
    assert path.parent.is_dir()


async def test_a_stale_socket_from_a_killed_agent_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "status.sock"
    leave_stale_socket(path)
    async with endpoint(sock_dir):
        assert json.loads(await read_status(path))["vehicle_id"] == "VIN1"
    assert not path.exists()


async def test_a_live_agent_on_the_socket_is_not_disturbed(sock_dir: Path) -> None:
    path = sock_dir / "status.sock"
    async with endpoint(sock_dir):
        with pytest.raises(AgentAlreadyRunningError) as excinfo:
            async with endpoint(sock_dir, sample_snapshot(vehicle_id="OTHER")):
                pytest.fail("a second endpoint started on a live socket")
        assert isinstance(excinfo.value, UsageError)
        assert str(excinfo.value) == f"another agent is running with status socket {path}"
        # The first agent still owns and serves its socket.
        assert json.loads(await read_status(path))["vehicle_id"] == "VIN1"
    assert not path.exists()


async def test_a_file_that_is_not_a_socket_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "status.sock"
    path.write_text("precious")
    with pytest.raises(UsageError, match="exists and is not a socket"):
        async with endpoint(sock_dir):
            pass
    assert path.read_text() == "precious"


async def test_a_path_too_long_for_a_unix_socket_is_a_usage_error(sock_dir: Path) -> None:
    path = sock_dir / ("x" * 120) / "status.sock"
    with pytest.raises(UsageError, match="too long for a unix socket"):
        async with StatusEndpoint(lambda: {}, socket_path=path):
            pass


async def test_a_failing_snapshot_ends_only_that_connection(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = True

    def snapshot() -> Mapping[str, Any]:
        if broken:
            raise RuntimeError("boom")
        return SAMPLE_SNAPSHOT

    path = sock_dir / "status.sock"
    async with StatusEndpoint(snapshot, socket_path=path, prometheus=LOOPBACK) as status:
        assert await read_status(path) == b""
        code, _, body = await http(status.prometheus_port, get("/metrics"))
        assert code == 500 and b"see its log" in body
        broken = False
        assert json.loads(await read_status(path)) == SAMPLE_SNAPSHOT
        code, _, _ = await http(status.prometheus_port, get("/metrics"))
        assert code == 200
    assert "status snapshot failed" in caplog.text and "boom" in caplog.text


async def test_exit_cancels_connections_in_progress(sock_dir: Path) -> None:
    status = endpoint(sock_dir, prometheus=LOOPBACK, request_timeout_s=60)
    async with status:
        # A client that never finishes its request would hold its connection for a minute.
        reader, writer = await asyncio.open_connection("127.0.0.1", status.prometheus_port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        started = time.monotonic()
    assert time.monotonic() - started < 2
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # aborted, not answered
    writer.close()


# --- HTTP for Prometheus -------------------------------------------------------------------------


async def test_metrics_is_the_prometheus_exposition(sock_dir: Path) -> None:
    async with endpoint(sock_dir, prometheus=LOOPBACK) as status:
        port = status.prometheus_port
        assert isinstance(port, int) and port > 0
        code, headers, body = await http(port, get("/metrics"))
    assert code == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert body.decode() == render_prometheus(SAMPLE_SNAPSHOT)
    parse_exposition(body.decode())


async def test_a_real_http_client_can_scrape_it(sock_dir: Path) -> None:
    def fetch(url: str) -> tuple[int, str, str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()

    async with endpoint(sock_dir, prometheus=LOOPBACK) as status:
        base = f"http://127.0.0.1:{status.prometheus_port}"
        code, content_type, text = await asyncio.to_thread(fetch, base + "/metrics?x=1")
        assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
        assert 'tbox_info{vehicle_id="VIN1",version="0.1.0"} 1' in text
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            await asyncio.to_thread(fetch, base + "/nope")
        assert excinfo.value.code == 404
        excinfo.value.close()


async def test_healthz_follows_the_uplink(sock_dir: Path) -> None:
    snapshot = sample_snapshot()
    async with endpoint(sock_dir, snapshot, prometheus=LOOPBACK) as status:
        port = status.prometheus_port
        code, headers, body = await http(port, get("/healthz"))
        assert (code, body) == (200, b"ok\n")
        assert headers["content-type"] == "text/plain; charset=utf-8"

        snapshot["uplink"].update(link="disconnected", last_error="MqttError: refused")
        code, _, body = await http(port, get("/healthz"))
        assert code == 503
        assert body == (
            b"unhealthy: uplink is disconnected from 127.0.0.1:1883 "
            b"(last error: MqttError: refused)\n"
        )

        del snapshot["uplink"]
        code, _, body = await http(port, get("/healthz"))
        assert code == 503 and b"no uplink state" in body


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (get("/"), 404),
        (get("/metrics/extra"), 404),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /healthz HTTP/1.1\r\n\r\n", 405),
        (b"hello\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"\xff\xfe\x00garbage\r\n\r\n", 400),
        (b"\r\nGET /metrics HTTP/1.0\n\n", 200),  # leading empty line, bare LFs: tolerated
    ],
    ids=[
        "root",
        "sub-path",
        "post",
        "delete",
        "no-method",
        "no-version",
        "http2",
        "double-space",
        "bad-header",
        "binary",
        "lenient",
    ],
)
async def test_other_requests(sock_dir: Path, request_bytes: bytes, code: int) -> None:
    async with endpoint(sock_dir, prometheus=LOOPBACK) as status:
        got, headers, body = await http(status.prometheus_port, request_bytes)
    assert got == code
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    if code == 405:
        assert headers["allow"] == "GET, HEAD"


async def test_head_sends_no_body(sock_dir: Path) -> None:
    async with endpoint(sock_dir, prometheus=LOOPBACK) as status:
        code, headers, body = await http(status.prometheus_port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert code == 200 and body == b""
    assert int(headers["content-length"]) == len(render_prometheus(SAMPLE_SNAPSHOT).encode())


@pytest.mark.parametrize("shape", ["one-long-line", "many-headers"])
async def test_request_head_size_is_limited(sock_dir: Path, shape: str) -> None:
    if shape == "one-long-line":
        request = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"
    else:
        request = b"GET /metrics HTTP/1.1\r\n" + b"X-Padding: 0123456789\r\n" * 500 + b"\r\n"
    async with endpoint(sock_dir, prometheus=LOOPBACK) as status:
        code, _, body = await http(status.prometheus_port, request)
        assert (code, body) == (431, b"request head too large\n")
        # …and the server is still there for the next client.
        code, _, _ = await http(status.prometheus_port, get("/metrics"))
        assert code == 200


async def test_a_slow_client_times_out_without_blocking_others(sock_dir: Path) -> None:
    async with endpoint(sock_dir, prometheus=LOOPBACK, request_timeout_s=0.3) as status:
        port = status.prometheus_port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ends its head
        await writer.drain()
        started = time.monotonic()
        # Others are served meanwhile.
        code, _, _ = await http(port, get("/healthz"))
        assert code == 200
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        assert 0.2 < time.monotonic() - started < 3
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_a_port_in_use_is_a_usage_error_and_leaves_no_socket(sock_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen for Prometheus on 127.0.0.1:{port}"):
            async with endpoint(sock_dir, prometheus=("127.0.0.1", port)):
                pass
    assert not (sock_dir / "status.sock").exists()
    # Nothing is left bound: the same socket path works right away.
    async with endpoint(sock_dir):
        pass


async def test_an_error_in_the_body_propagates_as_is(sock_dir: Path) -> None:
    with pytest.raises(KeyError, match="from the body"):
        async with endpoint(sock_dir, prometheus=LOOPBACK):
            raise KeyError("from the body")
    assert not (sock_dir / "status.sock").exists()


async def test_cancelling_the_owner_stops_the_endpoint(sock_dir: Path) -> None:
    entered = asyncio.Event()

    async def agent() -> None:
        async with endpoint(sock_dir, prometheus=LOOPBACK):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(agent())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (sock_dir / "status.sock").exists()
