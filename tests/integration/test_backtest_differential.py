"""Differential test: the backtrader run trades exactly like a plain-Python loop written from the rules.

The reference loop below is written from the module docstrings of ``strategies/ml_strategy.py`` and
``ml/labels.py`` (entry, bracket, stop-first, gap fills, time exits, cooldown, position cap, daily loss
stop, fixed-fraction sizing), not from the strategy's code. For a fixed random signal on SYNTHETIC bars the
two must produce the same trade list, and ``ml.labels.triple_barrier_labels`` must give every backtest
trade's exit reason and prices for its signal bar.

Prices are compared to 1e-12 relative: backtrader books a fill as ``(size × price) / size`` (its average
price formula), which can differ from ``price`` in the last bit.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.calendar import minutes_to_close, session_keys
from core.costs import ibkr_fixed
from ml.features import WARMUP_BARS
from ml.label_params import LabelParams
from ml.labels import triple_barrier_labels
from strategies.sizer import CASH_BUFFER, fixed_fraction_shares
from tests.kit import run_backtest, synthetic_frames

logger = logging.getLogger(__name__)

REL = 1e-12
SLIPPAGE_BPS = 1.0


@dataclass(frozen=True)
class Rules:
    """The parameters both implementations run with."""

    threshold: float
    stop_loss: float
    take_profit: float
    max_hold_bars: int
    no_new_entries_minutes: int
    flatten_minutes: int
    daily_loss_limit: float
    max_positions: int
    cooldown_bars: int
    risk_fraction: float
    slippage: float = SLIPPAGE_BPS / 10_000.0

    def strategy_kwargs(self) -> dict[str, Any]:
        """Return the ``MLStrategy`` parameters."""
        return {"p_up_entry_threshold": self.threshold, "stop_loss": self.stop_loss,
                "take_profit": self.take_profit, "max_hold_bars": self.max_hold_bars,
                "no_new_entries_minutes": self.no_new_entries_minutes, "flatten_minutes": self.flatten_minutes,
                "daily_loss_limit": self.daily_loss_limit, "max_concurrent_positions": self.max_positions,
                "cooldown_bars_after_stop": self.cooldown_bars, "slippage": self.slippage}


@dataclass
class _Open:
    """A reference position (or an entry waiting for the next open when ``entry_idx`` is None)."""

    qty: int
    entry_idx: int | None = None
    fill: float = math.nan
    stop: float = math.nan
    target: float = math.nan
    time_exit: str | None = None


def _barrier_fill(o: float, h: float, lo: float, pos: _Open, slip: float) -> tuple[str, float] | None:
    """Stop first; gaps fill at the open (with slippage, floored at the low); the target never slips below."""
    if o <= pos.stop:
        return "STOP", max(o * (1.0 - slip), lo)
    if lo <= pos.stop:
        return "STOP", max(pos.stop * (1.0 - slip), lo)
    if o >= pos.target:
        return "TARGET", max(o * (1.0 - slip), pos.target)
    if h >= pos.target:
        return "TARGET", pos.target
    return None


def reference_trades(frames: dict[str, pd.DataFrame], signals: dict[str, pd.Series], rules: Rules,
                     cash: float) -> list[dict[str, Any]]:
    """Trade ``signals`` on ``frames`` (one shared bar index) by the written rules, bar by bar."""
    syms = list(frames)
    index = frames[syms[0]].index
    px = {s: {k: frames[s][k].to_numpy() for k in ("open", "high", "low", "close")} for s in syms}
    sig = {s: signals[s].to_numpy() for s in syms}
    mtc = minutes_to_close(index, 1)
    day_of, _ = session_keys(index)
    slip = rules.slippage
    book: dict[str, _Open] = {}
    cooldown: dict[str, int] = {}
    trades: list[dict[str, Any]] = []
    last_equity, day, start_equity = math.nan, None, math.nan

    def close(s: str, i: int, reason: str, price: float) -> None:
        nonlocal cash
        pos = book.pop(s)
        cash += pos.qty * price - ibkr_fixed(pos.qty, price)
        trades.append({"symbol": s, "entry_time": index[pos.entry_idx], "exit_time": index[i],
                       "entry_price": pos.fill, "exit_price": price, "quantity": pos.qty, "exit_reason": reason})
        if reason == "STOP" and rules.cooldown_bars > 0:
            cooldown[s] = rules.cooldown_bars + 1  # the STOP bar and the next cooldown_bars bars

    for i in range(len(index)):
        # 1. the broker fills at bar i (before any decision on bar i)
        for s in syms:
            o, h, lo = px[s]["open"][i], px[s]["high"][i], px[s]["low"][i]
            pos = book.get(s)
            if pos is None:
                continue
            if pos.entry_idx is None:
                pos.entry_idx, pos.fill = i, min(o * (1.0 + slip), h)
                pos.stop, pos.target = pos.fill * (1.0 - rules.stop_loss), pos.fill * (1.0 + rules.take_profit)
                cash -= pos.qty * pos.fill + ibkr_fixed(pos.qty, pos.fill)
            elif pos.time_exit is not None:
                close(s, i, pos.time_exit, max(o * (1.0 - slip), lo))
            elif i > pos.entry_idx and (hit := _barrier_fill(o, h, lo, pos, slip)) is not None:
                close(s, i, *hit)
        # 2. decisions on bar i, symbol by symbol
        equity = cash + sum(p.qty * px[s]["close"][i] for s, p in book.items() if p.entry_idx is not None)
        if day_of[i] != day:
            day, start_equity = day_of[i], (last_equity if math.isfinite(last_equity) else equity)
        reserved = 0.0
        for s in syms:
            pos = book.get(s)
            if pos is not None and pos.entry_idx is not None and pos.time_exit is None:
                if mtc[i] <= rules.flatten_minutes:
                    pos.time_exit = "EOD"
                elif i - pos.entry_idx + 1 >= rules.max_hold_bars:
                    pos.time_exit = "TIMEOUT"
            p_up = sig[s][i]
            wants = pos is None and i + 1 >= WARMUP_BARS and not math.isnan(p_up) and p_up >= rules.threshold
            blocked = (mtc[i] < rules.no_new_entries_minutes
                       or equity - start_equity <= -rules.daily_loss_limit * start_equity
                       or cooldown.get(s, 0) > 0
                       or len(book) >= rules.max_positions)
            if wants and not blocked:
                close_px = px[s]["close"][i]
                qty = fixed_fraction_shares(equity, cash - reserved, close_px, rules.risk_fraction,
                                            rules.stop_loss, slip, commission=ibkr_fixed)
                if qty > 0:
                    book[s] = _Open(qty)
                    est = close_px * (1.0 + slip)
                    reserved += qty * est * (1.0 + CASH_BUFFER) + ibkr_fixed(qty, est)
            if cooldown.get(s, 0) > 0:
                cooldown[s] -= 1
        last_equity = equity
    assert not book, "the reference left a position open at the end of the data"
    return trades


def _random_signals(frames: dict[str, pd.DataFrame], seed: int) -> dict[str, pd.Series]:
    rng = np.random.default_rng(seed)
    return {s: pd.Series(rng.uniform(0.0, 1.0, len(f)), index=f.index) for s, f in frames.items()}


def _stressed(frames: dict[str, pd.DataFrame], seed: int) -> dict[str, pd.DataFrame]:
    """Widen the wicks of ~10% of bars and gap ~3% of opens by up to 1.2%.

    So that bars touching both barriers, opens beyond a barrier and wide entry bars occur often.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for sym, f in frames.items():
        o, h, lo, c = (f[k].to_numpy().copy() for k in ("open", "high", "low", "close"))
        n = len(f)
        gap = rng.random(n) < 0.03
        o = np.where(gap, np.round(o * (1.0 + rng.choice((-1.0, 1.0), n) * rng.uniform(0.004, 0.012, n)), 2), o)
        wide = rng.random(n) < 0.10
        h = np.where(wide, np.round(h * (1.0 + rng.uniform(0.0, 0.012, n)), 2), h)
        lo = np.where(wide, np.round(lo * (1.0 - rng.uniform(0.0, 0.012, n)), 2), lo)
        h, lo = np.maximum.reduce([h, o, c]), np.minimum.reduce([lo, o, c])
        out[sym] = pd.DataFrame({"open": o, "high": h, "low": lo, "close": c, "volume": f["volume"]},
                                index=f.index)
    return out


SINGLE = Rules(threshold=0.55, stop_loss=0.006, take_profit=0.006, max_hold_bars=60, no_new_entries_minutes=20,
               flatten_minutes=5, daily_loss_limit=0.02, max_positions=4, cooldown_bars=5, risk_fraction=0.002)
MULTI = Rules(threshold=0.55, stop_loss=0.008, take_profit=0.01, max_hold_bars=60, no_new_entries_minutes=30,
              flatten_minutes=5, daily_loss_limit=0.015, max_positions=2, cooldown_bars=5, risk_fraction=0.002)
CASH_BINDS = Rules(threshold=0.55, stop_loss=0.004, take_profit=0.006, max_hold_bars=30,
                   no_new_entries_minutes=20, flatten_minutes=5, daily_loss_limit=0.03, max_positions=3,
                   cooldown_bars=3, risk_fraction=0.004)
ALL_REASONS = frozenset({"STOP", "TARGET", "TIMEOUT", "EOD"})
BARRIERS = frozenset({"STOP", "TARGET"})  # wide bars end every trade at a barrier before any time exit
# name: (symbols, rules, starting cash, stressed bars, exit reasons the data must produce)
CASES = {
    "single_symbol": (("AAA",), SINGLE, 10_000_000.0, False, ALL_REASONS),
    "single_symbol_stressed_bars": (("AAA",), SINGLE, 10_000_000.0, True, BARRIERS),
    "multi_symbol": (("AAA", "BBB", "CCC"), MULTI, 10_000_000.0, False, ALL_REASONS),
    "multi_symbol_cash_binds": (("AAA", "BBB", "CCC"), CASH_BINDS, 200_000.0, False, ALL_REASONS),
}


@pytest.fixture(scope="module", params=list(CASES))
def differential(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Run the backtest and the reference on the same bars and signals."""
    symbols, rules, cash, stressed, reasons = CASES[request.param]
    frames = synthetic_frames(symbols, sessions=4)
    if stressed:
        frames = _stressed(frames, seed=2)
    signals = _random_signals(frames, seed=1)
    run = run_backtest(frames, signals, starting_cash=cash, risk_per_trade_fraction=rules.risk_fraction,
                       **rules.strategy_kwargs())
    expected = reference_trades(frames, signals, rules, cash)
    return {"frames": frames, "rules": rules, "run": run, "expected": expected, "reasons": reasons}


def _keyed(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(trades, key=lambda t: (t["symbol"], t["entry_time"]))


def test_backtest_trades_equal_the_reference_loop(differential: dict[str, Any]) -> None:
    # Arrange
    expected = _keyed(differential["expected"])
    cols = ["symbol", "entry_time", "exit_time", "entry_price", "exit_price", "quantity", "exit_reason"]

    # Act
    actual = _keyed(differential["run"].trades[cols].to_dict("records"))

    # Assert
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert (got["symbol"], got["entry_time"], got["exit_time"], got["exit_reason"], got["quantity"]) == \
            (want["symbol"], want["entry_time"], want["exit_time"], want["exit_reason"], want["quantity"]), got
        assert got["entry_price"] == pytest.approx(want["entry_price"], rel=REL)
        assert got["exit_price"] == pytest.approx(want["exit_price"], rel=REL)


def test_differential_data_produces_every_exit_reason(differential: dict[str, Any]) -> None:
    # Arrange / Act
    counts = Counter(t["exit_reason"] for t in differential["expected"])

    # Assert
    assert set(counts) == differential["reasons"], counts
    assert Counter(differential["run"].trades["exit_reason"]) == counts


def test_labels_reproduce_every_backtest_trade(differential: dict[str, Any]) -> None:
    # Arrange
    rules: Rules = differential["rules"]
    params = LabelParams(stop_loss=rules.stop_loss, take_profit=rules.take_profit,
                         max_hold_bars=rules.max_hold_bars, flatten_minutes=rules.flatten_minutes,
                         no_new_entries_minutes=rules.no_new_entries_minutes, slippage_bps=SLIPPAGE_BPS,
                         commission="ibkr_fixed", notional=10_000.0, bar_minutes=1)
    trades = differential["run"].trades
    assert len(trades) > 0

    for sym, group in trades.groupby("symbol"):
        frame = differential["frames"][sym]
        # Act
        labels = triple_barrier_labels(frame, params, ibkr_fixed)

        # Assert
        for trade in group.itertuples():
            signal_bar = frame.index[frame.index.get_loc(trade.entry_time) - 1]
            row = labels.loc[signal_bar]
            assert bool(row["eligible"]), trade
            assert row["exit_reason"] == trade.exit_reason, trade
            assert row["exit_time"] == trade.exit_time, trade
            assert row["entry_price"] == pytest.approx(trade.entry_price, rel=REL)
            assert row["exit_price"] == pytest.approx(trade.exit_price, rel=REL)


def test_stressed_bars_exercise_stop_first_and_gap_fills() -> None:
    # Arrange
    rules = SINGLE
    frames = _stressed(synthetic_frames(("AAA",), sessions=4), seed=2)
    signals = _random_signals(frames, seed=1)

    # Act
    trades = pd.DataFrame(reference_trades(frames, signals, rules, 10_000_000.0))

    # Assert: the stressed case of the differential covers the rare fills, not just the common ones
    bars = frames["AAA"]
    exit_bar = bars.loc[trades["exit_time"]].reset_index(drop=True)
    stop = trades["entry_price"] * (1.0 - rules.stop_loss)
    target = trades["entry_price"] * (1.0 + rules.take_profit)
    is_stop = trades["exit_reason"] == "STOP"
    assert (is_stop & (exit_bar["high"] >= target)).sum() > 0, "no bar touched both barriers"
    assert (is_stop & (exit_bar["open"] <= stop)).sum() > 0, "no stop gap"
    assert ((trades["exit_reason"] == "TARGET") & (exit_bar["open"] >= target)).sum() > 0, "no target gap"
