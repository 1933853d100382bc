"""Risk gates and exit mechanics of ``MLStrategy``, each shown on crafted bars in a real backtrader run.

Crafted bars sit on real XNYS session minutes: the first session is the features' warm-up (signal 0), the
strategy trades from the second. Flat bars (open = close = 100, one-cent wicks) never touch a barrier, so
every fill in these tests comes from a bar the test shaped on purpose.
"""

from __future__ import annotations

import logging

import backtrader as bt
import numpy as np
import pandas as pd

from core.calendar import minutes_to_close
from strategies.observers import PositionsObserver
from tests.kit import NY, flat_bars, ny, run_backtest, set_bar, signal_from, synthetic_frames, xnys_minutes

logger = logging.getLogger(__name__)

DAYS = ("2024-01-02", "2024-01-03", "2024-01-04")  # warm-up, trading day, next trading day
TRADE_FROM = ny("2024-01-03 09:30")
BASE = {"p_up_entry_threshold": 0.55, "stop_loss": 0.02, "take_profit": 0.02, "max_hold_bars": 400,
        "no_new_entries_minutes": 15, "flatten_minutes": 5, "daily_loss_limit": 0.5,
        "max_concurrent_positions": 4, "cooldown_bars_after_stop": 0, "slippage": 0.0}


def _crafted(*symbols: str) -> dict[str, pd.DataFrame]:
    index = xnys_minutes(DAYS[0], len(DAYS))
    return {sym: flat_bars(index) for sym in symbols}


def _dip(frame: pd.DataFrame, stamp: str) -> None:
    """Make the bar at ``stamp`` (exchange time) trade down to 97: it fills any live stop at 98."""
    set_bar(frame, ny(stamp), low=97.0)


def _on(frame: pd.DataFrame, day: str) -> pd.DataFrame:
    local = frame["time"].dt.tz_convert(NY)
    return frame.loc[local.dt.strftime("%Y-%m-%d") == day]


def _at(frame: pd.DataFrame, stamp: str) -> pd.DataFrame:
    return frame.loc[frame["time"] == ny(stamp)]


def test_entry_blocked_after_daily_loss_limit() -> None:
    # Arrange: each stop loses ~1% of equity (1% risk, 2% stop); two stops breach the 1.5% daily limit
    frames = _crafted("AAA")
    _dip(frames["AAA"], "2024-01-03 10:00")
    _dip(frames["AAA"], "2024-01-03 10:30")
    signals = {"AAA": signal_from(frames["AAA"], TRADE_FROM)}

    # Act
    run = run_backtest(frames, signals, risk_per_trade_fraction=0.01,
                       **{**BASE, "daily_loss_limit": 0.015})

    # Assert: two stops, then every signal of the day is blocked by the loss stop (until the close window)
    stops = run.trades.loc[run.trades["exit_reason"] == "STOP", "exit_time"]
    assert list(stops) == [ny("2024-01-03 10:00"), ny("2024-01-03 10:30")]
    day2 = _on(run.decisions, "2024-01-03")
    after = day2.loc[(day2["time"] >= ny("2024-01-03 10:30")) & (day2["time"] < ny("2024-01-03 15:45"))]
    assert len(after) > 300
    assert (after["reason"] == "DAILY_LOSS").all()
    assert (day2.loc[day2["time"] >= ny("2024-01-03 15:45"), "reason"] == "CLOSE_WINDOW").all()
    # the next day starts afresh: the first bar enters
    day3 = _on(run.decisions, "2024-01-04")
    assert day3.iloc[0]["decision"] == "ENTER"
    blocked = run.result.blocked.set_index(["date", "reason"])["count"]
    assert blocked.loc[(pd.Timestamp("2024-01-03"), "DAILY_LOSS")] == len(after)
    assert "DAILY_LOSS" not in set(run.result.blocked.loc[run.result.blocked["date"] == "2024-01-04", "reason"])


def test_concurrent_position_cap_holds_in_multi_symbol_run() -> None:
    # Arrange: five symbols that always want in, room for two
    frames = synthetic_frames(("AAA", "BBB", "CCC", "DDD", "EEE"), sessions=2)
    signals = {s: pd.Series(1.0, index=f.index) for s, f in frames.items()}
    params = {**BASE, "stop_loss": 0.004, "take_profit": 0.006, "max_hold_bars": 30,
              "max_concurrent_positions": 2}

    # Act
    run = run_backtest(frames, signals, starting_cash=10_000_000.0, **params)

    # Assert: the observer line (open or opening positions) and the broker's positions both respect the cap
    strat = run.result.strategy
    observer = next(o for o in strat.observers if isinstance(o, PositionsObserver))
    line = np.asarray(observer.lines.open_positions.array)[: len(observer)]  # the buffer is preallocated
    assert len(line) == len(frames["AAA"])
    assert line.max() == 2
    held = run.positions.loc[run.positions["size"] != 0].groupby("time")["symbol"].nunique()
    assert held.max() == 2
    assert (run.positions["size"] >= 0).all()
    assert run.decisions["reason"].eq("MAX_POSITIONS").sum() > 100
    assert run.result.blocked.loc[run.result.blocked["reason"] == "MAX_POSITIONS", "count"].sum() == \
        run.decisions["reason"].eq("MAX_POSITIONS").sum()


def test_stop_exit_starts_symbol_cooldown() -> None:
    # Arrange: both symbols always want in; only AAA is stopped out, at 10:00
    frames = _crafted("AAA", "BBB")
    _dip(frames["AAA"], "2024-01-03 10:00")
    signals = {s: signal_from(f, TRADE_FROM) for s, f in frames.items()}
    cooldown = 5

    # Act
    run = run_backtest(frames, signals, **{**BASE, "cooldown_bars_after_stop": cooldown})

    # Assert: AAA is blocked on the STOP bar and the next `cooldown` bars, then enters again
    assert list(run.trades.loc[run.trades["exit_reason"] == "STOP", "symbol"]) == ["AAA"]
    aaa = run.decisions.loc[run.decisions["symbol"] == "AAA"].reset_index(drop=True)
    first = int(aaa.index[aaa["time"] == ny("2024-01-03 10:00")][0])
    assert list(aaa.loc[first:first + cooldown, "reason"]) == ["COOLDOWN"] * (cooldown + 1)
    assert aaa.loc[first + cooldown + 1, "decision"] == "ENTER"
    assert aaa.loc[first - 1, "decision"] == "IN_POSITION"
    assert aaa["reason"].eq("COOLDOWN").sum() == cooldown + 1
    assert not run.decisions.loc[run.decisions["symbol"] == "BBB", "reason"].eq("COOLDOWN").any()


def test_no_position_survives_the_close() -> None:
    # Arrange: three symbols always want in; wide barriers so positions are still open near the close
    frames = synthetic_frames(("AAA", "BBB", "CCC"), sessions=3)
    signals = {s: pd.Series(1.0, index=f.index) for s, f in frames.items()}
    params = {**BASE, "max_hold_bars": 400, "stop_loss": 0.03, "take_profit": 0.03}

    # Act
    run = run_backtest(frames, signals, starting_cash=10_000_000.0, **params)

    # Assert: EOD exits happen, every trade ends on its entry day, nothing is held in the last 5 minutes
    trades = run.trades
    assert (trades["exit_reason"] == "EOD").sum() >= 6
    local = trades[["entry_time", "exit_time"]].apply(lambda c: c.dt.tz_convert(NY).dt.date)
    assert (local["entry_time"] == local["exit_time"]).all()
    pos = run.positions
    mtc = minutes_to_close(pd.DatetimeIndex(pos["time"]), 1)
    assert (pos.loc[mtc < params["flatten_minutes"], "size"] == 0).all()
    last_bar = pos.groupby(pos["time"].dt.tz_convert(NY).dt.date)["time"].transform("max") == pos["time"]
    assert last_bar.sum() == 3 * 3
    assert (pos.loc[last_bar, "size"] == 0).all()
    assert not pos.loc[last_bar, "busy"].any()


def test_time_exit_cancels_bracket_children_before_selling() -> None:
    # Arrange: one entry at 10:01, TIMEOUT decided at 10:10 (10 bars held), market sell at the 10:11 open.
    # The 10:11 bar trades through both the stop (98) and the target (102): a child still alive would fill
    # there too and leave the account short.
    frames = _crafted("AAA")
    set_bar(frames["AAA"], ny("2024-01-03 10:11"), low=97.0, high=103.0)
    signals = {"AAA": pd.Series(np.where(frames["AAA"].index == ny("2024-01-03 10:00"), 1.0, 0.0),
                                index=frames["AAA"].index)}

    # Act
    run = run_backtest(frames, signals, **{**BASE, "max_hold_bars": 10})

    # Assert
    trades = run.trades
    assert list(trades["exit_reason"]) == ["TIMEOUT"]
    assert trades.iloc[0]["exit_time"] == ny("2024-01-03 10:11")
    assert trades.iloc[0]["exit_price"] == 100.0
    orders = run.cerebro.broker.orders
    assert not any(o.alive() for o in orders)
    children = [o for o in orders if o.exectype in (bt.Order.Stop, bt.Order.Limit)]
    assert len(children) == 2
    assert all(o.status == bt.Order.Canceled for o in children)
    executed = [o for o in orders if o.status == bt.Order.Completed]
    assert [(o.isbuy(), o.exectype) for o in executed] == [(True, bt.Order.Market), (False, bt.Order.Market)]
    assert (run.positions["size"] >= 0).all()
    strat = run.result.strategy
    assert strat.getposition(strat.datas[0]).size == 0


def test_no_entries_in_the_last_minutes_before_close() -> None:
    # Arrange
    frames = synthetic_frames(("AAA",), sessions=2)
    signals = {"AAA": pd.Series(1.0, index=frames["AAA"].index)}
    params = {**BASE, "stop_loss": 0.002, "take_profit": 0.002, "max_hold_bars": 5, "no_new_entries_minutes": 15}

    # Act
    run = run_backtest(frames, signals, starting_cash=10_000_000.0, **params)

    # Assert: entries only on bars ending >= 15 minutes before the close; flat signal bars after that block
    dec = run.decisions
    mtc = minutes_to_close(pd.DatetimeIndex(dec["time"]), 1)
    entered = dec["decision"] == "ENTER"
    assert entered.sum() > 20
    assert (mtc[entered.to_numpy()] >= 15).all()
    window = dec.loc[mtc < 15]
    assert set(window["decision"]) <= {"BLOCKED", "IN_POSITION"}
    assert (window.loc[window["decision"] == "BLOCKED", "reason"] == "CLOSE_WINDOW").all()
    assert window["reason"].eq("CLOSE_WINDOW").sum() > 0
    entry_mtc = minutes_to_close(pd.DatetimeIndex(run.trades["entry_time"]), 1)
    assert (entry_mtc >= 14).all()  # entry fills at the open of the bar after the last allowed signal bar


def test_half_day_flattens_before_the_early_close() -> None:
    # Arrange: 2024-11-29 is a half day (XNYS closes at 13:00); the day before is Thanksgiving
    frames = synthetic_frames(("AAA", "BBB"), sessions=3, start="2024-11-27")
    signals = {s: pd.Series(1.0, index=f.index) for s, f in frames.items()}
    params = {**BASE, "stop_loss": 0.03, "take_profit": 0.03}

    # Act
    run = run_backtest(frames, signals, starting_cash=10_000_000.0, **params)

    # Assert
    half = _on(run.trades.rename(columns={"exit_time": "time"}), "2024-11-29")
    assert len(half) > 0
    assert (half["time"] <= ny("2024-11-29 12:55")).all()
    assert set(half.loc[half["time"] == ny("2024-11-29 12:55"), "exit_reason"]) == {"EOD"}
    assert (half["exit_reason"] == "EOD").sum() == 2
    pos = _on(run.positions, "2024-11-29")
    assert pos["time"].max() == ny("2024-11-29 12:59")
    assert (pos.loc[pos["time"] >= ny("2024-11-29 12:55"), "size"] == 0).all()
    dec = _on(run.decisions, "2024-11-29")
    late = dec.loc[dec["time"] >= ny("2024-11-29 12:45")]
    assert len(late) == 2 * 15
    assert "ENTER" not in set(late["decision"])
    assert (run.trades["entry_time"] != ny("2024-11-29 12:46")).all()


def test_stop_fills_first_when_a_bar_touches_both_barriers() -> None:
    # Arrange: entry 100 at 10:01 (stop 98, target 102); the 10:05 bar reaches both 97 and 103
    frames = _crafted("AAA")
    set_bar(frames["AAA"], ny("2024-01-03 10:05"), low=97.0, high=103.0)
    signals = {"AAA": pd.Series(np.where(frames["AAA"].index == ny("2024-01-03 10:00"), 1.0, 0.0),
                                index=frames["AAA"].index)}

    # Act
    run = run_backtest(frames, signals, **BASE)

    # Assert
    trade = run.trades.iloc[0]
    assert len(run.trades) == 1
    assert (trade["exit_reason"], trade["exit_time"], trade["exit_price"]) == \
        ("STOP", ny("2024-01-03 10:05"), 98.0)


def test_bracket_goes_live_the_bar_after_the_entry_bar() -> None:
    # Arrange: the entry bar itself (10:01) trades through the stop; the stop must not fill on it
    frames = _crafted("AAA")
    set_bar(frames["AAA"], ny("2024-01-03 10:01"), low=97.0)
    set_bar(frames["AAA"], ny("2024-01-03 10:03"), low=97.0)
    signals = {"AAA": pd.Series(np.where(frames["AAA"].index == ny("2024-01-03 10:00"), 1.0, 0.0),
                                index=frames["AAA"].index)}

    # Act
    run = run_backtest(frames, signals, **BASE)

    # Assert
    trade = run.trades.iloc[0]
    assert (trade["entry_time"], trade["entry_price"]) == (ny("2024-01-03 10:01"), 100.0)
    assert (trade["exit_reason"], trade["exit_time"]) == ("STOP", ny("2024-01-03 10:03"))
