"""Adopt our own trades from IB by ``orderRef`` when the state database does not know them (it was lost).

At start the live engine normally rebuilds its trades from :class:`~feeds.ib.state.StateStore`. If that file
is gone (a new disk, a deleted ``state/`` folder), IB still holds what matters: today's executions and the
working orders, each with our ``orderRef`` (``mlx:SYM:YYYYMMDD-HHMM:role``, :mod:`feeds.ib.mapping`). This
module groups them by trade and writes what the engine would have persisted — order rows, executions with
their commissions, the open trade's book, today's closed trades and the risk state — into the store, so the
one restore path (:meth:`feeds.ib.broker.IBBroker.restore`) adopts them exactly as after a plain restart:

- an **open trade** gets its book back (size and price from our fills, the entry time from the trade id, so
  the max-hold clock resumes), with the stop and target children at IB bound to it and an exit still working
  bound too; nothing is sent, nothing is entered twice;
- a **closed trade of today** is recorded with its exit reason (STOP / TARGET from the role; TIMEOUT or EOD
  for a market exit, from its time to the close), so the daily summary and the realised P&L count it;
- the **risk state**, when the store has none for today: the session's start equity is IB's net liquidation
  value minus today's P&L of our trades (realised, plus open positions marked at IB's portfolio price), so the
  daily loss stop holds; a symbol stopped out today keeps the rest of its cooldown.

What cannot be recovered is logged once: ``p_up`` at entry (NaN) and the blocked-entry counts. Trades of
other days, of other strategy ids, or in a symbol this run does not trade are left alone (the broker reports
them), and a trade is adopted only when none of its orders is in the store and its symbol has no stored book.
IB returns the executions and open orders of our own clientId (``live.client_id`` must stay the same).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import backtrader as bt
import pandas as pd

from core.calendar import minutes_to_close, session_keys
from feeds.ib import mapping as mp
from feeds.ib.session import IBSession
from feeds.ib.state import StateStore
from strategies import risk as rk

logger = logging.getLogger(__name__)

_EPS = 1e-9
_TYPE_OF_ROLE = {mp.ENTRY: "MKT", mp.STOP: "STP", mp.TARGET: "LMT", mp.EXIT: "MKT"}


@dataclass(frozen=True)
class Rules:
    """The strategy parameters adoption needs (from ``strategy_params``)."""

    bar_minutes: int
    flatten_minutes: float
    cooldown_bars_after_stop: int
    calendar: str = "XNYS"


@dataclass
class Found:
    """One of our trades as IB knows it: executions and working orders by role."""

    symbol: str
    trade_id: str
    fills: list[Any] = field(default_factory=list)  # ib_async Fill, time order
    open_orders: dict[str, Any] = field(default_factory=dict)  # role -> ib_async Trade

    @property
    def signal_bar(self) -> datetime:
        """The signal bar's start (UTC) from the trade id."""
        local = datetime.strptime(self.trade_id, "%Y%m%d-%H%M").replace(tzinfo=mp.EXCHANGE_TZ)
        return local.astimezone(UTC)

    def shares(self, role: str | None = None) -> float:
        """Net shares of our fills (BOT positive), of one role or all."""
        return sum(_signed(f) for f in self.fills if role is None or _role(f) == role)

    def vwap(self, role: str) -> float:
        """Average fill price of one role's executions (NaN when none)."""
        rows = [f for f in self.fills if _role(f) == role]
        qty = sum(float(f.execution.shares) for f in rows)
        return sum(float(f.execution.shares) * float(f.execution.price) for f in rows) / qty if qty else math.nan

    def commission(self, role: str | None = None) -> float:
        """IB's commissions of our fills (of one role or all)."""
        return sum(float(f.commissionReport.commission or 0.0) for f in self.fills
                   if role is None or _role(f) == role)


def _role(fill: Any) -> str | None:
    ref = mp.parse_order_ref(fill.execution.orderRef)
    return None if ref is None else ref.role


def _signed(fill: Any) -> float:
    shares = float(fill.execution.shares)
    return shares if fill.execution.side == "BOT" else -shares


def _naive_utc(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def _bar_start(t: datetime, bar_minutes: int) -> datetime:
    """Return the start (UTC) of the bar that contains ``t``."""
    t = t.astimezone(UTC)
    return t - timedelta(minutes=t.minute % bar_minutes, seconds=t.second, microseconds=t.microsecond)


def collect(fills: Iterable[Any], open_trades: Iterable[Any], strategy_id: str) -> dict[tuple[str, str], Found]:
    """Group our executions (with commission reports) and working orders by (symbol, trade id)."""
    found: dict[tuple[str, str], Found] = {}
    for fill in sorted(fills, key=lambda f: f.execution.time):
        ref = mp.parse_order_ref(fill.execution.orderRef, strategy_id)
        if ref is not None and fill.commissionReport.execId:
            found.setdefault((ref.symbol, ref.trade_id), Found(ref.symbol, ref.trade_id)).fills.append(fill)
    for trade in open_trades:
        ref = mp.parse_order_ref(trade.order.orderRef, strategy_id)
        if ref is not None and trade.orderStatus.status not in mp.IB_DONE_STATUSES:
            found.setdefault((ref.symbol, ref.trade_id), Found(ref.symbol, ref.trade_id)).open_orders[ref.role] = trade
    return found


@dataclass
class Adoption:
    """What :func:`adopt` wrote, for the log and the tests."""

    open_trades: list[str] = field(default_factory=list)
    closed_trades: list[str] = field(default_factory=list)
    risk: dict[str, Any] | None = None


class Adopter:
    """Write the store rows of trades IB knows and the store lost (see the module docstring)."""

    def __init__(self, state: StateStore, strategy_id: str, rules: Rules, now: datetime) -> None:
        self.state = state
        self.strategy_id = strategy_id
        self.rules = rules
        self.now = now
        self.today = now.astimezone(mp.EXCHANGE_TZ).strftime("%Y%m%d")
        self.bar = timedelta(minutes=rules.bar_minutes)
        # the newest closed bar: everything up to it was processed before the store was lost
        self.last_bar = _bar_start(now, rules.bar_minutes) - self.bar

    def unknown(self, found: Found, tradable: set[str]) -> bool:
        """True when ``found`` is today's, in ``tradable`` (traded symbols with no stored book), and the store
        knows none of its orders."""
        if found.trade_id[:8] != self.today or found.symbol not in tradable:
            return False
        refs = {str(mp.OrderRef(self.strategy_id, found.symbol, found.trade_id, role)) for role in mp.ROLES}
        return all(self.state.order(r) is None for r in refs)

    def write_orders(self, found: Found) -> None:
        """Order rows and executions, as the engine would have written them."""
        for role in mp.ROLES:
            ref = str(mp.OrderRef(self.strategy_id, found.symbol, found.trade_id, role))
            fills = [f for f in found.fills if _role(f) == role]
            trade = found.open_orders.get(role)
            if trade is None and not fills:
                continue
            o = trade.order if trade is not None else None
            price = None
            if o is not None and o.orderType in {"LMT", "STP"}:
                price = float(o.lmtPrice if o.orderType == "LMT" else o.auxPrice)
            filled = sum(float(f.execution.shares) for f in fills)
            self.state.put_order(
                ref, symbol=found.symbol, trade_id=found.trade_id, role=role,
                action="BUY" if role == mp.ENTRY else "SELL",
                quantity=float(o.totalQuantity) if o is not None else filled,
                order_type=o.orderType if o is not None else _TYPE_OF_ROLE[role], price=price,
                status=trade.orderStatus.status if trade is not None else "Filled",
                ib_order_id=(o.orderId if o is not None else fills[0].execution.orderId) or None)
            self.state.update_order(ref, filled=filled,
                                    perm_id=(o.permId if o is not None else fills[0].execution.permId) or None)
            for f in fills:
                ex = f.execution
                self.state.record_fill(ex.execId, order_ref=ref, symbol=found.symbol, side=ex.side,
                                       shares=float(ex.shares), price=float(ex.price), time=ex.time.astimezone(UTC),
                                       commission=float(f.commissionReport.commission or 0.0))

    def open_book(self, found: Found) -> dict[str, Any]:
        """The book snapshot of an open trade (:func:`feeds.ib.live.book_snapshot`'s fields)."""
        entry_bar = found.signal_bar + self.bar  # the bar the entry fill was seen on
        exit_working = mp.EXIT in found.open_orders
        return {
            "trade_id": found.trade_id, "size": found.shares(), "entry_price": found.vwap(mp.ENTRY),
            "entry_comm": found.commission(mp.ENTRY), "entry_time": _naive_utc(entry_bar).isoformat(),
            "entry_p_up": math.nan, "exit_reason": self._exit_reason(self.last_bar) if exit_working else None,
            "reserved": 0.0, "bars_held": max(0, round((self.last_bar - entry_bar) / self.bar) + 1),
            "entry_pending": found.shares(mp.ENTRY) <= _EPS and mp.ENTRY in found.open_orders,
            "stop_bound": mp.STOP in found.open_orders, "target_bound": mp.TARGET in found.open_orders,
            "exit_pending": exit_working,
        }

    def _exit_reason(self, exit_bar: datetime) -> str:
        """TIMEOUT or EOD for a market exit seen on ``exit_bar`` (decided one bar earlier)."""
        decided = pd.DatetimeIndex([exit_bar - self.bar])
        mtc = float(minutes_to_close(decided, self.rules.bar_minutes, self.rules.calendar)[0])
        return "EOD" if mtc <= self.rules.flatten_minutes else "TIMEOUT"

    def closed_trade(self, found: Found) -> dict[str, Any]:
        """The closed-trade record (``MLStrategy.trades``' fields) of a trade with no shares left."""
        exits = [f for f in found.fills if _signed(f) < 0]
        exit_role = _role(exits[-1])
        exit_bar = _bar_start(exits[-1].execution.time, self.rules.bar_minutes)
        entry_bar = found.signal_bar + self.bar
        reason = {mp.STOP: "STOP", mp.TARGET: "TARGET"}.get(exit_role or "") or self._exit_reason(exit_bar)
        qty = found.shares(mp.ENTRY)
        sold = -sum(_signed(f) for f in exits)
        exit_price = sum(float(f.execution.shares) * float(f.execution.price) for f in exits) / sold
        commission = found.commission()
        return {
            "symbol": found.symbol, "entry_time": _naive_utc(entry_bar), "exit_time": _naive_utc(exit_bar),
            "entry_price": found.vwap(mp.ENTRY), "exit_price": exit_price, "quantity": qty, "exit_reason": reason,
            "p_up_at_entry": math.nan, "pnl": (exit_price - found.vwap(mp.ENTRY)) * qty - commission,
            "commission": commission, "bars_held": round((exit_bar - entry_bar) / self.bar), "adopted": True,
        }

    def cooldown_left(self, trade: dict[str, Any]) -> int:
        """Bars of cooldown still due after a STOP exit (as ``RiskState`` would hold it after ``last_bar``)."""
        if trade["exit_reason"] != "STOP":
            return 0
        exit_bar = trade["exit_time"].replace(tzinfo=UTC)
        return max(0, self.rules.cooldown_bars_after_stop - round((self.last_bar - exit_bar) / self.bar))


def adopt(session: IBSession, state: StateStore, strategy_id: str, symbols: Iterable[str], rules: Rules,
          equity: float, marks: dict[str, float] | None = None) -> Adoption:
    """Adopt today's trades of ours that IB knows and ``state`` does not; return what was adopted.

    Parameters
    ----------
    session
        The connected session (executions and open orders are requested on it).
    state
        The store to write into (before :meth:`~feeds.ib.broker.IBBroker.restore` reads it).
    strategy_id, symbols
        Whose orders, and the symbols this run trades.
    rules
        Bar size, flatten window and cooldown of the strategy.
    equity
        The account's net liquidation value now (the broker's ``getvalue()``; NaN when IB sent none).
    marks
        Current prices by symbol for today's open P&L (default: IB's portfolio prices).
    """
    done = Adoption()
    if not session.connected:
        logger.warning("not connected to IB at start: trades unknown to the state store cannot be adopted")
        return done
    ib = session.ib
    ib.reqExecutions()
    found = collect(ib.fills(), ib.reqAllOpenOrders(), strategy_id)
    adopter = Adopter(state, strategy_id, rules, session.now())
    tradable = set(symbols) - set(state.books())
    todo = [f for f in found.values() if adopter.unknown(f, tradable)]
    if not todo:
        return done
    if marks is None:
        marks = {p.contract.symbol: float(p.marketPrice) for p in ib.portfolio(session.account)}
    closed: list[dict[str, Any]] = []
    open_pnl = 0.0
    with state.transaction():
        for f in todo:
            adopter.write_orders(f)
            if f.shares() > _EPS or (mp.ENTRY in f.open_orders and f.shares(mp.ENTRY) <= _EPS):
                book = adopter.open_book(f)
                state.save_book(f.symbol, book)
                mark = marks.get(f.symbol, book["entry_price"])
                open_pnl += (mark - book["entry_price"]) * book["size"] - book["entry_comm"] if book["size"] else 0.0
                done.open_trades.append(f"{f.symbol}:{f.trade_id}")
            elif f.shares(mp.ENTRY) > _EPS:
                trade = adopter.closed_trade(f)
                state.append_trade(trade["exit_time"].replace(tzinfo=UTC).astimezone(mp.EXCHANGE_TZ).date()
                                   .isoformat(), trade)
                closed.append(trade)
                done.closed_trades.append(f"{f.symbol}:{f.trade_id}:{trade['exit_reason']}")
        done.risk = _risk(state, adopter, closed, open_pnl, equity)
    logger.warning("state store lost these trades; adopted from IB by orderRef: open %s, closed today %s%s "
                   "(p_up at entry and blocked-entry counts are not recoverable)", done.open_trades or "none",
                   done.closed_trades or "none", "; risk state rebuilt" if done.risk else "")
    return done


def _risk(state: StateStore, adopter: Adopter, closed: list[dict[str, Any]], open_pnl: float,
          net_liq: float) -> dict[str, Any] | None:
    """Write today's risk state when the store has none for today; return it."""
    days, _ = session_keys(pd.DatetimeIndex([adopter.now]))
    today = int(days[0])
    stored = state.get_value("risk")
    if stored is not None and int(stored["session"]) == today:
        return None
    realized = sum(float(t["pnl"]) for t in closed)
    risk = rk.RiskState(session=today, start_equity=net_liq - realized - open_pnl, realized_pnl=realized)
    if not math.isfinite(net_liq):  # no account values yet: the first bar starts the day at the equity it sees
        logger.warning("no NetLiquidation from IB: today's start equity cannot be rebuilt; the daily loss stop "
                       "counts from the first bar")
        risk.session = -1
    last_bar_time = dict(state.get_value("last_bar_time", {}))
    for trade in sorted(closed, key=lambda t: t["exit_time"]):  # the symbol's last STOP counts
        left = adopter.cooldown_left(trade)
        if left > 0:
            risk.cooldowns[trade["symbol"]] = left
            # bars after the last one processed before the loss run the clock on (as after a restart)
            last_bar_time[trade["symbol"]] = bt.date2num(_naive_utc(adopter.last_bar))
    state.set_value("risk", risk.to_dict())
    state.set_value("last_bar_time", last_bar_time)
    return risk.to_dict()
