"""ibsim speaks every server version from 157 to 178: each version's fields, IB's formats, and the refusals.

Frames are checked three ways: field counts and values per version gate, byte comparison with a real TWS v176
recording where it has the message, and decoding by the real ib_async decoder at that version.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ibsim import messages as msg
from ibsim.codec import (
    MAX_SERVER_VERSION,
    MIN_SERVER_VERSION,
    ClientHello,
    decimalText,
    decodePayload,
    encodeFields,
    negotiateVersion,
)

RECORDING = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "ib" / "recording_tws_v176.json"
VERSIONS = (157, 158, 160, 162, 163, 164, 166, 170, 176, 177, 178)

AAPL = msg.StockContract(265598, "AAPL")
STOP = msg.OrderFields(7, 1, 1000001, "SELL", 100.0, "STP", None, 184.5, "DAY", "", 0, "DU1", "ref-stop", 6, False)
FILL = msg.ExecFields(7, 1, 1000001, "00000001.65968a00.01.01", "20240104 10:00:00 America/New_York", "DU1", "SLD",
                      100.0, 184.5, 100.0, 184.5, "ref-stop")
CANCELLED = msg.Completion("Cancelled", 0.0, "20240104 16:00:00 America/New_York", "Cancelled by System")
CANCELLED_AT = datetime(2024, 1, 4, 21, 0, tzinfo=UTC)


def wire(version: int) -> msg.Wire:
    return msg.Wire(version)


def round_trip(fields: list[Any]) -> list[str]:
    """Encode as the server writes and split as a client reads."""
    return decodePayload(encodeFields(fields)[4:])


@pytest.fixture(scope="module")
def recording() -> dict[str, list[list[str]]]:
    if not RECORDING.exists():
        pytest.skip(f"real TWS recording not found at {RECORDING} (shared docs absent)")
    raw = json.loads(RECORDING.read_text())
    return {key: [decodePayload(base64.b64decode(f)[4:]) for f in frames] for key, frames in raw.items()}


# -- negotiation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("low", "high", "serverMax", "announced"), [
    (157, 178, MAX_SERVER_VERSION, 178),  # ib_async 2.1
    (157, 176, MAX_SERVER_VERSION, 176),  # ib_insync 0.9.86
    (100, 157, MAX_SERVER_VERSION, 157),  # IB's ibapi 9.81.1.post1 from PyPI
    (100, 300, MAX_SERVER_VERSION, 178),  # a newer client: never above what ibsim implements
    (157, 178, 166, 166),  # SimConfig(serverVersion=166) makes ib_async speak 166
])
def test_announced_version_is_the_highest_both_sides_speak(low: int, high: int, serverMax: int,
                                                           announced: int) -> None:
    deal = negotiateVersion(ClientHello(low, high), serverMax)
    assert deal.served
    assert deal.version == announced


def test_client_older_than_every_served_version_is_refused_with_506_at_its_own_version() -> None:
    deal = negotiateVersion(ClientHello(100, 150))
    assert not deal.served
    assert (deal.version, deal.code) == (150, 506)
    assert "157..178" in deal.refusal
    assert "v100..150" in deal.refusal


def test_client_newer_than_every_served_version_is_told_the_gateway_is_out_of_date() -> None:
    deal = negotiateVersion(ClientHello(180, 200))
    assert not deal.served
    assert (deal.version, deal.code) == (MAX_SERVER_VERSION, 503)
    assert deal.refusal.startswith("The TWS is out of date and must be upgraded.")


def test_served_range_is_157_to_178() -> None:
    assert (MIN_SERVER_VERSION, MAX_SERVER_VERSION) == (157, 178)


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_error_has_advanced_order_reject_json_only_from_166(version: int) -> None:
    fields = wire(version).error(-1, 2104, "Market data farm connection is OK:usfarm")
    assert fields[:5] == [4, 2, -1, 2104, "Market data farm connection is OK:usfarm"]
    assert len(fields) == (6 if version >= 166 else 5)  # IB's 9.81 client drops a 6-field error at 157


def test_error_at_176_is_byte_identical_to_the_recording(recording: dict[str, list[list[str]]]) -> None:
    for frame in recording["71_2"][2:]:
        assert round_trip(wire(176).error(int(frame[2]), int(frame[3]), frame[4])) == frame
    validation = recording["3_220"][0]
    assert round_trip(wire(176).error(220, 321, validation[4])) == validation


# -- orders -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("version", "count"), [
    (157, 128), (158, 129), (160, 130), (162, 131), (166, 131), (170, 136), (176, 136), (177, 135), (178, 135)])
def test_open_order_fields_per_version(version: int, count: int) -> None:
    fields = wire(version).openOrder(STOP, AAPL, "PreSubmitted")
    assert len(fields) == count
    faProfile = 1 if version < 177 else 0
    assert fields[62 - 1 + faProfile] == "None"  # deltaNeutralOrderType, 8 delta-neutral fields follow


def test_open_order_at_176_matches_the_recorded_gateway_frame(recording: dict[str, list[list[str]]]) -> None:
    recorded = recording["3_219"][0]
    order = msg.OrderFields(219, 0, 665616366, "BUY", 100.0, "MKT", None, None, "DAY", "", 0, "DU5509097", "", 0,
                            False)
    ours = round_trip(wire(176).openOrder(order, AAPL, "PreSubmitted"))
    contract = {2, 3, 4, 9, 11, 12}  # the recording is EUR.USD on IDEALPRO
    whatIf = {93, 108}  # a what-if order with a warning text
    differing = {i for i, (a, b) in enumerate(zip(ours, recorded, strict=True)) if a != b}
    assert differing <= contract | whatIf
    assert ours[14:18] == ["100", "MKT", "0.0", "0.0"]  # Decimal quantity, 0.0 prices of a market order


@pytest.mark.parametrize(("version", "count"), [(157, 96), (166, 96), (170, 101), (176, 101), (178, 100)])
def test_completed_order_fields_per_version(version: int, count: int) -> None:
    fields = wire(version).completedOrder(STOP, AAPL, CANCELLED)
    assert len(fields) == count
    assert fields[0] == 101
    tail = -5 if version >= 170 else None
    assert fields[:tail][-3:] == ["", CANCELLED.time, CANCELLED.text]  # parentPermId, completedTime, status text


@pytest.mark.parametrize("version", VERSIONS)
def test_sizes_are_doubles_before_163_and_decimal_text_from_163(version: int) -> None:
    status = round_trip(wire(version).orderStatus(7, "Filled", 100.0, 0.0, 184.5, 1000001, 6, 184.5, 1))
    position = round_trip(wire(version).position("DU1", AAPL, 100.0, 184.51))
    if version >= 163:
        assert status[3:5] == ["100", "0"]
        assert position[14] == "100"
    else:
        assert status[3:5] == ["100.0", "0.0"]
        assert position[14] == "100.0"
    assert len(position) == 16
    assert status[-1] == "0"  # mktCapPrice


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_details_has_31_fields_and_pending_price_revision_at_178(version: int) -> None:
    fields = round_trip(wire(version).execDetails(-1, FILL, AAPL))
    assert len(fields) == (32 if version >= 178 else 31)  # ib_insync (max 176) unpacks 31 strictly
    if version >= 178:
        assert fields[-1] == "0"


# -- contract details and bars ----------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_contract_data_layout_per_version(version: int) -> None:
    fields = wire(version).contractData(3, AAPL)
    if version < 164:
        assert fields[:3] == [10, 8, 3]  # version field; mdSizeMultiplier after minTick
        assert fields[15] == 1
    else:
        assert fields[:2] == [10, 3]
        assert fields[-3:] == ["1", "1", "100"]  # minSize, sizeIncrement, suggestedSizeIncrement
    assert (fields[-1] == "0.0001") == (version == 163)  # sizeMinTick at 163 only
    assert len(fields) == (39 if version < 163 else 40)


@pytest.mark.parametrize(("version", "volume", "average"), [
    (157, "12", "185.1234"), (163, "12", "185.1234"), (174, "12", "185.1234"), (175, "1234", "185.1234"),
    (178, "1234", "185.1234")])
def test_bar_volume_in_lots_before_175_and_integral_before_163(version: int, volume: str, average: str) -> None:
    bars = [msg.Bar("20240104 09:30:00 America/New_York", 185.0, 185.5, 184.9, 185.2, 1234.0, 185.1234, 12)]
    fields = round_trip(wire(version).historicalData(4, "20240104 09:30:00", "20240104 10:00:00", bars))
    assert fields[:5] == ["17", "4", "20240104 09:30:00", "20240104 10:00:00", "1"]
    assert fields[10:13] == [volume, average, "12"]


def test_decimal_text_drops_a_zero_fraction_only() -> None:
    assert [decimalText(v) for v in (100.0, 0.5, 1234.0, 12.25)] == ["100", "0.5", "1234", "12.25"]


# -- the real ib_async decoder at every version ------------------------------------------------------
class _Recorder:
    """A stand-in for ib_async's Wrapper that records every call."""

    defaultTimezone = ZoneInfo("UTC")  # noqa: N815  (the attribute name the decoder reads)

    class ib:  # noqa: N801  (the attribute name the decoder reads)
        TimezoneTWS = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def decode_with_ib_async(version: int, fields: list[Any]) -> tuple[str, tuple[Any, ...]]:
    from ib_async.decoder import Decoder  # noqa: PLC0415  (only this test needs the client library)

    recorder = _Recorder()
    Decoder(recorder, version).interpret(round_trip(fields))  # type: ignore[arg-type]
    assert recorder.calls, f"ib_async at {version} dropped {fields[:3]}"
    return recorder.calls[-1]


@pytest.mark.parametrize("version", [157, 163, 164, 166, 170, 176, 177, 178])
def test_ib_async_decodes_every_versioned_message(version: int) -> None:
    w = wire(version)
    assert decode_with_ib_async(version, w.error(7, 202, "Order Canceled - reason:"))[1][:3] == (
        7, 202, "Order Canceled - reason:")
    _, (_, _, order, state) = decode_with_ib_async(version, w.openOrder(STOP, AAPL, "PreSubmitted"))
    assert (order.orderRef, order.parentId, order.auxPrice, order.totalQuantity, state.status) == (
        "ref-stop", 6, 184.5, 100.0, "PreSubmitted")
    _, (_, order, state) = decode_with_ib_async(version, w.completedOrder(STOP, AAPL, CANCELLED))
    assert (order.permId, order.orderRef, state.status, state.completedStatus) == (
        1000001, "ref-stop", "Cancelled", "Cancelled by System")
    _, (_, _, execution) = decode_with_ib_async(version, w.execDetails(-1, FILL, AAPL))
    assert (execution.execId, execution.shares, execution.permId) == (FILL.execId, 100.0, 1000001)
    _, (_, details) = decode_with_ib_async(version, w.contractData(3, AAPL))
    assert (details.contract.conId, details.stockType) == (265598, "COMMON")
    bars = [msg.Bar("20240104 09:30:00 America/New_York", 185.0, 185.5, 184.9, 185.2, 1234.0, 185.1, 12)]
    recorder = _Recorder()
    from ib_async.decoder import Decoder  # noqa: PLC0415

    Decoder(recorder, version).interpret(round_trip(w.historicalData(4, "a", "b", bars)))  # type: ignore[arg-type]
    (bar,) = [args[1] for name, args in recorder.calls if name == "historicalData"]
    assert bar.volume == (1234.0 if version >= 175 else 12.0)


@pytest.mark.parametrize("version", [156, 179])
def test_simulator_refuses_to_be_configured_outside_the_versions_it_implements(version: int) -> None:
    from ibsim.clock import SimClock  # noqa: PLC0415
    from ibsim.market import Market  # noqa: PLC0415
    from ibsim.server import Gateway, SimConfig  # noqa: PLC0415

    with pytest.raises(ValueError, match=r"157\.\.178"):
        Gateway(Market({}), SimClock(CANCELLED_AT), SimConfig(serverVersion=version))
