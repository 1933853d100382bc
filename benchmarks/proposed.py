"""Prototypes of proposed speed-ups, measured by ``python -m benchmarks.backtest --variants``.

Nothing outside ``benchmarks/`` uses this module. Each variant is the smallest change that would go into the
owning module (see ``benchmarks/README.md``); here it is applied by swapping a class on
``strategies.engine`` for one run, so the headline figures always measure the code as shipped.
"""

from __future__ import annotations

import array
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from feeds.pandas_feed import BarFrameFeed

logger = logging.getLogger(__name__)

VARIANTS = ("no_observers", "bulk_preload+lean_advance", "bulk_preload+lean_advance+no_observers")
ALL_VARIANTS = (*VARIANTS, "bulk_preload", "lean_advance")  # the singles, for a closer look


class BulkPreloadFeed(BarFrameFeed):
    """``BarFrameFeed`` whose ``preload`` fills every line array in one ``extend`` instead of bar by bar.

    backtrader's ``DataBase.preload`` calls ``load()`` per bar (forward 9 lines, ``_load``, date filters);
    with no filters, no ``fromdate``/``todate`` and no input time zone it ends in exactly the state built here.
    """

    _ORDER = ("datetime", "open", "high", "low", "close", "volume", "openinterest", "mtc", "session")

    def preload(self) -> None:
        """Copy the prepared columns into the line buffers, then rewind as ``DataBase.preload`` does."""
        plain = (not self._filters and not self._ffilters and self._tzinput is None
                 and self.fromdate == float("-inf") and self.todate == float("inf"))
        if not plain or self.lines.datetime.mode != self.lines.datetime.UnBounded:
            super().preload()
            return
        dt, o, h, lo, c, v, mtc, sess = self._cols
        for name, col in zip(self._ORDER, (dt, o, h, lo, c, v, [0.0] * self._n, mtc, sess), strict=True):
            getattr(self.lines, name).array.extend(array.array("d", col))
        self._pos = self._n
        self.home()


def _no_tick_nullify(self: BarFrameFeed) -> None:
    """Skip backtrader's per-bar tick bookkeeping (see :class:`LeanFeed`)."""


def _no_tick_fill(self: BarFrameFeed, force: bool = False) -> None:
    """Skip backtrader's per-bar tick bookkeeping (see :class:`LeanFeed`)."""


class LeanFeed(BulkPreloadFeed):
    """Bulk preload and no tick bookkeeping.

    ``DataBase.advance``/``next`` null and refill ``tick_open`` … ``tick_last`` through ``getattr``/``setattr``
    for every line on every bar; only replay/live bar building needs them, and ``BackBroker`` (their one
    reader) falls back to the bar's own ``open``/``high``/``low``/``close`` when they are unset, i.e. the same
    values. As no-ops they are never set, in runonce and in next mode alike (never stale).
    """

    _tick_nullify = _no_tick_nullify
    _tick_fill = _no_tick_fill


class LeanNoPreloadFeed(BarFrameFeed):
    """No tick bookkeeping only (to separate its effect from the bulk preload)."""

    _tick_nullify = _no_tick_nullify
    _tick_fill = _no_tick_fill


@contextmanager
def applied(variant: str | None) -> Iterator[dict[str, bool]]:
    """Apply ``variant`` to ``strategies.engine`` for the duration; yield extra ``build_cerebro`` kwargs."""
    from strategies import engine  # noqa: PLC0415

    if variant is not None and variant not in ALL_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {ALL_VARIANTS}")
    original = engine.BarFrameFeed
    parts = set((variant or "").split("+"))
    feeds = {frozenset(): original, frozenset({"bulk_preload"}): BulkPreloadFeed,
             frozenset({"lean_advance"}): LeanNoPreloadFeed, frozenset({"bulk_preload", "lean_advance"}): LeanFeed}
    engine.BarFrameFeed = feeds[frozenset(parts & {"bulk_preload", "lean_advance"})]  # type: ignore[misc]
    try:
        yield {"observers": False} if "no_observers" in parts else {}
    finally:
        engine.BarFrameFeed = original  # type: ignore[misc]
