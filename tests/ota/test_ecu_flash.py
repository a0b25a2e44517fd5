"""Flashing simulated ECUs over UDS/ISO-TP on an in-process virtual bus: the whole programming
sequence, response pending, timeouts, security, refusals at the check, several ECUs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firmware_stub import FaultPlan
from firmware_stub.flash import DTC_CHECK_FAILED, DTC_START_FAILED
from ota.ecu_flash import (
    DEFAULT_SECRET,
    ActiveImage,
    BankState,
    BankSummary,
    CheckStatus,
    DownloadPlan,
    DownloadStatus,
    EcuActivationError,
    EcuAddress,
    EcuCheckFailedError,
    EcuNegativeResponseError,
    EcuNoResponseError,
    EcuRollbackError,
    EcuSecurityError,
    EcuUsageError,
    FlashProgress,
    FlashTiming,
    SeedKeyAlgorithm,
    compute_key,
    default_fingerprint,
    nrc_name,
    parse_ecu_spec,
    parse_secret,
    plan_download,
)
from ota.ecu_image import EcuImage
from ota.errors import OtaUsageError
from tests.firmware_stub.support import (
    BMS,
    OTHER_KEY,
    VCU,
    ecu_config,
    flasher,
    make_image,
    running,
)

V1 = make_image(1)
V2 = make_image(2, 12_000)

# --- the protocol profile (pure) ---------------------------------------------------------------


def test_ecu_specs() -> None:
    assert parse_ecu_spec("bms") == EcuAddress("bms", 0x7E0, 0x7E8)
    assert parse_ecu_spec("vcu", 2) == EcuAddress("vcu", 0x7E2, 0x7EA)
    assert parse_ecu_spec("gw:7E5:7ED") == EcuAddress("gw", 0x7E5, 0x7ED)
    assert parse_ecu_spec("gw:0x18DA10F1:0x18DAF110").extended
    for bad, message in [
        ("", "ECU name"),
        ("a:1", "NAME:REQID:RESPID"),
        ("a:zz:1", "not a CAN id"),
        ("a:7E0:7E0", "must differ"),
        ("a:7E0:20000000", "out of range"),
    ]:
        with pytest.raises(EcuUsageError, match=message):
            parse_ecu_spec(bad)
    with pytest.raises(EcuUsageError, match="more than eight"):
        parse_ecu_spec("x", 8)


def test_records_round_trip() -> None:
    active = ActiveImage(1, 7, b"\x01" * 32)
    assert ActiveImage.decode(active.encode()) == active
    assert ActiveImage.decode(ActiveImage(None, 0, bytes(32)).encode()).bank is None
    status = DownloadStatus(0, BankState.WRITING, 100, 40, 123, 0, bytes(32))
    assert DownloadStatus.decode(status.encode()) == status
    pair = (BankSummary(BankState.VALID, 3), BankSummary(BankState.ERASED, 0))
    assert BankSummary.decode_pair(BankSummary.encode_pair(pair)) == pair


def test_keys_secrets_fingerprints_and_nrc_names() -> None:
    seed = bytes(range(16))
    assert len(compute_key(SeedKeyAlgorithm.HMAC_SHA256, b"s", seed)) == 16
    assert compute_key(SeedKeyAlgorithm.XOR, b"\x01", seed) == bytes(b ^ 1 for b in seed)
    with pytest.raises(OtaUsageError):
        compute_key(SeedKeyAlgorithm.XOR, b"", seed)
    assert parse_secret("hex:00ff") == b"\x00\xff" and parse_secret("abc") == b"abc"
    for bad in ("", "hex:zz", "hex:"):
        with pytest.raises(OtaUsageError):
            parse_secret(bad)
    fingerprint = default_fingerprint("bench-tester-42", time.gmtime(0))
    assert fingerprint == b"bench-test700101" and len(fingerprint) == 16
    assert nrc_name(0x22) == "conditionsNotCorrect" and nrc_name(0x01) == "unknown"


def test_the_download_plan_resumes_only_a_matching_prefix() -> None:
    image = EcuImage.from_bytes(V2)
    n = len(V2)
    crc = zlib.crc32(V2[:1000])

    def status(state: BankState, length: int = n, written: int = 0, crc32: int = 0) -> Any:
        return DownloadStatus(1, state, length, written, crc32, 0, bytes(32))

    assert plan_download(status(BankState.EMPTY), image) == DownloadPlan("erase", 0)
    assert plan_download(status(BankState.WRITING, n, 1000, crc), image) == DownloadPlan(
        "resume", 1000
    )
    assert plan_download(status(BankState.WRITING, n, 1000, crc ^ 1), image).step == "erase"
    assert plan_download(status(BankState.WRITING, n + 1, 1000, crc), image).step == "erase"
    full = status(BankState.WRITING, n, n, zlib.crc32(V2))
    assert plan_download(full, image) == DownloadPlan("check", n)
    valid = DownloadStatus(1, BankState.VALID, n, n, 0, 2, image.sha256)
    assert plan_download(valid, image) == DownloadPlan("activate", n)
    assert plan_download(status(BankState.INVALID, n, n), image).step == "erase"


# --- over the bus ------------------------------------------------------------------------------


@contextlib.contextmanager
def uds_client(url: str, address: EcuAddress = BMS) -> Iterator[Any]:
    """A bare udsoncan client (for requests the flasher never makes)."""
    import isotp
    import udsoncan
    from udsoncan.client import Client
    from udsoncan.connections import PythonIsoTpConnection

    from agent.busurl import open_bus, parse_bus_url

    bus = open_bus(parse_bus_url(url))
    stack = isotp.CanStack(
        bus,
        address=isotp.Address(
            isotp.AddressingMode.Normal_11bits, txid=address.request_id, rxid=address.response_id
        ),
        params={"blocksize": 0, "stmin": 0},
    )
    config = dict(udsoncan.configs.default_client_config)
    config.update(
        {
            "use_server_timing": False,
            "p2_timeout": 1.0,
            "security_algo": lambda level, seed, params: compute_key(
                SeedKeyAlgorithm.HMAC_SHA256, DEFAULT_SECRET, seed
            ),
            "exception_on_negative_response": False,
            "data_identifiers": {0xF186: "B", 0xF190: udsoncan.AsciiCodec(17)},
        }
    )
    try:
        with Client(PythonIsoTpConnection(stack), config=config) as client:  # type: ignore[arg-type]
            yield client
    finally:
        bus.shutdown()


async def test_the_whole_reprogramming_sequence(tmp_path: Path) -> None:
    events: list[str] = []
    seen: list[FlashProgress] = []
    async with running(tmp_path, [ecu_config(factory=V1)], events=events) as (host, url):
        ecu = host.ecus["bms"]
        f = flasher(url, tester_id="bench")
        result = await f.flash(EcuImage.from_bytes(V2), progress=seen.append)
        await asyncio.sleep(0)  # progress callbacks run in the loop
        info = await f.read_info()
    assert (result.version, result.attempts, result.bytes_sent) == (2, 1, len(V2))
    assert result.resumed_from is None and not result.already_installed and result.activated
    assert [e.split(": ", 1)[1] for e in events] == [
        "new flash state with the factory image",
        "session extended",
        "session programming",
        "security access granted",
        "erased bank 1",
        "download into bank 1: 12192 bytes",
        "check bank 1: version 2 is valid",
        "reset: running bank 1, version 2",
    ]
    assert info.active.bank == 1 and info.active.version == 2
    assert [(b.state, b.version) for b in info.banks] == [
        (BankState.VALID, 1),
        (BankState.VALID, 2),
    ]
    assert info.fingerprint.startswith(b"bench     ")
    assert info.session == 1 and info.hardware_id == "bms" and info.vin == "TBOXSIM0000000001"
    assert ecu.stats.pending_sent >= 2 and f.pending_responses >= 2  # erase and check
    assert ecu.stats.blocks == -(-len(V2) // 1024)
    phases = [e.phase for e in seen]
    assert phases[0] == "connect" and phases[-1] == "done"
    assert {"erase", "transfer", "check", "reset"} <= set(phases)
    assert seen[-1].done == len(V2)


async def test_a_virgin_ecu_is_flashed_into_bank_0_and_then_the_next_into_bank_1(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, [ecu_config()]) as (host, url):
        f = flasher(url)
        assert (await f.read_info()).active.bank is None
        await f.flash(EcuImage.from_bytes(V1))
        assert host.ecus["bms"].flash.meta.active == 0
        await f.flash(EcuImage.from_bytes(V2))
        assert host.ecus["bms"].flash.meta.active == 1


async def test_an_installed_image_is_not_sent_again_unless_forced(tmp_path: Path) -> None:
    async with running(tmp_path, [ecu_config(factory=V2)]) as (host, url):
        f = flasher(url)
        result = await f.flash(EcuImage.from_bytes(V2))
        assert result.already_installed and result.bytes_sent == 0
        assert host.ecus["bms"].stats.blocks == 0
        forced = await f.flash(EcuImage.from_bytes(V2), force=True)
        assert not forced.already_installed and forced.bytes_sent == len(V2)
        assert host.ecus["bms"].flash.meta.active == 1  # the newer programming of v2


async def test_a_staged_image_activates_on_reset(tmp_path: Path) -> None:
    async with running(tmp_path, [ecu_config(factory=V1)]) as (host, url):
        f = flasher(url)
        image = EcuImage.from_bytes(V2)
        result = await f.flash(image, activate=False)
        assert not result.activated
        meta = host.ecus["bms"].flash.meta
        assert meta.active == 0 and meta.banks[1].state is BankState.VALID
        await f.activate(image)
        assert host.ecus["bms"].flash.meta.active == 1


async def test_stage_activate_and_roll_back_with_a_new_flasher_for_each_step(
    tmp_path: Path,
) -> None:
    """A campaign stages, activates and rolls back in different process lifetimes: every step
    decides from what the ECU reports, and doing one again does nothing more."""
    image = EcuImage.from_bytes(V2)
    events: list[str] = []
    async with running(tmp_path, [ecu_config(factory=V1)], events=events) as (host, url):
        ecu = host.ecus["bms"]
        staged = await flasher(url).flash(image, activate=False)
        assert not staged.already_staged and staged.bytes_sent == len(V2)
        assert ecu.state.session.name == "DEFAULT"  # staging ends in the default session
        blocks, requests = ecu.stats.blocks, ecu.stats.requests
        again = await flasher(url).flash(image, activate=False)
        assert again.already_staged and not again.already_installed
        assert again.bytes_sent == 0 and ecu.stats.blocks == blocks
        assert ecu.stats.requests - requests <= 6  # reads only: no session, no security
        boots = ecu.stats.boots
        await flasher(url).activate(image)
        assert ecu.flash.meta.active_version == 2 and ecu.stats.boots == boots + 1
        await flasher(url).activate(image)  # runs it already: no reset
        assert ecu.stats.boots == boots + 1
        info = await flasher(url).roll_back(image)
        assert (info.active.bank, info.active.version) == (0, 1)
        assert [(b.state, b.version) for b in info.banks] == [
            (BankState.VALID, 1),
            (BankState.INVALID, 2),
        ]
        assert ecu.stats.boots == boots + 2
        again_info = await flasher(url).roll_back(image)  # nothing left to do: no reset
        assert again_info.active.version == 1 and ecu.stats.boots == boots + 2
        with pytest.raises(EcuActivationError, match="holds no checked copy of version 2"):
            await flasher(url).activate(image)
        assert ecu.stats.boots == boots + 2 and ecu.flash.meta.dtcs == ()
    assert "bms: invalidated bank 1 (version 2)" in events


async def test_rolling_back_a_staged_image_keeps_the_ecu_on_its_version(tmp_path: Path) -> None:
    image = EcuImage.from_bytes(V2)
    async with running(tmp_path, [ecu_config(factory=V1)]) as (host, url):
        await flasher(url).flash(image, activate=False)
        info = await flasher(url).roll_back(image)
        meta = host.ecus["bms"].flash.meta
        assert info.active.version == 1 and meta.active == 0
        assert meta.banks[1].state is BankState.INVALID
        # A power cycle does not bring it back; flashing it again starts over.
        await host.ecus["bms"].power_cycle(0.01)
        assert host.ecus["bms"].flash.meta.active_version == 1
        result = await flasher(url).flash(image)
        assert result.bytes_sent == len(V2) and host.ecus["bms"].flash.meta.active_version == 2


async def test_a_rollback_interrupted_before_its_reset_is_finished_by_the_next_step(
    tmp_path: Path,
) -> None:
    image = EcuImage.from_bytes(V2)
    async with running(tmp_path, [ecu_config(factory=V1)]) as (host, url):
        ecu = host.ecus["bms"]
        await flasher(url).flash(image)
        with uds_client(url) as client:

            def invalidate() -> tuple[Any, Any, Any]:
                client.change_session(3)
                client.change_session(2)
                client.unlock_security_access(1)
                short = client.start_routine(0xFF02, image.sha256[:31])
                done = client.start_routine(0xFF02, image.sha256)
                again = client.start_routine(0xFF02, image.sha256)
                return short, done, again

            short, done, again = await asyncio.to_thread(invalidate)
        assert short.code == 0x13
        assert done.get_payload() == bytes.fromhex("7101FF0200") and again.positive
        # No reset yet: version 2 still runs from its invalidated bank.
        meta = ecu.flash.meta
        assert meta.active == 1 and meta.banks[1].state is BankState.INVALID
        v3 = EcuImage.from_bytes(make_image(3, 5000))
        result = await flasher(url).flash(v3)  # resets into version 1 first, then flashes
        assert result.bytes_sent == len(v3.data) and ecu.flash.meta.active_version == 3
        assert ecu.flash.meta.banks[0].version == 1  # the erase hit the invalidated bank only


async def test_a_rollback_without_a_valid_fallback_is_refused(tmp_path: Path) -> None:
    image = EcuImage.from_bytes(V1)
    async with running(tmp_path, [ecu_config(factory=V1)]) as (host, url):
        f = flasher(url)
        with pytest.raises(EcuRollbackError, match="no other bank holds a valid image") as info:
            await f.roll_back(image)
        assert info.value.ecu == "bms" and "0xFF02" in str(info.value)
        assert host.ecus["bms"].flash.meta.active_version == 1
        assert host.ecus["bms"].flash.meta.banks[0].state is BankState.VALID
        # An image the ECU never held: nothing to do.
        info_after = await f.roll_back(EcuImage.from_bytes(V2))
        assert info_after.active.version == 1


async def test_an_image_that_fails_at_boot_is_an_activation_error_and_the_ecu_falls_back(
    tmp_path: Path,
) -> None:
    image = EcuImage.from_bytes(V2)
    config = ecu_config(factory=V1, faults=FaultPlan(boot_fails=frozenset({2})))
    events: list[str] = []
    async with running(tmp_path, [config], events=events) as (host, url):
        f = flasher(url)
        await f.flash(image, activate=False)
        with pytest.raises(EcuActivationError) as info:
            await f.activate(image)
        assert str(info.value).startswith(
            "ECU bms runs version 1 (bank 0) after the reset, not version 2"
        )
        assert info.value.ecu == "bms"
        meta = host.ecus["bms"].flash.meta
        assert meta.active_version == 1 and meta.banks[1].state is BankState.INVALID
        assert meta.dtcs == (DTC_START_FAILED,)
        with pytest.raises(EcuActivationError):  # flash() with activation says the same
            await f.flash(image)
        assert (await f.roll_back(image)).active.version == 1  # nothing left to roll back
    assert any("version 2, crashed at start" in e for e in events), events


async def test_slow_steps_answer_response_pending_until_done(tmp_path: Path) -> None:
    config = ecu_config(factory=V1, erase_time_s=0.8, check_time_s=0.5)
    config = dataclasses.replace(config, pending_interval_s=0.2)
    async with running(tmp_path, [config]) as (host, url):
        f = flasher(url)  # P2 0.3 s: shorter than the erase; P2* 2 s
        started = time.monotonic()
        await f.flash(EcuImage.from_bytes(V2))
        assert time.monotonic() - started > 1.3
        assert host.ecus["bms"].stats.pending_sent >= 6
        assert f.pending_responses >= 6


async def test_a_dropped_transfer_data_response_is_repeated_with_the_same_counter(
    tmp_path: Path,
) -> None:
    faults = FaultPlan(drop_responses=frozenset({(0x36, 3)}))
    async with running(tmp_path, [ecu_config(factory=V1, faults=faults)]) as (host, url):
        result = await flasher(url).flash(EcuImage.from_bytes(V2))
        ecu = host.ecus["bms"]
    assert result.attempts == 1 and result.bytes_sent == len(V2) + 1024
    assert ecu.stats.dropped == 1
    assert ecu.stats.blocks == -(-len(V2) // 1024)  # the repeat was not written again


async def test_a_dropped_response_elsewhere_costs_an_attempt_that_resumes(tmp_path: Path) -> None:
    faults = FaultPlan(drop_responses=frozenset({(0x37, 1)}))  # RequestTransferExit
    async with running(tmp_path, [ecu_config(factory=V1, faults=faults)]) as (host, url):
        result = await flasher(url).flash(EcuImage.from_bytes(V2))
        assert host.ecus["bms"].flash.meta.active == 1
    assert result.attempts == 2
    assert result.bytes_sent == len(V2)  # the second attempt went straight to the check


async def test_no_response_is_a_timeout_naming_the_ecu_and_service(tmp_path: Path) -> None:
    faults = FaultPlan(drop_responses=frozenset({(0x10, 1)}))
    async with running(tmp_path, [ecu_config(factory=V1, faults=faults)]) as (_, url):
        with pytest.raises(EcuNoResponseError) as info:
            await flasher(url, attempts=1).flash(EcuImage.from_bytes(V2))
    message = str(info.value)
    assert message.startswith("ECU bms: no response to DiagnosticSessionControl: ")
    assert "P2 timeout" in message and "\n" not in message


async def test_an_ecu_that_never_answers_fails_after_all_attempts(tmp_path: Path) -> None:
    async with running(tmp_path, [ecu_config(factory=V1)]) as (_, url):
        lost = EcuAddress("abs", 0x7E3, 0x7EB)  # nobody answers there
        timing = FlashTiming(p2=0.1, reconnect=0.3, retry_pause=0.01)
        with pytest.raises(EcuNoResponseError, match=r"after 2 attempts"):
            await flasher(url, lost, attempts=2, timing=timing).flash(EcuImage.from_bytes(V2))


async def test_delayed_responses_within_p2_are_fine_beyond_it_they_time_out(
    tmp_path: Path,
) -> None:
    slow = ecu_config(factory=V1, faults=FaultPlan(delay_s=0.05))
    async with running(tmp_path, [slow]) as (_, url):
        assert (await flasher(url).flash(EcuImage.from_bytes(V2))).attempts == 1
    later = ecu_config(factory=V1, faults=FaultPlan(delay_s=0.5))
    async with running(tmp_path / "2", [later]) as (_, url):
        with pytest.raises(EcuNoResponseError, match="DiagnosticSessionControl"):
            await flasher(url, attempts=1).flash(EcuImage.from_bytes(V2))


async def test_wrong_keys_lock_the_ecu_out_for_its_delay(tmp_path: Path) -> None:
    config = ecu_config(factory=V1, lockout_s=1.0, max_attempts=2)
    image = EcuImage.from_bytes(V2)
    async with running(tmp_path, [config]) as (host, url):
        wrong = flasher(url, secret=b"guess")
        codes = []
        for _ in range(3):
            with pytest.raises(EcuSecurityError) as info:
                await wrong.flash(image)
            codes.append(info.value.nrc)
        assert codes == [0x35, 0x36, 0x37]
        assert str(info.value).startswith(
            "ECU bms: SecurityAccess (0x27) refused: NRC 0x37 requiredTimeDelayNotExpired"
        )
        await asyncio.sleep(1.1)
        assert (await flasher(url).flash(image)).version == 2
        assert host.ecus["bms"].stats.blocks > 0


async def test_a_bad_signature_is_refused_at_the_check_and_the_ecu_keeps_running(
    tmp_path: Path,
) -> None:
    forged = EcuImage.from_bytes(make_image(2, 5000, key=OTHER_KEY))
    async with running(tmp_path, [ecu_config(factory=V1)]) as (host, url):
        with pytest.raises(EcuCheckFailedError) as info:
            await flasher(url).flash(forged)
        assert info.value.status is CheckStatus.BAD_SIGNATURE
        assert "RoutineControl 0xFF01 (check programming dependencies) refused" in str(info.value)
        meta = host.ecus["bms"].flash.meta
        assert meta.active == 0 and meta.banks[1].state is BankState.INVALID
        assert meta.dtcs == ()  # the flasher turned DTC setting off while programming


async def test_dtcs_are_read_and_cleared_over_the_bus(tmp_path: Path) -> None:
    from firmware_stub.flash import FlashMemory
    from tests.firmware_stub.support import PUBLIC

    # A refused image checked with DTC setting on leaves a DTC behind.
    flash = FlashMemory(tmp_path / "bms", hardware_id="bms", bank_size=1 << 16, trusted_key=PUBLIC)
    flash.open(factory_image=V1)
    bad = make_image(2, 500, key=OTHER_KEY)
    flash.erase(1)
    flash.write_block(1, 0, bad, len(bad))
    assert flash.check(1) is CheckStatus.BAD_SIGNATURE
    flash.close()
    async with running(tmp_path, [ecu_config()]) as (host, url):
        with uds_client(url) as client:
            response = await asyncio.to_thread(client.get_dtc_by_status_mask, 0xFF)
            assert [d.id for d in response.service_data.dtcs] == [DTC_CHECK_FAILED]
            assert (await asyncio.to_thread(client.clear_dtc)).positive
        assert host.ecus["bms"].flash.meta.dtcs == ()


async def test_a_downgrade_is_refused_at_the_check_or_before_sending(tmp_path: Path) -> None:
    old = EcuImage.from_bytes(make_image(1, 5000))
    async with running(tmp_path, [ecu_config(factory=V2)]) as (host, url):
        with pytest.raises(EcuCheckFailedError) as info:
            await flasher(url).flash(old, precheck=False)
        assert info.value.status is CheckStatus.DOWNGRADE
        assert "0xFF01" in str(info.value)
        blocks = host.ecus["bms"].stats.blocks
        with pytest.raises(EcuCheckFailedError, match="refused before transfer") as info:
            await flasher(url).flash(old)
        assert info.value.status is CheckStatus.DOWNGRADE
        assert host.ecus["bms"].stats.blocks == blocks
        assert host.ecus["bms"].flash.meta.active == 0


async def test_an_image_for_other_hardware_is_refused(tmp_path: Path) -> None:
    other = EcuImage.from_bytes(make_image(3, hardware_id="vcu"))
    async with running(tmp_path, [ecu_config(factory=V1)]) as (_, url):
        with pytest.raises(EcuCheckFailedError, match="image for 'vcu', ECU is 'bms'"):
            await flasher(url).flash(other)
        with pytest.raises(EcuCheckFailedError) as info:
            await flasher(url).flash(other, precheck=False)
        assert info.value.status is CheckStatus.WRONG_HARDWARE


async def test_a_corrupted_block_fails_the_check_and_the_next_flash_starts_over(
    tmp_path: Path,
) -> None:
    faults = FaultPlan(corrupt_block=4)
    async with running(tmp_path, [ecu_config(factory=V1, faults=faults)]) as (host, url):
        with pytest.raises(EcuCheckFailedError) as info:
            await flasher(url).flash(EcuImage.from_bytes(V2))
        assert info.value.status is CheckStatus.HASH_MISMATCH
        result = await flasher(url).flash(EcuImage.from_bytes(V2))
        assert result.resumed_from is None and result.bytes_sent == len(V2)
        assert host.ecus["bms"].flash.meta.active == 1


async def test_negative_responses_over_iso_tp(tmp_path: Path) -> None:
    async with running(tmp_path, [ecu_config(factory=V1)]) as (_, url):
        with uds_client(url) as client:

            def run() -> list[int]:
                codes = []
                codes.append(client.transfer_data(1, b"x").code)  # default session
                client.change_session(3)
                client.change_session(2)
                codes.append(client.transfer_data(1, b"x").code)  # locked
                client.unlock_security_access(1)
                codes.append(client.transfer_data(1, b"x").code)  # no download
                codes.append(client.start_routine(0xFF01).code)  # nothing downloaded
                codes.append(client.read_data_by_identifier_first(0xF190))
                return codes

            assert await asyncio.to_thread(run) == [0x7F, 0x33, 0x24, 0x24, "TBOXSIM0000000001"]


async def test_s3_timeout_over_the_bus(tmp_path: Path) -> None:
    async with running(tmp_path, [ecu_config(factory=V1, s3_s=0.3)]) as (_, url):
        with uds_client(url) as client:

            def run() -> tuple[Any, Any]:
                client.change_session(3)
                time.sleep(0.5)
                session = client.read_data_by_identifier_first(0xF186)
                client.change_session(3)
                time.sleep(0.1)
                client.tester_present()
                time.sleep(0.25)
                kept = client.read_data_by_identifier_first(0xF186)
                return session, kept

            session, kept = await asyncio.to_thread(run)
    assert session == (1,) and kept == (3,)


async def test_several_ecus_on_one_bus_with_11_and_29_bit_ids(tmp_path: Path) -> None:
    gateway = EcuAddress("gw", 0x18DA10F1, 0x18DAF110)
    configs = [
        ecu_config(BMS, factory=V1),
        ecu_config(VCU, factory=make_image(1, hardware_id="vcu")),
        ecu_config(gateway),
    ]
    images = {
        "bms": V2,
        "vcu": make_image(5, 7000, hardware_id="vcu"),
        "gw": make_image(1, 4000, hardware_id="gw"),
    }
    async with running(tmp_path, configs) as (host, url):
        results = await asyncio.gather(
            *(
                flasher(url, address).flash(EcuImage.from_bytes(images[address.name]))
                for address in (BMS, VCU, gateway)
            )
        )
        assert [r.version for r in results] == [2, 5, 1]
        assert {n: e.flash.meta.active_version for n, e in host.ecus.items()} == {
            "bms": 2,
            "vcu": 5,
            "gw": 1,
        }
        assert (tmp_path / "gw" / "meta.json").exists()


async def test_refusals_are_negative_response_errors_with_the_nrc(tmp_path: Path) -> None:
    # An image larger than the ECU's bank: RequestDownload answers requestOutOfRange.
    big = EcuImage.from_bytes(make_image(2, 70_000))
    async with running(tmp_path, [ecu_config(factory=V1)]) as (_, url):
        with pytest.raises(EcuNegativeResponseError) as info:
            await flasher(url).flash(big)
    assert (info.value.sid, info.value.nrc) == (0x34, 0x31)
    assert str(info.value) == (
        "ECU bms: RequestDownload (0x34) refused: NRC 0x31 requestOutOfRange"
    )
