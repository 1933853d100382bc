"""The embedded SYNTHETIC demo universe: deterministic, seeded, multi-symbol 1-minute RTH bars.

The project ships no third-party data, so ``python run_backtest.py`` runs on this. It is made to look like
liquid US equities where it matters for the pipeline:

- real XNYS sessions (holidays skipped, half days end at 13:00) from ``exchange_calendars``;
- a common market factor with per-symbol betas, overnight gaps, day-to-day volatility regimes;
- a U-shaped intraday volatility and volume profile, volume rising with absolute returns;
- prices on a one-cent grid with consistent OHLC.

``planted_edge > 0`` adds a small predictable component: about 3% of bars carry a jump (together
``planted_edge`` of the one-bar variance) that then reverts towards the random-walk anchor with a
half-life of about 7 bars (a short-term reversal after shocks). Jumps show up in short-horizon returns,
range and distance to VWAP, so a model can learn to buy after a sharp drop. ``planted_edge = 0`` is a
pure random walk.

Every frame produced here is SYNTHETIC and reports label it so (see :data:`SYNTHETIC_LABEL`).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import exchange_calendars as xcals
import numpy as np
import pandas as pd
from scipy.signal import lfilter

from config.settings import SyntheticConfig

logger = logging.getLogger(__name__)

SYNTHETIC_LABEL = "SYNTHETIC demo data (generated, not market data)"
_OU_DECAY = 0.1  # per-bar pull of a planted jump back to the anchor (half-life ~7 bars)
_JUMP_PROB = 0.03  # chance per bar of a planted jump
_MINUTE_VOL = 0.0008  # typical one-minute log-return volatility


def _sessions(start: str, count: int) -> pd.DataFrame:
    cal = xcals.get_calendar("XNYS")
    sched = cal.schedule.loc[pd.Timestamp(start):]
    if len(sched) < count:
        raise ValueError(f"data.synthetic: only {len(sched)} sessions available from {start}, asked for {count}")
    return sched.iloc[:count]


def _intraday_profile(minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (volatility multiplier, volume multiplier) by minute since the open (U-shaped)."""
    vol = 0.75 + 1.1 * np.exp(-minutes / 25.0) + 0.45 * np.exp(-(389 - minutes) / 20.0)
    volume = 0.6 + 2.2 * np.exp(-minutes / 30.0) + 1.6 * np.exp(-(389 - minutes) / 25.0)
    return vol, volume


def _session_index(sched: pd.DataFrame) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    stamps, day_ids, minute_of_day = [], [], []
    for day, (open_, close) in enumerate(zip(sched["open"], sched["close"], strict=True)):
        n = int((close - open_) / pd.Timedelta(minutes=1))
        stamps.append(pd.date_range(open_, periods=n, freq="1min"))
        day_ids.append(np.full(n, day))
        minute_of_day.append(np.arange(n))
    index = stamps[0].append(stamps[1:]) if len(stamps) > 1 else stamps[0]
    return (pd.DatetimeIndex(index.tz_convert("UTC"), name="datetime").as_unit("ns"),
            np.concatenate(day_ids), np.concatenate(minute_of_day))


def _symbol_frame(
    rng: np.random.Generator,
    index: pd.DatetimeIndex,
    day_ids: np.ndarray,
    sigma: np.ndarray,
    volume_profile: np.ndarray,
    market: np.ndarray,
    market_gap: np.ndarray,
    edge: float,
) -> pd.DataFrame:
    n = len(index)
    n_days = int(day_ids[-1]) + 1
    beta = rng.uniform(0.6, 1.4)
    idio_scale = rng.uniform(0.8, 1.6)
    day_vol = np.exp(rng.normal(0.0, 0.25, n_days))[day_ids]
    s = sigma * idio_scale * day_vol
    # one-bar variance = (1 - edge) random walk + edge mean-reverting deviation increments
    anchor = beta * market * s + np.sqrt(1.0 - edge) * s * rng.standard_normal(n)
    # planted component: rare jumps (variance share = edge) that revert towards the anchor afterwards
    jumps = np.where(rng.random(n) < _JUMP_PROB, rng.choice((-1.0, 1.0), n), 0.0) * np.sqrt(edge / _JUMP_PROB) * s
    deviation = lfilter([1.0], [1.0, -(1.0 - _OU_DECAY)], jumps)
    first_bar = np.r_[True, day_ids[1:] != day_ids[:-1]]
    gaps = np.zeros(n)
    gaps[first_bar] = beta * market_gap[day_ids[first_bar]] + rng.normal(0.0, 0.006, first_bar.sum())
    gaps[0] = 0.0
    log_close = np.log(rng.uniform(20.0, 300.0)) + np.cumsum(anchor + gaps) + deviation
    close = np.exp(log_close)
    prev_close = np.r_[close[0], close[:-1]]
    open_ = prev_close * np.exp(np.where(first_bar, 0.0, rng.normal(0.0, 0.05, n) * s))
    open_[first_bar] = close[first_bar] * np.exp(rng.normal(0.0, 0.3, first_bar.sum()) * s[first_bar])
    wick = np.abs(rng.normal(0.0, 0.35, (2, n))) * s
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    o, h, lo, c = (np.round(x, 2) for x in (open_, high, low, close))
    h = np.maximum.reduce([h, o, c])
    lo = np.minimum.reduce([lo, o, c])
    abs_move = np.abs(np.log(close / prev_close)) / s
    base_volume = rng.uniform(2_000, 40_000)
    volume = base_volume * volume_profile * rng.lognormal(0.0, 0.45, n) * (0.7 + 0.3 * np.minimum(abs_move, 6.0))
    return pd.DataFrame(
        {"open": o, "high": h, "low": lo, "close": c, "volume": np.round(volume).astype("float64")},
        index=index,
    )


@lru_cache(maxsize=4)
def _generate_cached(cfg: SyntheticConfig) -> dict[str, pd.DataFrame]:
    sched = _sessions(cfg.start, cfg.sessions)
    index, day_ids, minute_of_day = _session_index(sched)
    vol_profile, volume_profile = _intraday_profile(minute_of_day.astype(float))
    sigma = _MINUTE_VOL * vol_profile
    rng = np.random.default_rng(cfg.seed)
    market = 0.55 * rng.standard_normal(len(index))
    market_gap = rng.normal(0.0, 0.007, cfg.sessions)
    frames = {}
    for sym in cfg.symbols:
        sym_rng = np.random.default_rng([cfg.seed, *sym.encode()])
        frames[sym] = _symbol_frame(sym_rng, index, day_ids, sigma, volume_profile, market, market_gap,
                                    cfg.planted_edge)
    logger.info("generated %s: %d symbols x %d bars (%d sessions from %s, planted_edge=%s)",
                SYNTHETIC_LABEL, len(frames), len(index), cfg.sessions, cfg.start, cfg.planted_edge)
    return frames


def generate_universe(cfg: SyntheticConfig | None = None) -> dict[str, pd.DataFrame]:
    """Generate the SYNTHETIC demo universe (deterministic for a given config).

    Returns
    -------
    dict
        ``symbol -> frame`` with a UTC ``DatetimeIndex`` named ``datetime`` (bar start) and float64
        ``open, high, low, close, volume``: the same shape :func:`feeds.bars.load_bars` returns.
    """
    frames = _generate_cached(cfg or SyntheticConfig())
    return {sym: f.copy() for sym, f in frames.items()}
