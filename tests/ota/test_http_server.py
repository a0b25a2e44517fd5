"""The bench server: ranges, validators, confinement to its directory, and its faults."""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ota.errors import OtaUsageError
from ota.http_server import RepositoryServer

DATA = os.urandom(200_000)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    (root / "targets" / "tbox").mkdir(parents=True)
    (root / "targets" / "tbox" / "abc.rootfs.img").write_bytes(DATA)
    (root / "metadata").mkdir()
    (root / "metadata" / "timestamp.json").write_bytes(b'{"signed": {}}')
    (root / "empty.bin").write_bytes(b"")
    (root / ".lock").write_bytes(b"")
    (root / "metadata" / ".timestamp.json.tmp").write_bytes(b"partial")
    (root / "leaked-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----")
    secret = tmp_path_factory.mktemp("outside") / "secret.txt"
    secret.write_bytes(b"secret")
    (root / "link-out").symlink_to(secret)
    (root / "link-in").symlink_to(root / "metadata" / "timestamp.json")
    return root


@pytest.fixture(scope="module")
def server(served: Path) -> Iterator[RepositoryServer]:
    with RepositoryServer(served) as s:
        yield s


def _get(
    server: RepositoryServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


TARGET = "/targets/tbox/abc.rootfs.img"


def test_whole_file(server: RepositoryServer) -> None:
    status, headers, body = _get(server, TARGET)
    assert status == 200
    assert body == DATA
    assert headers["content-length"] == str(len(DATA))
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"')
    assert "last-modified" in headers
    assert server.url == f"http://127.0.0.1:{server.port}/"


def test_json_content_type(server: RepositoryServer) -> None:
    status, headers, _ = _get(server, "/metadata/timestamp.json")
    assert (status, headers["content-type"]) == (200, "application/json")


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [("bytes=0-99", 0, 100), ("bytes=1000-", 1000, 200_000), ("bytes=-10", 199_990, 200_000)],
)
def test_ranges(server: RepositoryServer, header: str, start: int, stop: int) -> None:
    status, headers, body = _get(server, TARGET, {"Range": header})
    assert status == 206
    assert body == DATA[start:stop]
    assert headers["content-range"] == f"bytes {start}-{stop - 1}/{len(DATA)}"
    assert headers["content-length"] == str(stop - start)


def test_unsatisfiable_range_is_416(server: RepositoryServer) -> None:
    status, headers, body = _get(server, TARGET, {"Range": f"bytes={len(DATA)}-"})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(DATA)}"
    assert body == b""
    assert _get(server, "/empty.bin", {"Range": "bytes=0-"})[0] == 416


def test_malformed_or_multiple_ranges_get_the_whole_file(server: RepositoryServer) -> None:
    for header in ("bytes=5-2", "bytes=0-1,4-5", "lines=1-2"):
        status, _, body = _get(server, TARGET, {"Range": header})
        assert (status, len(body)) == (200, len(DATA))


def test_if_range_honours_the_range_only_for_the_same_file(server: RepositoryServer) -> None:
    etag = _get(server, TARGET, method="HEAD")[1]["etag"]
    status, _, body = _get(server, TARGET, {"Range": "bytes=10-19", "If-Range": etag})
    assert (status, body) == (206, DATA[10:20])
    status, _, body = _get(server, TARGET, {"Range": "bytes=10-19", "If-Range": '"other"'})
    assert (status, body) == (200, DATA)


def test_head_has_the_headers_and_no_body(server: RepositoryServer) -> None:
    status, headers, body = _get(server, TARGET, {"Range": "bytes=0-9"}, method="HEAD")
    assert (status, body) == (206, b"")
    assert headers["content-length"] == "10"


@pytest.mark.parametrize(
    "path",
    [
        "/../outside/secret.txt",
        "/%2e%2e/secret.txt",
        "/metadata/..%2F..%2Fsecret.txt",
        "/link-out",
        "/.lock",
        "/metadata/.timestamp.json.tmp",
        "/leaked-key.pem",
        "/metadata",
        "/",
        "/nothing",
        "/%ff",
        "/a%00b",
        "relative",
    ],
)
def test_nothing_outside_hidden_or_private_is_served(server: RepositoryServer, path: str) -> None:
    status, _, body = _get(server, path)
    assert status == 404
    assert b"secret" not in body


def test_a_symlink_inside_the_directory_is_followed(server: RepositoryServer) -> None:
    assert _get(server, "/link-in")[0] == 200


def test_other_methods_are_not_implemented(server: RepositoryServer) -> None:
    assert _get(server, TARGET, method="PUT")[0] == 501


def test_keep_alive_serves_several_requests_on_one_connection(server: RepositoryServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/metadata/timestamp.json")
            assert conn.getresponse().read() == b'{"signed": {}}'
    finally:
        conn.close()


def test_requests_are_recorded(served: Path) -> None:
    with RepositoryServer(served) as server:
        _get(server, TARGET, {"Range": "bytes=0-9"})
        _get(server, "/nothing")
        recorded = server.requests
    assert [(r.path, r.range, r.status, r.body_bytes) for r in recorded] == [
        ("targets/tbox/abc.rootfs.img", "bytes=0-9", 206, 10),
        ("nothing", None, 404, 0),
    ]


@settings(max_examples=50, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(DATA) + 10), st.integers(min_value=0, max_value=10**6)
)
def test_any_range_serves_exactly_the_slice(server: RepositoryServer, first: int, n: int) -> None:
    status, _, body = _get(server, TARGET, {"Range": f"bytes={first}-{first + n}"})
    if first >= len(DATA):
        assert status == 416
    else:
        assert status == 206
        assert body == DATA[first : first + n + 1]


def test_fail_after_cuts_the_first_response_per_matching_path_once(served: Path) -> None:
    with RepositoryServer(served, fail_after=50_000, fail_match="targets/*") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", TARGET)
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        conn.close()
        received = excinfo.value.partial
        assert received == DATA[:50_000]
        # resume from where it stopped; the path has had its failure
        status, _, rest = _get(server, TARGET, {"Range": f"bytes={len(received)}-"})
        assert status == 206
        assert received + rest == DATA
        assert _get(server, TARGET)[2] == DATA
        # other paths do not match the glob; small bodies are never cut
        assert _get(server, "/metadata/timestamp.json")[0] == 200
        dropped = [(r.path, r.body_bytes) for r in server.requests if r.dropped]
    assert dropped == [("targets/tbox/abc.rootfs.img", 50_000)]


def test_throttle_limits_the_body_rate(served: Path) -> None:
    with RepositoryServer(served, throttle=100_000) as server:
        began = time.monotonic()
        status, _, body = _get(server, TARGET, {"Range": "bytes=0-49999"})
        elapsed = time.monotonic() - began
    assert (status, body) == (206, DATA[:50_000])
    assert 0.45 <= elapsed < 5


def test_stopping_cuts_a_slow_response(served: Path) -> None:
    server = RepositoryServer(served, throttle=1000)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", TARGET)
    response = conn.getresponse()
    began = time.monotonic()
    server.stop()
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    conn.close()
    assert time.monotonic() - began < 5


async def test_async_context_manager(served: Path) -> None:
    import asyncio

    async with RepositoryServer(served) as server:
        status, _, body = await asyncio.to_thread(_get, server, "/metadata/timestamp.json")
    assert (status, body) == (200, b'{"signed": {}}')


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(OtaUsageError, match="no such directory"):
        RepositoryServer(tmp_path / "absent")
    with pytest.raises(OtaUsageError, match="throttle"):
        RepositoryServer(tmp_path, throttle=0)
    with pytest.raises(OtaUsageError, match="fail-after"):
        RepositoryServer(tmp_path, fail_after=-1)
