"""``python -m ibsim`` as a user runs it: files from disk, a running clock, faults over the control port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from ib_async import IB, LimitOrder, MarketOrder, Stock, StopOrder

from tests.compat.compat_support import Control, free_port, wait_for_port
from tests.integration.conftest import make_bars

REPO = Path(__file__).resolve().parents[2]


def _serve(tmp_path: Path, *extra: str) -> Iterator[tuple[int, Callable[[str], str]]]:
    frame = make_bars("AAPL", 7, 185.0)
    csv = tmp_path / "AAPL_1min.csv"
    pd.DataFrame({"datetime": [t.isoformat() for t in frame.index], **{c: frame[c] for c in frame.columns}}).to_csv(
        csv, index=False)
    port, controlPort = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibsim", "--port", str(port), "--data", str(csv), "--start", "2024-01-04 10:00",
         "--control-port", str(controlPort), "--log-level", "WARNING", *extra],
        cwd=REPO, stdin=subprocess.DEVNULL)
    control = None
    try:
        wait_for_port(controlPort, proc)
        control = Control(controlPort)
        yield port, control
    finally:
        if control is not None:
            control.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Callable[[str], str]]]:
    """``python -m ibsim`` at 30× real time."""
    yield from _serve(tmp_path, "--speed", "30")


@pytest.fixture
def served_gbp(tmp_path: Path) -> Iterator[tuple[int, Callable[[str], str]]]:
    """``python -m ibsim`` with a stepped clock, a GBP account and server version 176."""
    yield from _serve(tmp_path, "--speed", "0", "--base-currency", "GBP", "--usd-to-base", "0.8",
                      "--server-version", "176")


def test_cli_serves_files_on_a_running_clock_and_takes_fault_commands(
        served: tuple[int, Callable[[str], str]], wait_until: Callable[..., None]) -> None:
    port, command = served
    ib = IB()
    errors: list[int] = []
    ib.errorEvent += lambda reqId, code, *_: errors.append(code)
    ib.connect("127.0.0.1", port, clientId=1, timeout=5)
    try:
        assert ib.managedAccounts() == ["DU1234567"]
        first = ib.reqCurrentTime()
        ib.sleep(0.3)
        assert (ib.reqCurrentTime() - first).total_seconds() >= 5  # 30× real time
        bars = ib.reqHistoricalData(Stock("AAPL", "SMART", "USD"), "", "1 D", "1 min", "TRADES", True)
        assert bars[0].date.strftime("%H:%M") == "09:30"
        assert command("pacing-hist 1 AAPL") == "ok"
        assert not ib.reqHistoricalData(Stock("AAPL", "SMART", "USD"), "", "600 S", "1 min", "TRADES", True)
        assert errors[-1] == 162
        assert command("reject AAPL no shortable shares").startswith("ok")
        rejected = ib.placeOrder(Stock("AAPL", "SMART", "USD"), MarketOrder("SELL", 10))
        wait_until(ib, rejected.isDone)
        assert rejected.orderStatus.status == "Inactive"
        assert 201 in errors
        filled = ib.placeOrder(Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 10))
        wait_until(ib, filled.isDone)
        assert "position AAPL 10" in command("status")
        assert command("reset 0.2").startswith("ok")
        wait_until(ib, lambda: 1102 in errors)
        assert errors.index(1100) < errors.index(1102)
        assert ib.isConnected()
        assert command("bogus").startswith("error")
    finally:
        ib.disconnect()


def test_cli_models_a_real_gateway_through_control_commands(
        served_gbp: tuple[int, Callable[[str], str]], wait_until: Callable[..., None]) -> None:
    port, command = served_gbp
    ib = IB()
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda reqId, code, text, *_: errors.append((reqId, code, text))
    ib.connect("127.0.0.1", port, clientId=1, timeout=5)
    try:
        assert ib.client.serverVersion() == 176
        values = {(v.tag, v.currency): v.value for v in ib.accountValues()}
        assert values[("NetLiquidation", "GBP")] == "1000000.00"
        (aapl,) = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))
        assert command("no-permissions AAPL").startswith("ok")
        assert not ib.reqHistoricalData(aapl, "", "600 S", "1 min", "TRADES", True)
        assert errors[-1][1:] == (162, "Historical Market Data Service error message:No market data permissions "
                                       "for ISLAND STK")
        assert command("grant-permissions") == "ok"
        assert command("advance 20").startswith("2024-01-04T10:00:20")
        assert ib.reqHistoricalData(aapl, "", "600 S", "1 min", "TRADES", True)

        resting = ib.placeOrder(aapl, LimitOrder("BUY", 100, 150.0))
        wait_until(ib, lambda: resting.orderStatus.status == "Submitted")
        assert f"order 1/{resting.order.orderId} BUY 100 AAPL LMT Submitted DAY" in command("status")
        assert command(f"cancel-order {resting.order.orderId}").endswith("Cancelled")
        wait_until(ib, lambda: resting.orderStatus.status == "Cancelled")

        racing = ib.placeOrder(aapl, LimitOrder("SELL", 100, 250.0))
        wait_until(ib, lambda: racing.orderStatus.status == "Submitted")
        assert command("race-cancel 161 AAPL").startswith("ok")
        ib.cancelOrder(racing.order)
        wait_until(ib, lambda: racing.orderStatus.status == "Filled")
        assert (racing.order.orderId, 161) in [(r, c) for r, c, _ in errors]

        assert command("delay-commission 30") == "ok"
        cover = ib.placeOrder(aapl, MarketOrder("BUY", 100))
        wait_until(ib, lambda: cover.orderStatus.status == "Submitted")
        command("advance 10")  # the stepped clock reaches the next print
        wait_until(ib, lambda: len(cover.fills) == 1)
        ib.sleep(0.1)
        assert cover.fills[0].commissionReport.execId == ""
        command("advance 31")
        wait_until(ib, lambda: cover.fills[0].commissionReport.commission == 1.0)
        assert command("drop-commission 1 AAPL") == "ok"

        stop = ib.placeOrder(aapl, StopOrder("SELL", 100, 100.0))
        away = ib.placeOrder(aapl, LimitOrder("BUY", 50, 150.0))
        wait_until(ib, lambda: away.orderStatus.status == "Submitted" and stop.orderStatus.status == "Submitted")
        ib.disconnect()
        assert command(f"fill-order {away.order.orderId} 151.5 1").startswith("ok 1/")
        command("advance 21600")  # past the close: the DAY stop expires
        ib.connect("127.0.0.1", port, clientId=1, timeout=5)
        assert [(f.execution.orderId, f.execution.price) for f in ib.fills()
                if f.execution.orderId == away.order.orderId] == [(away.order.orderId, 151.5)]
        assert not ib.openTrades()
        done = command("completed")
        assert "Cancelled by another client" in done
        assert "Cancelled by System" in done
        assert done.count(" Filled (Filled Size") == 3
    finally:
        ib.disconnect()
