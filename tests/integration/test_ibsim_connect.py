"""The real ib_async client connects to ibsim, syncs at once, and reads time, contracts and the account."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest
from ib_async import IB, MarketOrder, Stock

from ibsim import IBSim, SimConfig
from tests.integration.conftest import SIM_START


def test_connect_completes_startup_sync_at_once(sim: IBSim) -> None:
    ib = IB()
    errors: list[int] = []
    ib.errorEvent += lambda reqId, code, *_: errors.append(code)
    started = time.monotonic()
    ib.connect(sim.host, sim.port, clientId=3, timeout=4)
    try:
        assert time.monotonic() - started < 1.0
        assert ib.client.serverVersion() == 178  # ib_async 2.1's maximum, as a real gateway negotiates
        assert ib.managedAccounts() == [sim.account]
        assert {2104, 2106, 2158} <= set(errors)
        names = [r.name for r in sim.requests()]
        for name in ("startApi", "reqPositions", "reqOpenOrders", "reqCompletedOrders", "reqAccountUpdates",
                     "reqAccountUpdatesMulti", "reqExecutions"):
            assert name in names
    finally:
        ib.disconnect()


def test_current_time_is_the_simulated_time(ib: IB, sim: IBSim) -> None:
    assert ib.reqCurrentTime() == SIM_START
    sim.advance(minutes=5)
    assert (ib.reqCurrentTime() - SIM_START).total_seconds() == 300


def _handshake(port: int, versions: bytes) -> list[list[bytes]]:
    """Send the handshake; return every frame received until the server closes or goes quiet."""
    frames: list[list[bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"API\0" + struct.pack(">I", len(versions)) + versions)
        buffer = b""
        try:
            while chunk := s.recv(4096):
                buffer += chunk
                if not versions.startswith(b"v180") and not versions.startswith(b"v100..150"):
                    break
        except TimeoutError:
            pass
    while len(buffer) >= 4:
        size = struct.unpack(">I", buffer[:4])[0]
        frames.append(buffer[4:4 + size].split(b"\0")[:-1])
        buffer = buffer[4 + size:]
    return frames


def test_server_version_never_exceeds_the_clients_maximum(sim: IBSim) -> None:
    assert _handshake(sim.port, b"v157..300")[0][0] == b"178"
    assert _handshake(sim.port, b"v157..176")[0][0] == b"176"
    assert _handshake(sim.port, b"v100..157")[0][0] == b"157"


def test_client_outside_the_served_versions_gets_a_clear_refusal_then_eof(sim: IBSim) -> None:
    reply, refusal = _handshake(sim.port, b"v180..200")
    assert reply[0] == b"178"
    assert refusal[:4] == [b"4", b"2", b"-1", b"503"]
    assert b"157..178" in refusal[4]
    reply, refusal = _handshake(sim.port, b"v100..150")
    assert reply[0] == b"150"
    assert refusal == [b"4", b"2", b"-1", b"506", refusal[4]]  # 5 fields: the layout a v150 client reads
    assert refusal[4].startswith(b"Unsupported version")


@pytest.mark.parametrize("sim_config", [SimConfig(serverVersion=v) for v in (157, 166, 176)],
                         ids=["v157", "v166", "v176"])
def test_ib_async_trades_at_an_older_server_version(sim: IBSim, sim_config: SimConfig,
                                                    wait_until: Callable[..., None]) -> None:
    ib = IB()
    errors: list[int] = []
    ib.errorEvent += lambda reqId, code, *_: errors.append(code)
    ib.connect(sim.host, sim.port, clientId=4, timeout=4)
    try:
        assert ib.client.serverVersion() == sim_config.serverVersion
        assert {2104, 2106, 2158} <= set(errors)  # errors decode at every version
        (contract,) = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))
        bars = ib.reqHistoricalData(contract, "", "1800 S", "1 min", "TRADES", useRTH=True)
        assert len(bars) == 31
        trade = ib.placeOrder(contract, MarketOrder("BUY", 10))
        wait_until(ib, lambda: trade.orderStatus.status == "Filled" and len(trade.fills) == 1)
        assert trade.fills[0].commissionReport.commission == 1.0
        wait_until(ib, lambda: [p.position for p in ib.positions()] == [10])
    finally:
        ib.disconnect()


def test_qualify_contracts_fills_in_conid_and_primary_exchange(ib: IB) -> None:
    (contract,) = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))
    assert contract.conId == 265598
    assert contract.primaryExchange == "NASDAQ"
    details = ib.reqContractDetails(Stock("MSFT", "SMART", "USD"))
    assert len(details) == 1
    assert details[0].contract.symbol == "MSFT"
    assert details[0].minTick == 0.01


def test_unknown_symbol_gets_error_200(ib: IB) -> None:
    errors: list[int] = []
    ib.errorEvent += lambda reqId, code, *_: errors.append(code)
    assert ib.qualifyContracts(Stock("NOPE", "SMART", "USD")) == [None]
    assert errors == [200]
    assert len(ib.reqHistoricalData(Stock("NOPE", "SMART", "USD"), "", "1 D", "1 min", "TRADES", True)) == 0
    assert errors == [200, 200]


def test_duplicate_client_id_gets_326_and_the_socket_closed(ib: IB, sim: IBSim) -> None:
    second = IB()
    errors: list[int] = []
    second.errorEvent += lambda reqId, code, *_: errors.append(code)
    with pytest.raises((TimeoutError, ConnectionError)):
        second.connect(sim.host, sim.port, clientId=1, timeout=1)
    assert 326 in errors
    assert not second.isConnected()
    assert ib.isConnected()
    assert sim.connectedClientIds() == [1]


def test_client_id_held_by_a_stale_session_is_refused_until_released(sim: IBSim) -> None:
    sim.holdClientId(9)
    ib = IB()
    with pytest.raises((TimeoutError, ConnectionError)):
        ib.connect(sim.host, sim.port, clientId=9, timeout=1)
    sim.releaseClientId(9)
    ib.connect(sim.host, sim.port, clientId=9, timeout=2)
    assert ib.isConnected()
    ib.disconnect()


def test_account_values_and_summary_describe_the_paper_account(ib: IB, sim: IBSim) -> None:
    values = {v.tag: v.value for v in ib.accountValues() if v.currency in {"USD", ""}}
    assert values["AccountCode"] == sim.account
    assert float(values["NetLiquidation"]) == pytest.approx(1_000_000.0)
    summary = {v.tag: v.value for v in ib.accountSummary()}
    assert float(summary["TotalCashValue"]) == pytest.approx(1_000_000.0)
    assert summary["AccountType"] == "INDIVIDUAL"
    assert "BuyingPower" in summary


def test_every_request_is_recorded_for_inspection(ib: IB, sim: IBSim,
                                                  wait_until: Callable[..., None]) -> None:
    ib.reqCurrentTime()
    records = sim.requests("reqCurrentTime")
    assert len(records) == 1
    assert records[0].clientId == 1
    assert records[0].time == SIM_START
