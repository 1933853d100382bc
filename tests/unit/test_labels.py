"""Triple-barrier labels against hand-computed trades (the strategy's own rules)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.costs import ibkr_fixed, no_commission
from ml.label_params import LabelParams
from ml.labels import triple_barrier_labels


def flat_session(day: str = "2024-01-03", price: float = 100.0) -> pd.DataFrame:
    """A full 09:30-15:59 session of 1-minute bars at a constant price (January: 09:30 ET = 14:30 UTC)."""
    idx = pd.date_range(f"{day} 14:30", periods=390, freq="1min", tz="UTC", name="datetime")
    return pd.DataFrame({"open": price, "high": price, "low": price, "close": price, "volume": 1000.0}, index=idx)


def params(**kw: float) -> LabelParams:
    base = {"stop_loss": 0.01, "take_profit": 0.02, "max_hold_bars": 10, "flatten_minutes": 5,
            "no_new_entries_minutes": 15, "slippage_bps": 0.0, "commission": "none", "notional": 10_000.0,
            "bar_minutes": 1}
    base.update(kw)
    return LabelParams(**base)  # type: ignore[arg-type]


def set_bar(frame: pd.DataFrame, i: int, o: float, h: float, lo: float, c: float) -> None:
    frame.iloc[i, :4] = [o, h, lo, c]


def test_target_touch_fills_at_target() -> None:
    bars = flat_session()
    set_bar(bars, 3, 100.0, 102.5, 100.0, 101.0)
    out = triple_barrier_labels(bars, params(), no_commission).iloc[0]
    assert out.exit_reason == "TARGET"
    assert out.entry_price == 100.0
    assert out.exit_price == pytest.approx(102.0)
    assert out.bars_held == 2
    assert out.label == 1.0
    assert out.net_return == pytest.approx(0.02)


def test_bar_touching_both_barriers_counts_as_stop_first() -> None:
    bars = flat_session()
    set_bar(bars, 2, 100.0, 102.5, 98.9, 100.0)
    out = triple_barrier_labels(bars, params(), no_commission).iloc[0]
    assert out.exit_reason == "STOP"
    assert out.exit_price == pytest.approx(99.0)
    assert bool(out.both_touched)
    assert out.label == 0.0


def test_gap_through_stop_fills_at_open_with_slippage_floored_at_low() -> None:
    bars = flat_session()
    set_bar(bars, 2, 98.0, 98.2, 97.5, 98.0)
    out = triple_barrier_labels(bars, params(slippage_bps=10.0), no_commission).iloc[0]
    entry = 100.0 * 1.001  # next open plus 10 bp; the flat bar's high caps it at 100
    assert entry > 100.0
    assert out.entry_price == pytest.approx(100.0)
    assert out.exit_reason == "STOP"
    assert out.exit_price == pytest.approx(98.0 * 0.999)


def test_gap_above_target_fills_at_the_better_open() -> None:
    bars = flat_session()
    set_bar(bars, 2, 103.0, 103.5, 102.8, 103.0)
    out = triple_barrier_labels(bars, params(), no_commission).iloc[0]
    assert out.exit_reason == "TARGET"
    assert out.exit_price == pytest.approx(103.0)


def test_entry_bar_range_is_not_checked_against_barriers() -> None:
    bars = flat_session()
    set_bar(bars, 1, 100.0, 110.0, 90.0, 100.0)  # the entry bar itself; children go live on the next bar
    out = triple_barrier_labels(bars, params(max_hold_bars=3), no_commission).iloc[0]
    assert out.exit_reason == "TIMEOUT"


def test_timeout_exits_at_the_open_after_max_hold_bars() -> None:
    bars = flat_session()
    bars.iloc[4, 0] = 100.5  # open of the exit bar
    bars.iloc[4, 1] = 100.6
    out = triple_barrier_labels(bars, params(max_hold_bars=3), no_commission).iloc[0]
    # entry bar 1 (held 1), bar 2 (2), bar 3 (3 >= max) -> sell at the open of bar 4
    assert out.exit_reason == "TIMEOUT"
    assert out.bars_held == 3
    assert out.exit_price == pytest.approx(100.5)
    assert out.exit_time == bars.index[4]


def test_end_of_session_barrier_flattens_before_the_close() -> None:
    bars = flat_session()
    signal = 374  # 15:44 bar ends 15:45, 15 minutes before the close: last allowed entry
    out = triple_barrier_labels(bars, params(max_hold_bars=100), no_commission)
    row = out.iloc[signal]
    assert bool(row.eligible)
    assert row.exit_reason == "EOD"
    # the 15:54 bar ends 5 minutes before the close -> sell at the 15:55 open
    assert row.exit_time == bars.index[385]


def test_no_entry_inside_the_no_new_entries_window() -> None:
    bars = flat_session()
    out = triple_barrier_labels(bars, params(), no_commission)
    assert not bool(out.iloc[375].eligible)  # 15:45 bar ends 14 minutes before the close
    assert not out.iloc[375:]["eligible"].any()


def test_half_day_close_is_the_barrier() -> None:
    # 2024-11-29 closes at 13:00 ET (18:00 UTC): 210 bars
    idx = pd.date_range("2024-11-29 14:30", periods=210, freq="1min", tz="UTC", name="datetime")
    bars = pd.DataFrame({"open": 50.0, "high": 50.0, "low": 50.0, "close": 50.0, "volume": 1.0}, index=idx)
    out = triple_barrier_labels(bars, params(max_hold_bars=200), no_commission)
    assert out.iloc[194].eligible
    assert not out.iloc[195].eligible
    assert out.iloc[194].exit_reason == "EOD"
    assert out.iloc[194].exit_time == idx[205]


def test_net_return_includes_ibkr_commission_on_both_sides() -> None:
    bars = flat_session()
    set_bar(bars, 3, 100.0, 102.5, 100.0, 101.0)
    out = triple_barrier_labels(bars, params(notional=10_000.0), ibkr_fixed).iloc[0]
    shares = 100
    expected = (shares * 2.0 - ibkr_fixed(shares, 100.0) - ibkr_fixed(shares, 102.0)) / (shares * 100.0)
    assert out.net_return == pytest.approx(expected)


def test_trade_running_off_the_end_of_data_is_not_eligible() -> None:
    bars = flat_session().iloc[:20]
    out = triple_barrier_labels(bars, params(max_hold_bars=10), no_commission)
    assert not out.iloc[15:]["eligible"].any()
    assert np.isnan(out.iloc[18].label)
