"""Rehearsals on the simulator: the clock of an external ``python -m ibsim --control-port`` (``--sim-control``,
rehearsals and restart tests).
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime

logger = logging.getLogger(__name__)


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
