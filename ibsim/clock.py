"""The simulated clock: stepped explicitly by a test, or running at real time × speed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

logger = logging.getLogger(__name__)


class SimClock:
    """Simulated exchange time (tz-aware UTC).

    Parameters
    ----------
    start
        Simulated time at creation; must be timezone-aware.
    speed
        ``None`` or ``0`` for a stepped clock that moves only through :meth:`advance` / :meth:`set`;
        otherwise simulated seconds per wall second (``1`` is real time, ``60`` one minute per second).
    wall
        Monotonic wall-clock source in seconds; injectable for tests.
    """

    def __init__(self, start: datetime, speed: float | None = None,
                 wall: Callable[[], float] = time.monotonic) -> None:
        if start.tzinfo is None:
            raise ValueError("SimClock start must be timezone-aware")
        self._wall = wall
        self._anchor = start.astimezone(UTC)
        self._wallAnchor = wall()
        self._speed = float(speed or 0.0)

    @property
    def stepped(self) -> bool:
        """True when the clock moves only when told to."""
        return self._speed <= 0.0

    @property
    def speed(self) -> float:
        """Simulated seconds per wall second (0 when stepped)."""
        return self._speed

    def now(self) -> datetime:
        """Return the current simulated time (UTC)."""
        if self.stepped:
            return self._anchor
        return self._anchor + timedelta(seconds=(self._wall() - self._wallAnchor) * self._speed)

    def set(self, t: datetime) -> None:
        """Jump to ``t`` (timezone-aware); running clocks continue from there."""
        if t.tzinfo is None:
            raise ValueError("SimClock.set needs a timezone-aware datetime")
        self._anchor = t.astimezone(UTC)
        self._wallAnchor = self._wall()

    def advance(self, seconds: float) -> datetime:
        """Move forward by ``seconds`` of simulated time and return the new time."""
        if seconds < 0:
            raise ValueError("the simulated clock never runs backwards")
        self.set(self.now() + timedelta(seconds=seconds))
        return self.now()

    def setSpeed(self, speed: float | None) -> None:
        """Switch between stepped (``None``/``0``) and running (``speed`` > 0) keeping the current time."""
        current = self.now()
        self._speed = float(speed or 0.0)
        self.set(current)
