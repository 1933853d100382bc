"""IB historical-data pacing rules, measured on the simulated clock (deterministic)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PacingRules:
    """IB's "Historical Data Limitations" as configurable numbers.

    Attributes
    ----------
    enabled
        Apply the rules at all (on by default, as IB does).
    identicalWindow
        An identical request within this many seconds violates.
    sameContractWindow, sameContractMax
        More than ``sameContractMax`` requests for one contract/exchange/tick type within
        ``sameContractWindow`` seconds violate (IB: the 6th within 2 s).
    longWindow, longMax
        More than ``longMax`` requests within ``longWindow`` seconds violate (IB: 60 in 10 minutes).
    maxOpen
        At most this many requests may be open (unanswered) at once.
    smallBarsOnly
        Apply the rules only to bars of 30 seconds or less (IB's footnote); off by default so that the
        minute bars this project uses are paced too.
    bidAskWeight
        BID_ASK requests count this many times.
    """

    enabled: bool = True
    identicalWindow: float = 15.0
    sameContractWindow: float = 2.0
    sameContractMax: int = 5
    longWindow: float = 600.0
    longMax: int = 60
    maxOpen: int = 50
    smallBarsOnly: bool = False
    bidAskWeight: int = 2


@dataclass(frozen=True)
class HistRequestKey:
    """What makes two historical requests "identical" and "for the same contract"."""

    symbol: str
    exchange: str
    whatToShow: str
    endDateTime: str
    duration: str
    barSize: str
    useRth: bool

    @property
    def contractKey(self) -> tuple[str, str, str]:
        """Return the (contract, exchange, tick type) triple of the 2-second rule."""
        return (self.symbol, self.exchange, self.whatToShow)


class PacingGuard:
    """Track accepted historical requests and decide whether a new one violates pacing.

    Parameters
    ----------
    rules
        The limits to enforce.
    """

    def __init__(self, rules: PacingRules | None = None) -> None:
        self.rules = rules or PacingRules()
        self._history: deque[tuple[float, HistRequestKey, int]] = deque()

    def check(self, key: HistRequestKey, now: float, openCount: int, barSeconds: int) -> str | None:
        """Return why the request violates pacing, or None and record it as accepted.

        Parameters
        ----------
        key
            The request's identity.
        now
            Simulated time in seconds.
        openCount
            Requests currently open (not yet answered).
        barSeconds
            The bar size in seconds (for ``smallBarsOnly``).

        Returns
        -------
        str or None
            A short reason for the log, or None when the request may proceed.
        """
        rules = self.rules
        if not rules.enabled or (rules.smallBarsOnly and barSeconds > 30):
            return None
        while self._history and now - self._history[0][0] >= rules.longWindow:
            self._history.popleft()
        weight = rules.bidAskWeight if key.whatToShow == "BID_ASK" else 1
        reason = self._violation(key, now, openCount, weight)
        if reason is None:
            self._history.append((now, key, weight))
        return reason

    def _violation(self, key: HistRequestKey, now: float, openCount: int, weight: int) -> str | None:
        rules = self.rules
        if openCount >= rules.maxOpen:
            return f"{openCount} requests already open (max {rules.maxOpen})"
        if any(k == key and now - t < rules.identicalWindow for t, k, _ in self._history):
            return f"identical request within {rules.identicalWindow:g} s"
        same = sum(w for t, k, w in self._history
                   if k.contractKey == key.contractKey and now - t < rules.sameContractWindow)
        if same + weight > rules.sameContractMax:
            return (f"more than {rules.sameContractMax} requests for {key.symbol} "
                    f"within {rules.sameContractWindow:g} s")
        total = sum(w for _, _, w in self._history)
        if total + weight > rules.longMax:
            return f"more than {rules.longMax} requests within {rules.longWindow:g} s"
        return None

    def reset(self) -> None:
        """Forget all recorded requests."""
        self._history.clear()
