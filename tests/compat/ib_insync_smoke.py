"""ib_insync 0.9.86 against ``python -m ibsim``: connect + sync, historical bars, a market order with commission.

Run by ``.ci/ib_insync_compat.sh`` inside its own virtual environment (ib_insync and ib_async both ship an
``eventkit`` package, so they cannot share one). Not a pytest module: it is a plain script (helpers in
``compat_support.py``) that prints ``N passed, M failed`` and exits non-zero on failure.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from compat_support import Result, report, serve_ibsim
from ib_insync import IB, MarketOrder, Stock

logger = logging.getLogger("ib_insync_smoke")


def wait_until(ib: IB, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        ib.sleep(0.05)
    return True


def run_checks(port: int) -> list[Result]:
    results: list[Result] = []
    ib = IB()
    codes: list[int] = []
    ib.errorEvent += lambda reqId, code, *_: codes.append(code)
    started = time.monotonic()
    ib.connect("127.0.0.1", port, clientId=1, timeout=10)
    elapsed = time.monotonic() - started
    results.append(("connect and startup sync", ib.isConnected() and elapsed < 3, f"{elapsed:.2f} s"))
    version = ib.client.serverVersion()
    results.append(("server version 176, errors decoded (advancedOrderRejectJson from 166)",
                    version == 176 and {2104, 2106, 2158} <= set(codes), f"v{version}, codes {sorted(set(codes))}"))
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
    with serve_ibsim() as served:
        results = run_checks(served.port)
    return report("ib_insync", results)


if __name__ == "__main__":
    sys.exit(main())
