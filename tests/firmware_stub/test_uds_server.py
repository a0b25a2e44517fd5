"""The UDS server's pure decisions: every service, every negative response, and Hypothesis on
the request parser (arbitrary bytes never crash it; malformed requests get the right NRC)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_stub.flash import DTC_CHECK_FAILED, BankRecord, FlashMeta
from firmware_stub.uds import (
    CheckBank,
    ClearDtcs,
    Decision,
    Download,
    EraseBank,
    InvalidateBank,
    ServerConfig,
    ServerState,
    Session,
    UdsServer,
    WriteBlock,
    WriteFingerprint,
)
from ota.ecu_flash import (
    DID_LENGTHS,
    ActiveImage,
    BankState,
    BankSummary,
    CheckStatus,
    DownloadStatus,
    SeedKeyAlgorithm,
    compute_key,
)

SEED = bytes(range(1, 17))
CONFIG = ServerConfig(
    "bms", entropy=lambda n: SEED[:n], max_block_length=258, lockout_s=10.0, s3_s=5.0
)
SERVER = UdsServer(CONFIG)
KEY = compute_key(SeedKeyAlgorithm.HMAC_SHA256, CONFIG.secret, SEED)
BANK = 1 << 16
EMPTY = FlashMeta(bank_size=BANK)
ERASED = EMPTY.with_bank(0, BankRecord(state=BankState.ERASED))
V1 = BankRecord(
    state=BankState.VALID, length=100, written=100, version=1, sha256=b"\x11" * 32, sequence=1
)
RUNNING_V1 = replace(EMPTY.with_bank(0, V1), active=0, sequence=1)  # target: bank 1
V2 = replace(V1, version=2, sha256=b"\x22" * 32, sequence=2)
STAGED_V2 = replace(RUNNING_V1.with_bank(1, V2), sequence=2)  # checked, not booted
RUNNING_V2 = replace(STAGED_V2, active=1)  # the fallback: version 1 in bank 0
INVALIDATE = "3101FF02"

DEFAULT = ServerState()
EXTENDED = ServerState(session=Session.EXTENDED)
PROGRAMMING = ServerState(session=Session.PROGRAMMING)
UNLOCKED = ServerState(session=Session.PROGRAMMING, unlocked=True)

# The NRCs (ISO 14229-1) the tests name.
SNS, SFNS, IMLOIF, RTL, CNC, RSE, ROOR, SAD, IK, ENOA, RTDNE = (
    0x11, 0x12, 0x13, 0x14, 0x22, 0x24, 0x31, 0x33, 0x35, 0x36, 0x37,
)  # fmt: skip
GPF, WBSC, SNSIAS_SF, SNSIAS = 0x72, 0x73, 0x7E, 0x7F


def ask(
    state: ServerState, request: str | bytes, *, now: float = 1.0, flash: FlashMeta = EMPTY
) -> Decision:
    payload = bytes.fromhex(request) if isinstance(request, str) else request
    return SERVER.handle(replace(state, last_request=now), payload, now, flash)  # no S3 expiry


def nrc(decision: Decision) -> int | None:
    response = decision.response
    if response is None or response[0] != 0x7F:
        return None
    return response[2]


def positive(decision: Decision) -> bytes:
    assert decision.response is not None and decision.response[0] != 0x7F, decision.response
    return decision.response


# --- sessions, S3, tester present, reset ----------------------------------------------------


def test_session_control_answers_the_session_and_its_timing() -> None:
    d = ask(DEFAULT, "1003")
    assert positive(d) == bytes.fromhex("5003 0032 01F4")  # P2 50 ms, P2* 5000 ms
    assert d.state.session is Session.EXTENDED


def test_programming_is_entered_from_extended_and_left_only_to_default() -> None:
    assert nrc(ask(DEFAULT, "1002")) == SNSIAS_SF
    d = ask(EXTENDED, "1002")
    assert d.state.session is Session.PROGRAMMING
    assert nrc(ask(PROGRAMMING, "1003")) == SNSIAS_SF
    assert ask(PROGRAMMING, "1001").state.session is Session.DEFAULT
    assert ask(PROGRAMMING, "1002").state.session is Session.PROGRAMMING


def test_a_session_change_relocks_and_drops_the_download_reentry_keeps_security() -> None:
    download = Download(bank=0, address=0, length=10, offset=0, counter=1, max_block=258)
    state = replace(UNLOCKED, download=download)
    same = ask(state, "1002").state
    assert same.unlocked and same.download is None
    left = ask(state, "1001").state
    assert not left.unlocked and left.download is None


def test_s3_timeout_falls_back_to_the_default_session() -> None:
    state = replace(UNLOCKED, last_request=10.0)
    assert SERVER.handle(state, bytes.fromhex("22F186"), 14.9, EMPTY).response == bytes.fromhex(
        "62F18602"
    )
    late = SERVER.handle(state, bytes.fromhex("22F186"), 15.1, EMPTY)
    assert late.response == bytes.fromhex("62F18601")
    assert not late.state.unlocked


def test_tester_present_restarts_s3_and_can_suppress_its_answer() -> None:
    state = replace(EXTENDED, last_request=0.0)
    d = SERVER.handle(state, bytes.fromhex("3E80"), 4.0, EMPTY)
    assert d.response is None and d.suppressed
    assert d.state.last_request == 4.0
    later = SERVER.handle(d.state, bytes.fromhex("22F186"), 8.5, EMPTY)
    assert later.response == bytes.fromhex("62F18603")
    assert positive(ask(DEFAULT, "3E00")) == bytes.fromhex("7E00")
    assert nrc(ask(DEFAULT, "3E01")) == SFNS
    assert nrc(ask(DEFAULT, "3E81")) == SFNS  # negative responses are never suppressed
    assert nrc(ask(DEFAULT, "3E0000")) == IMLOIF


def test_ecu_reset_answers_then_resets_and_keeps_the_lockout() -> None:
    d = ask(UNLOCKED, "1101")
    assert positive(d) == bytes.fromhex("5101") and d.reset
    assert nrc(ask(DEFAULT, "1104")) == SFNS
    assert nrc(ask(DEFAULT, "110100")) == IMLOIF
    locked = replace(EXTENDED, failed_attempts=2, locked_until=50.0, unlocked=True)
    after = SERVER.initial_state(3.0, previous=locked)
    assert (after.failed_attempts, after.locked_until, after.unlocked) == (2, 50.0, False)
    assert after.session is Session.DEFAULT


# --- security access ---------------------------------------------------------------------------


def test_seed_and_key_unlock_and_an_unlocked_level_answers_a_zero_seed() -> None:
    d = ask(EXTENDED, "2701")
    assert positive(d) == bytes.fromhex("6701") + SEED
    d = ask(d.state, b"\x27\x02" + KEY)
    assert positive(d) == bytes.fromhex("6702") and d.state.unlocked
    assert positive(ask(d.state, "2701")) == bytes.fromhex("6701") + bytes(16)


def test_wrong_keys_count_then_lock_out_until_the_delay_expires() -> None:
    state = EXTENDED
    codes = []
    for _ in range(3):
        state = ask(state, "2701", now=1.0).state
        d = ask(state, b"\x27\x02" + bytes(16), now=1.0)
        codes.append(nrc(d))
        state = d.state
    assert codes == [IK, IK, ENOA]
    assert nrc(ask(state, "2701", now=10.9)) == RTDNE
    assert positive(ask(state, "2701", now=11.0)).startswith(bytes.fromhex("6701"))


def test_security_misuse_gets_the_right_nrc() -> None:
    assert nrc(ask(DEFAULT, "2701")) == SNSIAS
    assert nrc(ask(EXTENDED, b"\x27\x02" + KEY)) == RSE  # no seed requested
    seeded = ask(EXTENDED, "2701").state
    assert nrc(ask(seeded, b"\x27\x02" + KEY[:15])) == IMLOIF
    assert nrc(ask(EXTENDED, "270100")) == IMLOIF
    assert nrc(ask(EXTENDED, "2703")) == SFNS
    assert nrc(ask(EXTENDED, "27")) == IMLOIF


def test_the_xor_algorithm_and_another_level_are_configurable() -> None:
    server = UdsServer(
        ServerConfig(
            "bms",
            entropy=lambda n: SEED[:n],
            algorithm=SeedKeyAlgorithm.XOR,
            secret=b"k",
            security_level=0x11,
        )
    )
    state = server.handle(EXTENDED, bytes.fromhex("2711"), 0.0, EMPTY).state
    key = bytes(b ^ ord("k") for b in SEED)
    d = server.handle(state, b"\x27\x12" + key, 0.0, EMPTY)
    assert d.response == bytes.fromhex("6712")
    with pytest.raises(ValueError, match="odd"):
        UdsServer(ServerConfig("bms", security_level=2))


# --- routines ----------------------------------------------------------------------------------


def test_erase_needs_programming_and_security_and_is_slow() -> None:
    assert nrc(ask(DEFAULT, "3101FF00")) == SNSIAS
    assert nrc(ask(EXTENDED, "3101FF00")) == ROOR  # not in this session
    assert nrc(ask(PROGRAMMING, "3101FF00")) == SAD
    d = ask(UNLOCKED, "3101FF00", flash=RUNNING_V1)
    assert d.effect == EraseBank(1) and d.pending  # never the active bank 0
    assert positive(d) == bytes.fromhex("7101FF0000")
    assert ask(UNLOCKED, "3101FF00", flash=EMPTY).effect == EraseBank(0)


def test_erase_accepts_only_the_whole_application_area_as_its_option_record() -> None:
    assert ask(UNLOCKED, "3101FF00 44 00000000 00010000").effect == EraseBank(0)
    assert nrc(ask(UNLOCKED, "3101FF00 44 00000100 00000100")) == ROOR
    assert nrc(ask(UNLOCKED, "3101FF00 44 00000000 00020000")) == ROOR
    assert nrc(ask(UNLOCKED, "3101FF00 44 0000")) == IMLOIF
    assert nrc(ask(UNLOCKED, "3101FF00 00")) == ROOR


def test_routine_control_misuse() -> None:
    assert nrc(ask(UNLOCKED, "3102FF00")) == SFNS  # stop routine: not supported
    assert nrc(ask(UNLOCKED, "3101FF")) == IMLOIF
    assert nrc(ask(UNLOCKED, "31")) == IMLOIF
    assert nrc(ask(UNLOCKED, "31010203")) == ROOR
    download = Download(bank=0, address=0, length=10, offset=0, counter=1, max_block=258)
    assert nrc(ask(replace(UNLOCKED, download=download), "3101FF00")) == CNC


def test_check_needs_a_complete_download_then_answers_the_verdict() -> None:
    assert nrc(ask(UNLOCKED, "3101FF01", flash=ERASED)) == RSE
    partial = EMPTY.with_bank(0, BankRecord(state=BankState.WRITING, length=10, written=5))
    assert nrc(ask(UNLOCKED, "3101FF01", flash=partial)) == RSE
    complete = EMPTY.with_bank(0, BankRecord(state=BankState.WRITING, length=10, written=10))
    d = ask(UNLOCKED, "3101FF01", flash=complete)
    assert d.effect == CheckBank(0, record_dtc=True) and d.pending and d.response is None
    done = SERVER.complete(d, CheckStatus.DOWNGRADE, 2.0)
    assert done.response == bytes.fromhex("7101FF0105")
    assert nrc(ask(UNLOCKED, "3101FF0100", flash=complete)) == IMLOIF
    download = Download(bank=0, address=0, length=10, offset=10, counter=3, max_block=258)
    assert nrc(ask(replace(UNLOCKED, download=download), "3101FF01", flash=complete)) == RSE


def test_a_repeated_check_of_a_valid_bank_answers_ok_without_checking_again() -> None:
    valid = EMPTY.with_bank(0, V1)  # checked, not yet booted
    d = ask(UNLOCKED, "3101FF01", flash=valid)
    assert d.effect is None and positive(d) == bytes.fromhex("7101FF0100")


def test_invalidate_needs_programming_security_and_a_sha256() -> None:
    sha = (b"\x22" * 32).hex()
    assert nrc(ask(DEFAULT, INVALIDATE + sha, flash=RUNNING_V2)) == SNSIAS
    assert nrc(ask(EXTENDED, INVALIDATE + sha, flash=RUNNING_V2)) == ROOR  # not in this session
    assert nrc(ask(PROGRAMMING, INVALIDATE + sha, flash=RUNNING_V2)) == SAD
    assert nrc(ask(UNLOCKED, INVALIDATE, flash=RUNNING_V2)) == IMLOIF  # no record
    assert nrc(ask(UNLOCKED, INVALIDATE + sha[:-2], flash=RUNNING_V2)) == IMLOIF  # 31 bytes
    assert nrc(ask(UNLOCKED, INVALIDATE + sha + "00", flash=RUNNING_V2)) == IMLOIF  # 33 bytes
    assert nrc(ask(UNLOCKED, "3102FF02" + sha, flash=RUNNING_V2)) == SFNS  # stop: unsupported
    assert nrc(ask(UNLOCKED, "3103FF02" + sha, flash=RUNNING_V2)) == SFNS  # results: likewise
    download = Download(bank=0, address=0, length=10, offset=0, counter=1, max_block=258)
    busy = replace(UNLOCKED, download=download)
    assert nrc(ask(busy, INVALIDATE + sha, flash=RUNNING_V2)) == CNC


def test_invalidate_marks_the_bank_holding_the_image_the_running_or_the_staged_one() -> None:
    sha = (b"\x22" * 32).hex()
    for flash in (RUNNING_V2, STAGED_V2):
        d = ask(UNLOCKED, INVALIDATE + sha, flash=flash)
        assert d.effect == InvalidateBank(1) and d.pending and d.response is None
        done = SERVER.complete(d, True, 2.0)
        assert done.response == bytes.fromhex("7101FF0200")
        assert done.state.last_request == 2.0
        # The effect found that the other bank does not verify: nothing would boot.
        assert nrc(SERVER.complete(d, False, 2.0)) == CNC
    suppressed = ask(UNLOCKED, "3181FF02" + sha, flash=RUNNING_V2)
    assert suppressed.pending and not suppressed.suppressed  # a slow step is always answered


def test_invalidate_never_leaves_the_ecu_without_another_valid_image() -> None:
    only = (b"\x11" * 32).hex()
    assert nrc(ask(UNLOCKED, INVALIDATE + only, flash=RUNNING_V1)) == CNC
    twins = RUNNING_V1.with_bank(1, replace(V1, sequence=2))  # the same image in both banks
    assert nrc(ask(UNLOCKED, INVALIDATE + only, flash=twins)) == CNC
    rotten = RUNNING_V2.with_bank(0, replace(V1, state=BankState.INVALID))
    assert nrc(ask(UNLOCKED, INVALIDATE + (b"\x22" * 32).hex(), flash=rotten)) == CNC


def test_invalidate_is_idempotent_and_says_when_there_is_nothing_to_do() -> None:
    gone = RUNNING_V2.with_bank(1, replace(V2, state=BankState.INVALID))  # until the next reset
    d = ask(UNLOCKED, INVALIDATE + (b"\x22" * 32).hex(), flash=gone)
    assert positive(d) == bytes.fromhex("7101FF0200") and d.effect is None
    d = ask(UNLOCKED, INVALIDATE + (b"\x33" * 32).hex(), flash=RUNNING_V2)
    assert positive(d) == bytes.fromhex("7101FF0201") and d.effect is None
    nothing = ask(UNLOCKED, INVALIDATE + bytes(32).hex(), flash=EMPTY)
    assert positive(nothing) == bytes.fromhex("7101FF0201")


def test_an_invalidated_running_bank_blocks_erasing_the_other_until_a_reset() -> None:
    gone = RUNNING_V2.with_bank(1, replace(V2, state=BankState.INVALID))
    assert nrc(ask(UNLOCKED, "3101FF00", flash=gone)) == CNC
    banks = BankSummary.decode_pair(positive(ask(DEFAULT, "22FD02", flash=gone))[3:])
    assert banks == (BankSummary(BankState.VALID, 1), BankSummary(BankState.INVALID, 2))
    running = ActiveImage.decode(positive(ask(DEFAULT, "22FD00", flash=gone))[3:])
    assert running == ActiveImage(1, 2, b"\x22" * 32)  # it still runs, until the reset


def test_control_dtc_setting_off_keeps_a_failed_check_out_of_the_dtcs() -> None:
    state = ask(UNLOCKED, "8502").state
    assert not state.dtc_setting_on
    complete = EMPTY.with_bank(0, BankRecord(state=BankState.WRITING, length=10, written=10))
    assert ask(state, "3101FF01", flash=complete).effect == CheckBank(0, record_dtc=False)
    assert ask(state, "1001").state.dtc_setting_on


# --- download ----------------------------------------------------------------------------------


def test_request_download_needs_an_erased_bank_and_answers_the_max_block_length() -> None:
    assert nrc(ask(UNLOCKED, "3400 44 00000000 00000400", flash=EMPTY)) == CNC
    d = ask(UNLOCKED, "3400 44 00000000 00000400", flash=ERASED)
    assert positive(d) == bytes.fromhex("7420 0102")  # 258
    assert d.state.download == Download(0, 0, 0x400, 0, 1, 258)


def test_request_download_format_and_range_errors() -> None:
    assert nrc(ask(UNLOCKED, "3411 44 00000000 00000400", flash=ERASED)) == ROOR  # compression
    assert nrc(ask(UNLOCKED, "3400 05 00000000 00000400", flash=ERASED)) == ROOR  # ALFID
    assert nrc(ask(UNLOCKED, "3400 44 00000000 0004", flash=ERASED)) == IMLOIF
    assert nrc(ask(UNLOCKED, "3400 44 00000000 00000000", flash=ERASED)) == ROOR  # size 0
    assert nrc(ask(UNLOCKED, "3400 44 00000000 00010001", flash=ERASED)) == ROOR  # > bank
    assert nrc(ask(UNLOCKED, "3400", flash=ERASED)) == IMLOIF
    assert nrc(ask(PROGRAMMING, "3400 44 00000000 00000400", flash=ERASED)) == SAD
    assert nrc(ask(EXTENDED, "3400 44 00000000 00000400", flash=ERASED)) == SNSIAS


def test_a_repeated_request_download_keeps_the_download_another_is_refused() -> None:
    state = ask(UNLOCKED, "3400 44 00000000 00000400", flash=ERASED).state
    again = ask(state, "3400 44 00000000 00000400", flash=ERASED)
    assert positive(again) and again.state.download == state.download
    assert nrc(ask(state, "3400 44 00000000 00000200", flash=ERASED)) == CNC
    after_block = ask(state, b"\x36\x01" + bytes(10)).state
    assert nrc(ask(after_block, "3400 44 00000000 00000400", flash=ERASED)) == CNC


def test_request_download_resumes_only_where_the_bank_left_off() -> None:
    progress = EMPTY.with_bank(0, BankRecord(state=BankState.WRITING, length=1000, written=400))
    d = ask(UNLOCKED, "3400 44 00000190 00000258", flash=progress)  # 400 + 600
    assert positive(d) and d.state.download == Download(0, 400, 1000, 400, 1, 258)
    assert nrc(ask(UNLOCKED, "3400 44 00000100 00000258", flash=progress)) == ROOR
    assert nrc(ask(UNLOCKED, "3400 44 00000190 00000100", flash=progress)) == ROOR
    assert nrc(ask(UNLOCKED, "3400 44 00000000 000003E8", flash=progress)) == CNC  # erase first


def test_transfer_data_counts_from_1_and_wraps_from_ff_to_00() -> None:
    length = 300
    state = ask(UNLOCKED, f"3400 44 00000000 {length:08X}", flash=ERASED).state
    counters = []
    for i in range(length):
        counter = (i + 1) & 0xFF
        d = ask(state, bytes((0x36, counter, i & 0xFF)))
        assert positive(d) == bytes((0x76, counter)), i
        assert d.effect == WriteBlock(0, i, bytes((i & 0xFF,)), length)
        counters.append(counter)
        state = d.state
    assert counters[253:258] == [0xFE, 0xFF, 0x00, 0x01, 0x02]
    assert positive(ask(state, "37")) == b"\x77"


def test_a_repeated_last_block_is_acknowledged_without_writing_it_again() -> None:
    state = ask(UNLOCKED, "3400 44 00000000 00000010", flash=ERASED).state
    state = ask(state, b"\x36\x01" + bytes(8)).state
    repeat = ask(state, b"\x36\x01" + bytes(8))
    assert positive(repeat) == bytes.fromhex("7601") and repeat.effect is None
    assert repeat.state.download == state.download


def test_transfer_data_misuse() -> None:
    assert nrc(ask(UNLOCKED, "360100")) == RSE  # no download
    state = ask(UNLOCKED, "3400 44 00000000 00000300", flash=ERASED).state
    assert nrc(ask(state, "3601")) == IMLOIF
    assert nrc(ask(state, "360200")) == WBSC
    assert nrc(ask(state, b"\x36\x01" + bytes(257))) == IMLOIF  # 259 > max block length 258
    short = ask(UNLOCKED, "3400 44 00000000 00000004", flash=ERASED).state
    assert nrc(ask(short, b"\x36\x01" + bytes(5))) == ROOR  # beyond the declared size
    assert nrc(ask(PROGRAMMING, "360100")) == SAD
    assert nrc(ask(DEFAULT, "360100")) == SNSIAS


def test_transfer_exit_needs_the_whole_image() -> None:
    assert nrc(ask(UNLOCKED, "37")) == RSE
    state = ask(UNLOCKED, "3400 44 00000000 00000004", flash=ERASED).state
    state = ask(state, "360100").state
    assert nrc(ask(state, "37")) == RSE
    state = ask(state, "3602000000").state
    d = ask(state, "37")
    assert positive(d) == b"\x77" and d.state.download is None


def test_a_failed_effect_answers_general_programming_failure_and_ends_the_download() -> None:
    state = ask(UNLOCKED, "3400 44 00000000 00000004", flash=ERASED).state
    d = SERVER.failed(ask(state, "360100"), 2.0)
    assert nrc(d) == GPF and d.state.download is None


# --- data identifiers --------------------------------------------------------------------------


def test_every_did_answers_its_fixed_length_record() -> None:
    for did, length in DID_LENGTHS.items():
        response = positive(ask(DEFAULT, f"22{did:04X}", flash=RUNNING_V1))
        assert response[:3] == bytes((0x62, did >> 8, did & 0xFF))
        assert len(response) == 3 + length, hex(did)
    active = positive(ask(DEFAULT, "22FD00", flash=RUNNING_V1))[3:]
    assert ActiveImage.decode(active) == ActiveImage(0, 1, b"\x11" * 32)
    assert positive(ask(DEFAULT, "22F189", flash=RUNNING_V1))[3:] == (1).to_bytes(8)
    status = DownloadStatus.decode(positive(ask(DEFAULT, "22FD01", flash=RUNNING_V1))[3:])
    assert (status.bank, status.state) == (1, BankState.EMPTY)
    assert ActiveImage.decode(positive(ask(DEFAULT, "22FD00"))[3:]).bank is None


def test_read_data_by_identifier_misuse() -> None:
    assert nrc(ask(DEFAULT, "22")) == IMLOIF
    assert nrc(ask(DEFAULT, "22F1")) == IMLOIF
    assert nrc(ask(DEFAULT, "22F18600")) == IMLOIF
    assert nrc(ask(DEFAULT, "221234")) == ROOR
    both = positive(ask(DEFAULT, "221234F186"))
    assert both == bytes.fromhex("62F18601")  # the unknown one is left out
    tiny = UdsServer(replace(CONFIG, max_response=20))
    many = bytes.fromhex("22" + "FD00" * 2)
    assert tiny.handle(DEFAULT, many, 0.0, EMPTY).response == bytes.fromhex("7F2214")


def test_write_fingerprint_needs_security_and_sixteen_bytes() -> None:
    value = b"tester0123456789"
    d = ask(UNLOCKED, b"\x2e\xf1\x84" + value)
    assert positive(d) == bytes.fromhex("6EF184") and d.effect == WriteFingerprint(value)
    assert nrc(ask(PROGRAMMING, b"\x2e\xf1\x84" + value)) == SAD
    assert nrc(ask(UNLOCKED, b"\x2e\xf1\x84" + value[:8])) == IMLOIF
    assert nrc(ask(UNLOCKED, b"\x2e\xf1\x90" + value)) == ROOR  # the VIN is read-only
    assert nrc(ask(UNLOCKED, "2EF1")) == IMLOIF
    assert nrc(ask(DEFAULT, b"\x2e\xf1\x84" + value)) == SNSIAS


# --- DTCs, communication ----------------------------------------------------------------------


def test_dtcs_are_read_and_cleared() -> None:
    flash = replace(EMPTY, dtcs=(DTC_CHECK_FAILED,))
    assert positive(ask(DEFAULT, "1902FF", flash=flash)) == bytes.fromhex("5902 09 F00010 09")
    assert positive(ask(DEFAULT, "1902FF")) == bytes.fromhex("5902 09")
    assert positive(ask(DEFAULT, "1901FF", flash=flash)) == bytes.fromhex("5901 09 01 0001")
    assert positive(ask(DEFAULT, "190A", flash=flash)) == bytes.fromhex(
        "590A 09 F00010 09 F00020 00 F00030 00"
    )
    assert nrc(ask(DEFAULT, "1982FF")) == SFNS  # no suppress bit in this service
    assert nrc(ask(DEFAULT, "1902")) == IMLOIF
    assert nrc(ask(PROGRAMMING, "1902FF")) == SNSIAS
    assert ask(DEFAULT, "14FFFFFF").effect == ClearDtcs(None)
    assert ask(EXTENDED, "14F00010").effect == ClearDtcs(DTC_CHECK_FAILED)
    assert nrc(ask(DEFAULT, "14123456")) == ROOR
    assert nrc(ask(DEFAULT, "14FFFF")) == IMLOIF


def test_communication_control() -> None:
    d = ask(EXTENDED, "280103")
    assert positive(d) == bytes.fromhex("6801") and d.state.communication == 1
    assert nrc(ask(EXTENDED, "280100")) == ROOR
    assert nrc(ask(EXTENDED, "2801")) == IMLOIF
    assert nrc(ask(EXTENDED, "280501")) == SFNS
    assert nrc(ask(DEFAULT, "280101")) == SNSIAS
    assert ask(d.state, "1001").state.communication == 0
    assert nrc(ask(EXTENDED, "8502FF")) == IMLOIF
    assert positive(ask(EXTENDED, "8501FFFFFF")) == bytes.fromhex("C501")


def test_unknown_services_and_empty_requests() -> None:
    assert ask(DEFAULT, "23").response == bytes.fromhex("7F2311")  # udsoncan knows it; we don't
    assert ask(DEFAULT, "AA00").response == bytes.fromhex("7FAA11")
    assert ask(DEFAULT, b"").response is None


# --- Hypothesis --------------------------------------------------------------------------------

SUPPORTED = SERVER.supported_services
SUBFUNCTION_SERVICES = {0x10, 0x11, 0x19, 0x27, 0x28, 0x31, 0x3E, 0x85}
SESSIONS = {
    0x10: set(Session),
    0x11: set(Session),
    0x14: {Session.DEFAULT, Session.EXTENDED},
    0x19: {Session.DEFAULT, Session.EXTENDED},
    0x22: set(Session),
    0x27: {Session.EXTENDED, Session.PROGRAMMING},
    0x28: {Session.EXTENDED, Session.PROGRAMMING},
    0x2E: {Session.EXTENDED, Session.PROGRAMMING},
    0x31: {Session.EXTENDED, Session.PROGRAMMING},
    0x34: {Session.PROGRAMMING},
    0x36: {Session.PROGRAMMING},
    0x37: {Session.PROGRAMMING},
    0x3E: set(Session),
    0x85: {Session.EXTENDED, Session.PROGRAMMING},
}
SUBFUNCTIONS = {
    0x10: {1, 2, 3},
    0x11: {1, 2, 3},
    0x19: {1, 2, 0x0A},
    0x27: {1, 2},
    0x28: {0, 1, 2, 3},
    0x31: {1},
    0x3E: {0},
    0x85: {1, 2},
}
ALL_NRCS = {SNS, SFNS, IMLOIF, RTL, CNC, RSE, ROOR, SAD, IK, ENOA, RTDNE, WBSC, SNSIAS_SF, SNSIAS}


@st.composite
def states(draw: st.DrawFn) -> ServerState:
    session = draw(st.sampled_from(list(Session)))
    download = None
    if session is Session.PROGRAMMING and draw(st.booleans()):
        length = draw(st.integers(1, 5000))
        offset = draw(st.integers(0, length))
        download = Download(
            bank=0,
            address=0,
            length=length,
            offset=offset,
            counter=draw(st.integers(0, 255)),
            max_block=258,
            last_counter=draw(st.none() | st.integers(0, 255)),
        )
    return ServerState(
        session=session,
        unlocked=session is not Session.DEFAULT and draw(st.booleans()),
        seed=draw(st.none() | st.just(SEED)),
        failed_attempts=draw(st.integers(0, 2)),
        locked_until=draw(st.sampled_from([0.0, 100.0])),
        last_request=1.0,
        download=download,
    )


flashes = st.sampled_from(
    [
        EMPTY,
        ERASED,
        RUNNING_V1,
        RUNNING_V2,
        EMPTY.with_bank(0, BankRecord(state=BankState.WRITING, length=10, written=10)),
        replace(EMPTY, dtcs=(DTC_CHECK_FAILED,)),
    ]
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=70), state=states(), flash=flashes)
def test_arbitrary_bytes_never_crash_the_server(
    payload: bytes, state: ServerState, flash: FlashMeta
) -> None:
    d = SERVER.handle(state, payload, 1.0, flash)
    assert isinstance(d.state, ServerState)
    if d.response is None:
        # Only an empty request, a suppressed positive answer or a slow check or invalidation
        # (answered once done) answers nothing.
        assert not payload or d.suppressed or isinstance(d.effect, CheckBank | InvalidateBank)
        return
    if d.response[0] == 0x7F:
        assert len(d.response) == 3 and d.response[1] == payload[0]
        assert d.response[2] in ALL_NRCS
        assert d.effect is None
    else:
        assert d.response[0] == payload[0] + 0x40


@given(sid=st.integers(0, 255).filter(lambda s: s not in SUPPORTED), tail=st.binary(max_size=8))
def test_unsupported_services_answer_service_not_supported(sid: int, tail: bytes) -> None:
    for state in (DEFAULT, UNLOCKED):
        assert SERVER.handle(state, bytes((sid,)) + tail, 1.0, EMPTY).response == bytes(
            (0x7F, sid, SNS)
        )


@given(sid=st.sampled_from(sorted(SESSIONS)), tail=st.binary(max_size=8), state=states())
def test_a_service_outside_its_sessions_answers_not_supported_in_active_session(
    sid: int, tail: bytes, state: ServerState
) -> None:
    d = SERVER.handle(state, bytes((sid,)) + tail, 1.0, EMPTY)
    if state.session not in SESSIONS[sid]:
        assert d.response == bytes((0x7F, sid, SNSIAS))
    else:
        assert nrc(d) != SNSIAS


@given(sid=st.sampled_from([0x34, 0x36, 0x37]), tail=st.binary(max_size=12))
def test_download_services_need_security_before_anything_else(sid: int, tail: bytes) -> None:
    d = SERVER.handle(PROGRAMMING, bytes((sid,)) + tail, 1.0, ERASED)
    assert d.response == bytes((0x7F, sid, SAD))


@given(sid=st.sampled_from(sorted(SUBFUNCTION_SERVICES)), state=states())
def test_a_missing_subfunction_is_a_length_error(sid: int, state: ServerState) -> None:
    if state.session in SESSIONS[sid]:
        assert SERVER.handle(state, bytes((sid,)), 1.0, EMPTY).response == bytes(
            (0x7F, sid, IMLOIF)
        )


@given(
    sid=st.sampled_from(sorted(SUBFUNCTION_SERVICES)),
    sub=st.integers(0, 0x7F),
    tail=st.binary(max_size=6),
)
def test_unknown_subfunctions_are_not_supported(sid: int, sub: int, tail: bytes) -> None:
    if sub in SUBFUNCTIONS[sid]:
        return
    state = EXTENDED if Session.EXTENDED in SESSIONS[sid] else DEFAULT
    d = SERVER.handle(state, bytes((sid, sub)) + tail, 1.0, EMPTY)
    assert d.response == bytes((0x7F, sid, SFNS))


@given(body=st.binary(max_size=9).filter(lambda b: len(b) < 2 or len(b) % 2 == 1))
def test_read_data_by_identifier_with_a_ragged_length_is_a_length_error(body: bytes) -> None:
    d = SERVER.handle(DEFAULT, b"\x22" + body, 1.0, EMPTY)
    assert d.response == bytes.fromhex("7F2213")


@given(tail=st.binary(max_size=12))
def test_request_download_format_oracle(tail: bytes) -> None:
    """An independent statement of the RequestDownload checks, on random bodies."""
    payload = b"\x34" + tail
    d = SERVER.handle(UNLOCKED, payload, 1.0, ERASED)
    expected: int | None
    if len(payload) < 3:
        expected = IMLOIF
    elif payload[1] != 0 or not (1 <= payload[2] >> 4 <= 4 and 1 <= payload[2] & 0xF <= 4):
        expected = ROOR  # compression/encryption, or an impossible address/length format
    elif len(payload) != 3 + (payload[2] >> 4) + (payload[2] & 0xF):
        expected = IMLOIF
    else:
        a = payload[2] & 0xF
        address = int.from_bytes(payload[3 : 3 + a])
        size = int.from_bytes(payload[3 + a :])
        if size == 0 or address + size > BANK:
            expected = ROOR
        elif address != 0:
            expected = ROOR  # nothing to resume in an erased bank
        else:
            expected = None
    assert nrc(d) == expected


@given(counter=st.integers(0, 255), data=st.binary(min_size=1, max_size=300))
def test_transfer_data_oracle(counter: int, data: bytes) -> None:
    download = Download(bank=0, address=0, length=1000, offset=900, counter=7, max_block=258,
                        last_counter=6)  # fmt: skip
    state = replace(UNLOCKED, download=download)
    d = SERVER.handle(state, bytes((0x36, counter)) + data, 1.0, EMPTY)
    if counter == 6:
        assert positive(d) == bytes((0x76, 6)) and d.effect is None
    elif counter != 7:
        assert nrc(d) == WBSC
    elif 2 + len(data) > 258:
        assert nrc(d) == IMLOIF
    elif 900 + len(data) > 1000:
        assert nrc(d) == ROOR
    else:
        assert d.effect == WriteBlock(0, 900, data, 1000)
