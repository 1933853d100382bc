"""``MLStrategy``: the one Strategy class, for backtests and live trading alike.

Per symbol and per bar it makes one decision:

1. in a position: manage exits — flatten at the end of the session (EOD), or after ``max_hold_bars`` bars
   (TIMEOUT); a time exit cancels the stop/target children first, then sells at market;
2. flat: WARMUP until the features are defined; NO_SIGNAL when ``p_up < threshold``; otherwise the risk
   rules (no-new-entries window, daily loss stop, cooldown after a STOP, concurrent-position cap) may block
   the entry (each block counted with its reason), else a market buy sized by the sizer.

When the entry fills, a stop at ``fill × (1 - stop_loss)`` and a target at ``fill × (1 + take_profit)`` go
out as an OCO pair (the bracket). Every closed trade is recorded with its exit reason
(STOP, TARGET, TIMEOUT, EOD), ``p_up`` at entry, commission and bars held.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import backtrader as bt
import pandas as pd

from config.settings import bar_size_minutes
from core.records import BlockReason, Decision, ExitReason, TradeRecord
from ml.features import WARMUP_BARS
from strategies.risk import EntryContext, RiskState, default_rules, first_block
from strategies.signal import MLSignal, SeriesSignal
from strategies.sizer import CASH_BUFFER

logger = logging.getLogger(__name__)

_DEAD = (bt.Order.Canceled, bt.Order.Margin, bt.Order.Rejected, bt.Order.Expired)


@dataclass
class Book:
    """Our view of one symbol's position and working orders (orders are matched by ``ref``)."""

    entry_ref: int | None = None
    reserved: float = 0.0
    size: float = 0.0
    entry_price: float = math.nan
    entry_comm: float = 0.0
    entry_bar: int = 0
    entry_time: Any = None
    entry_p_up: float = math.nan
    stop: bt.Order | None = None
    target: bt.Order | None = None
    exit_ref: int | None = None
    exit_reason: ExitReason | None = None

    @property
    def busy(self) -> bool:
        """True while an entry is working or a position is open."""
        return self.entry_ref is not None or self.size > 0


class _FeedLines:
    """One feed with the line buffers the bar loop reads, looked up once (not through backtrader's proxies)."""

    __slots__ = ("data", "minutes_to_close", "name", "p_up", "session")

    def __init__(self, data: bt.feed.DataBase, signal: bt.Indicator) -> None:
        self.data = data
        self.name: str = data._name
        self.minutes_to_close = data.lines.minutes_to_close
        self.session = data.lines.session
        self.p_up = signal.lines.p_up


def time_exit_reason(minutes_to_close: float, bars_held: int, flatten_minutes: float,
                     max_hold_bars: int) -> ExitReason | None:
    """Return the time exit due for an open position, or None: EOD once the bar ends within ``flatten_minutes``
    of the close, else TIMEOUT once it has been held ``max_hold_bars`` bars (the entry bar counts as one)."""
    if minutes_to_close <= flatten_minutes:
        return ExitReason.EOD
    if bars_held >= max_hold_bars:
        return ExitReason.TIMEOUT
    return None


def strategy_params(cfg: Any) -> dict[str, Any]:
    """Map an :class:`config.settings.AppConfig` onto ``MLStrategy`` parameters (model not included)."""
    s, r = cfg.strategy, cfg.risk
    return {
        "bar_minutes": bar_size_minutes(cfg.data.bar_size),
        "p_up_entry_threshold": s.p_up_entry_threshold,
        "stop_loss": s.stop_loss,
        "take_profit": s.take_profit,
        "max_hold_bars": s.max_hold_bars,
        "no_new_entries_minutes": s.no_new_entries_minutes,
        "flatten_minutes": s.flatten_minutes,
        "daily_loss_limit": r.daily_loss_limit,
        "max_concurrent_positions": r.max_concurrent_positions,
        "cooldown_bars_after_stop": r.cooldown_bars_after_stop,
        "slippage": cfg.costs.slippage_bps / 10_000.0,
    }


class MLStrategy(bt.Strategy):
    """Long-only intraday strategy driven by the ``p_up`` of :class:`MLSignal` (see module docstring).

    Parameters
    ----------
    model
        Model bundle for :class:`MLSignal`; or ``None`` with ``signals`` given.
    signals
        ``symbol -> pd.Series of p_up`` aligned with that feed's bars (a fixed signal, for studies and
        the differential test); replaces the model.
    decision_sink
        Called with one dict per symbol per bar (time, symbol, p_up, decision, reason) when given.
    entry_gate
        Live only: ``entry_gate(symbol) -> reason | None``, asked before the risk rules; a reason (e.g.
        ``KILL_SWITCH``, ``IB_DISCONNECTED``) blocks the entry like a rule does.
    on_start, on_bar
        Live only: called with the strategy at start (restore books and risk state after a restart) and
        after every bar (persist them).

    Bars of a live feed flagged ``historical`` (warm-up and backfill) feed the signal but trade nothing.
    Those newer than ``last_bar_time`` (restored after a restart) are bars we missed live — the backfill
    after a 162 back-off, a reconnect or a restart: each gets a ``LATE`` decision line and runs the cooldown
    clocks on, so every bar has one decision line.
    """

    params = (
        ("model", None),
        ("signals", None),
        ("bar_minutes", 1),
        ("p_up_entry_threshold", 0.55),
        ("stop_loss", 0.004),
        ("take_profit", 0.006),
        ("max_hold_bars", 30),
        ("no_new_entries_minutes", 15),
        ("flatten_minutes", 5),
        ("daily_loss_limit", 0.02),
        ("max_concurrent_positions", 4),
        ("cooldown_bars_after_stop", 15),
        ("slippage", 0.0),
        ("decision_sink", None),
        ("entry_gate", None),
        ("on_start", None),
        ("on_bar", None),
    )

    def __init__(self) -> None:
        self.signals: dict[str, bt.Indicator] = {}
        fixed: Mapping[str, pd.Series] | None = self.p.signals
        for d in self.datas:
            if fixed is not None:
                self.signals[d._name] = SeriesSignal(d, series=fixed[d._name])
            else:
                self.signals[d._name] = MLSignal(d, model=self.p.model, bar_minutes=self.p.bar_minutes)
        self.rules = default_rules(self.p.no_new_entries_minutes, self.p.daily_loss_limit,
                                      self.p.max_concurrent_positions)
        self.risk = RiskState()
        self.books: dict[str, Book] = {d._name: Book() for d in self.datas}
        self.reserved_cash = 0.0
        self.trades: list[TradeRecord] = []
        self.blocked_log: Counter[tuple[Any, str]] = Counter()
        self._seen: dict[str, int] = {d._name: 0 for d in self.datas}
        self._last_equity = math.nan
        self._sink: Callable[[dict[str, Any]], None] | None = self.p.decision_sink
        self._gate: Callable[[str], BlockReason | None] | None = self.p.entry_gate
        self.last_bar_time: dict[str, float] = {}
        self.restored_bars_held: dict[str, int] = {}
        self._feeds = [_FeedLines(d, self.signals[d._name]) for d in self.datas]
        self._hooked = self.p.on_start is not None or self.p.on_bar is not None

    def start(self) -> None:
        """Let a live run restore its books and risk state (``on_start``)."""
        if self.p.on_start is not None:
            self.p.on_start(self)

    # -- restart (live) -------------------------------------------------------------------------------
    def restore_state(self, risk: RiskState | None, last_bar_time: Mapping[str, float]) -> None:
        """Take back the risk state (when one was stored) and each symbol's last live bar time after a restart."""
        if risk is not None:
            self.risk = risk
        self.last_bar_time = dict(last_bar_time)

    def restore_book(self, symbol: str, book: Book, bars_held: int) -> None:
        """Take back an open trade's book after a restart (its orders already bound by the broker).

        ``bars_held`` is the count persisted with the book: it is used when the entry bar is older than the
        warm-up history, so the max-hold clock resumes where it was.
        """
        book.entry_bar = 0
        self.restored_bars_held[symbol] = bars_held
        self.books[symbol] = book
        self.reserved_cash += book.reserved

    # -- bar loop -------------------------------------------------------------------------------------
    def prenext(self) -> None:
        """Feeds start at different times; decide for every feed that has a bar (warm-up is gated per feed)."""
        self.next()

    def next(self) -> None:
        """Make one decision per symbol that has a new bar."""
        seen = self._seen
        fresh = [f for f in self._feeds if (n := len(f.data)) and n != seen[f.name]]
        if not fresh:
            return
        if self._hooked:
            fresh = self._live_bars(fresh)
        if fresh:
            self._decide(fresh)
        if self.p.on_bar is not None:
            self.p.on_bar(self)

    def _live_bars(self, fresh: list[_FeedLines]) -> list[_FeedLines]:
        """Skip historical bars (running cooldowns on for bars after ``last_bar_time``); resolve restored books."""
        live = []
        for f in fresh:
            d = f.data
            name, now = d._name, d.datetime[0]
            book = self.books[name]
            if book.size > 0 and book.entry_bar == 0 and book.entry_time is not None \
                    and now >= bt.date2num(book.entry_time.replace(tzinfo=None)) - 1e-9:
                book.entry_bar = len(d)
            if getattr(d, "historical", False):
                self._seen[name] = len(d)
                if now > self.last_bar_time.get(name, math.inf):  # missed live: logged LATE, clocks run on
                    self._log_decision(d, float(self.signals[name].p_up[0]), Decision.LATE, None)
                    self.risk.tick_cooldown(name)
                    self.last_bar_time[name] = now
                continue
            if book.size > 0 and book.entry_bar == 0:  # entry bar older than the history: use the stored count
                book.entry_bar = len(d) - self.restored_bars_held.get(name, 0)
            self.last_bar_time[name] = now
            live.append(f)
        return live

    def _decide(self, fresh: list[_FeedLines]) -> None:
        equity = self.broker.getvalue()
        session = max([int(f.session[0]) for f in fresh])
        risk = self.risk
        if session != risk.session:
            risk.roll_session(session, self._last_equity if math.isfinite(self._last_equity) else equity)
        seen, books = self._seen, self.books
        for f in fresh:
            d = f.data
            seen[f.name] = len(d)
            book = books[f.name]
            if book.size > 0 and book.exit_ref is None:
                self._manage_exit(f, book)
            self._consider_entry(f, equity)
            if risk.cooldowns:
                risk.tick_cooldown(f.name)
        # nothing fills inside next(): the value seen at the start of the bar is the bar's value
        self._last_equity = equity

    def _manage_exit(self, f: _FeedLines, book: Book) -> None:
        """Submit the time exit (EOD or TIMEOUT) of an open position that has no exit working yet."""
        d = f.data
        held = len(d) - book.entry_bar + 1
        reason = time_exit_reason(f.minutes_to_close[0], held, self.p.flatten_minutes, self.p.max_hold_bars)
        if reason is None:
            return
        for child in (book.stop, book.target):
            if child is not None and child.alive():
                self.cancel(child)
        order = self.sell(data=d, size=book.size, exectype=bt.Order.Market)
        book.exit_ref, book.exit_reason = order.ref, reason
        logger.debug("%s %s exit submitted after %d bars (ref %d)", d._name, reason, held, order.ref)

    def _consider_entry(self, f: _FeedLines, equity: float) -> None:
        d, name = f.data, f.name
        p_up = float(f.p_up[0])
        book = self.books[name]
        reason: BlockReason | None = None
        if book.entry_ref is not None or book.size > 0:  # Book.busy, inlined: this runs on every bar
            decision = Decision.IN_POSITION
        elif len(d) < WARMUP_BARS or math.isnan(p_up):
            decision = Decision.WARMUP
        elif p_up < self.p.p_up_entry_threshold:
            decision = Decision.NO_SIGNAL
        else:
            ctx = EntryContext(name, f.minutes_to_close[0], equity, self._open_count(), self.risk)
            gate = self._gate(name) if self._gate is not None else None
            reason = gate or first_block(self.rules, ctx) or self._enter(d, p_up)
            decision = Decision.ENTER if reason is None else Decision.BLOCKED
            if reason is not None:
                self.risk.blocked[reason] += 1
                self.blocked_log[(self.risk.session, reason)] += 1
        if self._sink is not None:
            self._log_decision(d, p_up, decision, reason)

    def _log_decision(self, d: bt.feed.DataBase, p_up: float, decision: Decision, reason: BlockReason | None) -> None:
        if self._sink is not None:
            self._sink({"time": bt.num2date(d.datetime[0]), "symbol": d._name, "p_up": p_up,
                        "decision": decision, "reason": reason})

    def _enter(self, d: bt.feed.DataBase, p_up: float) -> BlockReason | None:
        size = self.getsizing(data=d, isbuy=True)
        if size <= 0:
            return BlockReason.SIZE_ZERO
        order = self.buy(data=d, size=size, exectype=bt.Order.Market)
        book = self.books[d._name]
        book.entry_ref, book.entry_p_up = order.ref, p_up
        price = d.close[0] * (1.0 + self.p.slippage)
        # keep the same headroom the sizer keeps, so entries sized on one bar never overdraw together
        book.reserved = size * price * (1.0 + CASH_BUFFER) + self.broker.getcommissioninfo(d).getcommission(size, price)
        self.reserved_cash += book.reserved
        return None

    def _open_count(self) -> int:
        return sum(1 for b in self.books.values() if b.busy)

    # -- order events ---------------------------------------------------------------------------------
    def notify_order(self, order: bt.Order) -> None:
        """Route order events by ``ref`` (backtrader hands out copies, never compare objects)."""
        if order.status in (bt.Order.Submitted, bt.Order.Accepted, bt.Order.Partial):
            return
        book = self.books[order.data._name]
        ref = order.ref
        if ref == book.entry_ref:
            self._on_entry(order, book)
        elif book.stop is not None and ref == book.stop.ref:
            if order.status == bt.Order.Completed:
                self._close_trade(order, book, ExitReason.STOP)
        elif book.target is not None and ref == book.target.ref:
            if order.status == bt.Order.Completed:
                self._close_trade(order, book, ExitReason.TARGET)
        elif ref == book.exit_ref:
            if order.status == bt.Order.Completed:
                self._close_trade(order, book, book.exit_reason or ExitReason.TIMEOUT)
            else:
                logger.error("%s exit order %d %s; retrying next bar", order.data._name, ref, order.getstatusname())
                book.exit_ref = None

    def _on_entry(self, order: bt.Order, book: Book) -> None:
        d = order.data
        self.reserved_cash -= book.reserved
        book.reserved = 0.0
        book.entry_ref = None
        if order.status in _DEAD:
            logger.warning("%s entry order %d %s", d._name, order.ref, order.getstatusname())
            return
        book.size = order.executed.size
        book.entry_price = order.executed.price
        book.entry_comm = order.executed.comm
        book.entry_bar = len(d)
        book.entry_time = bt.num2date(d.datetime[0])
        book.stop = self.sell(data=d, size=book.size, exectype=bt.Order.Stop,
                              price=book.entry_price * (1.0 - self.p.stop_loss))
        book.target = self.sell(data=d, size=book.size, exectype=bt.Order.Limit,
                                price=book.entry_price * (1.0 + self.p.take_profit), oco=book.stop)

    def _close_trade(self, order: bt.Order, book: Book, reason: ExitReason) -> None:
        d = order.data
        exit_price = order.executed.price
        commission = book.entry_comm + order.executed.comm
        pnl = (exit_price - book.entry_price) * book.size - commission
        self.trades.append(TradeRecord(
            symbol=d._name, entry_time=book.entry_time, exit_time=bt.num2date(d.datetime[0]),
            entry_price=book.entry_price, exit_price=exit_price, quantity=book.size, exit_reason=reason,
            p_up_at_entry=book.entry_p_up, pnl=pnl, commission=commission, bars_held=len(d) - book.entry_bar))
        self.risk.realized_pnl += pnl
        if reason == ExitReason.STOP:
            self.risk.start_cooldown(d._name, self.p.cooldown_bars_after_stop)
        self.books[d._name] = Book()
