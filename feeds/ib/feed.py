"""A live backtrader feed of CLOSED bars polled from IB's historical-data API.

One :class:`IBPollingFeed` per symbol; all feeds on one :class:`~feeds.ib.session.IBSession` share one
:class:`BarPoller`, so that a poll cycle asks for every due symbol at once (concurrent requests on the one
connection, one round trip) and all symbols' bars for a minute reach the strategy in the same backtrader
iteration. The poller is driven from ``_load``: backtrader calls it in its synchronous main loop; nothing
runs in the background.

Per symbol (:class:`SymbolTracker`):

- **warm-up**: at start, the last ``warmup_bars`` closed bars (``N D`` of RTH history), flagged historical;
- **schedule**: the next poll is due at the end of the next RTH bar (exchange calendar; nights, weekends and
  holidays skipped) plus ``poll_offset_seconds``;
- **recent window only**: a poll asks for ``now - last delivered bar`` rounded up plus one bar, in seconds
  (``N D`` beyond one day), so a gap after a reconnect is backfilled by the same request;
- **closed bars only, exactly once, in order**: a bar is kept when ``start + bar <= now`` (IB's still-forming
  last bar is dropped) and ``start > last queued start``;
- **pacing**: every request goes through the shared :class:`~feeds.ib.budget.RequestBudget`; a 162 pacing
  error backs the budget off and the bar comes with a later poll;
- **no market-data permission** (162 "No market data permissions", 354 …; ``ErrorKind.NO_PERMISSION``): no
  retry can fix it, so the symbol is alerted once (ERROR log and the session's alert channels), marked
  ``NOTSUBSCRIBED`` and asked again only every :data:`NO_PERMISSION_RETRY_SECONDS` (a subscription added
  meanwhile is picked up without a restart); the other symbols are not held up;
- **stale data**: ``DELAYED`` when no new bar arrived ``stale_after_bars`` bars after one was due (and while
  warm-up bars are delivered), ``DISCONNECTED`` while the session is down, ``NOTSUBSCRIBED`` while IB refuses the
  symbol's bars for lack of a market-data permission, ``LIVE`` otherwise.

Bars carry the same extra lines as :class:`feeds.pandas_feed.BarFrameFeed` (``minutes_to_close``,
``session``), computed with the same functions, and backtrader's ``datetime`` is the bar **start** in UTC, as in
the backtest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import backtrader as bt
import numpy as np
import pandas as pd

from core.calendar import minutes_to_close, session_keys, session_schedule
from feeds.ib.budget import RequestBudget, RequestKey
from feeds.ib.errors import ErrorKind, classify
from feeds.ib.session import IBSession
from feeds.pandas_feed import to_bt_num

logger = logging.getLogger(__name__)

NS = 1_000_000_000
_RETRY_SECONDS = 5.0  # re-poll this soon when the due bar was not in the answer yet
#: Ask again this long after IB said the account has no market-data permission for a symbol.
NO_PERMISSION_RETRY_SECONDS = 600.0


# -- exchange sessions (numpy, cached) --------------------------------------------------------------------
def latest_closed_bar(now_ns: int, bar_ns: int, calendar: str = "XNYS") -> int | None:
    """Return the start (epoch ns) of the most recent RTH bar that has closed at ``now_ns``."""
    opens, closes = session_schedule(calendar)
    i = int(np.searchsorted(opens, now_ns - bar_ns, side="right")) - 1
    while i >= 0:
        end_cap = min(now_ns, int(closes[i]))
        start = int(opens[i]) + ((end_cap - int(opens[i])) // bar_ns) * bar_ns - bar_ns
        if start >= opens[i]:
            return start
        i -= 1
    return None


def next_bar_end(after_start_ns: int, bar_ns: int, calendar: str = "XNYS") -> int:
    """Return the end (epoch ns) of the first RTH bar that starts after ``after_start_ns``."""
    opens, closes = session_schedule(calendar)
    start = after_start_ns + bar_ns
    i = int(np.searchsorted(opens, start, side="right")) - 1
    if i >= 0 and start + bar_ns <= closes[i]:
        return start + bar_ns
    j = min(i + 1, len(opens) - 1)
    return int(opens[j]) + bar_ns


# -- per-symbol state --------------------------------------------------------------------------------------
class Bar(NamedTuple):
    """One closed bar ready for backtrader's lines."""

    dt: float  # backtrader float datetime (UTC) of the bar start
    open: float
    high: float
    low: float
    close: float
    volume: float
    mtc: float
    session: float
    historical: bool
    start_ns: int


@dataclass
class SymbolTracker:
    """What one symbol's feed has queued and when it polls next (no backtrader, no IB here).

    Parameters
    ----------
    symbol
        The ticker.
    bar_minutes
        Bar length.
    warmup_bars
        Closed bars loaded at start.
    poll_offset_seconds, stale_after_bars, exchange
        Schedule and staleness settings.
    """

    symbol: str
    bar_minutes: int
    warmup_bars: int
    poll_offset_seconds: float
    stale_after_bars: int
    exchange: str = "XNYS"
    queue: deque[Bar] = field(default_factory=deque)
    last_start_ns: int | None = None  # start of the last bar queued (delivered or about to be)
    warmed_up: bool = False
    next_poll_ns: int = 0  # earliest time of the next request (retry / budget)
    delivered: int = 0
    polls: int = 0
    no_permission: bool = False  # IB refused its bars for lack of a market-data subscription (until it answers)

    @property
    def bar_ns(self) -> int:
        """Return the bar length in ns."""
        return self.bar_minutes * 60 * NS

    def due_ns(self) -> int:
        """Return when the next poll is due: the next bar's end + offset (0 before warm-up)."""
        if not self.warmed_up or self.last_start_ns is None:
            return self.next_poll_ns
        scheduled = next_bar_end(self.last_start_ns, self.bar_ns, self.exchange) + int(
            self.poll_offset_seconds * NS)
        return max(scheduled, self.next_poll_ns)

    def is_due(self, now_ns: int) -> bool:
        """Return True when a request should be sent now."""
        return now_ns >= self.due_ns()

    def is_stale(self, now_ns: int) -> bool:
        """Return True when bars are ``stale_after_bars`` bars overdue."""
        if self.last_start_ns is None:
            return False
        expected = next_bar_end(self.last_start_ns, self.bar_ns, self.exchange)
        return now_ns >= expected + self.stale_after_bars * self.bar_ns

    def request_key(self, now_ns: int) -> RequestKey:
        """Return the request to send now: warm-up (``N D``) or the recent window (seconds)."""
        bar = f"{self.bar_minutes} min" if self.bar_minutes == 1 else f"{self.bar_minutes} mins"
        if not self.warmed_up or self.last_start_ns is None:
            per_session = 390 // self.bar_minutes
            days = math.ceil(self.warmup_bars / per_session) + 1
            return RequestKey(self.symbol, "", f"{days} D", bar)
        gap = now_ns - self.last_start_ns
        seconds = (math.ceil(gap / self.bar_ns) + 1) * self.bar_minutes * 60
        if seconds <= 86_400:
            return RequestKey(self.symbol, "", f"{seconds} S", bar)
        return RequestKey(self.symbol, "", f"{math.ceil(seconds / 86_400) + 1} D", bar)

    def accept(self, starts_ns: Sequence[int], now_ns: int) -> list[int]:
        """Return the positions of ``starts_ns`` to queue: closed, newer than the last queued, in order."""
        keep: list[int] = []
        last = self.last_start_ns if self.last_start_ns is not None else -1
        for i, start in enumerate(starts_ns):
            if start > last and start + self.bar_ns <= now_ns:
                keep.append(i)
                last = start
        if not self.warmed_up and len(keep) > self.warmup_bars:
            keep = keep[-self.warmup_bars:]
        return keep


@dataclass
class _Answer:
    tracker: SymbolTracker
    key: RequestKey
    bars: list[Any]
    error: tuple[int, str] | None


# -- the shared poller -------------------------------------------------------------------------------------
class BarPoller:
    """Poll every due symbol of one session in one cycle through a shared request budget.

    Parameters
    ----------
    session
        The connection.
    budget
        The shared pacing budget.
    clock
        Current time; the session's clock by default.
    """

    _by_session: weakref.WeakKeyDictionary[IBSession, BarPoller] = weakref.WeakKeyDictionary()

    def __init__(self, session: IBSession, budget: RequestBudget,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.session = session
        self.budget = budget
        self.clock = clock or session.clock
        self.trackers: list[SymbolTracker] = []
        self.cycles = 0
        self.requests = 0
        self.pacing_errors = 0
        self.last_cycle_requests = 0
        self.on_service: list[Callable[[], None]] = []  # called on every pass of the engine's loop (heartbeat)
        session.on_resync.append(self.backfill)

    @classmethod
    def for_session(cls, session: IBSession, budget: RequestBudget | None = None,
                    clock: Callable[[], datetime] | None = None) -> BarPoller:
        """Return the poller shared by every feed of ``session`` (created on first use)."""
        poller = cls._by_session.get(session)
        if poller is None:
            poller = cls(session, budget or RequestBudget.from_config(session.cfg), clock)
            cls._by_session[session] = poller
        elif budget is not None and budget is not poller.budget:
            raise ValueError("all feeds of one session must share one RequestBudget")
        return poller

    def register(self, tracker: SymbolTracker) -> None:
        """Add a symbol to the cycle."""
        self.trackers.append(tracker)

    def unregister(self, tracker: SymbolTracker) -> None:
        """Remove a symbol from the cycle."""
        if tracker in self.trackers:
            self.trackers.remove(tracker)

    def backfill(self) -> None:
        """Poll every overdue symbol at once (after a reconnect or 1101/1102); the recent window covers the gap."""
        logger.info("backfill after re-sync: %d symbols", len(self.trackers))
        for tracker in self.trackers:
            tracker.next_poll_ns = 0

    def service(self) -> int:
        """Keep the session up and run one poll cycle if any symbol is due; return the bars queued."""
        for callback in self.on_service:
            callback()
        if not self.session.maintain():
            return 0
        now = self.clock()
        now_ns = int(now.timestamp() * NS)
        batch: list[tuple[SymbolTracker, RequestKey]] = []
        for tracker in self.trackers:
            if not tracker.is_due(now_ns):
                continue
            key = tracker.request_key(now_ns)
            if self.budget.try_acquire(key, now):
                batch.append((tracker, key))
            else:
                wait = self.budget.wait_seconds(key, now)
                tracker.next_poll_ns = now_ns + int(max(wait, 0.05) * NS)
        if not batch:
            return 0
        return self.run_cycle(batch, now_ns)

    def run_cycle(self, batch: list[tuple[SymbolTracker, RequestKey]], now_ns: int) -> int:
        """Send ``batch`` concurrently, wait for every answer, queue the new closed bars."""
        self.cycles += 1
        self.requests += len(batch)
        self.last_cycle_requests = len(batch)
        async def fetch_all() -> list[_Answer]:
            return list(await asyncio.gather(*(self._fetch(t, k) for t, k in batch)))

        try:
            answers = self.session.run(fetch_all())
        except ConnectionError:
            answers = [_Answer(t, k, [], (504, "not connected")) for t, k in batch]
        for _, key in batch:
            self.budget.release(key)
        return self._queue_answers(answers, now_ns)

    async def _fetch(self, tracker: SymbolTracker, key: RequestKey) -> _Answer:
        ib = self.session.ib
        try:
            bars = await ib.reqHistoricalDataAsync(
                self.session.contract(key.symbol), key.end, key.duration, key.bar_size, key.what_to_show,
                key.use_rth, formatDate=2, timeout=self.session.cfg.request_timeout_seconds)
        except ConnectionError as exc:
            return _Answer(tracker, key, [], (504, str(exc)))
        error = None
        if not bars:
            error = self.session.request_error(bars.reqId) or (0, "no bars (timed out or empty answer)")
        return _Answer(tracker, key, list(bars), error)

    def _queue_answers(self, answers: list[_Answer], now_ns: int) -> int:
        kept: list[tuple[_Answer, list[Any]]] = []
        for answer in answers:
            tracker = answer.tracker
            tracker.polls += 1
            if answer.error is not None:
                self._on_error(answer, now_ns)
                continue
            self.budget.note_success()
            if tracker.no_permission:
                tracker.no_permission = False
                logger.warning("%s: IB answers with bars again (market-data permission granted); trading it again",
                               tracker.symbol)
            starts = [int(b.date.timestamp()) * NS for b in answer.bars]
            positions = tracker.accept(starts, now_ns)
            kept.append((answer, [answer.bars[i] for i in positions]))
            newest = latest_closed_bar(now_ns, tracker.bar_ns, tracker.exchange)
            got_newest = bool(positions) and newest is not None and starts[positions[-1]] >= newest
            tracker.next_poll_ns = 0 if got_newest or not tracker.warmed_up else now_ns + int(_RETRY_SECONDS * NS)
        return self._enqueue(kept, now_ns)

    def _on_error(self, answer: _Answer, now_ns: int) -> None:
        code, text = answer.error or (0, "")
        kind = classify(code, text)
        tracker = answer.tracker
        if kind is ErrorKind.PACING:
            self.pacing_errors += 1
            wait = self.budget.backoff(now_ns / NS, answer.key)
            tracker.next_poll_ns = now_ns + int(wait * NS)
        elif kind is ErrorKind.NO_PERMISSION:
            self._no_permission(tracker, code, text)
            tracker.next_poll_ns = now_ns + int(NO_PERMISSION_RETRY_SECONDS * NS)
        else:
            logger.warning("%s: historical request %s %s failed: IB %d %s", tracker.symbol, answer.key.duration,
                           answer.key.bar_size, code, text)
            tracker.next_poll_ns = now_ns + int(_RETRY_SECONDS * NS)

    def _no_permission(self, tracker: SymbolTracker, code: int, text: str) -> None:
        """Alert once per episode that IB refuses ``tracker``'s bars for lack of a market-data subscription."""
        if tracker.no_permission:
            logger.info("%s: still no market-data permission (IB %d); asking again in %.0f min", tracker.symbol,
                        code, NO_PERMISSION_RETRY_SECONDS / 60)
            return
        tracker.no_permission = True
        self.session.alert(
            f"{tracker.symbol}: IB refuses its historical bars for lack of a market-data permission (IB {code}: "
            f"{text}). No bars and no new trades for {tracker.symbol} (an open position keeps its stop and target "
            f"at IB, but gets no time exit); asking again every {NO_PERMISSION_RETRY_SECONDS / 60:.0f} min. "
            "Subscribe to its exchange's market data for this login (and share it with the paper account)")

    def _enqueue(self, kept: list[tuple[_Answer, list[Any]]], now_ns: int) -> int:
        """Convert kept bars (one calendar lookup per bar size) and append them to the symbols' queues."""
        groups: dict[tuple[int, str], list[tuple[_Answer, list[Any]]]] = {}
        for answer, bars in kept:
            groups.setdefault((answer.tracker.bar_minutes, answer.tracker.exchange), []).append((answer, bars))
        return sum(self._enqueue_group(group, now_ns) for group in groups.values())

    @staticmethod
    def _enqueue_group(kept: list[tuple[_Answer, list[Any]]], now_ns: int) -> int:
        starts = [int(b.date.timestamp()) * NS for _, bars in kept for b in bars]
        if starts:
            first = kept[0][0].tracker
            index = pd.DatetimeIndex(pd.to_datetime(np.asarray(starts, dtype="int64"), utc=True), name="datetime")
            nums = to_bt_num(index).tolist()
            mtc = minutes_to_close(index, first.bar_minutes, first.exchange).tolist()
            days = session_keys(index)[0].astype("float64").tolist()
        pos = 0
        for answer, bars in kept:
            tracker = answer.tracker
            newest = latest_closed_bar(now_ns, tracker.bar_ns, tracker.exchange)
            for b in bars:
                start = starts[pos]
                historical = not tracker.warmed_up or newest is None or start < newest
                tracker.queue.append(Bar(nums[pos], float(b.open), float(b.high), float(b.low), float(b.close),
                                         float(b.volume), mtc[pos], days[pos], historical, start))
                tracker.last_start_ns = start
                pos += 1
            if bars:
                logger.debug("%s: queued %d bar(s), last %s", tracker.symbol, len(bars),
                             pd.Timestamp(tracker.last_start_ns, tz="UTC"))
            tracker.warmed_up = True
        return len(starts)

    def idle(self, tracker: SymbolTracker, seconds: float) -> None:
        """Let time pass while nothing is due: the first symbol's feed runs the event loop, the others don't wait."""
        leader = self.trackers[0] if self.trackers else tracker
        self.session.run_event_loop(seconds if tracker is leader else 0.0)


# -- the backtrader feed -------------------------------------------------------------------------------------
class IBPollingFeed(bt.feed.DataBase):
    """A live backtrader feed of one symbol's closed IB bars (see the module docstring).

    Parameters
    ----------
    session
        The :class:`~feeds.ib.session.IBSession` (required).
    symbol
        The ticker (a US stock on SMART).
    bar_minutes
        Bar length (1 or 5).
    budget
        The :class:`~feeds.ib.budget.RequestBudget` shared by every feed and the downloader.
    warmup_bars
        Closed bars loaded at start (required): the live engine passes the feature window
        (``ml.features.live_window_bars``), so the first live bar's features equal the backtest's.
    clock
        Current time; the session's clock by default.
    poll_offset_seconds, stale_after_bars
        ``cfg.live`` values by default.
    exchange
        Exchange calendar.
    qcheck
        Seconds the first feed runs the event loop when nothing is due (backtrader's live-feed wait).

    Attributes
    ----------
    historical
        True while the bar just loaded is history (warm-up, or an older bar of a backfill); MLStrategy does
        not enter on it.
    """

    lines = ("minutes_to_close", "session")
    params = (
        ("session", None), ("symbol", None), ("bar_minutes", 1), ("budget", None), ("warmup_bars", None),
        ("clock", None), ("poll_offset_seconds", None), ("stale_after_bars", None), ("exchange", "XNYS"),
        ("qcheck", 0.5),
    )

    def islive(self) -> bool:
        """Return True: backtrader then disables preload and runonce."""
        return True

    def start(self) -> None:
        """Register with the session's shared poller; warm-up is requested by the first poll."""
        super().start()
        session: IBSession | None = self.p.session
        if session is None or not self.p.symbol or not self.p.warmup_bars:
            raise ValueError("IBPollingFeed needs session=, symbol= and warmup_bars=")
        cfg = session.cfg
        self.historical = True
        self._stopped = False
        self._went_live = False
        self._clock: Callable[[], datetime] = self.p.clock or session.clock
        self._poller = BarPoller.for_session(session, self.p.budget, self._clock)
        self._tracker = SymbolTracker(
            symbol=str(self.p.symbol).upper(), bar_minutes=int(self.p.bar_minutes),
            warmup_bars=int(self.p.warmup_bars),
            poll_offset_seconds=float(cfg.poll_offset_seconds if self.p.poll_offset_seconds is None
                                      else self.p.poll_offset_seconds),
            stale_after_bars=int(cfg.stale_after_bars if self.p.stale_after_bars is None
                                 else self.p.stale_after_bars),
            exchange=self.p.exchange)
        self._poller.register(self._tracker)
        self.put_notification(self.DELAYED)

    def stop(self) -> None:
        """Leave the poller; ``_load`` returns False from now on."""
        self._stopped = True
        self._poller.unregister(self._tracker)
        super().stop()

    @property
    def tracker(self) -> SymbolTracker:
        """Return this feed's per-symbol state."""
        return self._tracker

    def _load(self) -> bool | None:
        if self._stopped:
            return False
        queue = self._tracker.queue
        if not queue:
            self._poller.service()
        if not queue:
            self._update_status(None)
            self._poller.idle(self._tracker, self._qcheck)
            return None
        bar = queue.popleft()
        lines: Any = self.lines
        lines.datetime[0] = bar.dt
        lines.open[0] = bar.open
        lines.high[0] = bar.high
        lines.low[0] = bar.low
        lines.close[0] = bar.close
        lines.volume[0] = bar.volume
        lines.openinterest[0] = 0.0
        lines.minutes_to_close[0] = bar.mtc
        lines.session[0] = bar.session
        self.historical = bar.historical
        self._tracker.delivered += 1
        self._update_status(bar)
        return True

    def _update_status(self, bar: Bar | None) -> None:
        """Report DISCONNECTED / DELAYED (stale or history) / LIVE through notify_data."""
        if not self._poller.session.connected:
            self.put_notification(self.DISCONNECTED)
            return
        if self._tracker.no_permission:
            self.put_notification(self.NOTSUBSCRIBED)
            return
        now_ns = int(self._clock().timestamp() * NS)
        if bar is not None:
            if bar.historical:
                self.put_notification(self.DELAYED)
            else:
                self._went_live = True
                self.put_notification(self.LIVE)
        elif self._tracker.is_stale(now_ns):
            self.put_notification(self.DELAYED)
        elif self._laststatus in {self.DISCONNECTED, self.NOTSUBSCRIBED}:
            self.put_notification(self.LIVE if self._went_live else self.DELAYED)


__all__ = ["Bar", "BarPoller", "IBPollingFeed", "SymbolTracker", "latest_closed_bar", "next_bar_end"]
