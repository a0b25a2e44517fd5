"""``tbox status`` against a real status endpoint served from a background thread."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agent.cli import main
from agent.cli import status as status_cli
from agent.errors import TboxError
from agent.status_endpoint import StatusEndpoint
from tests.agent.test_prometheus import SAMPLE_SNAPSHOT, sample_snapshot


class BackgroundAgent:
    """A :class:`StatusEndpoint` serving *snapshot* on its own event loop in a thread."""

    def __init__(self, path: Path, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with StatusEndpoint(self._snapshot, socket_path=self.path):
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._ready.set()

    def start(self) -> BackgroundAgent:
        self._thread.start()
        assert self._ready.wait(10), "the status endpoint did not start"
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107 bytes a unix socket path may have.
    path = Path(tempfile.mkdtemp(prefix="tbox-cli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def snapshot() -> dict[str, Any]:
    """The snapshot the agent serves; tests may change it while it runs."""
    return sample_snapshot()


@pytest.fixture
def agent_socket(sock_dir: Path, snapshot: dict[str, Any]) -> Iterator[Path]:
    agent = BackgroundAgent(sock_dir / "status.sock", lambda: snapshot).start()
    try:
        yield agent.path
    finally:
        agent.stop()


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Render as on a wide terminal, so that no expected text is wrapped."""
    monkeypatch.setenv("COLUMNS", "200")


def no_agent_line(path: Path, hint: str = "is --socket right?") -> str:
    return f"tbox status: error: no agent is running at {path} (is the agent started? {hint})\n"


# --- one look ------------------------------------------------------------------------------------


def test_json_is_the_line_the_agent_sent(
    agent_socket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--socket", str(agent_socket), "--json"]) == 0
    out = capsys.readouterr().out
    assert out == json.dumps(SAMPLE_SNAPSHOT, separators=(",", ":")) + "\n"


@pytest.mark.usefixtures("wide")
def test_human_view_shows_every_section(
    agent_socket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--socket", str(agent_socket)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "tbox agent VIN1",
        "version 0.1.0",
        "pid 1234",
        "can0",
        "open",
        "socketcand://127.0.0.1:29536/can0",
        "decoded 90",
        "5 items",
        "4.0 KiB of 256.0 MiB (0.0%)",
        "oldest 1.5 s",
        "expired 2",
        "connected",
        "broker 127.0.0.1:1883",
        "connect failures 0",
        "bad_signature 1",
        "3 active from files: a, b, c",
    ):
        assert expected in out, expected
    assert "disconnected" not in out


@pytest.mark.usefixtures("wide")
def test_human_view_of_trouble(
    agent_socket: Path, snapshot: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot["uplink"].update(link="disconnected", last_error="MqttError: [code:5] refused")
    snapshot["buses"]["can0"].update(open=False, last_error="OSError: [Errno 19] No such device")
    snapshot["queue"]["oldest_age_s"] = None
    assert main(["status", "--socket", str(agent_socket)]) == 0
    out = capsys.readouterr().out
    assert "disconnected" in out
    assert "last error: MqttError: [code:5] refused" in out  # not eaten as rich markup
    assert "closed" in out and "can0: last error: OSError: [Errno 19] No such device" in out
    assert "oldest –" in out


def test_default_socket_and_no_options(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert Path("/var/lib/tbox/status.sock") == status_cli.DEFAULT_SOCKET
    agent = BackgroundAgent(sock_dir / "default.sock", lambda: SAMPLE_SNAPSHOT).start()
    try:
        monkeypatch.setattr(status_cli, "DEFAULT_SOCKET", agent.path)
        assert main(["status", "--json"]) == 0
    finally:
        agent.stop()
    assert json.loads(capsys.readouterr().out)["vehicle_id"] == "VIN1"


def write_config(directory: Path, socket_path: Path) -> Path:
    config_file = directory / "agent.toml"
    config_file.write_text(
        "[vehicle]\n"
        'id = "VIN1"\n'
        'state_dir = "state"\n'
        "[[bus]]\n"
        'url = "virtual://status-cli-test?name=can0"\n'
        "[mqtt]\n"
        'host = "127.0.0.1"\n'
        "[status]\n"
        f'socket = "{socket_path}"\n'
    )
    return config_file


def test_socket_from_the_agent_config(
    agent_socket: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = write_config(tmp_path, agent_socket)
    assert main(["status", "--config", str(config_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vehicle_id"] == "VIN1"

    gone = agent_socket.with_name("gone.sock")
    config_file = write_config(tmp_path, gone)
    assert main(["status", "--config", str(config_file)]) == 1
    assert capsys.readouterr().err == no_agent_line(
        gone, f"is status.socket in {config_file} right?"
    )


def test_a_bad_config_is_reported_by_the_loader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["status", "--config", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tbox status: error: {missing}") and err.count("\n") == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[status\n")
    assert main(["status", "--config", str(broken)]) == 1
    assert capsys.readouterr().err.startswith(f"tbox status: error: {broken}:1:")


# --- no agent, bad answers, usage ---------------------------------------------------------------


def test_no_agent_is_one_line_and_exit_1(
    sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = sock_dir / "status.sock"
    assert main(["status", "--socket", str(missing)]) == 1
    captured = capsys.readouterr()
    assert captured.err == no_agent_line(missing)
    assert captured.out == ""

    # A socket file left by a killed agent: connection refused, same answer.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(missing))
    assert main(["status", "--socket", str(missing), "--json"]) == 1
    assert capsys.readouterr().err == no_agent_line(missing)

    assert main(["status", "--socket", str(sock_dir / "no-dir" / "s.sock")]) == 1
    assert "no agent is running at" in capsys.readouterr().err


def test_no_agent_at_the_default_socket(capsys: pytest.CaptureFixture[str]) -> None:
    if status_cli.DEFAULT_SOCKET.exists():
        pytest.skip("an agent may really be running on this machine")
    assert main(["status"]) == 1
    assert capsys.readouterr().err == no_agent_line(Path("/var/lib/tbox/status.sock"))


def serve_raw(path: Path, answer: bytes | None) -> threading.Thread:
    """A one-shot unix server that sends *answer* and closes (``None``: hold and say nothing)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                if answer is None:
                    conn.recv(1)  # until the client gives up and closes
                else:
                    conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"not json\n", "sent an unreadable status"),
        (b"[1, 2]\n", "not a JSON object"),
        (b"", "closed the connection without answering"),
    ],
    ids=["garbage", "not-an-object", "nothing"],
)
def test_a_bad_answer_is_explained(
    sock_dir: Path, answer: bytes, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sock_dir / "raw.sock"
    thread = serve_raw(path, answer)
    assert main(["status", "--socket", str(path)]) == 1
    thread.join(5)
    err = capsys.readouterr().err
    assert err.startswith(f"tbox status: error: the agent at {path}") and problem in err
    assert err.count("\n") == 1


def test_an_agent_that_does_not_answer_times_out(sock_dir: Path) -> None:
    path = sock_dir / "mute.sock"
    thread = serve_raw(path, None)
    with pytest.raises(TboxError, match=r"did not answer within 0\.2 s"):
        status_cli.fetch_status(path, timeout=0.2)
    thread.join(5)


def test_an_answer_without_a_final_newline_is_accepted(sock_dir: Path) -> None:
    path = sock_dir / "raw.sock"
    thread = serve_raw(path, b'{"vehicle_id":"V"}')
    assert status_cli.fetch_status(path) == {"vehicle_id": "V"}
    thread.join(5)


@pytest.mark.parametrize(
    "words",
    [
        ["--socket", "a", "--config", "b"],
        ["--watch", "0"],
        ["--watch", "-1"],
        ["--watch", "soon"],
        ["--socket", "/tmp/" + "x" * 200],
    ],
    ids=["socket-and-config", "watch-0", "watch-negative", "watch-word", "too-long"],
)
def test_usage_errors_exit_2(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["status", *words])
    except SystemExit as e:  # argparse's own usage errors
        code = int(str(e.code))
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["status", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    assert "usage: tbox status" in out and "--watch" in out and "/var/lib/tbox/status.sock" in out


# --- --watch -------------------------------------------------------------------------------------


def stop_after(pauses: int, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make ``--watch`` pause instantly and get Ctrl-C at its *pauses*-th pause."""
    seen: list[float] = []

    def pause(seconds: float) -> None:
        seen.append(seconds)
        if len(seen) >= pauses:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_cli, "_pause", pause)
    return seen


def test_watch_json_prints_a_line_per_refresh(
    agent_socket: Path,
    snapshot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pauses = stop_after(3, monkeypatch)
    assert main(["status", "--socket", str(agent_socket), "--json", "--watch", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(json.loads(line) == snapshot for line in lines)
    assert pauses == [0.5, 0.5, 0.5]


@pytest.mark.usefixtures("wide")
def test_watch_refreshes_until_ctrl_c(
    agent_socket: Path,
    snapshot: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[float] = []

    def pause(seconds: float) -> None:
        seen.append(seconds)
        snapshot["pipeline"]["decoded"] += 1000
        if len(seen) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_cli, "_pause", pause)
    assert main(["status", "--socket", str(agent_socket), "--watch"]) == 0
    out = capsys.readouterr().out
    assert seen == [1.0, 1.0, 1.0]  # the default interval
    assert "decoded 90 " in out and "decoded 1,090" in out and "decoded 2,090" in out
    assert out.count("tbox agent VIN1") == 3


def test_watch_keeps_going_when_the_agent_goes_away(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = BackgroundAgent(sock_dir / "status.sock", lambda: SAMPLE_SNAPSHOT).start()
    seen: list[float] = []

    def pause(seconds: float) -> None:
        seen.append(seconds)
        if len(seen) == 1:
            agent.stop()
        if len(seen) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_cli, "_pause", pause)
    try:
        assert main(["status", "--socket", str(agent.path), "--watch", "2"]) == 0
    finally:
        agent.stop()
    out = capsys.readouterr().out
    assert out.count("tbox agent VIN1") == 3  # the last status received, still shown
    assert out.count("no agent is running at") == 2
    assert "showing the last status received" in out


def test_watch_on_a_terminal_uses_a_live_view(
    agent_socket: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = Console(force_terminal=True, width=120, record=True, file=io.StringIO())
    monkeypatch.setattr(status_cli, "Console", lambda **_: console)
    stop_after(2, monkeypatch)
    assert main(["status", "--socket", str(agent_socket), "--watch"]) == 0
    assert "tbox agent VIN1" in console.export_text()


def test_watch_needs_the_agent_at_first(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stop_after(5, monkeypatch)
    missing = sock_dir / "status.sock"
    assert main(["status", "--socket", str(missing), "--watch"]) == 1
    assert capsys.readouterr().err == no_agent_line(missing)


@pytest.mark.parametrize("width", [40, 80, 200])
def test_human_view_fits_any_width(width: int) -> None:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(status_cli.render_status(SAMPLE_SNAPSHOT))
    text = console.export_text()
    assert all(len(line) <= width for line in text.splitlines())
    assert "VIN1" in text


def test_human_view_of_an_odd_snapshot() -> None:
    # From an older or newer agent: missing sections, values of unexpected types.
    odd = {"vehicle_id": "V", "buses": {"can0": "?"}, "queue": {"bytes": "x"}, "uplink": {}}
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(status_cli.render_status(odd))
    text = console.export_text()
    assert "tbox agent V — version –, pid –, up –" in text
    assert "can0" in text and "– of –" in text


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (4096, "4.0 KiB"),
        (268435456, "256.0 MiB"),
        (2**50, "1024.0 TiB"),
    ],
)
def test_human_bytes(count: int, shown: str) -> None:
    assert status_cli.human_bytes(count) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (1.5, "1.5 s"),
        (245, "4m 05s"),
        (7380, "2h 03m"),
        (273600, "3d 04h"),
        (None, "–"),
        (float("inf"), "–"),
        (float("nan"), "–"),
    ],
)
def test_human_duration(seconds: float | None, shown: str) -> None:
    assert status_cli.human_duration(seconds) == shown


def test_human_view_shows_link_quality_at_connections_and_losses() -> None:
    snapshot = {
        "vehicle_id": "V",
        "uplink": {
            "link": "connected",
            "link_events": [
                {"t": 0.0, "event": "connected", "quality": {}, "error": ""},
                {"t": 1.0, "event": "lost", "quality": {"rssi_dbm": -109}, "error": "x"},
                {"t": 2.0, "event": "connected", "quality": {"rssi_dbm": -71, "act": "LTE"}},
                "garbage",
                {"t": "never", "event": None, "quality": [1]},
            ],
        },
    }
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(status_cli.render_status(snapshot))
    text = console.export_text()
    assert "lost: rssi_dbm -109" in text
    assert "connected: rssi_dbm -71 · act LTE" in text
    assert "– –: link quality unknown" in text


def test_human_view_shows_the_serial_devices() -> None:
    snapshot = {
        "vehicle_id": "V",
        "devices": {
            "gnss": {
                "state": "ok",
                "sentences": 1200,
                "bad_checksum": 3,
                "values": {
                    "latitude": 48.137,
                    "longitude": 11.5755,
                    "speed": 54.2,
                    "satellites": 9,
                },
            },
            "modem": {
                "state": "port_lost",
                "last_error": "/dev/ttyUSB2: gone",
                "values": {"rssi_dbm": -71, "access_technology": "E-UTRAN"},
            },
            "other": "junk",
        },
    }
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(status_cli.render_status(snapshot))
    text = console.export_text()
    assert "gnss ok · 48.13700, 11.57550 · speed 54.2 km/h · satellites 9 · sentences 1,200" in text
    assert "modem port_lost · -71 dBm · E-UTRAN · – · –" in text
    assert "last error: /dev/ttyUSB2: gone" in text
