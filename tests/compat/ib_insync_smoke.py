"""ib_insync 0.9.86 against ``python -m ibsim``: connect + sync, historical bars, a market order with commission.

Run by ``.ci/ib_insync_compat.sh`` inside its own virtual environment (ib_insync and ib_async both ship an
``eventkit`` package, so they cannot share one). Not a pytest module: it is a plain script that prints
``N passed, M failed`` and exits non-zero on failure.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from ib_insync import IB, MarketOrder, Stock

logger = logging.getLogger("ib_insync_smoke")

REPO = Path(__file__).resolve().parents[2]
START = "2024-01-04 10:00"


def write_bars(folder: Path) -> Path:
    """Write deterministic 1-minute RTH bars for AAPL (three sessions) in the feeds.bars CSV schema."""
    rng = np.random.default_rng(5)
    days = ("2024-01-02", "2024-01-03", "2024-01-04")
    index = pd.DatetimeIndex(np.concatenate([
        pd.date_range(f"{d} 09:30", f"{d} 15:59", freq="1min", tz="America/New_York").tz_convert("UTC")
        for d in days]))
    close = np.round(185 + np.cumsum(rng.normal(0, 0.05, len(index))), 2)
    open_ = np.r_[185.0, close[:-1]]
    frame = pd.DataFrame({
        "datetime": [t.isoformat() for t in index], "open": open_,
        "high": np.round(np.maximum(open_, close) + 0.03, 2), "low": np.round(np.minimum(open_, close) - 0.03, 2),
        "close": close, "volume": rng.integers(1000, 5000, len(index)),
    })
    path = folder / "AAPL_1min.csv"
    frame.to_csv(path, index=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ibsim exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"ibsim did not listen on {port} within {timeout:g} s")


def wait_until(ib: IB, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        ib.sleep(0.05)
    return True


def run_checks(port: int) -> list[tuple[str, bool, str]]:
    results: list[tuple[str, bool, str]] = []
    ib = IB()
    started = time.monotonic()
    ib.connect("127.0.0.1", port, clientId=1, timeout=10)
    elapsed = time.monotonic() - started
    results.append(("connect and startup sync", ib.isConnected() and elapsed < 3, f"{elapsed:.2f} s"))
    try:
        (contract,) = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))
        results.append(("qualifyContracts", contract.conId == 265598, f"conId {contract.conId}"))
        bars = ib.reqHistoricalData(contract, "", "1 D", "1 min", "TRADES", useRTH=True, formatDate=1)
        ok = len(bars) >= 31 and bars[0].date.strftime("%H:%M") == "09:30"
        results.append(("reqHistoricalData 1 D of 1 min bars", ok, f"{len(bars)} bars, last {bars[-1].date}"))
        trade = ib.placeOrder(contract, MarketOrder("BUY", 10))
        filled = wait_until(ib, lambda: trade.orderStatus.status == "Filled" and bool(trade.fills)
                            and bool(trade.fills[0].commissionReport.execId))
        commission = trade.fills[0].commissionReport.commission if trade.fills else None
        results.append(("market order filled with commission", filled and commission == 1.0,
                        f"{trade.orderStatus.status}, commission {commission}"))
        held = wait_until(ib, lambda: [p.position for p in ib.positions()] == [10])
        results.append(("position after the fill", held, str([(p.contract.symbol, p.position)
                                                              for p in ib.positions()])))
    finally:
        ib.disconnect()
    return results


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_bars(Path(tmp))
        port = free_port()
        command = [sys.executable, "-m", "ibsim", "--port", str(port), "--data", str(data), "--start", START,
                   "--speed", "60", "--log-level", "WARNING"]
        proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL)
        try:
            wait_for_port(port, proc)
            results = run_checks(port)
        finally:
            proc.terminate()
            proc.wait(10)
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")  # the script's report
    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"ib_insync compat: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
