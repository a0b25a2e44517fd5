"""Reading CAN logs (C2): every python-can format, candump's two text formats, bad input."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.canlog import MAX_FIRST_ERRORS, LogReadStats, read_log
from agent.errors import InputError, UsageError

REPO = Path(__file__).resolve().parents[2]
RAV4_CANDIDATES = [
    REPO / "tests" / "data" / "rav4-2018-comma2k19" / "rav4_60s.log",
    REPO.parent / "shared" / "data" / "rav4-2018-comma2k19" / "rav4_60s.log",
]
RAV4 = next((p for p in RAV4_CANDIDATES if p.is_file()), None)

FIELDS = (
    "arbitration_id",
    "is_extended_id",
    "dlc",
    "data",
    "is_fd",
    "is_remote_frame",
    "is_error_frame",
    "channel",
)


def _frames(*, fd: bool = True, remote: bool = True) -> list[can.Message]:
    t0 = 1_700_000_000.0
    frames = [
        can.Message(
            timestamp=t0 + i * 0.01,
            arbitration_id=0x100 + i,
            is_extended_id=False,
            dlc=8,
            data=bytes(range(i, i + 8)),
            channel="can0",
        )
        for i in range(3)
    ]
    frames.append(
        can.Message(
            timestamp=t0 + 0.05,
            arbitration_id=0x1ABCDEF,
            is_extended_id=True,
            dlc=3,
            data=b"\x01\x02\x03",
            channel="can1",
        )
    )
    frames.append(
        can.Message(
            timestamp=t0 + 0.06, arbitration_id=0x7FF, is_extended_id=False, dlc=0, channel="can0"
        )
    )
    if remote:
        frames.append(
            can.Message(
                timestamp=t0 + 0.07,
                arbitration_id=0x321,
                is_extended_id=False,
                is_remote_frame=True,
                dlc=0,
                channel="can0",
            )
        )
    if fd:
        frames.append(
            can.Message(
                timestamp=t0 + 0.08,
                arbitration_id=0x456,
                is_extended_id=False,
                is_fd=True,
                bitrate_switch=True,
                dlc=12,
                data=bytes(range(12)),
                channel="can0",
            )
        )
    return frames


def _assert_same(
    expected: list[can.Message], got: list[can.Message], *, skip: tuple[str, ...] = ()
) -> None:
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert have.timestamp == pytest.approx(want.timestamp, abs=2e-6)
        for name in FIELDS:
            if name not in skip:
                assert getattr(have, name) == getattr(want, name), (name, want, have)
        assert isinstance(have.channel, str)


def _write(writer_cls: Callable[..., Any], path: Path, frames: list[can.Message]) -> None:
    writer = writer_cls(str(path))
    for msg in frames:
        writer.on_message_received(msg)
    writer.stop()


# --- python-can's formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "writer", "fd", "remote", "skip"),
    [
        (".log", can.CanutilsLogWriter, True, True, ()),
        (".asc", can.ASCWriter, True, True, ()),
        (".blf", can.BLFWriter, True, True, ()),
        (".trc", can.TRCWriter, False, False, ()),  # python-can's TRC writer has neither
        (".csv", can.CSVWriter, False, True, ("channel",)),  # CSV has no channel column
        (".db", can.SqliteWriter, False, True, ("channel",)),
    ],
)
def test_python_can_formats_round_trip(
    tmp_path: Path,
    suffix: str,
    writer: Callable[..., Any],
    fd: bool,
    remote: bool,
    skip: tuple[str, ...],
) -> None:
    frames = _frames(fd=fd, remote=remote)
    path = tmp_path / f"frames{suffix}"
    _write(writer, path, frames)
    stats = LogReadStats()
    got = list(read_log(path, stats))
    _assert_same(frames, got, skip=skip)
    if "channel" in skip:
        assert {m.channel for m in got} == {"can0"}
    assert stats.frames == len(frames)
    assert stats.malformed == 0


def test_mf4_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("asammdf")
    frames = _frames()
    path = tmp_path / "frames.mf4"
    _write(can.MF4Writer, path, frames)
    _assert_same(frames, list(read_log(path)))


def test_mf4_without_asammdf_is_an_input_error(tmp_path: Path) -> None:
    # In a fresh interpreter where asammdf cannot be imported (as without the mf4 extra).
    path = tmp_path / "x.mf4"
    path.write_bytes(b"MDF     4.10    ")
    code = (
        "import sys; sys.modules['asammdf'] = None\n"
        "from agent.canlog import read_log\n"
        "from agent.errors import InputError\n"
        "try:\n    list(read_log(sys.argv[1]))\n"
        "except InputError as e:\n    print(e)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert "x.mf4" in run.stdout and "asammdf" in run.stdout


def test_gzipped_logs(tmp_path: Path) -> None:
    frames = _frames()
    plain = tmp_path / "frames.log"
    _write(can.CanutilsLogWriter, plain, frames)
    packed = tmp_path / "frames.log.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    _assert_same(frames, list(read_log(packed)))
    asc = tmp_path / "frames.asc"
    _write(can.ASCWriter, asc, frames)
    asc_gz = tmp_path / "frames.asc.gz"
    asc_gz.write_bytes(gzip.compress(asc.read_bytes()))
    _assert_same(frames, list(read_log(asc_gz)))


def test_format_sniffed_by_content_when_suffix_is_unhelpful(tmp_path: Path) -> None:
    frames = _frames()
    blf = tmp_path / "frames.blf"
    _write(can.BLFWriter, blf, frames)
    renamed = tmp_path / "capture.bin"
    renamed.write_bytes(blf.read_bytes())
    _assert_same(frames, list(read_log(renamed)))
    asc = tmp_path / "frames.asc"
    _write(can.ASCWriter, asc, frames)
    txt = tmp_path / "frames.txt"
    txt.write_text(asc.read_text())
    stats = LogReadStats()
    _assert_same(frames, list(read_log(txt, stats)))
    assert stats.format == "asc"


def test_python_can_reader_failure_names_file_and_line_after_yielding(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "timestamp,arbitration_id,extended,remote,error,dlc,data\n"
        "1700000000.0,0x123,0,0,0,2,AQI=\n"
        "this line is not csv\n"
        "1700000000.2,0x124,0,0,0,2,AQI=\n"
    )
    got: list[can.Message] = []
    with pytest.raises(InputError, match=r"bad\.csv:3: .*after 1 frames"):
        for msg in read_log(path):
            got.append(msg)
    assert [m.arbitration_id for m in got] == [0x123]


def test_python_can_warnings_count_as_malformed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "odd.trc"
    path.write_text(
        ";$FILEVERSION=2.1\n"
        ";$STARTTIME=45000.5\n"
        ";$COLUMNS=N,O,T,B,I,d,R,L,D\n"
        ";\n"
        "      1         0.000 DT  1      123 Rx -  2    01 02\n"
        "      2         1.000 DT\n"
        "      3         2.000 DT  1      125 Rx -  2    01 02\n"
    )
    stats = LogReadStats()
    with caplog.at_level("WARNING"):
        got = list(read_log(path, stats))
    assert [m.arbitration_id for m in got] == [0x123, 0x125]
    assert [m.channel for m in got] == ["can0", "can0"]  # TRC buses count from 1
    assert stats.malformed == 1
    assert stats.first_errors[0].startswith(f"{path}:6: ")
    assert not caplog.records  # counted, not logged


def test_corrupt_binary_log_is_an_input_error(tmp_path: Path) -> None:
    good = tmp_path / "good.blf"
    _write(can.BLFWriter, good, _frames() * 100)
    damaged = bytearray(good.read_bytes())
    for i in range(200, 400):  # inside the first compressed container
        damaged[i] ^= 0xFF
    path = tmp_path / "bad.blf"
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"bad\.blf: unreadable \.blf data after 0 frames"):
        list(read_log(path))


def test_missing_file_and_directory_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        list(read_log(tmp_path / "nope.log"))
    with pytest.raises(UsageError, match="directory"):
        list(read_log(tmp_path))


def test_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.write_text("")
    stats = LogReadStats()
    assert list(read_log(path, stats)) == []
    assert stats.frames == stats.malformed == 0


# --- candump -L --------------------------------------------------------------------------------


def test_candump_log_forms(tmp_path: Path) -> None:
    path = tmp_path / "forms.log"
    path.write_text(
        "(1700000000.000001) can0 123#DEADBEEF\n"
        "(1700000000.000002) can0 12345678#0102\n"
        "(1700000000.000003) vcan1 321#R\n"
        "(1700000000.000004) can0 321#R5\n"
        "(1700000000.000005) can0 456##1000102030405060708090A0B\n"
        "(1700000000.000006) can0 456##3\n"
        "(1700000000.000007) can0 20000080#0000000000000000\n"
        "(1700000000.000008) can0 123#11.22.33\n"
        "(1700000000.000009) can0 123#1122334455667788_E\n"
        "(1700000000.000010) can0 7FF# T\n"
        "(1700000000.000011) can0 00000123#AA R\n"
        "\n"
        "DROPCOUNT: dropped 3 CAN frames on 'can0' socket (total drops 3)\n"
    )
    stats = LogReadStats()
    got = list(read_log(path, stats))
    assert stats.malformed == 0, stats.first_errors
    assert stats.ignored == 1
    assert stats.format == "candump-log"
    assert len(got) == 11
    a, b, c, d, e, f, g, h, i, j, k = got
    assert (a.arbitration_id, a.is_extended_id, a.dlc) == (0x123, False, 4)
    assert a.data == b"\xde\xad\xbe\xef"
    assert a.timestamp == pytest.approx(1700000000.000001, abs=1e-7)
    assert (b.arbitration_id, b.is_extended_id) == (0x12345678, True)
    assert c.is_remote_frame and c.dlc == 0 and c.channel == "vcan1"
    assert d.is_remote_frame and d.dlc == 5
    assert e.is_fd and e.bitrate_switch and not e.error_state_indicator and e.dlc == 12
    assert f.is_fd and f.bitrate_switch and f.error_state_indicator and f.dlc == 0
    assert g.is_error_frame and g.arbitration_id == 0x80 and g.dlc == 8
    assert h.data == b"\x11\x22\x33"
    assert i.dlc == 8
    assert j.arbitration_id == 0x7FF and j.dlc == 0 and not j.is_rx
    assert k.is_extended_id and k.arbitration_id == 0x123 and k.is_rx


def test_candump_log_malformed_lines_are_counted_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.log"
    lines = [
        "(1700000000.000001) can0 123#DEADBEEF",
        "(1700000000.000002) can0 123#DEADBEE",  # odd number of hex digits
        "(1700000000.000003) can0 G23#00",  # not hex
        "garbage",
        "(1700000000.000005) can0 800#00",  # 11-bit id above 7FF
        "(1700000000.000006) can0 123#001122334455667788",  # 9 bytes without ##
        "(nan) can0 123#00",
        "(1700000000.000008) can0 123##0001122334455667788",  # 9 bytes is no CAN FD length
        "(1700000000.000009) can0 123#00",
    ]
    path.write_text("\n".join(lines) + "\n")
    stats = LogReadStats()
    got = list(read_log(path, stats))
    assert [m.timestamp for m in got] == pytest.approx([1700000000.000001, 1700000000.000009])
    assert stats.frames == 2
    assert stats.malformed == 7
    assert len(stats.first_errors) == MAX_FIRST_ERRORS
    assert [e.split(": ")[0] for e in stats.first_errors] == [
        f"{path}:{n}" for n in (2, 3, 4, 5, 6)
    ]
    assert "7FF" in stats.first_errors[3]
    assert "malformed" in stats.summary("bad.log")


@pytest.mark.skipif(RAV4 is None, reason="RAV4 sample log not available")
def test_rav4_log_matches_python_can() -> None:
    # Speed is measured by benchmarks/bench_canlog.py, not here.
    assert RAV4 is not None
    stats = LogReadStats()
    ours = list(read_log(RAV4, stats))
    theirs = list(can.LogReader(str(RAV4)))
    assert stats.frames == len(ours) == len(theirs) == 98_800
    assert stats.malformed == 0
    for a, b in zip(ours, theirs, strict=True):
        assert a.equals(b, timestamp_delta=1e-9)
    assert {m.channel for m in ours} == {"can0", "can1"}


# --- candump screen output ---------------------------------------------------------------------


SCREEN_NO_TS = """\
  can0  123   [8]  11 22 33 44 55 66 77 88
  can0  12345678   [3]  AA BB CC
  can0       321   [0]  remote request
  can1       456  [12]  00 01 02 03 04 05 06 07 08 09 0A 0B
  can0  20000004   [8]  00 04 00 00 00 00 00 00   ERRORFRAME
\tcontroller-problem{rx-error-warning}
  can0       7FF   [0]
"""


def test_candump_screen_without_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "screen.log"
    path.write_text(SCREEN_NO_TS)
    stats = LogReadStats()
    got = list(read_log(path, stats))
    assert stats.format == "candump-screen"
    assert stats.malformed == 0, stats.first_errors
    assert stats.ignored == 1  # the -e explanation line
    assert [m.timestamp for m in got] == [0.0] * 6
    a, b, c, d, e, f = got
    assert (a.channel, a.arbitration_id, a.is_extended_id, a.dlc) == ("can0", 0x123, False, 8)
    assert a.data == bytes.fromhex("1122334455667788")
    assert (b.arbitration_id, b.is_extended_id) == (0x12345678, True)
    assert b.data == b"\xaa\xbb\xcc"
    assert c.is_remote_frame and c.arbitration_id == 0x321 and not c.is_extended_id
    assert d.is_fd and d.dlc == 12 and d.channel == "can1" and d.data == bytes(range(12))
    assert e.is_error_frame and e.arbitration_id == 4 and e.data[1] == 4
    assert f.arbitration_id == 0x7FF and f.dlc == 0


def test_candump_screen_absolute_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "abs.txt"
    path.write_text(
        " (1700000000.123456)  can0  123   [2]  01 02\n (1700000000.223456)  can0  124   [1]  03\n"
    )
    got = list(read_log(path))
    assert [m.timestamp for m in got] == pytest.approx([1700000000.123456, 1700000000.223456])


def test_candump_screen_zero_based_timestamps_stay_relative(tmp_path: Path) -> None:
    path = tmp_path / "z"  # no suffix: sniffed
    path.write_text(
        " (000.000000)  can0  123   [2]  01 02\n"
        " (000.005001)  can0  124   [1]  03\n"
        " (001.250000)  can0  125   [1]  04\n"
    )
    got = list(read_log(path))
    assert [m.timestamp for m in got] == pytest.approx([0.0, 0.005001, 1.25])


def test_candump_screen_delta_timestamps_are_summed(tmp_path: Path) -> None:
    path = tmp_path / "delta.log"
    path.write_text(
        " (000.000000)  can0  123   [2]  01 02\n"
        " (000.010000)  can0  124   [1]  03\n"
        " (000.004000)  can0  125   [1]  04\n"
        " (000.010000)  can0  126   [1]  05\n"
    )
    got = list(read_log(path))
    assert [m.timestamp for m in got] == pytest.approx([0.0, 0.010, 0.014, 0.024])


def test_candump_screen_date_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "date.log"
    path.write_text(" (2023-11-14 22:13:20.123456)  can0  123   [2]  01 02\n")
    (msg,) = read_log(path)
    expected = time.mktime(time.strptime("2023-11-14 22:13:20", "%Y-%m-%d %H:%M:%S")) + 0.123456
    assert msg.timestamp == pytest.approx(expected)


def test_candump_screen_view_options(tmp_path: Path) -> None:
    path = tmp_path / "views.log"
    path.write_text(
        # -x: direction and BRS/ESI flags
        "  can0  RX B -  123  [02]  11 22\n"
        # -a: ASCII after the data (with a space inside)
        "  can0  123   [4]  41 42 20 43               'AB C'\n"
        # -S: swapped byte order in one token
        "  can0  123   [3]  33`22`11\n"
        # -i: binary
        "  can0  123   [2]  00010001 00100010\n"
        # raw DLC of a classic frame
        "  can0  321   {B}  11 22 33 44 55 66 77 88\n"
        # -c: colours
        " \x1b[1;34m can0\x1b[0m  123   [1]  FF\n"
    )
    stats = LogReadStats()
    got = list(read_log(path, stats))
    assert stats.malformed == 0, stats.first_errors
    fd, ascii_, swapped, binary, raw_dlc, coloured = got
    assert fd.is_fd and fd.bitrate_switch and not fd.error_state_indicator
    assert ascii_.data == b"AB C"
    assert swapped.data == b"\x11\x22\x33"
    assert binary.data == b"\x11\x22"
    assert raw_dlc.dlc == 8 and not raw_dlc.is_fd
    assert coloured.data == b"\xff" and coloured.channel == "can0"


def test_candump_screen_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.log"
    path.write_text(
        "  can0  123   [8]  11 22 33 44 55 66 77 88\n"
        "  can0  123   [8]  11 22\n"  # fewer bytes than the length says
        "  can0  12   [1]  11\n"  # 2-digit id
        "  can0  123   [9]  11 22 33 44 55 66 77 88 99\n"  # classic with 9 bytes
        "  can0  123  [11]  00 01 02 03 04 05 06 07 08 09 0A\n"  # 11 is no FD length
        "  can0  123   [1]  GG\n"
        "  can0  124   [1]  01\n"
    )
    stats = LogReadStats()
    got = list(read_log(path, stats))
    assert [m.arbitration_id for m in got] == [0x123, 0x124]
    assert stats.malformed == 5
    assert stats.first_errors[0].startswith(f"{path}:2: ")


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"(1700000000.000001) can0 123#DEADBEEF\n(1700000000.000002) can0 124#00\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    got = list(read_log("-"))
    assert [m.arbitration_id for m in got] == [0x123, 0x124]


def test_stdin_binary_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _frames()
    blf = tmp_path / "frames.blf"
    _write(can.BLFWriter, blf, frames)
    buffered = io.BufferedReader(io.BytesIO(blf.read_bytes()))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(buffered))
    _assert_same(frames, list(read_log("-")))


# --- never crash -------------------------------------------------------------------------------

_TMP_OK = [HealthCheck.function_scoped_fixture]  # tmp_path is reused; each example overwrites
_LOGGY = st.text(
    alphabet=st.sampled_from(list("0123456789ABCDEFabcdefRrT#()._[]{}` \t-:xX'\x1b")),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=_TMP_OK)
@given(
    lines=st.lists(
        st.one_of(
            _LOGGY,
            _LOGGY.map(lambda s: f"(1700000000.000001) can0 {s}"),
            _LOGGY.map(lambda s: f"  can0  123   {s}"),
            _LOGGY.map(lambda s: f" ({s})  can0  {s}"),
        ),
        max_size=12,
    ),
    suffix=st.sampled_from([".log", ".txt", ""]),
)
def test_random_lines_never_crash(tmp_path: Path, lines: list[str], suffix: str) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8")
    stats = LogReadStats()
    try:
        frames = list(read_log(path, stats))
    except InputError:
        return
    assert stats.frames == len(frames)
    nonblank = sum(1 for line in "\n".join(lines).splitlines() if line.strip())
    assert stats.frames + stats.malformed + stats.ignored <= nonblank
    for msg in frames:
        assert isinstance(msg.channel, str)
        assert 0 <= msg.arbitration_id <= 0x1FFFFFFF


@settings(max_examples=150, deadline=None, suppress_health_check=_TMP_OK)
@given(
    data=st.binary(max_size=400),
    suffix=st.sampled_from([".log", ".txt", "", ".asc", ".trc", ".csv", ".blf"]),
)
def test_random_bytes_raise_nothing_but_input_error(
    tmp_path: Path, data: bytes, suffix: str
) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    stats = LogReadStats()
    try:
        frames = list(read_log(path, stats))
    except InputError:
        return
    assert stats.frames == len(frames)
    if suffix in (".log", ".txt", ""):
        # The candump parsers never give up: every non-blank line is a frame or is counted.
        text = data.decode("utf-8", "replace")
        assert stats.malformed + stats.frames + stats.ignored >= 1 or not text.strip()
