"""ibsim's wire codec against a real TWS v176 recording and the framing rules."""

from __future__ import annotations

import base64
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ibsim import messages as msg
from ibsim.codec import (
    ClientHello,
    CodecError,
    decodePayload,
    encodeFields,
    formatField,
    parseHello,
    splitFrames,
)

RECORDING = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "ib" / "recording_tws_v176.json"


@pytest.fixture(scope="module")
def recording() -> dict[str, list[bytes]]:
    if not RECORDING.exists():
        pytest.skip(f"real TWS recording not found at {RECORDING} (shared docs absent)")
    raw = json.loads(RECORDING.read_text())
    return {key: [base64.b64decode(frame) for frame in frames] for key, frames in raw.items()}


def test_every_recorded_frame_decodes_and_reencodes_byte_exact(recording: dict[str, list[bytes]]) -> None:
    count = 0
    for frames in recording.values():
        for frame in frames:
            payloads, rest = splitFrames(frame)
            assert rest == b""
            assert len(payloads) == 1
            fields = decodePayload(payloads[0])
            assert encodeFields(fields) == frame
            count += 1
    assert count > 400


def test_recorded_frames_concatenated_split_back_into_the_same_messages(
        recording: dict[str, list[bytes]]) -> None:
    frames = [f for key in ("71_2", "6_2", "62_1") for f in recording[key]]
    stream = b"".join(frames)
    payloads, rest = splitFrames(stream[:-3])
    assert len(payloads) == len(frames) - 1
    assert rest == frames[-1][:-3]


def test_recorded_handshake_reply_has_exactly_two_fields(recording: dict[str, list[bytes]]) -> None:
    (frame,) = recording["API_"]
    assert decodePayload(splitFrames(frame)[0][0]) == ["176", "20231021 13:28:15 EST"]


def test_encoder_reproduces_recorded_startup_messages(recording: dict[str, list[bytes]]) -> None:
    start = recording["71_2"]
    assert encodeFields(msg.managedAccounts(["DU5509097"])) == start[0]
    assert encodeFields(msg.nextValidId(217)) == start[1]
    # at 176 errors carry the (empty) advancedOrderRejectJson field, as TWS >= 166 sends them
    wire = msg.Wire(176)
    assert encodeFields(wire.error(-1, 2104, "Market data farm connection is OK:usfarm.nj")) == start[2]
    assert encodeFields(wire.error(-1, 2158, "Sec-def data farm connection is OK:secdefil")) == start[-1]
    assert encodeFields(msg.positionEnd()) == recording["61_1"][0]
    assert encodeFields(msg.openOrderEnd()) == recording["5_1"][0]
    assert encodeFields(msg.completedOrdersEnd()) == recording["99_0"][0]
    assert encodeFields(msg.execDetailsEnd(218)) == recording["7_3"][0]


def test_encoder_reproduces_recorded_account_messages(recording: dict[str, list[bytes]]) -> None:
    account = recording["6_2"]
    assert encodeFields(msg.accountValue("AccountCode", "DU5509097", "", "DU5509097")) == account[0]
    assert encodeFields(msg.accountUpdateTime("13:26")) in account
    assert encodeFields(msg.accountDownloadEnd("DU5509097")) == account[-1]
    multi = recording["76_1"]
    assert encodeFields(msg.accountUpdateMulti(217, "DU5509097", "AccountCode", "DU5509097", "")) == multi[0]
    assert encodeFields(msg.accountUpdateMultiEnd(217)) == multi[-1]
    summary = recording["62_1"]
    assert encodeFields(msg.accountSummary(221, "DU5509097", "AccountType", "PARTNERSHIP", "")) in summary
    assert encodeFields(msg.accountSummaryEnd(221)) == summary[-1]


def test_recorded_open_order_has_the_documented_v176_layout(recording: dict[str, list[bytes]]) -> None:
    fields = decodePayload(splitFrames(recording["3_219"][0])[0][0])
    assert fields[0] == "5"
    assert len(fields) == 136  # 120 at v157 + 8 delta-neutral + duration, postToAts, autoCancelParent + 5 peg
    assert fields[62] == "None"  # deltaNeutralOrderType, so 8 delta-neutral fields follow
    assert "PreSubmitted" in fields


def test_commission_report_has_8_fields() -> None:
    assert len(msg.commissionReport("0001.01", 1.0, None)) == 8


@pytest.mark.parametrize(("value", "text"), [
    (None, ""), (True, "1"), (False, "0"), (10, "10"), (2**31 - 1, ""), (1.5, "1.5"), (100.0, "100.0"),
    (1.7976931348623157e308, ""), (float("inf"), "Infinite"), ("AAPL", "AAPL"),
])
def test_fields_are_formatted_like_tws(value: object, text: str) -> None:
    assert formatField(value) == text  # type: ignore[arg-type]


@pytest.mark.parametrize(("payload", "hello"), [
    (b"v157..178", ClientHello(157, 178)),
    (b"v157..176 +PACEAPI", ClientHello(157, 176, "+PACEAPI")),
    (b"v100", ClientHello(100, 100)),
])
def test_handshake_version_strings_parse(payload: bytes, hello: ClientHello) -> None:
    assert parseHello(payload) == hello


def test_bad_handshake_is_rejected() -> None:
    with pytest.raises(CodecError):
        parseHello(b"hello")


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(CodecError):
        splitFrames(struct.pack(">I", 0x1000000) + b"x")


def test_gbp_account_values_use_the_recorded_gbp_accounts_tags_and_currencies(
        recording: dict[str, list[bytes]]) -> None:
    from ibsim.clock import SimClock  # noqa: PLC0415
    from ibsim.market import Market  # noqa: PLC0415
    from ibsim.server import Gateway, SimConfig  # noqa: PLC0415

    recorded = set()
    for frame in recording["6_2"]:
        fields = decodePayload(splitFrames(frame)[0][0])
        if fields[0] == "6":
            recorded.add((fields[2], fields[4]))
    gateway = Gateway(Market({}), SimClock(datetime(2024, 1, 4, 15, 0, tzinfo=UTC)),
                      SimConfig(baseCurrency="GBP", usdToBase=0.79))
    ours = {(tag, currency) for tag, _, currency in gateway.accountRows()}
    assert ours - recorded == {("SettledCash", "GBP"), ("Leverage", "")}  # tags the recorded account lacked
    assert ("NetLiquidation", "GBP") in ours
    assert not {t for t in ours if t[0] == "NetLiquidation" and t[1] != "GBP"}
