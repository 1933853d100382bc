"""Historical bars from ibsim as the real ib_async client reads them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from ib_async import IB, Stock

from ibsim import IBSim
from tests.integration.conftest import NY, SIM_START

AAPL = Stock("AAPL", "SMART", "USD")
MSFT = Stock("MSFT", "SMART", "USD")


def _row(frame: pd.DataFrame, local: str) -> pd.Series:
    return frame.loc[pd.Timestamp(local, tz=NY).tz_convert("UTC")]


def test_history_ends_with_the_still_forming_bar(ib: IB, sim: IBSim,
                                                 sim_bars: dict[str, pd.DataFrame]) -> None:
    sim.advance(seconds=20)
    bars = ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", useRTH=True, formatDate=1)
    assert bars[0].date == datetime(2024, 1, 4, 9, 30, tzinfo=NY)
    assert bars[-1].date == datetime(2024, 1, 4, 10, 0, tzinfo=NY)
    assert len(bars) == 31
    done = _row(sim_bars["AAPL"], "2024-01-04 09:59")
    assert (bars[-2].open, bars[-2].high, bars[-2].low, bars[-2].close) == (
        done.open, done.high, done.low, done.close)
    forming = _row(sim_bars["AAPL"], "2024-01-04 10:00")
    assert bars[-1].open == forming.open
    assert bars[-1].volume < forming.volume
    assert forming.low <= bars[-1].low <= bars[-1].high <= forming.high


def test_forming_bar_becomes_the_file_bar_once_complete(ib: IB, sim: IBSim,
                                                        sim_bars: dict[str, pd.DataFrame]) -> None:
    sim.advance(seconds=70)
    bars = ib.reqHistoricalData(AAPL, "", "600 S", "1 min", "TRADES", useRTH=True, formatDate=1)
    assert bars[-1].date == datetime(2024, 1, 4, 10, 1, tzinfo=NY)
    full = _row(sim_bars["AAPL"], "2024-01-04 10:00")
    assert (bars[-2].open, bars[-2].high, bars[-2].low, bars[-2].close, bars[-2].volume) == (
        full.open, full.high, full.low, full.close, full.volume)


def test_history_never_contains_bars_after_simulated_time(ib: IB) -> None:
    future_end = SIM_START + timedelta(days=1)
    bars = ib.reqHistoricalData(AAPL, future_end, "1 D", "1 min", "TRADES", useRTH=True, formatDate=1)
    assert bars[-1].date == datetime(2024, 1, 4, 10, 0, tzinfo=NY)


def test_five_minute_bars_are_resampled_from_one_minute_bars(
        ib: IB, sim: IBSim, sim_bars: dict[str, pd.DataFrame]) -> None:
    sim.advance(minutes=4)
    bars = ib.reqHistoricalData(AAPL, "", "1 D", "5 mins", "TRADES", useRTH=True, formatDate=1)
    assert [b.date.strftime("%H:%M") for b in bars] == ["09:30", "09:35", "09:40", "09:45", "09:50", "09:55",
                                                        "10:00"]
    frame = sim_bars["AAPL"]
    window = frame.loc[pd.Timestamp("2024-01-04 09:30", tz=NY):pd.Timestamp("2024-01-04 09:34", tz=NY)]
    first = bars[0]
    assert first.open == window.open.iloc[0]
    assert first.high == window.high.max()
    assert first.low == window.low.min()
    assert first.close == window.close.iloc[-1]
    assert first.volume == window.volume.sum()
    assert first.barCount == 5


def test_use_rth_0_includes_extended_hours_when_the_data_has_them(ib: IB) -> None:
    extended = ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", useRTH=False, formatDate=1)
    assert extended[0].date == datetime(2024, 1, 4, 8, 0, tzinfo=NY)
    regular = ib.reqHistoricalData(MSFT, "", "1 D", "1 min", "TRADES", useRTH=False, formatDate=1)
    assert regular[0].date == datetime(2024, 1, 4, 9, 30, tzinfo=NY)


def test_format_date_2_gives_utc_datetimes(ib: IB) -> None:
    bars = ib.reqHistoricalData(AAPL, "", "600 S", "1 min", "TRADES", useRTH=True, formatDate=2)
    assert bars[-1].date == SIM_START.astimezone(UTC)
    assert bars[0].date == datetime(2024, 1, 4, 14, 50, tzinfo=UTC)
    assert len(bars) == 11


def test_duration_in_days_counts_sessions(ib: IB) -> None:
    bars = ib.reqHistoricalData(MSFT, "", "2 D", "1 min", "TRADES", useRTH=True, formatDate=1)
    assert {b.date.date().isoformat() for b in bars} == {"2024-01-03", "2024-01-04"}
    assert len(bars) == 390 + 31


def test_explicit_end_in_the_past_returns_complete_bars_before_it(
        ib: IB, sim_bars: dict[str, pd.DataFrame]) -> None:
    end = datetime(2024, 1, 3, 12, 0, tzinfo=NY)
    bars = ib.reqHistoricalData(MSFT, end, "3600 S", "1 min", "TRADES", useRTH=True, formatDate=1)
    assert bars[0].date == datetime(2024, 1, 3, 11, 0, tzinfo=NY)
    assert bars[-1].date == datetime(2024, 1, 3, 11, 59, tzinfo=NY)
    assert bars[-1].close == _row(sim_bars["MSFT"], "2024-01-03 11:59").close


def test_withheld_answer_times_out_on_the_client_and_is_cancelled(ib: IB, sim: IBSim) -> None:
    errors: list[tuple[int, str]] = []
    ib.errorEvent += lambda reqId, code, text, *_: errors.append((code, text))
    sim.withholdHistorical(count=1, symbol="AAPL")
    assert len(ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", True, timeout=0.5)) == 0
    ib.sleep(0.1)
    assert len(sim.requests("cancelHistoricalData")) == 1
    assert errors
    assert errors[-1][0] == 162
    assert "API historical data query cancelled" in errors[-1][1]
    sim.advance(seconds=16)
    assert len(ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", True, timeout=2)) == 31


def test_delayed_answer_arrives_late_but_complete(ib: IB, sim: IBSim) -> None:
    sim.delayHistorical(0.4, count=1)
    started = time.monotonic()
    bars = ib.reqHistoricalData(MSFT, "", "1 D", "1 min", "TRADES", True, timeout=5)
    assert time.monotonic() - started >= 0.4
    assert len(bars) == 31


def test_unsupported_bar_size_gets_an_error_not_bars(ib: IB) -> None:
    errors: list[int] = []
    ib.errorEvent += lambda reqId, code, *_: errors.append(code)
    assert len(ib.reqHistoricalData(AAPL, "", "60 S", "5 secs", "TRADES", True)) == 0
    assert errors == [162]


@pytest.mark.parametrize("bar_size", ["15 mins", "1 hour", "1 day"])
def test_larger_bar_sizes_are_resampled(ib: IB, bar_size: str) -> None:
    bars = ib.reqHistoricalData(MSFT, "", "3 D", bar_size, "TRADES", True, formatDate=1)
    assert len(bars) > 0
    assert sum(b.barCount for b in bars) == 2 * 390 + 31
