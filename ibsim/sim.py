"""In-process simulator for tests: the gateway on its own event-loop thread, driven by plain method calls."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import pandas as pd

from ibsim.broker import RACE_CODES, Execution, Position, SimOrder
from ibsim.clock import SimClock
from ibsim.market import Market
from ibsim.server import CommissionFault, Gateway, HistFault, RequestRecord, SimConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


class IBSim:
    """A simulated IB Gateway running in a background thread.

    Parameters
    ----------
    bars
        Per symbol, bars indexed by tz-aware bar start (the ``feeds.bars.load_bars`` format).
    start
        Initial simulated time (tz-aware).
    config
        Server settings (port 0 picks a free port).
    speed
        ``None`` for a clock stepped by the test (deterministic); otherwise simulated seconds per wall second.

    Examples
    --------
    >>> sim = IBSim(bars, start=datetime(2024, 1, 2, 15, 0, tzinfo=UTC)).start()  # doctest: +SKIP
    >>> ib.connect("127.0.0.1", sim.port, clientId=1)  # doctest: +SKIP
    >>> sim.advance(minutes=1)  # doctest: +SKIP
    >>> sim.stop()  # doctest: +SKIP
    """

    def __init__(self, bars: Mapping[str, pd.DataFrame], start: datetime, config: SimConfig | None = None,
                 speed: float | None = None) -> None:
        self.clock = SimClock(start, speed)
        self.gateway = Gateway(Market(bars), self.clock, config or SimConfig())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> IBSim:
        """Start the server thread and return self once it listens."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.gateway.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.gateway.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="ibsim", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("ibsim did not start within 10 s")
        return self

    def stop(self) -> None:
        """Stop the server and join its thread."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> IBSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """Return the listening address."""
        return self.gateway.config.host

    @property
    def port(self) -> int:
        """Return the listening port."""
        return self.gateway.port

    @property
    def account(self) -> str:
        """Return the managed account id."""
        return self.gateway.config.account

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None:
            return fn()
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:  # handed back to the calling thread
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(10)

    def _await(self, coro: Coroutine[Any, Any, T], wait: bool = True) -> Future[T]:
        if self._loop is None:
            raise RuntimeError("start the simulator first")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        if wait:
            future.result(60)
        return future

    # -- clock and prices -------------------------------------------------------------------------
    def now(self) -> datetime:
        """Return the simulated time (UTC)."""
        return self._call(self.clock.now)

    def advance(self, seconds: float = 0.0, minutes: float = 0.0) -> datetime:
        """Step the clock forward, filling orders on the way; return the new time."""
        total = seconds + 60.0 * minutes
        self._call(lambda: self.gateway.advance(total))
        return self.now()

    def setTime(self, t: datetime) -> None:
        """Jump the clock forward to ``t``, filling orders on the way."""
        self._call(lambda: self.gateway.setTime(t))

    def setPrice(self, symbol: str, price: float) -> None:
        """Print ``price`` for ``symbol`` now; working orders react at once."""
        self._call(lambda: self.gateway.setPrice(symbol, price))

    # -- faults -----------------------------------------------------------------------------------
    def dropConnections(self) -> int:
        """Close every client socket (state kept); return how many."""
        return self._call(self.gateway.dropConnections)

    def restart(self, downSeconds: float = 1.0, wait: bool = True) -> Future[None]:
        """Close sockets and refuse connections for ``downSeconds`` (wall time), then listen again.

        The sockets are closed and the port refuses connections when this returns; with ``wait=False`` the
        returned future completes once the gateway listens again.
        """
        self._call(self.gateway.goDown)

        async def later() -> None:
            await asyncio.sleep(downSeconds)
            await self.gateway.comeBack()

        return self._await(later(), wait)

    def loseConnectivity(self) -> None:
        """Send 1100 (+ farm broken) with the sockets kept open; fills and bars pause."""
        self._call(self.gateway.loseConnectivity)

    def restoreConnectivity(self, dataLost: bool = False) -> None:
        """Send farm OK + 1102 (1101 when ``dataLost``)."""
        self._call(lambda: self.gateway.restoreConnectivity(dataLost))

    def nightlyReset(self, downSeconds: float = 1.0, dataLost: bool = False,
                     wait: bool = True) -> Future[None]:
        """Run the 1100 → 1102 sequence over ``downSeconds`` of wall time."""
        return self._await(self.gateway.nightlyReset(downSeconds, dataLost), wait)

    def rejectNextOrder(self, symbol: str, reason: str = "simulated rejection") -> None:
        """Reject the next order for ``symbol`` with error 201."""
        self._call(lambda: self.gateway.broker.rejectNext.__setitem__(symbol.upper(), reason))

    def holdClientId(self, clientId: int) -> None:
        """Pretend a stale session holds ``clientId`` (connects get 326 and are closed)."""
        self._call(lambda: self.gateway.heldClientIds.add(clientId))

    def releaseClientId(self, clientId: int) -> None:
        """Undo :meth:`holdClientId`."""
        self._call(lambda: self.gateway.heldClientIds.discard(clientId))

    def delayHistorical(self, seconds: float, count: int = 1, symbol: str | None = None) -> None:
        """Answer the next ``count`` historical requests ``seconds`` (wall time) late."""
        fault = HistFault("delay", seconds, count, symbol.upper() if symbol else None)
        self._call(lambda: self.gateway.histFaults.append(fault))

    def withholdHistorical(self, count: int = 1, symbol: str | None = None) -> None:
        """Never answer the next ``count`` historical requests (until the client cancels them)."""
        fault = HistFault("withhold", 0.0, count, symbol.upper() if symbol else None)
        self._call(lambda: self.gateway.histFaults.append(fault))

    def violatePacing(self, count: int = 1, symbol: str | None = None) -> None:
        """Answer the next ``count`` historical requests with IB's 162 pacing violation (no bars), as when
        another client of the same login has used up the allowance."""
        fault = HistFault("pacing", 0.0, count, symbol.upper() if symbol else None)
        self._call(lambda: self.gateway.histFaults.append(fault))

    def setPartialFills(self, maxQty: float | None, symbol: str | None = None) -> None:
        """Split fills into executions of at most ``maxQty`` shares, one per tape tick (None: off)."""
        policy = self.gateway.broker.policy

        def apply() -> None:
            if symbol is None:
                policy.maxFillQty = maxQty
            else:
                policy.maxFillQtyBySymbol[symbol.upper()] = maxQty

        self._call(apply)

    def raceCancelWithFill(self, symbol: str | None = None, code: int = 10148) -> None:
        """Make the next cancel of a working order (for ``symbol``) lose the race with a fill.

        The order fills at the exchange just before the cancel arrives: the client first gets error ``code``
        (10148 "… cannot be cancelled, state: Filled." or 161 "Cancel attempted when order is not in a
        cancellable state."), then the Filled status, the execution and its commission report.
        """
        if code not in RACE_CODES:
            raise ValueError(f"code {code}: a cancel racing a fill is answered with 10148 or 161")
        key = symbol.upper() if symbol else None
        self._call(lambda: self.gateway.broker.raceCancel.__setitem__(key, code))

    def cancelByOtherClient(self, orderId: int, clientId: int | None = None) -> SimOrder:
        """Cancel an order as another client (TWS, a second session) would, e.g. while its owner is away.

        The owner, if connected, sees Cancelled + 202; once reconnected it finds the order among the
        completed orders (``reqCompletedOrders``), no longer among the open ones.
        """
        return self._call(lambda: self.gateway.cancelByOther(orderId, clientId))

    def fillByOtherClient(self, orderId: int, price: float | None = None,
                          clientId: int | None = None) -> SimOrder:
        """Fill the rest of a working order now, outside its owner's control (at ``price``, else its limit or
        stop price, else the last print); its execution and commission report reach the owner if connected."""
        return self._call(lambda: self.gateway.fillByOther(orderId, price, clientId))

    def delayCommissionReports(self, seconds: float, count: int = 1, symbol: str | None = None) -> None:
        """Hold back the commission reports of the next ``count`` executions ``seconds`` of simulated time
        (released as the clock passes; reqExecutions includes them only once due)."""
        fault = CommissionFault(float(seconds), count, symbol.upper() if symbol else None)
        self._call(lambda: self.gateway.commissionFaults.append(fault))

    def dropCommissionReports(self, count: int = 1, symbol: str | None = None) -> None:
        """Never push the commission reports of the next ``count`` executions (reqExecutions still has them)."""
        fault = CommissionFault(None, count, symbol.upper() if symbol else None)
        self._call(lambda: self.gateway.commissionFaults.append(fault))

    def denyMarketData(self, symbol: str | None = None) -> None:
        """Answer historical requests (for ``symbol``, else all) with 162 "No market data permissions for …"
        until :meth:`grantMarketData`; distinct from the pacing 162."""
        key = symbol.upper() if symbol else None
        self._call(lambda: self.gateway.noPermissions.add(key))

    def grantMarketData(self, symbol: str | None = None) -> None:
        """Undo :meth:`denyMarketData` (for ``symbol``, else every denial)."""
        key = symbol.upper() if symbol else None
        denied = self.gateway.noPermissions

        def grant() -> None:
            if key is None:
                denied.clear()
            else:
                denied.discard(key)

        self._call(grant)

    def completedOrders(self) -> list[SimOrder]:
        """Return the orders that ended today (what ``reqCompletedOrders`` answers), oldest first."""
        return self._call(lambda: self.gateway.broker.completed(self.clock.now()))

    def setPacing(self, enabled: bool) -> None:
        """Turn historical-data pacing on or off (history of requests is kept)."""
        guard = self.gateway.pacing
        self._call(lambda: setattr(guard, "rules", replace(guard.rules, enabled=enabled)))

    # -- inspection -------------------------------------------------------------------------------
    def requests(self, name: str | None = None) -> list[RequestRecord]:
        """Return the requests received so far (optionally only those named ``name``)."""
        return self._call(lambda: [r for r in self.gateway.requests if name is None or r.name == name])

    def messagesHandled(self, clientId: int) -> int:
        """Return how many messages the open connection of ``clientId`` has had handled since its handshake.

        The client's own count of messages sent (ib_async: ``ib.client.conn.numMsgSent``, the handshake
        included) minus one equals this once the simulator has acted on everything the client sent: tests wait
        on that instead of sleeping. 0 when ``clientId`` has no open connection.
        """
        return self._call(lambda: max((s.handled for s in self.gateway.sessions
                                       if s.clientId == clientId and not s.closed), default=0))

    def orders(self) -> list[SimOrder]:
        """Return every order ever placed, in arrival order."""
        return self._call(lambda: sorted(self.gateway.broker.orders.values(), key=lambda o: o.permId))

    def order(self, orderId: int, clientId: int | None = None) -> SimOrder:
        """Return one order by id (and clientId when several clients use the same id)."""
        matches = [o for o in self.orders() if o.orderId == orderId and clientId in {None, o.clientId}]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} orders with id {orderId}")
        return matches[0]

    def fills(self) -> list[Execution]:
        """Return every execution, in time order."""
        return self._call(lambda: list(self.gateway.broker.executions))

    def positions(self) -> dict[str, Position]:
        """Return positions by symbol (closed ones have qty 0)."""
        return self._call(lambda: dict(self.gateway.broker.positions))

    @property
    def cash(self) -> float:
        """Return the account's cash."""
        return self._call(lambda: self.gateway.broker.cash)

    def accountValues(self) -> dict[str, float]:
        """Return the account's numeric values (IB tags) now."""
        return self._call(lambda: self.gateway.broker.accountValues(self.clock.now()))

    def connectedClientIds(self) -> list[int]:
        """Return the clientIds of the open sessions."""
        return self._call(lambda: sorted(s.clientId for s in self.gateway.sessions
                                         if s.clientId is not None and not s.closed))
