"""The exchange calendar and time conversions: the one home of the exchange time zone.

Datetimes are tz-aware and UTC inside the system; exchange time (America/New_York) is used only at the
edges (session keys, minutes to the close, day labels of logs and summaries, times typed by a user). The
sessions, half days and holidays come from ``exchange_calendars`` (XNYS by default).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: The exchange's time zone (NYSE / Nasdaq). The only definition in the project (ibsim, which stands in for
#: IB, keeps its own).
EXCHANGE_TZ: Final = ZoneInfo("America/New_York")
#: Regular session open in minutes after midnight exchange time (09:30).
SESSION_OPEN_MINUTE: Final = 570
_DAY_NS: Final = 86_400 * 1_000_000_000


@lru_cache(maxsize=8)
def exchange_calendar(name: str = "XNYS") -> xcals.ExchangeCalendar:
    """Return the (cached) ``exchange_calendars`` calendar ``name``."""
    return xcals.get_calendar(name)


@lru_cache(maxsize=4)
def session_schedule(calendar: str = "XNYS") -> tuple[np.ndarray, np.ndarray]:
    """Return (session opens, session closes) of ``calendar`` as sorted UTC epoch-ns int64 arrays."""
    sched = exchange_calendar(calendar).schedule
    opens = pd.DatetimeIndex(sched["open"]).tz_convert("UTC").as_unit("ns").asi8
    closes = pd.DatetimeIndex(sched["close"]).tz_convert("UTC").as_unit("ns").asi8
    return opens, closes


def session_labels(calendar: str = "XNYS") -> pd.DatetimeIndex:
    """Return every session date of ``calendar`` (naive midnight timestamps)."""
    return pd.DatetimeIndex(exchange_calendar(calendar).schedule.index).as_unit("ns")


def local_dates(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Return the exchange-local date (naive midnight) of each time in a tz-aware ``index``."""
    return index.tz_convert(EXCHANGE_TZ).tz_localize(None).normalize()


def session_bounds(index: pd.DatetimeIndex, calendar: str = "XNYS") -> tuple[np.ndarray, np.ndarray]:
    """Return per-bar (session open, session close) as UTC ``datetime64[ns]`` arrays; NaT off-session."""
    cal = exchange_calendar(calendar)
    dates = local_dates(index)
    first, last = dates.min(), dates.max()
    lo = max(first, cal.first_session)
    hi = min(last, cal.last_session)
    sched = cal.schedule.loc[lo:hi] if lo <= hi else cal.schedule.iloc[0:0]
    opens = pd.Series(sched["open"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(), index=sched.index)
    closes = pd.Series(sched["close"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(), index=sched.index)
    open_arr = opens.reindex(dates).to_numpy(dtype="datetime64[ns]")
    close_arr = closes.reindex(dates).to_numpy(dtype="datetime64[ns]")
    return open_arr, close_arr


def minutes_to_close(index: pd.DatetimeIndex, bar_minutes: int, calendar: str = "XNYS") -> np.ndarray:
    """Return, per bar, minutes from the bar's **end** to its session's close (NaN off-session).

    The strategy's "no new entries" and "flatten" windows and the labels' end-of-session barrier use this,
    so half days (13:00 close) are handled by the exchange calendar.
    """
    _, closes = session_bounds(index, calendar)
    end = index.tz_localize(None).as_unit("ns").to_numpy(dtype="datetime64[ns]") + np.timedelta64(bar_minutes, "m")
    out = (closes - end) / np.timedelta64(1, "m")
    return np.where(np.isnat(closes), np.nan, out.astype("float64"))


def session_keys(index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Return per-bar (session key = exchange-local date as days since 1970-01-01, minutes since 09:30)."""
    local = index.tz_convert(EXCHANGE_TZ)
    wall_ns = local.tz_localize(None).as_unit("ns").asi8
    days = wall_ns // _DAY_NS
    minutes = (wall_ns - days * _DAY_NS) / 60e9 - float(SESSION_OPEN_MINUTE)
    return days, minutes


def session_key(t: datetime) -> int:
    """Return the session key (see :func:`session_keys`) of one time (naive times are UTC)."""
    return int(session_keys(pd.DatetimeIndex([to_utc(t)]))[0][0])


def session_date(key: int) -> pd.Timestamp:
    """Return the exchange-local date (naive midnight) of a session key."""
    return pd.Timestamp(int(key), unit="D")


def to_utc(t: datetime) -> datetime:
    """Return ``t`` in UTC; a naive ``t`` is taken as UTC already (backtrader's and IB's convention)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def to_exchange(t: datetime) -> datetime:
    """Return ``t`` in exchange time (naive times are UTC)."""
    return to_utc(t).astimezone(EXCHANGE_TZ)


def exchange_day(t: datetime) -> str:
    """Return the exchange-local date (``YYYY-MM-DD``) of a time (naive times are UTC)."""
    return to_exchange(t).date().isoformat()


def parse_exchange_time(text: str, fmt: str = "%Y-%m-%d %H:%M") -> datetime:
    """Parse a wall-clock time a user typed in exchange time (``'2024-03-01 15:30'``) into a tz-aware UTC time.

    Raises
    ------
    ValueError
        ``text`` does not match ``fmt``.
    """
    return datetime.strptime(text, fmt).replace(tzinfo=EXCHANGE_TZ).astimezone(UTC)
