"""Fault injection while the simulator runs: one-line text commands from stdin or a loopback TCP port."""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from zoneinfo import ZoneInfo

from ibsim.broker import DONE, RACE_CODES
from ibsim.market import EXCHANGE_TZ
from ibsim.server import CommissionFault, Gateway, HistFault

logger = logging.getLogger(__name__)

HELP = """commands:
  help                              this text
  time                              print the simulated time
  status                            cash, positions and working orders
  advance SECONDS                   move the simulated clock forward (fills on the way)
  price SYMBOL PRICE                print a price on the tape now
  drop                              close every client socket (state kept)
  restart [SECONDS=30]              gateway restart: close sockets, refuse connections, come back
  reset [SECONDS=60] [lost]         IB server reset: 1100, then 1102 (1101 with 'lost'); sockets stay open
  reject SYMBOL [REASON...]         reject the next order for SYMBOL with error 201
  hold-client-id N                  pretend a stale session holds clientId N (connects get 326)
  release-client-id N               undo hold-client-id
  delay-hist SECONDS [COUNT] [SYM]  answer the next COUNT historical requests SECONDS late
  withhold-hist [COUNT] [SYM]       never answer the next COUNT historical requests
  pacing-hist [COUNT] [SYM]         answer the next COUNT historical requests with 162 (pacing violation)
  partial QTY|off [SYMBOL]          split fills into executions of at most QTY shares
  pacing on|off                     historical-data pacing rules (error 162)
  no-permissions [SYMBOL]           historical requests get 162 "No market data permissions" (all symbols
                                    without SYMBOL) until grant-permissions
  grant-permissions [SYMBOL]        undo no-permissions (every denial without SYMBOL)
  race-cancel [10148|161] [SYMBOL]  the next cancel of a working order loses the race with a fill: the
                                    error comes first, then Filled (default 10148)
  cancel-order ORDERID [CLIENTID]   cancel an order as another client would (the owner may be away)
  fill-order ORDERID [PRICE] [CLIENTID]
                                    fill a working order now, outside its owner's control
  delay-commission SECONDS [COUNT] [SYMBOL]
                                    hold back the next COUNT commission reports SECONDS of simulated time
  drop-commission [COUNT] [SYMBOL]  never push the next COUNT commission reports (reqExecutions has them)
  completed                         the orders that ended today (what reqCompletedOrders answers)
  quit                              stop the simulator"""


class ControlChannel:
    """Parse and run control commands against a running gateway (on its event loop).

    Parameters
    ----------
    gateway
        The running gateway.
    stop
        Called by ``quit``.
    """

    def __init__(self, gateway: Gateway, stop: Callable[[], None]) -> None:
        self.gateway = gateway
        self._stop = stop
        self._background: set[asyncio.Task[None]] = set()
        self._commands: dict[str, Callable[[list[str]], str | Awaitable[str]]] = {
            "help": lambda a: HELP, "time": self._time, "status": self._status, "advance": self._advance,
            "price": self._price, "drop": self._drop, "restart": self._restart, "reset": self._reset,
            "reject": self._reject, "hold-client-id": self._hold, "release-client-id": self._release,
            "delay-hist": self._delay, "withhold-hist": self._withhold,
            "pacing-hist": self._pacing_hist, "partial": self._partial,
            "pacing": self._pacing, "quit": self._quit, "no-permissions": self._deny,
            "grant-permissions": self._grant, "race-cancel": self._race, "cancel-order": self._cancelOrder,
            "fill-order": self._fillOrder, "delay-commission": self._delayCommission,
            "drop-commission": self._dropCommission, "completed": self._completed,
        }

    async def execute(self, line: str) -> str:
        """Run one command line and return the reply text."""
        words = shlex.split(line.strip())
        if not words:
            return ""
        command = self._commands.get(words[0].lower())
        if command is None:
            return f"error: unknown command {words[0]!r} (try 'help')"
        logger.info("control: %s", line.strip())
        try:
            reply = command(words[1:])
            if asyncio.iscoroutine(reply) or isinstance(reply, asyncio.Future):
                reply = await reply
            return str(reply)
        except (ValueError, IndexError, KeyError) as exc:
            return f"error: {exc}"

    def _later(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _time(self, args: list[str]) -> str:
        return self.gateway.clock.now().astimezone(_zone()).isoformat()

    def _status(self, args: list[str]) -> str:
        broker = self.gateway.broker
        lines = [f"cash {broker.cash:.2f}"]
        lines += [f"position {s} {p.qty:g} @ {p.avgCost:.4f}"
                  for s, p in sorted(broker.positions.items()) if p.qty]
        lines += [f"order {o.clientId}/{o.orderId} {o.action} {o.totalQuantity:g} {o.symbol} {o.orderType} "
                  f"{o.status} {o.tif} ref={o.orderRef or '-'}" for o in broker.orders.values()
                  if o.status not in DONE]
        return "\n".join(lines)

    def _completed(self, args: list[str]) -> str:
        orders = self.gateway.broker.completed(self.gateway.clock.now())
        return "\n".join(f"done {o.clientId}/{o.orderId} permId={o.permId} {o.action} {o.filled:g}/"
                         f"{o.totalQuantity:g} {o.symbol} {o.orderType} {o.status} ({o.completedText}) "
                         f"ref={o.orderRef or '-'}" for o in orders) or "no completed orders today"

    def _deny(self, args: list[str]) -> str:
        symbol = args[0].upper() if args else None
        self.gateway.noPermissions.add(symbol)
        return f"ok no market data permissions for {symbol or 'any symbol'}"

    def _grant(self, args: list[str]) -> str:
        if args:
            self.gateway.noPermissions.discard(args[0].upper())
        else:
            self.gateway.noPermissions.clear()
        return "ok"

    def _race(self, args: list[str]) -> str:
        code = int(args[0]) if args and args[0].isdigit() else 10148
        rest = args[1:] if args and args[0].isdigit() else args
        if code not in RACE_CODES:
            raise ValueError(f"code {code}: use 10148 or 161")
        symbol = rest[0].upper() if rest else None
        self.gateway.broker.raceCancel[symbol] = code
        return f"ok the next cancel{' for ' + symbol if symbol else ''} loses the race with a fill ({code})"

    def _cancelOrder(self, args: list[str]) -> str:
        clientId = int(args[1]) if len(args) > 1 else None
        order = self.gateway.cancelByOther(int(args[0]), clientId)
        return f"ok {order.clientId}/{order.orderId} {order.status}"

    def _fillOrder(self, args: list[str]) -> str:
        price = float(args[1]) if len(args) > 1 and args[1] != "-" else None
        clientId = int(args[2]) if len(args) > 2 else None
        order = self.gateway.fillByOther(int(args[0]), price, clientId)
        return f"ok {order.clientId}/{order.orderId} {order.status} @ {order.avgFillPrice:g}"

    def _delayCommission(self, args: list[str]) -> str:
        count = int(args[1]) if len(args) > 1 else 1
        symbol = args[2].upper() if len(args) > 2 else None
        self.gateway.commissionFaults.append(CommissionFault(float(args[0]), count, symbol))
        return "ok"

    def _dropCommission(self, args: list[str]) -> str:
        count = int(args[0]) if args else 1
        symbol = args[1].upper() if len(args) > 1 else None
        self.gateway.commissionFaults.append(CommissionFault(None, count, symbol))
        return "ok"

    def _advance(self, args: list[str]) -> str:
        self.gateway.advance(float(args[0]))
        return self._time(args)

    def _price(self, args: list[str]) -> str:
        self.gateway.setPrice(args[0].upper(), float(args[1]))
        return f"ok {args[0].upper()} {float(args[1])}"

    def _drop(self, args: list[str]) -> str:
        return f"ok dropped {self.gateway.dropConnections()}"

    def _restart(self, args: list[str]) -> str:
        seconds = float(args[0]) if args else 30.0
        self.gateway.goDown()

        async def comeBack() -> None:
            await asyncio.sleep(seconds)
            await self.gateway.comeBack()

        self._later(comeBack())
        return f"ok restarting; port refuses connections for {seconds:g} s"

    def _reset(self, args: list[str]) -> str:
        seconds = float(args[0]) if args else 60.0
        lost = len(args) > 1 and args[1].lower() == "lost"
        self._later(self.gateway.nightlyReset(seconds, lost))
        return f"ok 1100 now, {'1101' if lost else '1102'} in {seconds:g} s"

    def _reject(self, args: list[str]) -> str:
        reason = " ".join(args[1:]) or "simulated rejection"
        self.gateway.broker.rejectNext[args[0].upper()] = reason
        return f"ok next {args[0].upper()} order gets 201"

    def _hold(self, args: list[str]) -> str:
        self.gateway.heldClientIds.add(int(args[0]))
        return f"ok clientId {int(args[0])} held"

    def _release(self, args: list[str]) -> str:
        self.gateway.heldClientIds.discard(int(args[0]))
        return f"ok clientId {int(args[0])} released"

    def _delay(self, args: list[str]) -> str:
        count = int(args[1]) if len(args) > 1 else 1
        symbol = args[2].upper() if len(args) > 2 else None
        self.gateway.histFaults.append(HistFault("delay", float(args[0]), count, symbol))
        return "ok"

    def _withhold(self, args: list[str]) -> str:
        count = int(args[0]) if args else 1
        symbol = args[1].upper() if len(args) > 1 else None
        self.gateway.histFaults.append(HistFault("withhold", 0.0, count, symbol))
        return "ok"

    def _pacing_hist(self, args: list[str]) -> str:
        count = int(args[0]) if args else 1
        symbol = args[1].upper() if len(args) > 1 else None
        self.gateway.histFaults.append(HistFault("pacing", 0.0, count, symbol))
        return "ok"

    def _partial(self, args: list[str]) -> str:
        qty = None if args[0].lower() == "off" else float(args[0])
        policy = self.gateway.broker.policy
        if len(args) > 1:
            policy.maxFillQtyBySymbol[args[1].upper()] = qty
        else:
            policy.maxFillQty = qty
        return "ok"

    def _pacing(self, args: list[str]) -> str:
        guard = self.gateway.pacing
        guard.rules = replace(guard.rules, enabled=args[0].lower() == "on")
        return f"ok pacing {'on' if guard.rules.enabled else 'off'}"

    def _quit(self, args: list[str]) -> str:
        self._stop()
        return "ok stopping"


def _zone() -> ZoneInfo:
    return ZoneInfo(EXCHANGE_TZ)


async def serveControlPort(channel: ControlChannel, host: str, port: int) -> asyncio.Server:
    """Accept control commands, one per line, on a loopback TCP port; each reply ends with a blank line."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((await channel.execute(line.decode(errors="replace")) + "\n\n").encode())
                await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass  # the simulator is stopping, or the peer went away: nothing left to answer
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def readStdin(channel: ControlChannel, loop: asyncio.AbstractEventLoop) -> threading.Thread:
    """Read commands from stdin on a daemon thread (ends quietly at EOF, e.g. when stdin is /dev/null)."""

    def run() -> None:
        for line in sys.stdin:
            future = asyncio.run_coroutine_threadsafe(channel.execute(line), loop)
            reply = future.result()
            if reply:
                print(reply, flush=True)  # the console is this channel's output

    thread = threading.Thread(target=run, name="ibsim-stdin", daemon=True)
    thread.start()
    return thread
