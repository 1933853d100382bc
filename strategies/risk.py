"""Risk state and entry rules: small composable objects shared by the backtest and live trading.

Each rule answers "may this symbol enter now?" for an :class:`EntryContext` and carries a reason code that
ends up in the decision log, the daily summary and the risk observer (zipline ``TradingControl`` style).
:class:`RiskState` is plain data (``to_dict`` / ``from_dict``) so the live engine can persist it before
acting and restore it after a crash: daily loss stop, cooldowns and blocked counts survive a restart.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.records import BlockReason

logger = logging.getLogger(__name__)

@dataclass
class RiskState:
    """Mutable risk state of one trading day (and the cooldowns that run across days)."""

    session: int = -1
    start_equity: float = math.nan
    realized_pnl: float = 0.0
    cooldowns: dict[str, int] = field(default_factory=dict)
    blocked: Counter[str] = field(default_factory=Counter)

    def roll_session(self, session: int, equity: float) -> bool:
        """Start a new day at ``equity`` if ``session`` is new; return whether it was."""
        if session == self.session:
            return False
        self.session = session
        self.start_equity = equity
        self.realized_pnl = 0.0
        self.blocked = Counter()
        return True

    def day_pnl(self, equity: float) -> float:
        """Return today's P&L including open positions."""
        return equity - self.start_equity

    def start_cooldown(self, symbol: str, bars: int) -> None:
        """Block ``symbol`` on the current bar and the next ``bars`` bars (nothing when ``bars == 0``)."""
        if bars > 0:
            self.cooldowns[symbol] = bars + 1

    def tick_cooldown(self, symbol: str) -> None:
        """Consume one bar of ``symbol``'s cooldown (call once per new bar, after the decision)."""
        left = self.cooldowns.get(symbol, 0)
        if left > 1:
            self.cooldowns[symbol] = left - 1
        elif left:
            del self.cooldowns[symbol]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready snapshot."""
        return {"session": self.session, "start_equity": self.start_equity, "realized_pnl": self.realized_pnl,
                "cooldowns": dict(self.cooldowns), "blocked": dict(self.blocked)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskState:
        """Rebuild from :meth:`to_dict` output."""
        return cls(session=int(data["session"]), start_equity=float(data["start_equity"]),
                   realized_pnl=float(data["realized_pnl"]), cooldowns=dict(data.get("cooldowns", {})),
                   blocked=Counter(data.get("blocked", {})))


@dataclass(frozen=True)
class EntryContext:
    """What the rules see for one candidate entry."""

    symbol: str
    minutes_to_close: float
    equity: float
    open_positions: int
    state: RiskState


class EntryRule(Protocol):
    """A risk gate: ``allows(ctx)`` is False when the entry must be blocked for ``reason``."""

    @property
    def reason(self) -> BlockReason:
        """The reason code reported when this rule blocks."""
        ...

    def allows(self, ctx: EntryContext) -> bool:
        """Return whether the entry may go ahead."""
        ...


@dataclass(frozen=True)
class EntryWindowRule:
    """No new entries when the bar ends less than ``minutes`` before the session close."""

    minutes: int
    reason: BlockReason = BlockReason.CLOSE_WINDOW

    def allows(self, ctx: EntryContext) -> bool:
        return ctx.minutes_to_close >= self.minutes


@dataclass(frozen=True)
class DailyLossRule:
    """No new entries once today's P&L (open P&L included) is at or below ``-limit × start-of-day equity``."""

    limit: float
    reason: BlockReason = BlockReason.DAILY_LOSS

    def allows(self, ctx: EntryContext) -> bool:
        start = ctx.state.start_equity
        return not start > 0 or ctx.state.day_pnl(ctx.equity) > -self.limit * start


@dataclass(frozen=True)
class CooldownRule:
    """No entry into a symbol still cooling down after a STOP exit."""

    reason: BlockReason = BlockReason.COOLDOWN

    def allows(self, ctx: EntryContext) -> bool:
        return ctx.state.cooldowns.get(ctx.symbol, 0) == 0


@dataclass(frozen=True)
class MaxPositionsRule:
    """At most ``limit`` positions open or being opened at once."""

    limit: int
    reason: BlockReason = BlockReason.MAX_POSITIONS

    def allows(self, ctx: EntryContext) -> bool:
        return ctx.open_positions < self.limit


def default_rules(no_new_entries_minutes: int, daily_loss_limit: float, max_positions: int) -> tuple[EntryRule, ...]:
    """Return the seed's rules in evaluation order (the first failing rule is the reported reason)."""
    return (EntryWindowRule(no_new_entries_minutes), DailyLossRule(daily_loss_limit), CooldownRule(),
            MaxPositionsRule(max_positions))


def first_block(rules: tuple[EntryRule, ...], ctx: EntryContext) -> BlockReason | None:
    """Return the reason of the first rule that blocks ``ctx``, or None when every rule allows it."""
    for rule in rules:
        if not rule.allows(ctx):
            return rule.reason
    return None
