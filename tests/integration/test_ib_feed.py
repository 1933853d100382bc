"""IBPollingFeed against ibsim with the real ib_async client, driven bar by bar on the simulated clock."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime

import backtrader as bt
import pandas as pd
import pytest
from ib_async import IB, Stock

from config.settings import LiveConfig
from core.calendar import minutes_to_close, session_keys
from feeds.ib.budget import RequestBudget
from feeds.ib.feed import BarPoller, IBPollingFeed
from feeds.ib.session import IBSession
from feeds.pandas_feed import to_bt_num
from ibsim import IBSim
from ml.features import live_window_bars
from tests.integration.conftest import NY, SIM_START, make_bars

Row = tuple[datetime, float, bool]


@pytest.fixture
def session(sim: IBSim) -> Iterator[IBSession]:
    cfg = LiveConfig(port=sim.port, client_id=9, request_timeout_seconds=0.5, pacing_small_bars_only=False,
                     reconnect_initial_seconds=1.0, reconnect_max_seconds=4.0)
    s = IBSession(cfg, clock=sim.clock.now, rng=random.Random(3))
    s.connect()
    yield s
    s.disconnect()


def start_feed(session: IBSession, symbol: str = "AAPL", budget: RequestBudget | None = None) -> IBPollingFeed:
    """Create and start a feed outside a run (backtrader needs a Cerebro as its environment)."""
    feed = IBPollingFeed(session=session, symbol=symbol, budget=budget or RequestBudget(False),
                         warmup_bars=live_window_bars(1), qcheck=0.0)
    bt.Cerebro().adddata(feed, name=symbol)
    feed._start()
    return feed


def drain(feed: IBPollingFeed) -> list[Row]:
    """Load every bar the feed has now (backtrader's next() until it returns None)."""
    rows: list[Row] = []
    while feed.next():
        rows.append((bt.num2date(feed.datetime[0]).replace(tzinfo=None), feed.close[0], feed.historical))
    return rows


def utc(local: str) -> datetime:
    return pd.Timestamp(local, tz=NY).tz_convert("UTC").tz_localize(None).to_pydatetime()


def statuses(feed: IBPollingFeed) -> list[str]:
    return [feed._getstatusname(status) for status, *_ in feed.notifs]


def test_warm_up_history_comes_first_flagged_historical_and_matches_the_bars(
        session: IBSession, sim_bars: dict[str, pd.DataFrame]) -> None:
    feed = start_feed(session)
    rows = drain(feed)
    n = live_window_bars(1)
    expected = sim_bars["AAPL"].loc[: pd.Timestamp("2024-01-04 09:59", tz=NY)]
    expected = expected[(expected.index.tz_convert(NY).time >= pd.Timestamp("09:30").time())
                        & (expected.index.tz_convert(NY).time < pd.Timestamp("16:00").time())].iloc[-n:]
    assert len(rows) == n
    assert [r[0] for r in rows] == list(expected.index.tz_localize(None))
    assert [r[1] for r in rows] == list(expected["close"])
    assert all(r[2] for r in rows)
    assert statuses(feed)[:1] == ["DELAYED"]


def test_extra_lines_equal_the_backtest_feeds(session: IBSession) -> None:
    feed = start_feed(session)
    drain(feed)
    index = pd.DatetimeIndex([pd.Timestamp("2024-01-04 09:59", tz=NY)]).tz_convert("UTC")
    assert feed.datetime[0] == to_bt_num(index)[0]
    assert feed.minutes_to_close[0] == minutes_to_close(index, 1)[0] == 360.0
    assert feed.session[0] == float(session_keys(index)[0][0])


def test_closed_bars_only_exactly_once_in_order_across_advances(
        session: IBSession, sim: IBSim, sim_bars: dict[str, pd.DataFrame]) -> None:
    feed = start_feed(session)
    drain(feed)
    live: list[Row] = []
    for seconds in (20, 30, 14, 62, 61, 5, 120, 59):  # off-boundary steps, two-bar jumps, repeats within 15 s
        sim.advance(seconds=seconds)
        live += drain(feed)
        assert feed.next() is None
    assert sim.now() == SIM_START.astimezone(sim.now().tzinfo) + pd.Timedelta(seconds=371)
    expected = sim_bars["AAPL"].loc[pd.Timestamp("2024-01-04 10:00", tz=NY):pd.Timestamp("2024-01-04 10:05", tz=NY)]
    assert [r[0] for r in live] == list(expected.index.tz_localize(None))  # 10:06 is still forming
    assert [r[1] for r in live] == list(expected["close"])
    assert len({r[0] for r in live}) == len(live)
    polls = [r.summary for r in sim.requests("reqHistoricalData")][1:]
    assert all("duration='" in p and " S'" in p for p in polls)  # the recent window, in seconds
    assert max(int(p.split("duration='")[1].split(" ")[0]) for p in polls) <= 300  # gap + one bar


def test_only_the_newest_bar_of_a_catch_up_is_live(session: IBSession, sim: IBSim) -> None:
    feed = start_feed(session)
    drain(feed)
    sim.advance(minutes=3, seconds=3)
    rows = drain(feed)
    assert [r[0] for r in rows] == [utc("2024-01-04 10:00"), utc("2024-01-04 10:01"), utc("2024-01-04 10:02")]
    assert [r[2] for r in rows] == [True, True, False]
    assert statuses(feed)[-1] == "LIVE"


def _disconnect(session: IBSession) -> None:
    waited = 0.0
    while session.connected:
        assert waited < 5
        session.run_event_loop(0.02)
        waited += 0.02


def test_gap_after_a_socket_drop_is_backfilled_without_duplicates(
        session: IBSession, sim: IBSim, sim_bars: dict[str, pd.DataFrame]) -> None:
    feed = start_feed(session)
    drain(feed)
    sim.advance(seconds=62)
    first = drain(feed)
    sim.dropConnections()
    _disconnect(session)
    assert feed.next() is None
    assert statuses(feed)[-1] == "DISCONNECTED"
    sim.advance(minutes=4)
    rows = drain(feed)  # maintain() reconnects (the backoff delay has passed), on_resync polls at once
    assert session.connected
    assert session.reconnects == 1
    got = [r[0] for r in first + rows]
    assert got == [utc(f"2024-01-04 10:0{m}") for m in range(5)]
    assert [r[2] for r in rows] == [True, True, True, False]
    assert statuses(feed)[-1] == "LIVE"


def test_gap_after_a_gateway_restart_is_backfilled_without_duplicates(session: IBSession, sim: IBSim) -> None:
    feed = start_feed(session)
    drain(feed)
    back = sim.restart(downSeconds=0.5, wait=False)
    _disconnect(session)
    sim.advance(minutes=2, seconds=10)
    assert feed.next() is None  # refused: backoff on the clock, no sleep
    back.result(5)
    sim.advance(seconds=10)
    rows = drain(feed)
    assert [r[0] for r in rows] == [utc("2024-01-04 10:00"), utc("2024-01-04 10:01")]
    sim.advance(seconds=60)
    assert [r[0] for r in drain(feed)] == [utc("2024-01-04 10:02")]


def test_pacing_error_162_is_absorbed_and_the_bar_arrives_once_on_a_later_poll(
        session: IBSession, sim: IBSim, ib: IB) -> None:
    budget = RequestBudget(False)
    feed = start_feed(session, budget=budget)
    drain(feed)
    sim.advance(seconds=62)
    for seconds in (60, 120, 180, 240, 300):  # another client uses up AAPL's five requests per 2 s
        ib.reqHistoricalData(Stock("AAPL", "SMART", "USD"), "", f"{seconds} S", "1 min", "TRADES", True)
    assert drain(feed) == []
    poller = BarPoller.for_session(session)
    assert poller.pacing_errors == 1
    assert budget.violations == 1
    sim.advance(seconds=5)
    assert drain(feed) == []  # still backing off: nothing sent
    sim.advance(seconds=12)
    rows = drain(feed)
    assert [r[0] for r in rows] == [utc("2024-01-04 10:00")]
    sim.advance(seconds=5)
    assert drain(feed) == []


def test_stale_data_is_reported_delayed_then_live_again(session: IBSession, sim: IBSim) -> None:
    feed = start_feed(session)
    drain(feed)
    sim.loseConnectivity()  # the socket stays up, historical answers stop
    for _ in range(4):
        sim.advance(seconds=60)
        assert feed.next() is None
    assert statuses(feed)[-1] == "DELAYED"
    assert session.entries_paused
    sim.restoreConnectivity()
    session.run_event_loop(0.1)
    sim.advance(seconds=16)  # past the identical-request window of the last poll
    rows = drain(feed)
    assert next(r[0] for r in rows) == utc("2024-01-04 10:00")
    assert len(rows) == 4
    assert statuses(feed)[-1] == "LIVE"


class Recorder(bt.Strategy):
    """Record every (symbol, bar time, close, historical) the strategy sees; stop at a simulated time."""

    params = (("until", None),)

    def __init__(self) -> None:
        self.seen: list[tuple[str, datetime, float, bool]] = []
        self.per_next: list[set[str]] = []

    def next(self) -> None:
        names = set()
        for data in self.datas:
            if len(data) and data.datetime.datetime(0) == self.datas[0].datetime.datetime(0):
                names.add(data._name)
        self.per_next.append(names)
        for data in self.datas:
            item = (data._name, data.datetime.datetime(0), data.close[0], data.historical)
            if not self.seen or item not in self.seen[-len(self.datas):]:
                self.seen.append(item)
        if self.datas[0].datetime.datetime(0) >= self.p.until:
            self.env.runstop()


def test_cerebro_with_three_polling_feeds_delivers_each_bar_once(sim_bars: dict[str, pd.DataFrame]) -> None:
    bars = {**sim_bars, "SPY": make_bars("SPY", 5, 470.0)}
    with IBSim(bars, start=SIM_START) as sim:
        cfg = LiveConfig(port=sim.port, client_id=9, request_timeout_seconds=1.0, pacing_small_bars_only=False)
        session = IBSession(cfg, clock=sim.clock.now, rng=random.Random(1))
        session.connect()
        run_loop = session.run_event_loop

        def run_loop_and_let_time_pass(seconds: float = 0.0) -> None:
            if seconds > 0:  # the leader feed idles: simulated time passes instead of wall time
                sim.advance(seconds=20)
            run_loop(0.0)

        session.run_event_loop = run_loop_and_let_time_pass  # type: ignore[method-assign]
        cerebro = bt.Cerebro(stdstats=False)
        budget = RequestBudget(False)
        for symbol in ("AAPL", "MSFT", "SPY"):
            cerebro.adddata(IBPollingFeed(session=session, symbol=symbol, budget=budget,
                                          warmup_bars=live_window_bars(1)), name=symbol)
        cerebro.addstrategy(Recorder, until=utc("2024-01-04 10:10"))
        strategy = cerebro.run()[0]
        session.disconnect()
    seen = strategy.seen
    by_symbol = {s: [(t, c) for name, t, c, _ in seen if name == s] for s in ("AAPL", "MSFT", "SPY")}
    n = live_window_bars(1)
    for symbol, rows in by_symbol.items():
        times = [t for t, _ in rows]
        assert len(times) == len(set(times)) == n + 11, symbol
        assert times == sorted(times)
        frame = bars[symbol].loc[pd.DatetimeIndex(times).tz_localize("UTC")]
        assert [c for _, c in rows] == list(frame["close"])
    assert all(names == {"AAPL", "MSFT", "SPY"} for names in strategy.per_next)  # symbols move together
    live = [t for name, t, _, hist in seen if name == "AAPL" and not hist]
    assert live[0] >= utc("2024-01-04 10:00")
