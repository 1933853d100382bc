"""``BarFrameFeed`` delivers the same bars under every runonce × preload mode, and the same as ``PandasData``.

The one-step preload and the shortened ``advance`` / ``advance_peek`` / ``len`` of the feed must step through
the bars exactly as backtrader's own bar-by-bar path does, with several feeds on one clock.
"""

from __future__ import annotations

import logging

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from feeds.pandas_feed import BarFrameFeed, to_bt_num
from tests.kit import synthetic_frames

logger = logging.getLogger(__name__)

MODES = {"runonce_preload": (True, True), "next_preload": (False, True), "next_no_preload": (False, False)}
FIELDS = ("datetime", "open", "high", "low", "close", "volume")


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    """Two SYNTHETIC sessions of two symbols, the second starting one session later."""
    both = synthetic_frames(("AAA", "BBB"), sessions=2)
    later = both["BBB"].index.normalize() > both["BBB"].index.normalize()[0]
    return {"AAA": both["AAA"], "BBB": both["BBB"].loc[later]}


class _Record(bt.Strategy):
    """Record, per bar and per feed, its length and current values (feeds without a bar yet are skipped)."""

    params = (("extra", True),)

    def __init__(self) -> None:
        self.rows: list[tuple[object, ...]] = []

    def prenext(self) -> None:
        self.next()

    def next(self) -> None:
        for d in self.datas:
            if len(d):
                extra = (d.minutes_to_close[0], d.session[0]) if self.p.extra else ()
                self.rows.append((d._name, len(d), *(getattr(d, f)[0] for f in FIELDS), *extra))


def _run(feeds: dict[str, bt.feed.DataBase], runonce: bool, preload: bool,
         extra: bool = True) -> list[tuple[object, ...]]:
    cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=preload)
    for name, feed in feeds.items():
        cerebro.adddata(feed, name=name)
    cerebro.addstrategy(_Record, extra=extra)
    return cerebro.run()[0].rows


def test_bar_frame_feed_steps_identically_in_every_mode(frames: dict[str, pd.DataFrame]) -> None:
    # Act
    runs = {name: _run({s: BarFrameFeed(frame=f) for s, f in frames.items()}, *mode) for name, mode in MODES.items()}

    # Assert
    reference = runs["runonce_preload"]
    assert len(reference) == sum(len(f) for f in frames.values())
    for name, rows in runs.items():
        assert rows == reference, name


def test_bar_frame_feed_matches_stock_pandas_data(frames: dict[str, pd.DataFrame]) -> None:
    # Arrange
    naive = {s: f.tz_convert("UTC").tz_localize(None) for s, f in frames.items()}

    # Act
    ours = _run({s: BarFrameFeed(frame=f) for s, f in frames.items()}, True, True, extra=False)
    stock = _run({s: bt.feeds.PandasData(dataname=f) for s, f in naive.items()}, True, True, extra=False)

    # Assert
    assert len(ours) == len(stock)
    for a, b in zip(ours, stock, strict=True):
        assert a[:2] == b[:2]
        assert np.allclose(a[2:], b[2:], rtol=0, atol=1e-9), (a, b)  # datetime floats: PandasData rounds
    first = frames["AAA"]
    assert ours[0][2] == to_bt_num(first.index[:1])[0]
