"""Injected IB faults — server resets, restarts, dropped sockets — as the real ib_async client lives them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from ib_async import IB, LimitOrder, MarketOrder, Stock

from ibsim import IBSim

Wait = Callable[..., None]
AAPL = Stock("AAPL", "SMART", "USD")


def _wait_disconnected(ib: IB, timeout: float = 5.0) -> None:
    """Run the client's loop until the server's close reaches it (ib_async raises out of a blocking wait)."""
    waited = 0.0
    while ib.isConnected():
        assert waited < timeout, "the client never saw the disconnect"
        with contextlib.suppress(ConnectionError):
            ib.sleep(0.02)
        waited += 0.02


def _codes(ib: IB) -> list[int]:
    codes: list[int] = []
    ib.errorEvent += lambda reqId, code, *_: codes.append(code)
    return codes


def test_nightly_reset_sends_1100_then_1102_with_the_socket_kept_open(ib: IB, sim: IBSim,
                                                                     wait_until: Wait) -> None:
    codes = _codes(ib)
    summaries_before = len(sim.requests("reqAccountSummary"))
    sim.loseConnectivity()
    wait_until(ib, lambda: 1100 in codes)
    assert {2103, 2105, 2157} <= set(codes)
    trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted")
    sim.advance(seconds=30)
    ib.sleep(0.05)
    assert trade.orderStatus.status == "Submitted"  # nothing fills while IB's servers are away
    assert ib.isConnected()
    sim.restoreConnectivity()
    wait_until(ib, lambda: 1102 in codes)
    assert codes.index(1102) > codes.index(1100)
    assert ib.isConnected()
    wait_until(ib, trade.isDone)
    assert trade.orderStatus.status == "Filled"
    # ib_async re-requests the account summary on 1102
    wait_until(ib, lambda: len(sim.requests("reqAccountSummary")) > summaries_before)


def test_nightly_reset_over_wall_time_ends_with_1102(ib: IB, sim: IBSim, wait_until: Wait) -> None:
    codes = _codes(ib)
    done = sim.nightlyReset(downSeconds=0.2, wait=False)
    wait_until(ib, lambda: 1100 in codes)
    wait_until(ib, lambda: 1102 in codes and done.done())
    assert ib.isConnected()


def test_history_requested_during_a_reset_is_answered_after_1102(ib: IB, sim: IBSim,
                                                                 wait_until: Wait) -> None:
    sim.loseConnectivity()
    task = asyncio.ensure_future(ib.reqHistoricalDataAsync(AAPL, "", "1 D", "1 min", "TRADES", True))
    ib.sleep(0.2)
    assert not task.done()
    sim.restoreConnectivity()
    wait_until(ib, task.done)
    assert len(task.result()) == 31


def test_dropped_sockets_disconnect_the_client_and_it_can_reconnect(ib: IB, sim: IBSim,
                                                                   wait_until: Wait) -> None:
    disconnects: list[bool] = []
    ib.disconnectedEvent += lambda: disconnects.append(True)
    assert sim.dropConnections() == 1
    _wait_disconnected(ib)
    assert disconnects
    ib.connect(sim.host, sim.port, clientId=1, timeout=4)
    assert ib.isConnected()


def test_restart_refuses_connections_then_reconnect_restores_positions_and_executions(
        ib: IB, sim: IBSim, wait_until: Wait) -> None:
    buy = ib.placeOrder(AAPL, MarketOrder("BUY", 100))
    resting = ib.placeOrder(AAPL, LimitOrder("BUY", 10, 1.00))
    wait_until(ib, lambda: buy.isDone() and resting.orderStatus.status == "Submitted")
    restarted = sim.restart(downSeconds=1.0, wait=False)
    _wait_disconnected(ib)
    with pytest.raises(ConnectionRefusedError):
        ib.connect(sim.host, sim.port, clientId=1, timeout=2)
    restarted.result(5)
    ib.connect(sim.host, sim.port, clientId=1, timeout=4)
    assert [(p.contract.symbol, p.position) for p in ib.positions()] == [("AAPL", 100)]
    assert [f.execution.orderId for f in ib.fills()] == [buy.order.orderId]
    assert ib.fills()[0].commissionReport.commission == 1.0
    assert [t.order.orderId for t in ib.openTrades()] == [resting.order.orderId]
    later = ib.placeOrder(AAPL, MarketOrder("SELL", 100))
    assert later.order.orderId > resting.order.orderId  # order ids continue after the restart
    wait_until(ib, later.isDone)
    wait_until(ib, lambda: not ib.positions())
