"""Rehearsals on the simulator: ``ibsim`` started in-process (``run_live.py --sim``) and the clock of an external
``python -m ibsim --control-port`` (``--sim-control``, rehearsals and restart tests).
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime
from typing import Any

from config.settings import AppConfig

logger = logging.getLogger(__name__)


def start_sim(cfg: AppConfig, start: str | None = None) -> tuple[Any, AppConfig]:
    """Start ibsim in-process on a free port at ``live.sim_speed``; return it and the config pointing at it.

    ``start`` is the simulated start 'YYYY-MM-DD HH:MM' (New York); the bars' default start when None.
    """
    # the simulator is loaded only for a rehearsal, never by a paper-trading process
    from feeds.universe import load_universe  # noqa: PLC0415
    from ibsim import IBSim, SimConfig  # noqa: PLC0415
    from ibsim.data import defaultStart, parseStart  # noqa: PLC0415
    from ibsim.pacing import PacingRules  # noqa: PLC0415

    frames = load_universe(cfg).frames
    begin = parseStart(start) if start else defaultStart(frames)
    # The simulator paces like IB does for the trader's bar size (live.pacing_small_bars_only).
    pacing = PacingRules(smallBarsOnly=cfg.live.pacing_small_bars_only)
    sim = IBSim(frames, start=begin, config=SimConfig(port=0, pacing=pacing), speed=cfg.live.sim_speed).start()
    logger.info("ibsim on port %d: %s from %s at %gx", sim.port, ", ".join(frames), begin.isoformat(),
                cfg.live.sim_speed)
    live = cfg.live.model_copy(update={"host": sim.host, "port": sim.port})
    return sim, cfg.model_copy(update={"live": live})


class ControlPortClock:
    """The clock of an external ``python -m ibsim --control-port`` (rehearsals and restart tests only).

    Parameters
    ----------
    host, port
        The simulator's control port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self._sock: socket.socket | None = None
        self._last: datetime | None = None

    def __call__(self) -> datetime:
        """Return the simulator's time (the last known one if the control port is unreachable)."""
        try:
            if self._sock is None:
                self._sock = socket.create_connection(self.address, timeout=2.0)
            self._sock.sendall(b"time\n")
            buf = b""
            while not buf.endswith(b"\n\n"):
                chunk = self._sock.recv(4096)
                if not chunk:
                    raise ConnectionError("control port closed")
                buf += chunk
            self._last = datetime.fromisoformat(buf.decode().strip())
        except (OSError, ValueError) as exc:
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            if self._last is None:
                raise ConnectionError(f"simulator control port {self.address} unreachable: {exc}") from exc
        assert self._last is not None  # set above or raised
        return self._last
