"""RequestBudget: IB's historical-data pacing rules, on an explicit clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from config.settings import LiveConfig
from feeds.ib.budget import RequestBudget, RequestKey, bar_size_seconds


def key(symbol: str = "SPY", duration: str = "300 S", bar: str = "1 min", what: str = "TRADES") -> RequestKey:
    return RequestKey(symbol, "", duration, bar, what)


def test_identical_request_waits_15_seconds() -> None:
    budget = RequestBudget(margin_seconds=0.0)
    assert budget.try_acquire(key(), 0.0)
    budget.release(key())
    assert not budget.try_acquire(key(), 14.9)
    assert budget.wait_seconds(key(), 14.0) == pytest.approx(1.0)
    assert budget.try_acquire(key(), 15.0)


def test_sixth_request_for_one_contract_within_two_seconds_waits() -> None:
    budget = RequestBudget(margin_seconds=0.0)
    for i in range(5):
        assert budget.try_acquire(key(duration=f"{60 * (i + 1)} S"), 0.1 * i)
    assert not budget.try_acquire(key(duration="999 S"), 0.5)
    assert budget.try_acquire(key("QQQ"), 0.5)  # another contract is not affected
    assert budget.wait_seconds(key(duration="999 S"), 0.5) == pytest.approx(1.5)
    assert budget.try_acquire(key(duration="999 S"), 2.0)


def test_bid_ask_counts_twice() -> None:
    budget = RequestBudget(margin_seconds=0.0)
    for i in range(2):
        assert budget.try_acquire(key(duration=f"{i + 1} D", what="BID_ASK"), 0.0)
    assert budget.try_acquire(key(duration="9 D", what="BID_ASK"), 0.0) is False
    assert budget.try_acquire(key(duration="9 D", what="BID_ASK"), 2.0)


def test_sixty_per_ten_minutes_applies_to_minute_bars_only_when_strict() -> None:
    lenient, strict = RequestBudget(True, margin_seconds=0.0), RequestBudget(False, margin_seconds=0.0)
    for i in range(60):
        k = key(f"S{i}")
        assert lenient.try_acquire(k, float(i))
        assert strict.try_acquire(k, float(i))
        lenient.release(k)
        strict.release(k)
    assert lenient.try_acquire(key("X"), 60.0)
    assert not strict.try_acquire(key("X"), 60.0)
    assert strict.wait_seconds(key("X"), 60.0) == pytest.approx(540.0)
    assert strict.try_acquire(key("X"), 600.0)


def test_small_bars_are_always_paced_by_the_ten_minute_rule() -> None:
    budget = RequestBudget(True, margin_seconds=0.0)
    for i in range(60):
        assert budget.try_acquire(key(f"S{i}", bar="30 secs"), float(i))
        budget.release(key(f"S{i}", bar="30 secs"))
    assert not budget.try_acquire(key("X", bar="30 secs"), 61.0)


def test_at_most_max_open_requests_until_released() -> None:
    budget = RequestBudget(max_open=2)
    assert budget.try_acquire(key("A"), 0.0)
    assert budget.try_acquire(key("B"), 0.0)
    assert not budget.try_acquire(key("C"), 0.0)
    budget.release(key("A"))
    assert budget.open_requests == 1
    assert budget.try_acquire(key("C"), 0.0)


def test_pacing_violation_blocks_everything_and_backs_off_exponentially() -> None:
    budget = RequestBudget(backoff_initial_seconds=10.0, margin_seconds=0.0)
    assert budget.backoff(100.0) == 10.0
    assert not budget.try_acquire(key("ANY"), 109.0)
    assert budget.try_acquire(key("ANY"), 110.0)
    assert budget.backoff(110.0) == 20.0
    budget.note_success()
    assert budget.backoff(200.0) == 10.0
    assert budget.violations == 3


def test_several_162s_of_one_batch_double_the_back_off_once() -> None:
    budget = RequestBudget(backoff_initial_seconds=10.0, margin_seconds=0.0)
    assert [budget.backoff(100.0) for _ in range(3)] == [10.0, 10.0, 10.0]
    assert budget.violations == 3
    assert budget.backoff(110.0) == 20.0
    assert budget.backoff_seconds(125.0) == 5.0
    assert budget.backoff_seconds(130.0) == 0.0


def test_accepts_datetimes_and_reads_the_config() -> None:
    budget = RequestBudget.from_config(LiveConfig(pacing_small_bars_only=False))
    t0 = datetime(2024, 1, 4, 15, tzinfo=UTC)
    assert budget.try_acquire(key(), t0)
    assert not budget.try_acquire(key(), t0 + timedelta(seconds=10))
    assert budget.small_bars_only is False


@pytest.mark.parametrize(("text", "seconds"), [("1 min", 60), ("5 mins", 300), ("30 secs", 30), ("1 hour", 3600)])
def test_bar_size_seconds(text: str, seconds: int) -> None:
    assert bar_size_seconds(text) == seconds


def test_bar_size_seconds_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not an IB bar size"):
        bar_size_seconds("1minute")
