"""Live data path benchmark: one poll cycle for 50 symbols, requests, pacing, memory over five simulated days.

    python -m benchmarks.live                 # 50 symbols, 5 simulated sessions (~1 950 poll cycles)
    python -m benchmarks.live --days 1        # quicker

Set-up: the SYNTHETIC universe of 50 symbols (``generate_universe(SyntheticConfig(symbols=S00..S49,
sessions=6))``) replayed by ibsim in a **separate process** (so the simulator's own CPU work never shares our
interpreter's GIL), with a stepped clock. The first session is history; the run starts at the second session's
open and steps the simulated clock to every bar close + ``poll_offset_seconds`` (2 s), overnight gaps skipped.
50 :class:`~feeds.ib.feed.IBPollingFeed` objects (backtrader feeds in bounded-buffer mode) share one
:class:`~feeds.ib.session.IBSession`, one :class:`~feeds.ib.feed.BarPoller` and one
:class:`~feeds.ib.budget.RequestBudget`. Pacing rules are IB's for 1-minute bars (the 60-per-10-minutes rule
applies to bars of 30 s or less only, ``pacing_small_bars_only = true``), in the simulator and in the budget.

A **cycle** is what the engine does after a bar closes: ``BarPoller.service()`` (plan, budget, send the 50
requests concurrently, wait, decode, drop the forming bar, convert, queue) plus ``feed.next()`` on every feed
(the backtrader lines). **Processing time beyond the simulator's latency** = cycle wall time − time the event
loop sat blocked in ``select()`` waiting for the simulator's bytes. Everything else — encoding requests,
ib_async decoding the answers, our logic, backtrader — is charged to us. The wall time including the wait is
printed too.

**Pacing violations** are 162 pacing errors received by the client. **Memory**: resident set size
(``/proc/self/status`` VmRSS) sampled every simulated hour; "flat" compares the last day's mean with the first
day's (after warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd

from config.settings import LiveConfig, SyntheticConfig
from core.calendar import local_dates, parse_exchange_time, session_schedule
from feeds.ib.budget import RequestBudget
from feeds.ib.errors import ErrorKind
from feeds.ib.feed import BarPoller, IBPollingFeed
from feeds.ib.session import IBSession
from feeds.synthetic import generate_universe
from ml.features import live_window_bars

logger = logging.getLogger("benchmarks.live")

TARGET_CYCLE_MS = 50.0
SYMBOLS = tuple(f"S{i:02d}" for i in range(50))


# -- the simulator in its own process ------------------------------------------------------------------------
def _serve_sim(conn: Connection, data_dir: str, start_iso: str) -> None:
    """Run ibsim in this (child) process and obey ('advance', seconds) / ('stop',) from ``conn``."""
    from feeds.bars import load_bars  # noqa: PLC0415  (child process)
    from ibsim import IBSim, SimConfig  # noqa: PLC0415
    from ibsim.pacing import PacingRules  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING)
    bars = load_bars(data_dir)
    config = SimConfig(pacing=PacingRules(smallBarsOnly=True))
    with IBSim(bars, start=datetime.fromisoformat(start_iso), config=config) as sim:
        conn.send(sim.port)
        while True:
            command = conn.recv()
            if command[0] == "advance":
                conn.send(sim.advance(seconds=command[1]).isoformat())
            else:
                conn.send("bye")
                return


class SimProcess:
    """Handle on the simulator child process."""

    def __init__(self, data_dir: Path, start: datetime) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_sim, args=(child, str(data_dir), start.isoformat()), daemon=True)
        self._proc.start()
        self.port: int = self._conn.recv()
        self.now = start.astimezone(UTC)

    def advance(self, seconds: float) -> None:
        """Step the simulated clock."""
        self._conn.send(("advance", seconds))
        self.now = datetime.fromisoformat(self._conn.recv()).astimezone(UTC)

    def stop(self) -> None:
        """End the child process."""
        self._conn.send(("stop",))
        self._conn.recv()
        self._proc.join(10)


# -- measuring -------------------------------------------------------------------------------------------------
class SelectTimer:
    """Accumulate the time the event loop spends blocked in ``select()`` (waiting for the network)."""

    def __init__(self, loop: Any) -> None:
        self.waited = 0.0
        selector = loop._selector  # asyncio's selector loop: the one place the loop blocks
        original: Callable[..., Any] = selector.select

        def timed(timeout: float | None = None) -> Any:
            t0 = time.perf_counter()
            try:
                return original(timeout)
            finally:
                self.waited += time.perf_counter() - t0

        selector.select = timed


def rss_mb() -> float:
    """Return the resident set size of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


@dataclass
class Results:
    """What the run measured."""

    cycles_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    bars: int = 0
    pacing_violations: int = 0
    rss: list[tuple[str, float]] = field(default_factory=list)
    warmup_ms: float = 0.0


def run(days: int, quiet: bool = False, max_cycles: int | None = None) -> Results:
    """Replay ``days`` sessions for 50 symbols and measure every poll cycle."""
    frames = generate_universe(SyntheticConfig(symbols=SYMBOLS, sessions=max(6, days + 1)))
    first_session = local_dates(pd.DatetimeIndex(frames[SYMBOLS[0]].index)).unique()
    opens, closes = session_schedule("XNYS")
    tmp = tempfile.TemporaryDirectory()
    for symbol, frame in frames.items():
        frame.to_parquet(Path(tmp.name) / f"{symbol}_1min.parquet")
    start = parse_exchange_time(f"{first_session[1]:%Y-%m-%d} 09:30")
    sim = SimProcess(Path(tmp.name), start)
    results = Results()
    try:
        _drive(sim, days, results, opens, closes, quiet, max_cycles)
    finally:
        sim.stop()
        tmp.cleanup()
    return results


def _drive(sim: SimProcess, days: int, results: Results, opens: Any, closes: Any, quiet: bool,
           max_cycles: int | None = None) -> None:
    cfg = LiveConfig(port=sim.port, client_id=1, pacing_small_bars_only=True, request_timeout_seconds=20)
    session = IBSession(cfg, clock=lambda: sim.now, rng=random.Random(0))
    session.connect()
    session.on_error.append(lambda code, kind, req_id, text: _count_pacing(results, kind))
    budget = RequestBudget.from_config(cfg)
    cerebro = bt.Cerebro()
    feeds = []
    for symbol in SYMBOLS:
        feed = IBPollingFeed(session=session, symbol=symbol, budget=budget, warmup_bars=live_window_bars(1),
                             qcheck=0.0)
        cerebro.adddata(feed, name=symbol)
        feed.qbuffer(savemem=1)  # bounded line buffers, as a long live run should keep them
        feed._start()
        feeds.append(feed)
    poller = BarPoller.for_session(session)
    timer = SelectTimer(_loop())
    sim.advance(2.0)
    t0 = time.perf_counter()
    _cycle(poller, feeds)  # warm-up: ~450 bars per symbol
    results.warmup_ms = (time.perf_counter() - t0) * 1e3
    hour_mark = sim.now
    sessions_done = 0
    while sessions_done < days and (max_cycles is None or len(results.cycles_ms) < max_cycles):
        now_ns = int(sim.now.timestamp() * 1e9)
        i = int(opens.searchsorted(now_ns, side="right")) - 1
        if now_ns >= int(closes[i]) + 2 * 10**9:  # session over: jump to the next open + one bar + offset
            sessions_done += 1
            if sessions_done < days:
                sim.advance((int(opens[i + 1]) + 62 * 10**9 - now_ns) / 1e9)
            continue
        sim.advance(60.0)
        before_wait, before_req = timer.waited, poller.requests
        t0 = time.perf_counter()
        delivered = _cycle(poller, feeds)
        wall = time.perf_counter() - t0
        waited = timer.waited - before_wait
        results.wall_ms.append(wall * 1e3)
        results.cycles_ms.append((wall - waited) * 1e3)
        results.requests.append(poller.requests - before_req)
        results.bars += delivered
        if sim.now - hour_mark >= timedelta(hours=1):
            hour_mark = sim.now
            results.rss.append((sim.now.isoformat(), rss_mb()))
            if not quiet:
                print(f"{sim.now:%Y-%m-%d %H:%M} UTC  cycles {len(results.cycles_ms):5d}  "
                      f"median {statistics.median(results.cycles_ms):6.1f} ms  rss {rss_mb():7.1f} MB",
                      file=sys.stderr)
    session.disconnect()


def _loop() -> Any:
    """Return the event loop ib_async runs on (the main thread's, set up by ``connect``)."""
    return asyncio.get_event_loop_policy().get_event_loop()


def _count_pacing(results: Results, kind: ErrorKind) -> None:
    if kind is ErrorKind.PACING:
        results.pacing_violations += 1


def _cycle(poller: BarPoller, feeds: list[IBPollingFeed]) -> int:
    """Run one poll cycle and load every queued bar into the feeds' lines; return the bars delivered."""
    poller.service()
    delivered = 0
    for feed in feeds:
        while feed.tracker.queue:
            if feed.next():
                delivered += 1
    return delivered


def summarise(r: Results, days: int) -> dict[str, Any]:
    """Return the figures as a dict (the JSON line)."""
    cycles = sorted(r.cycles_ms)
    live_cycles = [c for c, n in zip(r.cycles_ms, r.requests, strict=True) if n]
    per_day = max(1, len(r.rss) // max(days, 1))
    first_day = [m for _, m in r.rss[:per_day]] or [float("nan")]
    last_day = [m for _, m in r.rss[-per_day:]] or [float("nan")]
    return {
        "symbols": len(SYMBOLS), "simulated_days": days, "cycles": len(r.cycles_ms), "bars_delivered": r.bars,
        "cycle_processing_ms_median": round(statistics.median(live_cycles), 2),
        "cycle_processing_ms_p95": round(cycles[int(0.95 * (len(cycles) - 1))], 2),
        "cycle_processing_ms_max": round(cycles[-1], 2),
        "cycle_wall_ms_median_incl_sim": round(statistics.median(r.wall_ms), 2),
        "warmup_cycle_ms": round(r.warmup_ms, 1),
        "requests_per_cycle_mean": round(statistics.mean(r.requests), 2),
        "requests_per_cycle_max": max(r.requests),
        "pacing_violations": r.pacing_violations,
        "rss_mb_first_day_mean": round(statistics.mean(first_day), 1),
        "rss_mb_last_day_mean": round(statistics.mean(last_day), 1),
        "rss_mb_min": round(min(m for _, m in r.rss), 1) if r.rss else None,
        "rss_mb_max": round(max(m for _, m in r.rss), 1) if r.rss else None,
        "rss_samples": len(r.rss),
        "target_cycle_ms": TARGET_CYCLE_MS,
        "cycle_target_met": statistics.median(live_cycles) < TARGET_CYCLE_MS,
        "pacing_target_met": r.pacing_violations == 0,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=5, help="simulated sessions to replay (default 5)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    r = run(args.days, args.quiet)
    s = summarise(r, args.days)
    rows = [
        ("symbols / simulated sessions", f"{s['symbols']} / {s['simulated_days']}"),
        ("poll cycles / bars delivered", f"{s['cycles']} / {s['bars_delivered']}"),
        ("cycle processing beyond sim latency, median", f"{s['cycle_processing_ms_median']:.2f} ms"
                                                        f" (target < {TARGET_CYCLE_MS:.0f})"),
        ("  p95 / max", f"{s['cycle_processing_ms_p95']:.2f} / {s['cycle_processing_ms_max']:.2f} ms"),
        ("cycle wall time incl. sim latency, median", f"{s['cycle_wall_ms_median_incl_sim']:.2f} ms"),
        ("warm-up cycle (≈450 bars × 50)", f"{s['warmup_cycle_ms']:.0f} ms"),
        ("requests per cycle mean / max", f"{s['requests_per_cycle_mean']} / {s['requests_per_cycle_max']}"),
        ("pacing violations (162)", f"{s['pacing_violations']} (target 0)"),
        ("RSS first day / last day mean", f"{s['rss_mb_first_day_mean']} / {s['rss_mb_last_day_mean']} MB"),
        ("RSS min / max over the run", f"{s['rss_mb_min']} / {s['rss_mb_max']} MB ({s['rss_samples']} samples)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
