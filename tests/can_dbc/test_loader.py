"""The tolerant DBC loader: one test per real-world quirk, all of opendbc, and garbled input.

opendbc's 58 top-level DBC files are the field sample: cantools alone loads 46 of them; the loader
must load all 58, and give the 46 exactly what cantools gives.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from unittest import mock

import cantools
import pytest
from cantools.database.can import Database, Message, Signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import can_dbc
from can_dbc import (
    DbcDiagnostic,
    DbcError,
    DbcLoadError,
    DecodeError,
    LoadedDbc,
    load_dbc,
    load_dbc_string,
)
from can_dbc.loader import repair_dbc_text

OPENDBC = Path(str(importlib.resources.files("opendbc") / "dbc"))
OPENDBC_FILES = sorted(OPENDBC.glob("*.dbc"))

HEAD = 'VERSION ""\n\nNS_ :\n\tCM_\n\tBA_DEF_\n\tBA_\n\tVAL_\n\nBS_:\n\nBU_: ECU GW\n\n'
FOO = 'BO_ 100 Foo: 8 ECU\n SG_ Sig : 0|8@1+ (1,0) [0|255] "" GW\n\n'


def line_of(text: str, needle: str) -> int:
    """1-based line of the first occurrence of ``needle`` in ``text``."""
    index = text.index(needle)
    return text.count("\n", 0, index) + 1


def load(body: str, *, head: str = HEAD) -> tuple[str, LoadedDbc]:
    text = head + body
    return text, load_dbc_string(text, "car.dbc")


def warning_at(result: LoadedDbc, line: int, *fragments: str) -> DbcDiagnostic:
    """The warning on ``line`` that mentions all ``fragments``; fail listing all if none does."""
    for w in result.warnings:
        if w.line == line and all(f in w.message for f in fragments):
            assert w.path == "car.dbc"
            return w
    got = [str(w) for w in result.warnings]
    pytest.fail(f"no warning on line {line} with {fragments}; got {got}")


def message(result: LoadedDbc, name: str) -> Message:
    return result.database.get_message_by_name(name)


# ---------------------------------------------------------------------------------------------
# Public surface


def test_exports() -> None:
    names = {"load_dbc", "load_dbc_string", "LoadedDbc", "DbcDiagnostic", "DbcError"}
    assert names | {"DbcLoadError", "DecodeError"} <= set(can_dbc.__all__)
    assert issubclass(DbcLoadError, DbcError)
    assert issubclass(DecodeError, DbcError)


def test_error_and_diagnostic_text() -> None:
    error = DbcLoadError("file.dbc", 139, "missing ';'")
    assert (error.path, error.line, error.reason) == ("file.dbc", 139, "missing ';'")
    assert str(error) == "file.dbc:139: missing ';'"
    assert str(DbcLoadError("file.dbc", None, "cannot read")) == "file.dbc: cannot read"
    assert str(DbcDiagnostic("a.dbc", 7, "fixed")) == "a.dbc:7: warning: fixed"
    assert str(DbcDiagnostic("a.dbc", None, "fixed")) == "a.dbc: warning: fixed"


def test_clean_text_loads_without_warnings_even_strictly() -> None:
    _, result = load(FOO)
    assert result.warnings == ()
    assert result.path == "car.dbc"
    assert isinstance(result.database, cantools.database.can.Database)
    strict = load_dbc_string(HEAD + FOO, "car.dbc", strict=True)
    assert [m.name for m in strict.database.messages] == ["Foo"]


# ---------------------------------------------------------------------------------------------
# One test per quirk


def test_id_above_11_bits_without_flag_becomes_extended_everywhere() -> None:
    text, result = load(
        'BO_ 305419896 Big: 8 ECU\n SG_ Sig : 0|8@1+ (1,0) [0|255] "" GW\n\n'
        'CM_ BO_ 305419896 "big one";\nVAL_ 305419896 Sig 0 "off" 1 "on";\n'
        'BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;\nBA_ "GenMsgCycleTime" BO_ 305419896 100;\n'
    )
    big = result.database.get_message_by_name("Big")
    assert big.is_extended_frame and big.frame_id == 0x12345678
    assert big.comment == "big one"
    assert big.cycle_time == 100
    assert big.get_signal_by_name("Sig").choices == {0: "off", 1: "on"}
    warning_at(result, line_of(text, "BO_ 305419896"), "0x12345678", "Big", "extended")


def test_id_above_29_bits_drops_the_message_and_what_refers_to_it() -> None:
    text, result = load(
        FOO + 'BO_ 1075054137 BDB1F01_14: 8 CGW\n SG_ X : 0|8@1+ (1,0) [0|255] "" GW\n\n'
        'CM_ BO_ 1075054137 "gone";\nVAL_ 1075054137 X 0 "a";\nSIG_VALTYPE_ 1075054137 X : 1;\n'
    )
    assert [m.name for m in result.database.messages] == ["Foo"]
    w = warning_at(result, line_of(text, "BO_ 1075054137"), "dropped message 'BDB1F01_14'")
    assert "0x40140639" in w.message and "29 bits" in w.message
    assert "3 statement(s)" in w.message


def test_vector_independent_signals_message_is_left_alone() -> None:
    body = FOO + (
        "BO_ 3221225472 VECTOR__INDEPENDENT_SIG_MSG: 0 Vector__XXX\n"
        ' SG_ Loose : 0|8@1+ (1,0) [0|255] "" GW\n\nVAL_ 3221225472 Loose 0 "a";\n'
    )
    text, result = load(body)
    assert [m.name for m in result.database.messages] == ["Foo"]
    assert result.warnings == ()  # the VAL_ went quietly: cantools ignores that message
    repaired, diags = repair_dbc_text(text, "car.dbc")
    assert diags == [] and "VAL_ 3221225472" not in repaired


@pytest.mark.parametrize("written", ['CM_ 145 "pedal";', 'CM_ SG_ 145 "pedal";'])
def test_comment_without_kind_or_signal_becomes_the_message_comment(written: str) -> None:
    text, result = load(
        'BO_ 145 FCEV: 8 ECU\n SG_ Pedal : 0|8@1+ (1,0) [0|255] "" GW\n\n' + written + "\n"
    )
    assert message(result, "FCEV").comment == "pedal"
    warning_at(
        result, line_of(text, written), "names no signal or object kind", "message 145 (FCEV)"
    )


def test_comment_without_kind_is_dropped_when_the_message_has_one() -> None:
    text, result = load(FOO + 'CM_ BO_ 100 "real";\nCM_ 100 "stray";\n')
    assert message(result, "Foo").comment == "real"
    warning_at(result, line_of(text, 'CM_ 100 "stray"'), "dropped comment", "has a comment already")


def test_names_starting_with_a_digit_are_renamed_everywhere() -> None:
    text, result = load(
        'BO_ 1275 2017_5: 8 ECU\n SG_ 0_COUNTER : 0|4@1+ (1,0) [0|15] "" GW\n'
        ' SG_ Mux M : 8|8@1+ (1,0) [0|255] "" GW\n SG_ 1_Data m1 : 16|8@1+ (1,0) [0|255] "" GW\n\n'
        'CM_ SG_ 1275 0_COUNTER "rolling counter";\n'
        'BA_DEF_ SG_ "GenSigStartValue" INT 0 100;\nBA_ "GenSigStartValue" SG_ 1275 0_COUNTER 3;\n'
        'VAL_ 1275 0_COUNTER 0 "zero" ;\nSIG_VALTYPE_ 1275 1_Data : 0;\n'
        "SG_MUL_VAL_ 1275 1_Data Mux 1-1;\n"
    )
    msg = result.database.get_message_by_name("_2017_5")
    counter = msg.get_signal_by_name("_0_COUNTER")
    assert counter.comment == "rolling counter"
    assert counter.raw_initial == 3
    assert counter.choices == {0: "zero"}
    assert msg.get_signal_by_name("_1_Data").multiplexer_ids == [1]
    warning_at(result, line_of(text, "BO_ 1275"), "'2017_5' to '_2017_5'")
    warning_at(result, line_of(text, "SG_ 0_COUNTER"), "'0_COUNTER' to '_0_COUNTER'", "digit")


def test_renaming_avoids_names_already_taken() -> None:
    _, result = load(
        'BO_ 100 _1X: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|255] "" GW\n\n'
        'BO_ 101 1X: 8 ECU\n SG_ B : 0|8@1+ (1,0) [0|255] "" GW\n'
    )
    assert sorted(m.name for m in result.database.messages) == ["_1X", "_1X_2"]


def test_non_ascii_names_are_folded() -> None:
    text, result = load('BO_ 100 Größe: 8 ECU\n SG_ Wärme : 0|8@1+ (1,0) [0|255] "°C" GW\n')
    msg = result.database.get_message_by_name("Gro_e")
    assert msg.get_signal_by_name("Warme").unit == "°C"
    warning_at(result, line_of(text, "SG_ Wärme"), "'Wärme' to 'Warme'", "ASCII")


def test_numbers_without_a_leading_digit_are_normalised() -> None:
    text, result = load('BO_ 100 Foo: 8 ECU\n SG_ Sig : 0|8@1- (.25,-500) [-.5|1.] "" GW\n')
    sig = message(result, "Foo").get_signal_by_name("Sig")
    assert (sig.scale, sig.offset, sig.minimum, sig.maximum) == (0.25, -500, -0.5, 1.0)
    line = line_of(text, "SG_ Sig")
    warning_at(result, line, "'.25'", "0.25")
    warning_at(result, line, "'-.5'", "-0.5")


def test_integers_written_as_hex_or_decimals_are_read_as_integers() -> None:
    text, result = load('BO_ 0x123 Foo: 8.0 ECU\n SG_ Sig : 0|8@1+ (1,0) [0|255] "" GW\n')
    foo = message(result, "Foo")
    assert (foo.frame_id, foo.length) == (0x123, 8)
    warning_at(result, line_of(text, "BO_ 0x123"), "hex", "'0x123'", "291")
    warning_at(result, line_of(text, "BO_ 0x123"), "'8.0'", "8")


def test_value_tables_and_types_for_missing_signals_are_dropped() -> None:
    text, result = load(
        FOO + 'VAL_ 100 ACM_VehicleHoldRequired 0 "no" 1 "yes";\nVAL_ 999 Sig 0 "x";\n'
        "SIG_VALTYPE_ 100 Ghost : 1;\n"
    )
    assert [m.name for m in result.database.messages] == ["Foo"]
    line = line_of(text, "VAL_ 100")
    warning_at(result, line, "dropped the VAL_ table", "'ACM_VehicleHoldRequired'", "'Foo'")
    warning_at(result, line_of(text, "VAL_ 999"), "no message has frame id 999")
    warning_at(result, line_of(text, "SIG_VALTYPE_"), "SIG_VALTYPE_", "'Ghost'")


def test_missing_semicolon_before_the_next_statement_is_inserted() -> None:
    # toyota_radar_dsu_tssp.dbc line 139: a comment without ';' right before a message.
    cluster = 'BO_ 1664 CLUSTER_F: 8 RADAR\n SG_ ID : 0|6@1+ (1,0) [0|63] "" XXX\n'
    text, result = load(FOO + 'CM_ "Front target"\n' + cluster)
    assert [m.name for m in result.database.messages] == ["Foo", "CLUSTER_F"]
    warning_at(result, line_of(text, 'CM_ "Front target"'), "missing ';'", "CM_", "inserted")


def test_a_truncated_last_statement_is_not_lost_silently() -> None:
    # cantools (textparser) accepts a text whose last statement is cut short and loses it.
    text, result = load(FOO + 'CM_ BO_ 100 "last words"')
    assert message(result, "Foo").comment == "last words"
    warning_at(result, line_of(text, "last words"), "missing ';'")
    with pytest.raises(DbcLoadError) as info:
        load(FOO + "BO_ 200 Cut:")
    assert info.value.line == line_of(HEAD + FOO + "BO_ 200 Cut:", "BO_ 200")


def test_unrepairable_syntax_error_names_file_and_line() -> None:
    text = HEAD + FOO + 'BO_ 200 Bar: 8 ECU\n SG_ Broken : 0|8@1+ (1,0) [0|255 "" GW\n'
    with pytest.raises(DbcLoadError) as info:
        load_dbc_string(text, "car.dbc")
    assert info.value.path == "car.dbc"
    assert info.value.line == line_of(text, "SG_ Broken")
    assert "expected ']'" in info.value.reason
    assert str(info.value).startswith(f"car.dbc:{info.value.line}: ")


def test_text_between_statements_is_an_error_at_its_line() -> None:
    text = HEAD + FOO + "this is not dbc\n" + FOO.replace("100 Foo", "101 Bar")
    with pytest.raises(DbcLoadError) as info:
        load_dbc_string(text, "car.dbc")
    assert info.value.line == line_of(text, "this is not dbc")


def test_garbage_after_the_last_statement_is_dropped() -> None:
    text, result = load(FOO + "}}} editor junk\n\x1a")
    assert [m.name for m in result.database.messages] == ["Foo"]
    warning_at(result, line_of(text, "}}}"), "dropped unrecognised text after the last statement")


def test_missing_bs_after_ns_section_is_inserted() -> None:
    text = 'VERSION ""\nNS_ :\n\tCM_\n\tBA_\n' + FOO
    result = load_dbc_string(text, "car.dbc")
    assert [m.name for m in result.database.messages] == ["Foo"]
    warning_at(result, line_of(text, "BO_ 100"), "missing 'BS_:'")


def test_bit_timing_and_node_list_commas_are_cleaned() -> None:
    head = 'VERSION ""\nNS_ :\nBS_: 500 : 12,34\nBU_: ECU, GW\n'
    text, result = load(FOO, head=head)
    assert [n.name for n in result.database.nodes] == ["ECU", "GW"]
    warning_at(result, line_of(text, "BS_:"), "bit timing")
    warning_at(result, line_of(text, "BU_:"), "commas")


def test_statements_cantools_does_not_support_are_dropped() -> None:
    text, result = load(
        FOO + 'SGTYPE_ T : 8@1+ (1,0) [0|1] "" 0, VT;\nCAT_DEF_ 1 "x" 0;\nFILTER 0 ECU;\n'
    )
    assert [m.name for m in result.database.messages] == ["Foo"]
    for keyword in ("SGTYPE_", "CAT_DEF_", "FILTER"):
        warning_at(result, line_of(text, keyword + " "), keyword, "does not support")


def test_missing_sender_unit_receivers_and_commas() -> None:
    text, result = load(
        "BO_ 100 Foo: 8\n"
        " SG_ A : 0|8@1+ (1,0) [0|255]\n"
        ' SG_ B : 8|8@1+ (1,0) [0|255] "km" GW ECU;\n'
    )
    foo = message(result, "Foo")
    assert foo.senders == []
    assert foo.get_signal_by_name("B").receivers == ["GW", "ECU"]
    warning_at(result, line_of(text, "BO_ 100"), "no sender")
    warning_at(result, line_of(text, "SG_ A"), "no unit string")
    warning_at(result, line_of(text, "SG_ A"), "no receiver")
    warning_at(result, line_of(text, "SG_ B"), "separated by spaces")
    warning_at(result, line_of(text, "SG_ B"), "';' after the signal")


def test_zero_length_signal_is_dropped() -> None:
    text, result = load(FOO.rstrip("\n") + '\n SG_ Empty : 8|0@1+ (1,0) [0|1] "" GW\n')
    assert [s.name for s in message(result, "Foo").signals] == ["Sig"]
    warning_at(result, line_of(text, "SG_ Empty"), "dropped signal 'Empty'", "length is 0")


def test_attributes_cantools_cannot_take_are_fixed_or_dropped() -> None:
    text, result = load(
        FOO + 'BA_DEF_ BO_ "Kind" ENUM "Plain","Fancy";\nBA_DEF_ BO_ "Kind" ENUM "A","B","C";\n'
        'BA_DEF_ SG_ "GenSigStartValue" STRING;\n'
        'BA_ "Kind" BO_ 100 "C";\nBA_ "Kind" BO_ 100 9;\nBA_ "Nowhere" BO_ 100 1;\n'
        'BA_ "Nowhere" BO_ 100 2;\nBA_ "GenSigStartValue" SG_ 100 Sig "7";\n'
    )
    specifics = message(result, "Foo").dbc
    assert specifics is not None and specifics.attributes["Kind"].value == 2
    warning_at(result, line_of(text, '"Plain"'), "defined again later")
    warning_at(result, line_of(text, "STRING;"), "GenSigStartValue", "not STRING")
    warning_at(result, line_of(text, 'BO_ 100 "C"'), "enum label 'C'", "index 2")
    warning_at(result, line_of(text, " 9;"), "outside its 3 choices")
    warning_at(result, line_of(text, '"Nowhere"'), "'Nowhere' is not defined", "1 more")
    assert not any("ignored all attributes" in w.message for w in result.warnings)


def test_int_vframeformat_without_default_gets_one() -> None:
    text, result = load(
        FOO + 'BA_DEF_ BO_ "VFrameFormat" INT 0 15;\nBA_ "VFrameFormat" BO_ 100 0;\n'
    )
    assert not message(result, "Foo").is_fd
    warning_at(result, line_of(text, "BA_DEF_ BO_"), "'VFrameFormat' has no default")


def test_odd_whitespace_is_replaced() -> None:
    text, result = load('BO_ 100 Foo: 8 ECU\n SG_\xa0Sig : 0|8@1+ (1,0) [0|255]\f"" GW\n')
    assert message(result, "Foo").signals[0].name == "Sig"
    warning_at(result, line_of(text, "SG_"), "2 unusual whitespace")


def test_fatal_multiplexer_indicator_is_removed_and_ignored_one_reported() -> None:
    text, result = load(
        'BO_ 100 Mx: 8 ECU\n SG_ Sel M : 0|8@1+ (1,0) [0|255] "" GW\n'
        ' SG_ A mX : 8|8@1+ (1,0) [0|255] "" GW\n SG_ B m1 : 16|8@1+ (1,0) [0|255] "" GW\n\n'
        'BO_ 101 Plain: 8 ECU\n SG_ C m : 0|8@1+ (1,0) [0|255] "" GW\n'
        ' SG_ D m2 : 8|8@1+ (1,0) [0|255] "" GW\n'
    )
    assert message(result, "Mx").get_signal_by_name("A").multiplexer_ids is None
    warning_at(result, line_of(text, "SG_ A mX"), "'mX'", "removed it")
    warning_at(result, line_of(text, "SG_ C m "), "'m'", "without multiplexing")
    with pytest.raises(DbcLoadError):
        load_dbc_string(text, "car.dbc", strict=True)


def test_duplicate_ids_and_names_are_reported_with_both_lines() -> None:
    text, result = load(FOO + FOO.replace("Foo", "Foo2") + FOO.replace("100 Foo", "101 Foo"))
    first = line_of(text, "BO_ 100 Foo:")
    second = line_of(text, "BO_ 100 Foo2:")
    third = line_of(text, "BO_ 101 Foo:")
    warning_at(result, second, "'Foo'", f"line {first}", "'Foo2'", "0x64")
    warning_at(result, third, "named 'Foo'", f"line {first}")


def test_overlapping_and_overflowing_signals_are_reported() -> None:
    text, result = load(
        'BO_ 100 Foo: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|255] "" GW\n'
        ' SG_ B : 4|8@1+ (1,0) [0|255] "" GW\n'
        ' SG_ C : 60|8@1+ (1,0) [0|255] "" GW\n'
        ' SG_ Sel M : 16|8@1+ (1,0) [0|255] "" GW\n SG_ M1 m1 : 24|8@1+ (1,0) [0|255] "" GW\n'
        ' SG_ M2 m2 : 24|8@1+ (1,0) [0|255] "" GW\n'
    )
    line = line_of(text, "BO_ 100")
    warning_at(result, line, "overlap", "'A' and 'B'")
    warning_at(result, line, "'C'", "does not fit")
    assert not any("M1" in w.message for w in result.warnings)  # different multiplexer values
    assert load_dbc_string(text, "car.dbc", strict=True).warnings == result.warnings


def test_attribute_of_a_type_cantools_cannot_interpret_is_dropped() -> None:
    # cantools refuses an INT "GenMsgSendType" (it asserts a string) and with it the whole file.
    text, result = load(
        FOO + 'BA_DEF_ BO_ "GenMsgSendType" INT 0 3;\nBA_ "GenMsgSendType" BO_ 100 1;\n'
    )
    assert [m.name for m in result.database.messages] == ["Foo"]
    warning_at(result, line_of(text, "BA_DEF_ BO_"), "GenMsgSendType", "not INT")
    warning_at(result, line_of(text, "BA_ "), "'GenMsgSendType' has no usable definition")


def test_unescaped_quotes_in_a_comment_are_escaped() -> None:
    text, result = load(FOO + 'CM_ SG_ 100 Sig "the "big"\none";\n')
    assert message(result, "Foo").get_signal_by_name("Sig").comment == 'the "big"\none'
    warning_at(result, line_of(text, "CM_ SG_"), "unescaped")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("BO_ 1 X: 999999999 E\n", "message length 999999999"),
        ('BO_ 1 X: 8 E\n SG_ A : 0|99999999@1+ (1,0) [0|1] "" E\n', "signal length"),
        ('BO_ 1 X: 8 E\n SG_ A : 99999999|8@1+ (1,0) [0|1] "" E\n', "start bit"),
        (FOO + "SG_MUL_VAL_ 100 Sig Sig 0-99999999;\n", "more than"),
    ],
)
def test_numbers_that_would_stall_cantools_are_refused(body: str, reason: str) -> None:
    # cantools spends time and memory in proportion to these numbers (minutes, gigabytes).
    with pytest.raises(DbcLoadError, match=reason) as info:
        load(body)
    assert info.value.line == line_of(HEAD + body, body.splitlines()[-1])


def test_attribute_values_that_would_stall_cantools_are_dropped() -> None:
    text, result = load(FOO + 'BA_DEF_ BO_ "Big" INT 0 10;\nBA_ "Big" BO_ 100 1e999999999;\n')
    warning_at(result, line_of(text, 'BA_ "Big"'), "overlong value")


def test_strict_mode_raises_for_the_first_repair() -> None:
    text = HEAD + FOO + 'CM_ 100 "x";\n'
    with pytest.raises(DbcLoadError) as info:
        load_dbc_string(text, "car.dbc", strict=True)
    assert info.value.line == line_of(text, "CM_ 100")
    assert "strict" in info.value.reason


def test_empty_text_is_an_error() -> None:
    with pytest.raises(DbcLoadError, match="no DBC statements"):
        load_dbc_string("  \n// nothing\n", "empty.dbc")


# ---------------------------------------------------------------------------------------------
# Files: encodings, line ends, I/O


def test_file_with_bom_crlf_and_cp1252_keeps_original_line_numbers(tmp_path: Path) -> None:
    text = HEAD + FOO + 'CM_ SG_ 100 Sig "Temperatur in °C, Größe";\nCM_ 100 "x";\n'
    path = tmp_path / "cp1252.dbc"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("cp1252"))
    result = load_dbc(path)
    assert result.path == str(path)
    sig = result.database.get_message_by_name("Foo").get_signal_by_name("Sig")
    assert sig.comment == "Temperatur in °C, Größe"
    encoding = [w for w in result.warnings if "UTF-8" in w.message]
    assert (
        encoding
        and encoding[0].line == line_of(text, "Temperatur")
        and "cp1252" in encoding[0].message
    )
    assert any(w.line == line_of(text, 'CM_ 100 "x"') for w in result.warnings)


def test_utf8_file_with_bom_and_lone_cr_line_ends(tmp_path: Path) -> None:
    text = HEAD + FOO + 'CM_ SG_ 100 Sig "Größe";\n'
    path = tmp_path / "mac.dbc"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r").encode("utf-8"))
    result = load_dbc(path, strict=True)
    assert result.warnings == ()
    assert result.database.get_message_by_name("Foo").get_signal_by_name("Sig").comment == "Größe"


def test_unreadable_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(DbcLoadError) as info:
        load_dbc(tmp_path / "missing.dbc")
    assert info.value.path.endswith("missing.dbc") and info.value.line is None


# ---------------------------------------------------------------------------------------------
# opendbc: every file loads; files cantools loads come out the same


@functools.cache
def cantools_alone(path: Path) -> Database | None:
    try:
        db = cantools.database.load_file(str(path), strict=False)
    except Exception:
        return None
    assert isinstance(db, Database)
    return db


def layout(db: Database) -> list[tuple[object, ...]]:
    return [
        (m.name, m.frame_id, m.is_extended_frame, m.length, [signal_layout(s) for s in m.signals])
        for m in db.messages
    ]


def signal_layout(s: Signal) -> tuple[object, ...]:
    return (s.name, s.start, s.length, s.byte_order, s.is_signed, s.scale, s.offset)


def test_opendbc_is_the_expected_sample() -> None:
    assert len(OPENDBC_FILES) == 58
    assert sum(cantools_alone(f) is None for f in OPENDBC_FILES) == 12


@functools.cache
def loaded(path: Path) -> LoadedDbc:
    return load_dbc(path)


@pytest.mark.parametrize("path", OPENDBC_FILES, ids=lambda p: p.name)
def test_opendbc_file_loads(path: Path) -> None:
    if cantools_alone(path) is not None:
        # A file cantools takes must cost no repair pass (the loader's speed depends on it).
        with mock.patch("can_dbc.loader._repair", side_effect=AssertionError("repair pass ran")):
            result = load_dbc(path)
    else:
        result = loaded(path)
    assert len(result.database.messages) >= 1
    lines = path.read_bytes().count(b"\n") + 1
    for w in result.warnings:
        assert w.path == str(path)
        assert w.line is None or 1 <= w.line <= lines
    reference = cantools_alone(path)
    if reference is not None:
        assert layout(result.database) == layout(reference)
        # The loader skips the repair pass for such files; it must agree that none is needed.
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        repaired, diags = repair_dbc_text(text, str(path))
        assert diags == []
        assert repaired == (text if text.endswith("\n") else text + "\n")


def test_opendbc_repairs_match_the_quirks() -> None:
    found = {
        path.name: " | ".join(w.message for w in loaded(path).warnings)
        for path in OPENDBC_FILES
        if cantools_alone(path) is None
    }
    assert "0x62CC033" in found["chrysler_cusw.dbc"] and "extended" in found["chrysler_cusw.dbc"]
    assert "0x40140639" in found["toyota_2017_ref_pt.dbc"]
    assert "'2017_5' to '_2017_5'" in found["mazda_2017.dbc"]
    assert "'0_COUNTER' to '_0_COUNTER'" in found["psa_aee2010_r3.dbc"]
    assert "CM_ 145" in found["hyundai_kia_generic.dbc"]
    assert "ACM_VehicleHoldRequired" in found["rivian_primary_actuator.dbc"]
    assert "UI_mapSpeedLimit" in found["tesla_can.dbc"]
    assert "missing ';'" in found["toyota_radar_dsu_tssp.dbc"]
    # cantools stops at line 139 (the BO_ where it wanted the ';'); the ';' is missing on 138.
    radar = loaded(OPENDBC / "toyota_radar_dsu_tssp.dbc")
    assert any(w.line == 138 and "missing ';'" in w.message for w in radar.warnings)


# ---------------------------------------------------------------------------------------------
# Garbled input: the loader returns or raises DbcLoadError, nothing else

SAMPLE = HEAD + (
    'BO_ 100 Foo: 8 ECU\n SG_ Sel M : 0|8@1+ (1,0) [0|255] "" GW\n'
    ' SG_ A m1 : 8|8@1- (0.5,-10) [-10|117.5] "km/h" GW,ECU\n\n'
    'BO_ 2147487744 Ext: 8 GW\n SG_ B : 7|16@0+ (1,0) [0|65535] "" ECU\n\n'
    'CM_ SG_ 100 A "speed";\nBA_DEF_ BO_ "GenMsgCycleTime" INT 0 1000;\n'
    'BA_DEF_DEF_ "GenMsgCycleTime" 0;\nBA_ "GenMsgCycleTime" BO_ 100 10;\n'
    'VAL_ 100 Sel 0 "zero" 1 "one" ;\nSIG_VALTYPE_ 2147487744 B : 0;\nSG_MUL_VAL_ 100 A Sel 1-1;\n'
)
PIECES = [
    "BO_ ", "SG_ ", "CM_ ", "BA_ ", "BA_DEF_ ", "VAL_ ", "NS_ ", "BS_:", "BU_:", "SIG_VALTYPE_ ",
    "SG_MUL_VAL_ ", "EV_ ", "VERSION ", "BO_TX_BU_ ", "SIG_GROUP_ ", "SGTYPE_ ", ";", ":", ",",
    "|", "@", "(", ")", "[", "]", "+", "-", '"', '"x"', "\n", " ", "\t", "\r\n", "0", "8",
    "100", "2147487744", "4294967295", ".5", "1e3", "0x1F", "Foo", "2017_5", "Größe", "M",
    "m1", "\xa0", "\x00", "// c\n",
]  # fmt: skip


def check_garbled(text: str) -> None:
    try:
        load_dbc_string(text, "fuzz.dbc", strict=True)
    except DbcLoadError as error:
        assert error.path == "fuzz.dbc"
    try:
        result = load_dbc_string(text, "fuzz.dbc")
    except DbcLoadError as error:
        assert error.path == "fuzz.dbc"
        return
    assert isinstance(result, LoadedDbc)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
    for w in result.warnings:
        assert w.line is None or 1 <= w.line <= lines


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=60).map("".join))
def test_random_dbc_like_text_loads_or_raises_load_error(text: str) -> None:
    check_garbled(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_garbled_dbc_loads_or_raises_load_error(data: st.DataObject) -> None:
    text = SAMPLE
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:at] + text[at + data.draw(st.integers(1, 12)) :]
        else:
            text = text[:at] + data.draw(st.sampled_from(PIECES)) + text[at:]
    check_garbled(text)
    try:
        repaired, _ = repair_dbc_text(text, "fuzz.dbc")
    except DbcLoadError:
        return
    # Repairs keep every line where it was (a final newline may be added).
    original = text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")
    assert repaired.count("\n") - original.count("\n") in (
        (0,) if original.endswith("\n") else (0, 1)
    )


def test_an_unclosed_quote_in_the_bit_timing_keeps_the_line_numbers() -> None:
    # Found by the garbling test: the quote makes BS_'s timing run to the next quote, lines below.
    text = SAMPLE[:48] + '"' + SAMPLE[48:]
    check_garbled(text)
    repaired, warnings = repair_dbc_text(text, "fuzz.dbc")
    assert repaired.count("\n") == text.count("\n")
    assert any("bit timing" in w.message and w.line == 9 for w in warnings)
