"""Risk state (persisted by the live engine) and the entry rules with their reason codes."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

from core.records import BlockReason
from strategies.risk import CooldownRule, DailyLossRule, EntryContext, RiskState, default_rules, first_block

logger = logging.getLogger(__name__)


def _ctx(state: RiskState, symbol: str = "AAA", mtc: float = 60.0, equity: float = 100_000.0,
         open_positions: int = 0) -> EntryContext:
    return EntryContext(symbol, mtc, equity, open_positions, state)


def test_risk_state_survives_a_json_round_trip() -> None:
    # Arrange
    state = RiskState(session=19_725, start_equity=100_000.0, realized_pnl=-123.5, cooldowns={"AAA": 3},
                         blocked=Counter({BlockReason.COOLDOWN: 2, BlockReason.DAILY_LOSS: 1}))

    # Act
    restored = RiskState.from_dict(json.loads(json.dumps(state.to_dict())))

    # Assert
    assert restored == state
    assert isinstance(restored.blocked, Counter)
    assert restored.cooldowns is not state.cooldowns


def test_fresh_risk_state_round_trips_with_unknown_start_equity() -> None:
    # Act
    restored = RiskState.from_dict(json.loads(json.dumps(RiskState().to_dict())))

    # Assert
    assert restored.session == -1
    assert math.isnan(restored.start_equity)
    assert (restored.realized_pnl, restored.cooldowns, restored.blocked) == (0.0, {}, Counter())


def test_new_session_resets_the_day_but_keeps_cooldowns() -> None:
    # Arrange
    state = RiskState(session=1, start_equity=100.0, realized_pnl=-5.0, cooldowns={"AAA": 2},
                         blocked=Counter({BlockReason.COOLDOWN: 1}))

    # Act
    same = state.roll_session(1, 90.0)
    new = state.roll_session(2, 95.0)

    # Assert
    assert (same, new) == (False, True)
    assert (state.session, state.start_equity, state.realized_pnl) == (2, 95.0, 0.0)
    assert state.blocked == Counter()
    assert state.cooldowns == {"AAA": 2}


def test_cooldown_blocks_the_stop_bar_and_the_next_n_bars() -> None:
    # Arrange: the STOP is booked before the decision on its bar; each bar decides, then ticks
    state = RiskState()
    rule = CooldownRule()
    state.start_cooldown("AAA", 3)

    # Act
    allowed = []
    for _ in range(6):
        allowed.append(rule.allows(_ctx(state)))
        state.tick_cooldown("AAA")

    # Assert
    assert allowed == [False, False, False, False, True, True]
    assert "AAA" not in state.cooldowns


def test_cooldown_is_per_symbol() -> None:
    # Arrange
    state = RiskState()
    state.start_cooldown("AAA", 2)

    # Act
    state.tick_cooldown("BBB")

    # Assert
    assert state.cooldowns == {"AAA": 3}
    assert CooldownRule().allows(_ctx(state, "BBB"))
    assert not CooldownRule().allows(_ctx(state, "AAA"))


def test_zero_cooldown_blocks_nothing() -> None:
    # Arrange
    state = RiskState()

    # Act
    state.start_cooldown("AAA", 0)
    state.tick_cooldown("AAA")

    # Assert
    assert state.cooldowns == {}
    assert CooldownRule().allows(_ctx(state))


def test_daily_loss_rule_blocks_at_or_below_the_limit() -> None:
    # Arrange
    state = RiskState(session=1, start_equity=100_000.0)
    rule = DailyLossRule(0.02)

    # Act / Assert
    assert rule.allows(_ctx(state, equity=98_000.01))
    assert not rule.allows(_ctx(state, equity=98_000.0))
    assert not rule.allows(_ctx(state, equity=90_000.0))
    assert rule.allows(_ctx(RiskState(), equity=1.0))  # no start-of-day equity yet


def test_rules_report_the_first_failing_reason_in_order() -> None:
    # Arrange: every rule would block
    rules = default_rules(no_new_entries_minutes=15, daily_loss_limit=0.02, max_positions=2)
    state = RiskState(session=1, start_equity=100_000.0, cooldowns={"AAA": 1})
    ctx = _ctx(state, mtc=10.0, equity=50_000.0, open_positions=2)

    # Act / Assert
    assert [r.reason for r in rules] == [BlockReason.CLOSE_WINDOW, BlockReason.DAILY_LOSS, BlockReason.COOLDOWN,
                                         BlockReason.MAX_POSITIONS]
    assert first_block(rules, ctx) == BlockReason.CLOSE_WINDOW
    assert first_block(rules, _ctx(state, mtc=15.0, equity=50_000.0, open_positions=2)) == BlockReason.DAILY_LOSS
    assert first_block(rules, _ctx(state, mtc=15.0, open_positions=2)) == BlockReason.COOLDOWN
    assert first_block(rules, _ctx(state, "BBB", mtc=15.0, open_positions=2)) == BlockReason.MAX_POSITIONS
    assert first_block(rules, _ctx(state, "BBB", mtc=15.0, open_positions=1)) is None
