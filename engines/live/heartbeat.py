"""The live engine's heartbeat file, read by ``deploy/healthcheck.sh``."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import backtrader as bt

from config.settings import AppConfig
from core.files import atomic_write_json
from feeds.ib.session import IBSession

if TYPE_CHECKING:
    from engines.live.node import LiveHooks

logger = logging.getLogger(__name__)


@dataclass
class Heartbeat:
    """``heartbeat-<strategy_id>.json`` in the state folder: the engine's vital signs for the health check.

    It is rewritten atomically from the engine's main loop (every pass of the poller), at most every
    ``interval`` seconds of wall time, so a hung loop stops it even while the process is alive and the market is
    closed. ``deploy/healthcheck.sh`` fails when it is older than ``HC_MAX_HEARTBEAT_AGE``, says IB is
    disconnected, or says new entries have been paused (IB down, 1100, re-sync) for more than ``HC_MAX_PAUSE``
    seconds of the engine's clock (``paused_seconds``).
    """

    path: Path
    session: IBSession
    hooks: LiveHooks
    feeds: list[Any]
    interval: float = 10.0
    _last: float = -math.inf

    def __call__(self) -> None:
        """Write the heartbeat if ``interval`` has passed since the last one."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        try:
            atomic_write_json(self.path, self.snapshot())
        except OSError as exc:  # a full disk must not stop trading; the health check will notice
            logger.error("heartbeat %s not written: %s", self.path, exc)

    def snapshot(self) -> dict[str, Any]:
        """Return the heartbeat's content."""
        session, hooks = self.session, self.hooks
        last = hooks.last_live_bar
        now = session.now()
        paused_since = session.paused_since
        return {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "clock": now.isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "connected": session.connected,
            "entries_paused": session.entries_paused,
            "paused_since": None if paused_since is None else paused_since.isoformat(timespec="seconds"),
            "paused_seconds": 0.0 if paused_since is None else round((now - paused_since).total_seconds(), 1),
            "down_since": None if session.down_since is None else session.down_since.isoformat(timespec="seconds"),
            "kill_switch": hooks.kill_switch.active,
            "live_bars": hooks.live_bars,
            "last_bar": None if not math.isfinite(last) else bt.num2date(last).replace(tzinfo=UTC).isoformat(),
            "feeds": {d._name: d._getstatusname(d._laststatus) for d in self.feeds},
            # every feed IB gives bars for has its warm-up history (one without market-data permission has none)
            "warmed_up": all(d.tracker.warmed_up or d.tracker.no_permission for d in self.feeds),
        }


def heartbeat_path(cfg: AppConfig) -> Path:
    """Return the heartbeat file of ``cfg``'s strategy."""
    return Path(cfg.live.state_dir) / f"heartbeat-{cfg.live.strategy_id}.json"


