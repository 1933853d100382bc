"""``python -m ibsim`` as a user runs it: files from disk, a running clock, faults over the control port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from ib_async import IB, MarketOrder, Stock

from tests.integration.conftest import make_bars

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ibsim exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"ibsim did not listen on {port}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, Callable[[str], str]]]:
    frame = make_bars("AAPL", 7, 185.0)
    csv = tmp_path / "AAPL_1min.csv"
    pd.DataFrame({"datetime": [t.isoformat() for t in frame.index], **{c: frame[c] for c in frame.columns}}).to_csv(
        csv, index=False)
    port, control = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibsim", "--port", str(port), "--data", str(csv), "--start", "2024-01-04 10:00",
         "--speed", "30", "--control-port", str(control), "--log-level", "WARNING"],
        cwd=REPO, stdin=subprocess.DEVNULL)
    _wait_for_port(control, proc)
    link = socket.create_connection(("127.0.0.1", control), timeout=5)
    replies = link.makefile("rb")

    def command(line: str) -> str:
        link.sendall(line.encode() + b"\n")
        lines = []
        while (reply := replies.readline().decode().rstrip("\n")) != "":
            lines.append(reply)
        return "\n".join(lines)

    try:
        yield port, command
    finally:
        link.close()
        proc.terminate()
        proc.wait(10)


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
