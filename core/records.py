"""Typed records shared by the backtest, the live engine and the reports: one definition each.

Codes are ``StrEnum`` members, so they compare equal to their strings and are stored and logged as those
strings (``ExitReason.STOP == "STOP"``); records are frozen dataclasses with ``to_dict`` / ``from_dict`` for
JSON and SQLite.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)


class ExitReason(StrEnum):
    """Why a trade closed."""

    STOP = "STOP"
    TARGET = "TARGET"
    TIMEOUT = "TIMEOUT"
    EOD = "EOD"


class Decision(StrEnum):
    """The one decision per symbol per bar (the decision log's ``decision`` field)."""

    ENTER = "ENTER"
    IN_POSITION = "IN_POSITION"
    WARMUP = "WARMUP"
    NO_SIGNAL = "NO_SIGNAL"
    BLOCKED = "BLOCKED"
    #: Live only: a bar that reached us after a newer one had closed (the backfill after a 162 back-off, a
    #: reconnect or a restart). It feeds the features and the clocks; trading on it would act on a stale price.
    LATE = "LATE"


class BlockReason(StrEnum):
    """Why an entry whose signal cleared the threshold was not sent (``BLOCKED``'s reason)."""

    CLOSE_WINDOW = "CLOSE_WINDOW"
    DAILY_LOSS = "DAILY_LOSS"
    COOLDOWN = "COOLDOWN"
    MAX_POSITIONS = "MAX_POSITIONS"
    SIZE_ZERO = "SIZE_ZERO"
    #: Live only (the live entry gate): the kill switch is on.
    KILL_SWITCH = "KILL_SWITCH"
    #: Live only: IB is not connected, or the engine is re-syncing after a reconnect.
    IB_DISCONNECTED = "IB_DISCONNECTED"


#: The risk rules' reasons, reported in every backtest (the live-only gate reasons appear when they occur).
BACKTEST_BLOCK_REASONS: tuple[BlockReason, ...] = (
    BlockReason.CLOSE_WINDOW, BlockReason.DAILY_LOSS, BlockReason.COOLDOWN, BlockReason.MAX_POSITIONS,
    BlockReason.SIZE_ZERO)


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class TradeRecord:
    """One closed round trip (times are naive UTC, as backtrader keeps them).

    ``pnl`` is net of ``commission`` (entry plus exit); ``adopted`` marks a trade rebuilt from IB's executions
    after the state store lost it (its ``p_up_at_entry`` is then unknown, NaN).
    """

    symbol: str
    entry_time: datetime | None
    exit_time: datetime
    entry_price: float
    exit_price: float
    quantity: float
    exit_reason: ExitReason
    p_up_at_entry: float
    pnl: float
    commission: float
    bars_held: int
    adopted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a plain dict (enums as strings, times as ``datetime``)."""
        out = asdict(self)
        out["exit_reason"] = str(self.exit_reason)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TradeRecord:
        """Build a record from :meth:`to_dict` output or its JSON round trip (ISO times, ``None`` for NaN)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["entry_time"] = _time(values.get("entry_time"))
        values["exit_time"] = _time(values["exit_time"])
        values["exit_reason"] = ExitReason(values["exit_reason"])
        p_up = values.get("p_up_at_entry")
        values["p_up_at_entry"] = math.nan if p_up is None else float(p_up)
        return cls(**values)

    @staticmethod
    def columns() -> list[str]:
        """Return the field names in order (the columns of ``trades.csv``)."""
        return [f.name for f in fields(TradeRecord)]


@dataclass(frozen=True)
class BookSnapshot:
    """What the live engine persists of one symbol's trade after every bar: the part IB cannot tell us.

    ``*_bound`` / ``*_pending`` say which of the trade's orders the strategy was tracking, so a restart binds
    the same ones again.
    """

    trade_id: str | None
    size: float
    entry_price: float
    entry_comm: float
    entry_time: datetime | None
    entry_p_up: float
    exit_reason: ExitReason | None
    reserved: float
    bars_held: int
    entry_pending: bool
    stop_bound: bool
    target_bound: bool
    exit_pending: bool

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (ISO naive-UTC time, enums as strings)."""
        out = asdict(self)
        out["entry_time"] = None if self.entry_time is None else self.entry_time.replace(tzinfo=None).isoformat()
        out["exit_reason"] = None if self.exit_reason is None else str(self.exit_reason)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BookSnapshot:
        """Build a snapshot from :meth:`to_dict` output (missing flags default to ``False``)."""
        entry_time = _time(data.get("entry_time"))
        reason = data.get("exit_reason")
        return cls(
            trade_id=data.get("trade_id"), size=float(data["size"]), entry_price=float(data["entry_price"]),
            entry_comm=float(data.get("entry_comm", 0.0)),
            entry_time=None if entry_time is None else entry_time.replace(tzinfo=None),
            entry_p_up=math.nan if data.get("entry_p_up") is None else float(data["entry_p_up"]),
            exit_reason=None if reason is None else ExitReason(reason), reserved=float(data.get("reserved", 0.0)),
            bars_held=int(data.get("bars_held", 0)), entry_pending=bool(data.get("entry_pending", False)),
            stop_bound=bool(data.get("stop_bound", False)), target_bound=bool(data.get("target_bound", False)),
            exit_pending=bool(data.get("exit_pending", False)))


@dataclass(frozen=True)
class DecisionRecord:
    """One line of the decision log: the strategy's decision for one symbol on one bar (naive-UTC time)."""

    time: datetime
    symbol: str
    p_up: float
    decision: Decision
    reason: BlockReason | None
