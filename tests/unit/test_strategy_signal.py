"""``MLSignal`` gives the same ``p_up`` under every runonce × preload mode (backtrader's own indicator check).

``once()`` (vectorised, the backtest path) and ``next()`` (trailing window, the live path) must agree bit for
bit. A tiny HistGradientBoosting model with an isotonic calibrator, fitted on random labels, is enough: the
test is about the plumbing, not the model.

scikit-learn's OpenMP pool is held to one thread here: a one-row ``predict_proba`` on a busy machine otherwise
waits on thread start-up (measured ~0.45 s per call on 2 loaded cores vs 0.4 ms single-threaded).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from feeds.pandas_feed import BarFrameFeed
from ml.features import WARMUP_BARS, compute_features, live_window_bars
from ml.model import IsotonicCalibrator, ModelBundle
from strategies.signal import MLSignal, SeriesSignal
from tests.kit import synthetic_frames

logger = logging.getLogger(__name__)

MODES = {"runonce_preload": (True, True), "next_preload": (False, True), "next_no_preload": (False, False)}


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """Three SYNTHETIC sessions of one symbol (1170 bars, more than the 451-bar live window)."""
    return synthetic_frames(("AAA",), sessions=3)["AAA"]


@pytest.fixture(scope="module")
def bundle(bars: pd.DataFrame) -> ModelBundle:
    """A small fitted model bundle."""
    X = compute_features(bars).to_numpy()[WARMUP_BARS:]
    y = np.random.default_rng(0).integers(0, 2, len(X))
    pipeline = Pipeline([("hgb", HistGradientBoostingClassifier(max_iter=15, max_leaf_nodes=7, random_state=0))])
    pipeline.fit(X, y)
    calibrator = IsotonicCalibrator().fit(pipeline.predict_proba(X)[:, 1], y)
    return ModelBundle(pipeline=pipeline, calibrator=calibrator)


class _Record(bt.Strategy):
    """Record the signal's ``p_up`` on every bar (NaN while the indicator warms up)."""

    params = (("make", None),)

    def __init__(self) -> None:
        self.sig = self.p.make(self.data)
        self.values: list[float] = []

    def prenext(self) -> None:
        self.values.append(float("nan"))

    def next(self) -> None:
        self.values.append(float(self.sig.p_up[0]))


def _record(bars: pd.DataFrame, make: object, runonce: bool, preload: bool) -> np.ndarray:
    cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=preload)
    cerebro.adddata(BarFrameFeed(frame=bars), name="AAA")
    cerebro.addstrategy(_Record, make=make)
    return np.asarray(cerebro.run()[0].values)


def test_ml_signal_is_identical_under_runonce_and_preload(bars: pd.DataFrame, bundle: ModelBundle) -> None:
    # Arrange
    assert len(bars) > live_window_bars(1)  # the next() path really cuts a trailing window

    def make(data: bt.feed.DataBase) -> MLSignal:
        return MLSignal(data, model=bundle, bar_minutes=1)

    # Act
    runs = {name: _record(bars, make, *mode) for name, mode in MODES.items()}

    # Assert
    reference = runs["runonce_preload"]
    assert len(reference) == len(bars)
    assert np.isnan(reference[: WARMUP_BARS - 1]).all()
    assert np.isfinite(reference[WARMUP_BARS:]).all()
    assert len(np.unique(reference[WARMUP_BARS:])) > 3  # a real, varying signal
    for name, values in runs.items():
        assert np.array_equal(values, reference, equal_nan=True), name


def test_ml_signal_equals_the_bundle_on_full_history_features(bars: pd.DataFrame, bundle: ModelBundle) -> None:
    # Arrange
    feats = compute_features(bars).to_numpy()
    expected = np.full(len(bars), np.nan)
    expected[WARMUP_BARS:] = bundle.predict_p_up(feats[WARMUP_BARS:])

    # Act
    values = _record(bars, lambda d: MLSignal(d, model=bundle, bar_minutes=1), True, True)

    # Assert
    assert np.array_equal(values[WARMUP_BARS:], expected[WARMUP_BARS:])


def test_ml_signal_on_a_feed_shorter_than_the_warm_up_scores_nothing(bars: pd.DataFrame,
                                                                     bundle: ModelBundle) -> None:
    # Act
    values = {name: _record(bars.iloc[: WARMUP_BARS - 1], lambda d: MLSignal(d, model=bundle, bar_minutes=1),
                            *mode) for name, mode in MODES.items()}

    # Assert
    for name, v in values.items():
        assert len(v) == WARMUP_BARS - 1, name
        assert np.isnan(v).all(), name


def test_ml_signal_needs_a_model(bars: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="needs a model"):
        _record(bars.iloc[:100], lambda d: MLSignal(d, model=None), True, True)


@pytest.mark.parametrize("mode", list(MODES))
def test_series_signal_replays_the_series_in_every_mode(bars: pd.DataFrame, mode: str) -> None:
    # Arrange
    series = pd.Series(np.random.default_rng(3).uniform(0.0, 1.0, len(bars)), index=bars.index)

    # Act
    values = _record(bars, lambda d: SeriesSignal(d, series=series), *MODES[mode])

    # Assert
    assert np.array_equal(values, series.to_numpy())


def test_series_signal_shorter_than_the_feed_is_an_error(bars: pd.DataFrame) -> None:
    # Arrange
    series = pd.Series(np.zeros(len(bars) - 1))

    # Act / Assert
    with pytest.raises(IndexError):
        _record(bars, lambda d: SeriesSignal(d, series=series), True, True)
