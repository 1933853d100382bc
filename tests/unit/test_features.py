"""Features are causal and identical on the full history, on a prefix, and on the live trailing window."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from config.settings import SyntheticConfig
from feeds.synthetic import generate_universe
from ml.features import FEATURE_NAMES, WARMUP_BARS, compute_features, live_window_bars

FeatureFn = Callable[[pd.DataFrame], pd.DataFrame]


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return generate_universe(SyntheticConfig(sessions=6, symbols=("AAA",)))["AAA"]


def lookahead_violations(fn: FeatureFn, bars: pd.DataFrame, points: np.ndarray, window: int | None = None) -> list[int]:
    """Return the bar positions whose features differ between the full series and a cut at that bar.

    ``window=None`` cuts ``bars[: t + 1]``; an int cuts the trailing ``bars[t - window + 1 : t + 1]`` (live).
    Equality is exact (NaN equals NaN): the live engine must see the very same numbers.
    """
    full = fn(bars).to_numpy()
    bad = []
    for t in points:
        start = 0 if window is None else max(0, t - window + 1)
        cut = fn(bars.iloc[start : t + 1]).to_numpy()[-1]
        if not np.array_equal(cut, full[t], equal_nan=True):
            bad.append(int(t))
    return bad


def test_features_at_t_equal_features_computed_on_bars_up_to_t(bars: pd.DataFrame) -> None:
    points = np.random.default_rng(0).integers(0, len(bars), 150)
    assert lookahead_violations(compute_features, bars, points) == []


def test_features_on_the_live_trailing_window_are_bit_identical(bars: pd.DataFrame) -> None:
    window = live_window_bars(1)
    points = np.random.default_rng(1).integers(window, len(bars), 150)
    assert lookahead_violations(compute_features, bars, points, window=window) == []


def test_leaky_feature_is_caught_by_the_truncation_test(bars: pd.DataFrame) -> None:
    def leaky(frame: pd.DataFrame) -> pd.DataFrame:
        out = compute_features(frame)
        out["next_return"] = np.log(frame["close"]).diff().shift(-1)  # the classic shift(-1) leak
        return out

    points = np.random.default_rng(2).integers(WARMUP_BARS, len(bars) - 1, 50)
    assert len(lookahead_violations(leaky, bars, points)) == len(points)


def test_centered_rolling_window_is_caught_by_the_truncation_test(bars: pd.DataFrame) -> None:
    def centered(frame: pd.DataFrame) -> pd.DataFrame:
        out = compute_features(frame)
        out["smooth"] = frame["close"].rolling(5, center=True).mean()
        return out

    points = np.random.default_rng(3).integers(WARMUP_BARS, len(bars) - 3, 50)
    assert lookahead_violations(centered, bars, points)


def test_warmup_rows_are_nan_and_later_rows_defined(bars: pd.DataFrame) -> None:
    feats = compute_features(bars)
    assert list(feats.columns) == list(FEATURE_NAMES)
    assert feats.iloc[: WARMUP_BARS - 1].isna().all().all()
    later = feats.iloc[400:].drop(columns=["gap"])  # the first session has no previous close
    assert later.notna().all().all()
    assert feats["gap"].iloc[390:].notna().all()


def test_minutes_since_open_counts_from_the_exchange_open(bars: pd.DataFrame) -> None:
    feats = compute_features(bars)
    assert feats["minutes_since_open"].iloc[WARMUP_BARS] == WARMUP_BARS
    assert feats["minutes_since_open"].iloc[390 + 100] == 100
