"""What the client compatibility scripts share: deterministic bars on disk, ``python -m ibsim`` as a subprocess
with its control port, and the PASS/FAIL report. Imported by the scripts beside it (their folder is on
``sys.path`` when they run as ``python tests/compat/<script>.py``); it imports no IB client library.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
START = "2024-01-04 10:00"
Result = tuple[str, bool, str]


def write_bars(folder: Path) -> tuple[Path, pd.DataFrame]:
    """Write deterministic 1-minute RTH bars for AAPL (three sessions) in the feeds.bars CSV schema."""
    rng = np.random.default_rng(5)
    days = ("2024-01-02", "2024-01-03", "2024-01-04")
    index = pd.DatetimeIndex(np.concatenate([
        pd.date_range(f"{d} 09:30", f"{d} 15:59", freq="1min", tz="America/New_York").tz_convert("UTC")
        for d in days]))
    close = np.round(185 + np.cumsum(rng.normal(0, 0.05, len(index))), 2)
    open_ = np.r_[185.0, close[:-1]]
    frame = pd.DataFrame({
        "datetime": [t.isoformat() for t in index], "open": open_,
        "high": np.round(np.maximum(open_, close) + 0.03, 2), "low": np.round(np.minimum(open_, close) - 0.03, 2),
        "close": close, "volume": rng.integers(1000, 5000, len(index)),
    })
    path = folder / "AAPL_1min.csv"
    frame.to_csv(path, index=False)
    return path, frame


def free_port() -> int:
    """Return a free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until ``proc`` listens on ``port``; raise if it exits or takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ibsim exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"ibsim did not listen on {port} within {timeout:g} s")


class Control:
    """The simulator's control port: one command per line, each reply ends with a blank line."""

    def __init__(self, port: int) -> None:
        self.link = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.replies = self.link.makefile("rb")

    def __call__(self, line: str) -> str:
        self.link.sendall(line.encode() + b"\n")
        lines = []
        while (reply := self.replies.readline().decode().rstrip("\n")) != "":
            lines.append(reply)
        return "\n".join(lines)

    def close(self) -> None:
        self.link.close()


@dataclass(frozen=True)
class Served:
    """A running ``python -m ibsim``: its API port, its control channel and the bars it replays."""

    port: int
    control: Control
    frame: pd.DataFrame


@contextmanager
def serve_ibsim(speed: float = 60.0) -> Iterator[Served]:
    """Run ``python -m ibsim`` on the bars of :func:`write_bars` from :data:`START`, with a control port."""
    with tempfile.TemporaryDirectory() as tmp:
        data, frame = write_bars(Path(tmp))
        port, controlPort = free_port(), free_port()
        command = [sys.executable, "-m", "ibsim", "--port", str(port), "--data", str(data), "--start", START,
                   "--speed", f"{speed:g}", "--control-port", str(controlPort), "--log-level", "WARNING"]
        proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL)
        control = None
        try:
            wait_for_port(controlPort, proc)
            wait_for_port(port, proc)
            control = Control(controlPort)
            yield Served(port, control, frame)
        finally:
            if control is not None:
                control.close()
            proc.terminate()
            proc.wait(10)


def report(client: str, results: list[Result]) -> int:
    """Print one line per check and ``<client> compat: N passed, M failed``; return the exit code."""
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")  # the script's report
    failed = sum(1 for _, ok, _ in results if not ok)
    print(f"{client} compat: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0
