"""One historical-data request budget for all feeds and the downloader: IB's pacing rules are never broken.

IB's "Historical Data Limitations" (TWS API guide, https://interactivebrokers.github.io/tws-api/historical_limitations.html,
"Pacing Violations for Small Bars") — a violation is error 162 and no bars:

- no identical request within 15 s;
- no 6th request for the same contract / exchange / tick type within 2 s;
- no more than 60 requests within 10 minutes (IB applies this one to bars of 30 s or less only; with
  ``small_bars_only=False`` it is enforced for every bar size, as the simulator does by default);
- no more than 50 requests open at once.

BID_ASK requests count twice. :meth:`RequestBudget.try_acquire` answers "may I send this now?" and records the
request when the answer is yes; :meth:`RequestBudget.release` marks it answered. :meth:`RequestBudget.backoff`
is called on a 162 pacing error that slipped through (another client of the same login, clock skew): no
request at all until the back-off expires, doubling on each violation up to the long window.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime

from config.settings import LiveConfig

logger = logging.getLogger(__name__)

_BAR_UNITS = {"sec": 1, "secs": 1, "min": 60, "mins": 60, "hour": 3600, "hours": 3600, "day": 86400,
              "days": 86400, "week": 604800, "weeks": 604800, "month": 2_592_000, "months": 2_592_000}


@dataclass(frozen=True)
class RequestKey:
    """What makes historical requests identical / for the same contract (IB's terms).

    Attributes
    ----------
    symbol, exchange, what_to_show
        The contract / exchange / tick-type triple of the 2-second rule.
    end, duration, bar_size, use_rth
        With the triple: the identity of the 15-second rule (``end`` exactly as sent, ``""`` = now).
    """

    symbol: str
    end: str
    duration: str
    bar_size: str
    what_to_show: str = "TRADES"
    use_rth: bool = True
    exchange: str = "SMART"

    @property
    def contract_key(self) -> tuple[str, str, str]:
        """Return the (contract, exchange, tick type) triple of the 2-second rule."""
        return (self.symbol, self.exchange, self.what_to_show)

    @property
    def bar_seconds(self) -> int:
        """Return the bar size in seconds (``"1 min"`` → 60)."""
        return bar_size_seconds(self.bar_size)

    @property
    def weight(self) -> int:
        """Return how many requests this one counts for (BID_ASK counts twice)."""
        return 2 if self.what_to_show == "BID_ASK" else 1


def bar_size_seconds(bar_size: str) -> int:
    """Return seconds per bar for an IB bar size string (``"1 min"``, ``"5 mins"``, ``"30 secs"``)."""
    match = re.fullmatch(r"\s*(\d+)\s+([a-z]+)\s*", bar_size.lower())
    if match is None or match.group(2) not in _BAR_UNITS:
        raise ValueError(f"not an IB bar size: {bar_size!r}")
    return int(match.group(1)) * _BAR_UNITS[match.group(2)]


def _secs(now: datetime | float) -> float:
    return now.timestamp() if isinstance(now, datetime) else float(now)


class RequestBudget:
    """Decide when a historical-data request may be sent without breaking IB's pacing rules.

    Parameters
    ----------
    small_bars_only
        Apply the 60-per-10-minutes rule only to bars of 30 s or less (IB's footnote); ``False`` applies it
        to every bar size.
    max_open
        Requests open at once (IB: 50).
    identical_window, same_contract_window, same_contract_max, long_window, long_max
        IB's numbers (15 s; 5 within 2 s; 60 within 600 s).
    margin_seconds
        Added to every window: our clock and IB's are not the same clock.
    backoff_initial_seconds
        First back-off after a 162 pacing error; doubles up to ``long_window``.

    Examples
    --------
    >>> budget = RequestBudget()
    >>> key = RequestKey("SPY", "", "300 S", "1 min")
    >>> budget.try_acquire(key, 0.0), budget.try_acquire(key, 1.0)
    (True, False)
    >>> budget.release(key); budget.try_acquire(key, 16.0)
    True
    """

    def __init__(self, small_bars_only: bool = True, *, max_open: int = 50, identical_window: float = 15.0,
                 same_contract_window: float = 2.0, same_contract_max: int = 5, long_window: float = 600.0,
                 long_max: int = 60, margin_seconds: float = 0.5, backoff_initial_seconds: float = 15.0) -> None:
        self.small_bars_only = small_bars_only
        self.max_open = max_open
        self.identical_window = identical_window + margin_seconds
        self.same_contract_window = same_contract_window + margin_seconds
        self.same_contract_max = same_contract_max
        self.long_window = long_window + margin_seconds
        self.long_max = long_max
        self.backoff_initial_seconds = backoff_initial_seconds
        self._last_sent: dict[RequestKey, float] = {}  # identical-request rule
        self._by_contract: dict[tuple[str, str, str], deque[tuple[float, int]]] = {}  # 2-second rule
        self._counted: deque[tuple[float, int]] = deque()  # 10-minute rule (times, weights), oldest first
        self._open: Counter[RequestKey] = Counter()
        self._blocked_until = float("-inf")
        self._backoff = 0.0
        self.acquired = 0
        self.refused = 0
        self.violations = 0

    @classmethod
    def from_config(cls, live_cfg: LiveConfig) -> RequestBudget:
        """Return a budget following ``cfg.live.pacing_small_bars_only``."""
        return cls(small_bars_only=live_cfg.pacing_small_bars_only)

    @property
    def open_requests(self) -> int:
        """Return how many acquired requests are not released yet."""
        return sum(self._open.values())

    def try_acquire(self, key: RequestKey, now: datetime | float) -> bool:
        """Record and allow the request when every rule allows it now; else return False (send nothing).

        Parameters
        ----------
        key
            The request as it will be sent.
        now
            The current time (tz-aware datetime or epoch seconds).
        """
        t = _secs(now)
        if self.wait_seconds(key, t) > 0.0:
            self.refused += 1
            return False
        self._last_sent[key] = t
        self._by_contract.setdefault(key.contract_key, deque()).append((t, key.weight))
        if self._long_rule_applies(key):
            self._counted.append((t, key.weight))
        self._open[key] += 1
        self.acquired += 1
        return True

    def release(self, key: RequestKey) -> None:
        """Mark one request for ``key`` as answered (bars, error or timeout)."""
        if self._open[key] > 0:
            self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def note_success(self) -> None:
        """Reset the pacing back-off after an answered request."""
        self._backoff = 0.0

    def backoff(self, now: datetime | float, key: RequestKey | None = None) -> float:
        """Stop all requests for a while after a 162 pacing violation; return the back-off in seconds.

        Several 162s answering requests of one batch (sent together, before the first violation was known)
        count as one step: the back-off doubles only when a request sent after it expired is refused again.
        """
        t = _secs(now)
        self.violations += 1
        if t < self._blocked_until:  # another answer of a batch already sent: one back-off step per batch
            return self._blocked_until - t
        self._backoff = min(self.long_window, max(self.backoff_initial_seconds, self._backoff * 2.0))
        self._blocked_until = max(self._blocked_until, t + self._backoff)
        logger.warning("pacing violation (162)%s: no historical requests for %.0f s",
                       f" on {key.symbol}" if key is not None else "", self._backoff)
        return self._backoff

    def backoff_seconds(self, now: datetime | float) -> float:
        """Return how long the back-off after a 162 still blocks every request (0 when none)."""
        return max(0.0, self._blocked_until - _secs(now))

    def wait_seconds(self, key: RequestKey, now: datetime | float) -> float:
        """Return how long until ``key`` may be sent (0 when it may be sent now)."""
        t = _secs(now)
        self._expire(t)
        waits = [self._blocked_until - t]
        if self.open_requests >= self.max_open:
            waits.append(1.0)  # until an answer arrives; poll again soon
        last = self._last_sent.get(key)
        if last is not None:
            waits.append(last + self.identical_window - t)
        same = [s for s, w in self._by_contract.get(key.contract_key, ()) for _ in range(w)]
        excess = len(same) + key.weight - self.same_contract_max
        if excess > 0:
            waits.append(same[excess - 1] + self.same_contract_window - t)
        if self._long_rule_applies(key):
            counted = [s for s, w in self._counted for _ in range(w)]
            excess = len(counted) + key.weight - self.long_max
            if excess > 0:
                waits.append(counted[excess - 1] + self.long_window - t)
        return max(0.0, *waits)

    def _long_rule_applies(self, key: RequestKey) -> bool:
        return not self.small_bars_only or key.bar_seconds <= 30

    def _expire(self, t: float) -> None:
        """Forget requests no rule can see any more (keeps the state bounded)."""
        while self._counted and t - self._counted[0][0] >= self.long_window:
            self._counted.popleft()
        for contract in list(self._by_contract):
            times = self._by_contract[contract]
            while times and t - times[0][0] >= self.same_contract_window:
                times.popleft()
            if not times:
                del self._by_contract[contract]
        if len(self._last_sent) > 256:
            self._last_sent = {k: s for k, s in self._last_sent.items() if t - s < self.identical_window}
