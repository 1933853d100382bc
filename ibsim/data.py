"""Bars for the simulator: the project's files (``feeds.bars``) or its SYNTHETIC demo universe."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd

from ibsim.market import EXCHANGE_TZ

logger = logging.getLogger(__name__)


def loadUniverse(data: Sequence[str] | None, barSize: str = "1min") -> dict[str, pd.DataFrame]:
    """Load bars from files, or the SYNTHETIC demo universe when ``data`` is empty.

    Parameters
    ----------
    data
        Directories and/or files (CSV, CSV.gz, Parquet) in the ``feeds.bars`` schema; None or empty for
        the demo universe.
    barSize
        The files' bar size in the project's notation (``"1min"`` or ``"5min"``).

    Returns
    -------
    dict
        Symbol → bars indexed by UTC bar start. Extended-hours bars are kept so that ``useRTH=0`` requests
        can see them; the simulator filters regular hours per request.
    """
    if data:
        from feeds.bars import load_bars  # noqa: PLC0415  (the project's loader; only the CLI needs it)

        source = list(data) if len(data) > 1 else data[0]
        frames = load_bars(source, bar_size=barSize, rth_only=False)
        logger.info("loaded %d symbol(s) from %s", len(frames), ", ".join(data))
        return frames
    from feeds.synthetic import SYNTHETIC_LABEL, generate_universe  # noqa: PLC0415  (as above)

    frames = generate_universe()
    logger.warning("no --data given: serving the %s (%s)", SYNTHETIC_LABEL, ", ".join(frames))
    return frames


def defaultStart(bars: Mapping[str, pd.DataFrame]) -> datetime:
    """Return 09:30 New York time of the last session in ``bars`` (the most history behind, a day ahead)."""
    zone = ZoneInfo(EXCHANGE_TZ)
    last = max(frame.index.max() for frame in bars.values())
    day = pd.Timestamp(last).tz_convert(zone).date()
    return datetime(day.year, day.month, day.day, 9, 30, tzinfo=zone)


def parseStart(text: str) -> datetime:
    """Parse ``--start 'YYYY-MM-DD HH:MM'`` as New York exchange time."""
    naive = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M")
    return naive.replace(tzinfo=ZoneInfo(EXCHANGE_TZ))
