"""Recovery after a restart: restore the strategy's books from the state store, and adopt our own trades from IB
by ``orderRef`` when the store does not know them (it was lost).

**Restore** (:func:`restore_books`, every start): each stored :class:`~core.records.BookSnapshot` becomes a
strategy :class:`~strategies.ml_strategy.Book` again. The broker tracks the trade's journaled orders again and
returns the backtrader twins of those the book was tracking
(:meth:`~feeds.ib.broker.IBBroker.restore_orders`); the book points at them and goes back into the strategy
through :meth:`~strategies.ml_strategy.MLStrategy.restore_book`.

**Adoption** (:func:`adopt`, before the restore). If the store is gone (a new disk, a deleted ``state/``
folder), IB still holds what matters: today's executions and the working orders, each with our ``orderRef``
(``mlx:SYM:YYYYMMDD-HHMM:role``, :mod:`feeds.ib.mapping`), handed over by the adapter as plain records
(:mod:`feeds.ib.account`). Adoption groups them by trade and writes what the engine would have persisted —
order rows, executions with their commissions, the open trade's book, today's closed trades and the risk
state — into the store, so the one restore path adopts them exactly as after a plain restart:

- an **open trade** gets its book back (size and price from our fills, the entry time from the trade id, so
  the max-hold clock resumes), with the stop and target children at IB bound to it and an exit still working
  bound too; nothing is sent, nothing is entered twice;
- a **closed trade of today** is recorded with its exit reason (STOP / TARGET from the role; for a market exit
  the strategy's own time-exit rule, :func:`~strategies.ml_strategy.time_exit_reason`, on the bar it was
  decided), so the daily summary and the realised P&L count it;
- the **risk state**, when the store has none for today: the session's start equity is IB's net liquidation
  value minus today's P&L of our trades (realised, plus open positions marked at IB's portfolio price), so the
  daily loss stop holds; a symbol stopped out today keeps the rest of its cooldown, counted down by
  :class:`~strategies.risk.RiskState`'s own cooldown clock.

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

from core.calendar import minutes_to_close, session_key, to_exchange, to_utc
from core.records import BookSnapshot, ExitReason, TradeRecord
from engines.live.state import StateStore
from feeds.ib import account
from feeds.ib.broker import IBBroker
from feeds.ib.mapping import (
    ENTRY,
    EXIT,
    ORDER_TYPE_OF_ROLE,
    ROLES,
    STOP,
    TARGET,
    ExecutionRecord,
    OpenOrderRecord,
    OrderRef,
    parse_order_ref,
    trade_start,
)
from feeds.ib.session import IBSession
from strategies.ml_strategy import Book, MLStrategy, time_exit_reason
from strategies.risk import RiskState

logger = logging.getLogger(__name__)

_EPS = 1e-9


# -- restore ------------------------------------------------------------------------------------------------
def book_snapshot(book: Book, trade_id: str | None, bars: int) -> BookSnapshot:
    """Return the part of a strategy book that IB cannot tell us after a restart (``bars``: the feed's length)."""
    return BookSnapshot(
        trade_id=trade_id, size=book.size, entry_price=book.entry_price, entry_comm=book.entry_comm,
        entry_time=None if book.entry_time is None else book.entry_time.replace(tzinfo=None),
        entry_p_up=book.entry_p_up, exit_reason=book.exit_reason, reserved=book.reserved,
        bars_held=bars - book.entry_bar + 1 if book.size > 0 and book.entry_bar else 0,
        entry_pending=book.entry_ref is not None, stop_bound=book.stop is not None,
        target_bound=book.target is not None, exit_pending=book.exit_ref is not None)


def _bound_roles(snap: BookSnapshot) -> set[str]:
    """The roles of the orders the book was tracking (the entry only while no share was bought)."""
    flags = {ENTRY: not snap.size > 0, STOP: snap.stop_bound, TARGET: snap.target_bound, EXIT: snap.exit_pending}
    return {role for role, bound in flags.items() if bound}


def restore_books(strategy: MLStrategy, broker: IBBroker, state: StateStore) -> None:
    """Give ``strategy`` back its open trades from ``state``: books, the orders they track, our positions."""
    datas = {d._name: d for d in strategy.datas}
    for symbol, snap in state.books().items():
        data = datas.get(symbol)
        if data is None:
            logger.warning("state has a trade in %s, which this run does not trade; left alone", symbol)
            continue
        book = Book(size=snap.size, entry_price=snap.entry_price, entry_comm=snap.entry_comm,
                    entry_p_up=snap.entry_p_up, entry_time=snap.entry_time, reserved=snap.reserved,
                    exit_reason=snap.exit_reason)
        rows = state.orders(symbol, snap.trade_id)
        twins = broker.restore_orders(strategy, data, snap.trade_id, rows, _bound_roles(snap))
        book.entry_ref = twins[ENTRY].ref if ENTRY in twins else None
        book.stop, book.target = twins.get(STOP), twins.get(TARGET)
        book.exit_ref = twins[EXIT].ref if EXIT in twins else None
        strategy.restore_book(symbol, book, snap.bars_held)
        statuses = {r["role"]: r["status"] for r in rows if parse_order_ref(r["order_ref"]) is not None}
        logger.info("restored %s trade %s: %g shares, %s", symbol, snap.trade_id, book.size,
                    ", ".join(f"{role}={statuses[role]}" for role in ROLES if role in statuses))


# -- adoption -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecoveryParams:
    """The strategy parameters adoption replays the strategy's exit and cooldown rules with."""

    bar_minutes: int
    flatten_minutes: float
    cooldown_bars_after_stop: int
    max_hold_bars: int
    calendar: str = "XNYS"

    @classmethod
    def of(cls, strategy: MLStrategy, calendar: str) -> RecoveryParams:
        """Return the parameters of a running ``strategy`` trading on exchange ``calendar``."""
        p = strategy.p
        return cls(p.bar_minutes, p.flatten_minutes, p.cooldown_bars_after_stop, p.max_hold_bars, calendar)


@dataclass
class TradeAtIB:
    """One of our trades as IB knows it: its executions and its working orders by role."""

    symbol: str
    trade_id: str
    executions: list[ExecutionRecord] = field(default_factory=list)  # time order
    open_orders: dict[str, OpenOrderRecord] = field(default_factory=dict)  # role -> working order

    @property
    def signal_bar(self) -> datetime:
        """The signal bar's start (UTC) from the trade id."""
        return trade_start(self.trade_id)

    def shares(self, role: str | None = None) -> float:
        """Net shares of our executions (bought positive), of one role or all."""
        return sum(e.signed_shares for e in self.executions if role is None or e.role == role)

    def vwap(self, role: str) -> float:
        """Average fill price of one role's executions (NaN when none)."""
        rows = [e for e in self.executions if e.role == role]
        qty = sum(e.shares for e in rows)
        return sum(e.shares * e.price for e in rows) / qty if qty else math.nan

    def commission(self, role: str | None = None) -> float:
        """IB's commissions of our executions (of one role or all)."""
        return sum(e.commission for e in self.executions if role is None or e.role == role)


def _naive_utc(t: datetime) -> datetime:
    return to_utc(t).replace(tzinfo=None)


def _bar_start(t: datetime, bar_minutes: int) -> datetime:
    """Return the start (UTC) of the bar that contains ``t``."""
    t = t.astimezone(UTC)
    return t - timedelta(minutes=t.minute % bar_minutes, seconds=t.second, microseconds=t.microsecond)


def collect(executions: Iterable[ExecutionRecord], open_orders: Iterable[OpenOrderRecord],
            strategy_id: str) -> dict[tuple[str, str], TradeAtIB]:
    """Group our executions and working orders by (symbol, trade id)."""
    found: dict[tuple[str, str], TradeAtIB] = {}
    for execution in sorted(executions, key=lambda e: e.time):
        ref = parse_order_ref(execution.order_ref, strategy_id)
        if ref is not None:
            found.setdefault((ref.symbol, ref.trade_id), TradeAtIB(ref.symbol, ref.trade_id)).executions.append(
                execution)
    for order in open_orders:
        if order.working and parse_order_ref(order.order_ref, strategy_id) is not None:
            found.setdefault((order.symbol, order.trade_id),
                             TradeAtIB(order.symbol, order.trade_id)).open_orders[order.role] = order
    return found


@dataclass
class Adoption:
    """What :func:`adopt` wrote, for the log and the tests."""

    open_trades: list[str] = field(default_factory=list)
    closed_trades: list[str] = field(default_factory=list)
    risk: dict[str, Any] | None = None


class Adopter:
    """Write the store rows of trades IB knows and the store lost (see the module docstring)."""

    def __init__(self, state: StateStore, strategy_id: str, params: RecoveryParams, now: datetime) -> None:
        self.state = state
        self.strategy_id = strategy_id
        self.params = params
        self.now = now
        self.today = to_exchange(now).strftime("%Y%m%d")
        self.bar = timedelta(minutes=params.bar_minutes)
        # the newest closed bar: everything up to it was processed before the store was lost
        self.last_bar = _bar_start(now, params.bar_minutes) - self.bar

    def unknown(self, found: TradeAtIB, tradable: set[str]) -> bool:
        """True when ``found`` is today's, in ``tradable`` (traded symbols with no stored book), and the store
        knows none of its orders."""
        if found.trade_id[:8] != self.today or found.symbol not in tradable:
            return False
        refs = {str(OrderRef(self.strategy_id, found.symbol, found.trade_id, role)) for role in ROLES}
        return all(self.state.order(r) is None for r in refs)

    def write_orders(self, found: TradeAtIB) -> None:
        """Order rows and executions, as the engine would have written them."""
        for role in ROLES:
            ref = str(OrderRef(self.strategy_id, found.symbol, found.trade_id, role))
            executions = [e for e in found.executions if e.role == role]
            order = found.open_orders.get(role)
            if order is None and not executions:
                continue
            filled = sum(e.shares for e in executions)
            self.state.put_order(
                ref, symbol=found.symbol, trade_id=found.trade_id, role=role,
                action="BUY" if role == ENTRY else "SELL",
                quantity=order.quantity if order is not None else filled,
                order_type=order.order_type if order is not None else ORDER_TYPE_OF_ROLE[role],
                price=order.price if order is not None else None,
                status=order.status if order is not None else "Filled",
                ib_order_id=(order.order_id if order is not None else executions[0].order_id) or None)
            self.state.update_order(ref, filled=filled,
                                    perm_id=(order.perm_id if order is not None else executions[0].perm_id) or None)
            for execution in executions:
                self.state.record_fill(execution)

    def open_book(self, found: TradeAtIB) -> BookSnapshot:
        """The book snapshot of an open trade (what :func:`book_snapshot` would have stored)."""
        entry_bar = found.signal_bar + self.bar  # the bar the entry fill was seen on
        exit_working = EXIT in found.open_orders
        return BookSnapshot(
            trade_id=found.trade_id, size=found.shares(), entry_price=found.vwap(ENTRY),
            entry_comm=found.commission(ENTRY), entry_time=_naive_utc(entry_bar), entry_p_up=math.nan,
            exit_reason=self._exit_reason(self.last_bar, entry_bar) if exit_working else None, reserved=0.0,
            bars_held=max(0, round((self.last_bar - entry_bar) / self.bar) + 1),
            entry_pending=found.shares(ENTRY) <= _EPS and ENTRY in found.open_orders,
            stop_bound=STOP in found.open_orders, target_bound=TARGET in found.open_orders,
            exit_pending=exit_working)

    def _exit_reason(self, exit_bar: datetime, entry_bar: datetime) -> ExitReason:
        """The strategy's time exit (EOD or TIMEOUT) of a market exit seen on ``exit_bar`` (decided one bar
        earlier)."""
        decided = exit_bar - self.bar
        p = self.params
        mtc = float(minutes_to_close(pd.DatetimeIndex([decided]), p.bar_minutes, p.calendar)[0])
        held = round((decided - entry_bar) / self.bar) + 1
        # a market exit is only ever sent as a time exit: TIMEOUT, as the strategy books an exit of unknown reason
        return time_exit_reason(mtc, held, p.flatten_minutes, p.max_hold_bars) or ExitReason.TIMEOUT

    def closed_trade(self, found: TradeAtIB) -> TradeRecord:
        """The closed-trade record of a trade with no shares left."""
        exits = [e for e in found.executions if e.signed_shares < 0]
        exit_role = exits[-1].role
        exit_bar = _bar_start(exits[-1].time, self.params.bar_minutes)
        entry_bar = found.signal_bar + self.bar
        reason = {STOP: ExitReason.STOP, TARGET: ExitReason.TARGET}.get(exit_role or "") \
            or self._exit_reason(exit_bar, entry_bar)
        qty = found.shares(ENTRY)
        sold = -sum(e.signed_shares for e in exits)
        exit_price = sum(e.shares * e.price for e in exits) / sold
        commission = found.commission()
        return TradeRecord(
            symbol=found.symbol, entry_time=_naive_utc(entry_bar), exit_time=_naive_utc(exit_bar),
            entry_price=found.vwap(ENTRY), exit_price=exit_price, quantity=qty, exit_reason=reason,
            p_up_at_entry=math.nan, pnl=(exit_price - found.vwap(ENTRY)) * qty - commission, commission=commission,
            bars_held=round((exit_bar - entry_bar) / self.bar), adopted=True)

    def cooldown_left(self, trade: TradeRecord) -> int:
        """Bars of cooldown still due after a STOP exit, as the strategy's ``RiskState`` holds it after
        ``last_bar``: started on the exit bar, one bar consumed by every bar processed since (that one included)."""
        if trade.exit_reason != ExitReason.STOP:
            return 0
        risk = RiskState()
        risk.start_cooldown(trade.symbol, self.params.cooldown_bars_after_stop)
        for _ in range(round((self.last_bar - trade.exit_time.replace(tzinfo=UTC)) / self.bar) + 1):
            risk.tick_cooldown(trade.symbol)
        return risk.cooldowns.get(trade.symbol, 0)


def adopt(session: IBSession, state: StateStore, strategy_id: str, symbols: Iterable[str], params: RecoveryParams,
          equity: float, marks: dict[str, float] | None = None) -> Adoption:
    """Adopt today's trades of ours that IB knows and ``state`` does not; return what was adopted.

    Parameters
    ----------
    session
        The connected session (executions and open orders are requested on it).
    state
        The store to write into (before :func:`restore_books` reads it).
    strategy_id, symbols
        Whose orders, and the symbols this run trades.
    params
        Bar size, flatten window, max hold and cooldown of the strategy.
    equity
        The account's net liquidation value now (the broker's ``getvalue()``; NaN when IB sent none).
    marks
        Current prices by symbol for today's open P&L (default: IB's portfolio prices).
    """
    done = Adoption()
    if not session.connected:
        logger.warning("not connected to IB at start: trades unknown to the state store cannot be adopted")
        return done
    executions = account.executions(session, strategy_id)
    found = collect(executions, account.open_orders(session, strategy_id), strategy_id)
    adopter = Adopter(state, strategy_id, params, session.now())
    tradable = set(symbols) - set(state.books())
    todo = [f for f in found.values() if adopter.unknown(f, tradable)]
    if not todo:
        return done
    if marks is None:
        marks = account.marks(session)
    closed: list[TradeRecord] = []
    open_pnl = 0.0
    with state.transaction():
        for f in todo:
            adopter.write_orders(f)
            if f.shares() > _EPS or (ENTRY in f.open_orders and f.shares(ENTRY) <= _EPS):
                book = adopter.open_book(f)
                state.save_book(f.symbol, book)
                mark = marks.get(f.symbol, book.entry_price)
                open_pnl += (mark - book.entry_price) * book.size - book.entry_comm if book.size else 0.0
                done.open_trades.append(f"{f.symbol}:{f.trade_id}")
            elif f.shares(ENTRY) > _EPS:
                trade = adopter.closed_trade(f)
                state.append_trade(trade)
                closed.append(trade)
                done.closed_trades.append(f"{f.symbol}:{f.trade_id}:{trade.exit_reason}")
        done.risk = _risk(state, adopter, closed, open_pnl, equity)
    logger.warning("state store lost these trades; adopted from IB by orderRef: open %s, closed today %s%s "
                   "(p_up at entry and blocked-entry counts are not recoverable)", done.open_trades or "none",
                   done.closed_trades or "none", "; risk state rebuilt" if done.risk else "")
    return done


def _risk(state: StateStore, adopter: Adopter, closed: list[TradeRecord], open_pnl: float,
          net_liq: float) -> dict[str, Any] | None:
    """Write today's risk state when the store has none for today; return it."""
    today = session_key(adopter.now)
    stored = state.get_value("risk")
    if stored is not None and int(stored["session"]) == today:
        return None
    realized = sum(t.pnl for t in closed)
    risk = RiskState(session=today, start_equity=net_liq - realized - open_pnl, realized_pnl=realized)
    if not math.isfinite(net_liq):  # no account values yet: the first bar starts the day at the equity it sees
        logger.warning("no NetLiquidation from IB: today's start equity cannot be rebuilt; the daily loss stop "
                       "counts from the first bar")
        risk.session = -1
    last_bar_time = dict(state.get_value("last_bar_time", {}))
    for trade in sorted(closed, key=lambda t: t.exit_time):  # the symbol's last STOP counts
        left = adopter.cooldown_left(trade)
        if left > 0:
            risk.cooldowns[trade.symbol] = left
            # bars after the last one processed before the loss run the clock on (as after a restart)
            last_bar_time[trade.symbol] = bt.date2num(_naive_utc(adopter.last_bar))
    state.set_value("risk", risk.to_dict())
    state.set_value("last_bar_time", last_bar_time)
    return risk.to_dict()
