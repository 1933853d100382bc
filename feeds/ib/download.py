"""Download IB history into the Parquet bar store the backtest reads.

    python -m feeds.ib.download --symbols SPY QQQ --bar-size 1min --days 20
    python -m feeds.ib.download --symbols SPY --days 250 --end 2024-12-31 --store store/bars --port 4002

Bars land in ``<store>/<bar_size>/<SYMBOL>.parquet`` (:class:`feeds.bars.BarStore` layout, ``.json`` sidecar),
validated and RTH-filtered with :mod:`feeds.bars` and merged with what is already stored; point the backtest's
``data.source`` at ``<store>/<bar_size>``.

- **Chunks** follow IB's per-request limits: one session (``1 D``) per request for 1-minute bars, five
  sessions (``5 D``) for 5-minute bars, each ending at its last session's close.
- **Pacing**: every request goes through a :class:`~feeds.ib.budget.RequestBudget` (the 60-per-10-minutes
  rule too when ``live.pacing_small_bars_only`` is false); waits run ib_async's loop, never ``time.sleep``.
  A 162 that slips through (another program on the same login) backs off and retries the chunk.
- **Resumable**: sessions already fetched (listed in the sidecar, or complete in the stored bars) are
  skipped, and the store is written after every chunk, so an interrupted run continues where it stopped.
- Only complete sessions (closed by now) are downloaded; ``--days N`` counts exchange sessions ending at
  ``--end`` (default: the last complete session).

Exit codes: 0 done; 1 IB unreachable or a failure needing a human; 2 bad input (arguments, config, unknown
symbol); 130 interrupted (what was fetched is stored).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from config.settings import ConfigError, LiveConfig, bar_size_minutes, load_config
from core.calendar import local_dates, session_labels, session_schedule
from feeds.bars import COLUMNS, BarDataError, BarStore, filter_rth, validate_bars
from feeds.ib.budget import RequestBudget, RequestKey
from feeds.ib.errors import ErrorKind, IBError, NeedsHumanError, TemporaryIBError, classify
from feeds.ib.session import IBSession

logger = logging.getLogger(__name__)

SESSIONS_PER_REQUEST = {"1min": 1, "5min": 5}
IB_BAR_SIZE = {"1min": "1 min", "5min": "5 mins"}
_SYMBOL = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
_MAX_RETRIES = 5
_DEFAULT_CONFIG = Path("config/paper.toml")


class DownloadInputError(ValueError):
    """Bad arguments or an unknown symbol: exit code 2."""


@dataclass(frozen=True)
class Chunk:
    """One request: consecutive sessions of one symbol, ending at the last one's close."""

    symbol: str
    sessions: tuple[pd.Timestamp, ...]
    end: datetime  # UTC close of the last session

    @property
    def duration(self) -> str:
        """Return the IB duration string (``"N D"``)."""
        return f"{len(self.sessions)} D"


@dataclass
class DownloadReport:
    """What a run fetched."""

    requests: int = 0
    chunks_skipped: int = 0
    bars_added: dict[str, int] = field(default_factory=dict)
    pacing_errors: int = 0
    empty_sessions: list[str] = field(default_factory=list)


# -- planning ------------------------------------------------------------------------------------------------
def plan_sessions(days: int, end: str | None, now: datetime, calendar: str = "XNYS") -> list[pd.Timestamp]:
    """Return the last ``days`` complete sessions (closed at ``now``) up to ``end`` (YYYY-MM-DD) inclusive.

    Raises
    ------
    DownloadInputError
        ``days`` < 1 or ``end`` not a date.
    """
    if days < 1:
        raise DownloadInputError(f"--days must be at least 1, got {days}")
    labels = session_labels(calendar)
    _, closes = session_schedule(calendar)
    now_ns = int(now.timestamp() * 1e9)
    last = int(np.searchsorted(closes, now_ns, side="right"))  # sessions [0, last) are complete
    if end is not None:
        try:
            end_day = pd.Timestamp(datetime.strptime(end, "%Y-%m-%d"))
        except ValueError:
            raise DownloadInputError(f"--end {end!r} is not a date (YYYY-MM-DD)") from None
        last = min(last, int(np.searchsorted(labels.asi8, end_day.value, side="right")))
    first = max(0, last - days)
    return list(labels[first:last])


def plan_chunks(symbol: str, sessions: Sequence[pd.Timestamp], done: set[str], bar_size: str,
                calendar: str = "XNYS") -> list[Chunk]:
    """Group the sessions not in ``done`` (ISO dates) into requests of at most IB's sessions per request."""
    labels = session_labels(calendar)
    _, closes = session_schedule(calendar)
    position = {label: i for i, label in enumerate(labels)}
    per_request = SESSIONS_PER_REQUEST[bar_size]
    chunks: list[Chunk] = []
    run: list[pd.Timestamp] = []

    def flush() -> None:
        if run:
            close = pd.Timestamp(int(closes[position[run[-1]]]), tz="UTC").to_pydatetime()
            chunks.append(Chunk(symbol, tuple(run), close))
            run.clear()

    for day in sessions:
        if day.date().isoformat() in done:
            flush()
            continue
        if run and (len(run) >= per_request or position[day] != position[run[-1]] + 1):
            flush()
        run.append(day)
    flush()
    return chunks


# -- the store -----------------------------------------------------------------------------------------------
def stored(store: BarStore, symbol: str, bar_size: str) -> tuple[pd.DataFrame | None, set[str]]:
    """Return (stored bars or None, ISO dates of sessions already fetched)."""
    data_path, meta_path = store.paths(symbol, bar_size)
    frame = pd.read_parquet(data_path) if data_path.exists() else None
    done: set[str] = set()
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        fingerprint = meta.get("fingerprint") or {}
        if fingerprint.get("source") == "ib":
            done.update(fingerprint.get("sessions", []))
    except (OSError, ValueError):
        pass
    if frame is not None and len(frame):
        done |= _complete_sessions(frame, bar_size_minutes(bar_size))
    return frame, done


def _complete_sessions(frame: pd.DataFrame, bar_minutes: int, calendar: str = "XNYS") -> set[str]:
    """Return the ISO dates of sessions whose every RTH bar is in ``frame``."""
    labels = session_labels(calendar)
    opens, closes = session_schedule(calendar)
    starts = frame.index.as_unit("ns").asi8
    i = np.searchsorted(opens, starts, side="right") - 1
    counts = pd.Series(1, index=i).groupby(level=0).sum()
    expected = (closes[counts.index] - opens[counts.index]) // (bar_minutes * 60 * 1_000_000_000)
    full = counts.index[counts.to_numpy() >= expected]
    return {labels[k].date().isoformat() for k in full}


def merge_and_store(store: BarStore, symbol: str, bar_size: str, existing: pd.DataFrame | None,
                    new: pd.DataFrame, done: set[str]) -> pd.DataFrame:
    """Merge ``new`` into ``existing`` (new wins on equal timestamps), validate, and write store + sidecar."""
    frames = [f for f in (existing, new) if f is not None and len(f)]
    merged = pd.concat(frames) if frames else new
    merged = merged[~merged.index.duplicated(keep="last")].sort_index()
    if len(merged):
        validate_bars(merged, f"{symbol} {bar_size} (IB)", bar_size_minutes(bar_size))
    store.put(symbol, bar_size, merged, {"source": "ib", "sessions": sorted(done)})
    return merged


def bars_frame(bars: Iterable[object], chunk: Chunk, bar_size: str) -> pd.DataFrame:
    """Convert ib_async bars (``formatDate=2``) of one chunk into a validated, RTH-filtered frame."""
    rows = [(b.date, b.open, b.high, b.low, b.close, b.volume) for b in bars]  # type: ignore[attr-defined]
    index = pd.DatetimeIndex([r[0] for r in rows], name="datetime").tz_convert("UTC").as_unit("ns")
    frame = pd.DataFrame([r[1:] for r in rows], index=index, columns=list(COLUMNS), dtype="float64")
    local_days = local_dates(pd.DatetimeIndex(frame.index))
    frame = frame[local_days.isin(pd.DatetimeIndex(chunk.sessions))]
    if frame.empty:
        return frame
    minutes = bar_size_minutes(bar_size)
    validate_bars(frame, f"IB {chunk.symbol} {chunk.duration} to {chunk.end:%Y-%m-%d}", minutes)
    return filter_rth(frame, minutes)


# -- fetching ------------------------------------------------------------------------------------------------
class Downloader:
    """Fetch chunks through a pacing budget, resuming from the store.

    Parameters
    ----------
    session
        A connected :class:`~feeds.ib.session.IBSession`.
    store
        Where bars go.
    budget
        Pacing budget (shared with any feed in the same process).
    sleep
        Waits ``seconds`` of the session's clock; runs the IB event loop by default (tests advance the simulator).
    progress
        Show a tqdm progress bar.
    """

    def __init__(self, session: IBSession, store: BarStore, budget: RequestBudget | None = None,
                 sleep: Callable[[float], None] | None = None, progress: bool = True) -> None:
        self.session = session
        self.store = store
        self.budget = budget or RequestBudget.from_config(session.cfg)
        self.sleep = sleep or session.run_event_loop
        self.progress = progress
        self.report = DownloadReport()

    def run(self, symbols: Sequence[str], bar_size: str, sessions: Sequence[pd.Timestamp]) -> DownloadReport:
        """Download ``sessions`` of every symbol that the store lacks (an unknown symbol stops it first)."""
        self.session.qualify(symbols, source="--symbols")
        plans: list[tuple[str, pd.DataFrame | None, set[str], list[Chunk]]] = []
        for symbol in symbols:
            existing, done = stored(self.store, symbol, bar_size)
            chunks = plan_chunks(symbol, sessions, done, bar_size)
            skipped = sum(1 for d in sessions if d.date().isoformat() in done)
            self.report.chunks_skipped += skipped
            plans.append((symbol, existing, done, chunks))
            logger.info("%s: %d sessions stored, %d requests to make", symbol, skipped, len(chunks))
        total = sum(len(p[3]) for p in plans)
        with tqdm(total=total, unit="req", desc=f"IB {bar_size}", disable=not self.progress) as bar:
            for symbol, stored_bars, done, chunks in plans:
                existing = stored_bars
                added = 0
                for chunk in chunks:
                    new = self.fetch(chunk, bar_size)
                    if new.empty:
                        self.report.empty_sessions.extend(d.date().isoformat() for d in chunk.sessions)
                    done.update(d.date().isoformat() for d in chunk.sessions)
                    existing = merge_and_store(self.store, symbol, bar_size, existing, new, done)
                    added += len(new)
                    bar.update(1)
                    bar.set_postfix_str(f"{symbol} {chunk.sessions[-1]:%Y-%m-%d}")
                self.report.bars_added[symbol] = added
        return self.report

    def fetch(self, chunk: Chunk, bar_size: str) -> pd.DataFrame:
        """Fetch one chunk (waiting for the budget, retrying pacing errors and reconnects)."""
        key = RequestKey(chunk.symbol, chunk.end.strftime("%Y%m%d %H:%M:%S UTC"), chunk.duration,
                         IB_BAR_SIZE[bar_size])
        for _ in range(_MAX_RETRIES):
            self._wait_for(key)
            bars, error = self._request(chunk, key)
            if error is None:
                self.budget.note_success()
                return bars_frame(bars, chunk, bar_size)
            code, text = error
            kind = classify(code, text)
            if kind is ErrorKind.PACING:
                self.report.pacing_errors += 1
                self.budget.backoff(self.session.now(), key)
            elif code == 200:
                raise DownloadInputError(f"{chunk.symbol}: IB has no security definition for it (error 200)")
            elif kind is ErrorKind.NO_DATA and "no data" in text.lower():
                logger.warning("%s: no data for %s", chunk.symbol, ", ".join(f"{d:%Y-%m-%d}" for d in chunk.sessions))
                return pd.DataFrame(columns=list(COLUMNS), dtype="float64")
            elif kind is ErrorKind.NO_PERMISSION:
                raise NeedsHumanError(f"{chunk.symbol}: IB has no market-data permission for its bars (IB {code}: "
                                      f"{text}); subscribe to its exchange's market data for this login", code=code)
            elif kind is ErrorKind.FATAL:
                raise NeedsHumanError(f"IB {code}: {text}", code=code)
            else:
                logger.warning("%s: request failed (IB %d %s); retrying", chunk.symbol, code, text)
        raise TemporaryIBError(f"{chunk.symbol}: {chunk.duration} to {chunk.end:%Y-%m-%d} failed {_MAX_RETRIES} times")

    def _wait_for(self, key: RequestKey) -> None:
        while True:
            if not self.session.maintain():
                self.sleep(1.0)
                continue
            now = self.session.now()
            if self.budget.try_acquire(key, now):
                return
            self.sleep(max(self.budget.wait_seconds(key, now), 0.01))

    def _request(self, chunk: Chunk, key: RequestKey) -> tuple[list[object], tuple[int, str] | None]:
        self.report.requests += 1
        ib = self.session.ib
        try:
            bars = self.session.run(ib.reqHistoricalDataAsync(
                self.session.contract(chunk.symbol), chunk.end, chunk.duration, key.bar_size, key.what_to_show,
                key.use_rth, formatDate=2, timeout=self.session.cfg.request_timeout_seconds))
        except ConnectionError as exc:
            return [], (504, str(exc))
        finally:
            self.budget.release(key)
        if not bars:
            return [], self.session.request_error(bars.reqId) or (0, "no answer (timed out)")
        return list(bars), None


# -- command line --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(prog="python -m feeds.ib.download", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", nargs="+", required=True, help="tickers (US stocks on SMART)")
    ap.add_argument("--bar-size", default="1min", help="1min or 5min")
    ap.add_argument("--days", type=int, required=True, help="exchange sessions to fetch, ending at --end")
    ap.add_argument("--end", help="last session (YYYY-MM-DD, exchange date); default the last complete one")
    ap.add_argument("--config", help=f"TOML config for the [live] connection (default {_DEFAULT_CONFIG})")
    ap.add_argument("--host")
    ap.add_argument("--port", type=int)
    ap.add_argument("--client-id", type=int, help="default: live.client_id + 1 (the engine keeps its own)")
    ap.add_argument("--store", default="store/bars", help="root of the Parquet bar store")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def resolve_live_config(args: argparse.Namespace) -> LiveConfig:
    """Return the connection settings: the config's [live] section with command-line overrides."""
    path = Path(args.config) if args.config else _DEFAULT_CONFIG
    live = load_config(path).live if (args.config or path.exists()) else LiveConfig()
    updates: dict[str, object] = {"client_id": live.client_id + 1}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if args.client_id is not None:
        updates["client_id"] = args.client_id
    try:
        return LiveConfig.model_validate({**live.model_dump(), **updates})
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from None


def check_inputs(args: argparse.Namespace) -> list[str]:
    """Validate symbols and bar size; return the symbols upper-cased."""
    if args.bar_size not in SESSIONS_PER_REQUEST:
        raise DownloadInputError(f"--bar-size {args.bar_size!r}: expected one of {', '.join(SESSIONS_PER_REQUEST)}")
    symbols = [s.upper() for s in args.symbols]
    bad = [s for s in symbols if not _SYMBOL.match(s)]
    if bad:
        raise DownloadInputError(f"not a ticker: {', '.join(bad)}")
    return list(dict.fromkeys(symbols))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; return the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    session: IBSession | None = None
    try:
        symbols = check_inputs(args)
        live = resolve_live_config(args)
        session = IBSession(live)
        sessions = plan_sessions(args.days, args.end, session.now())
        if not sessions:
            raise DownloadInputError(f"no complete session up to {args.end or 'now'}")
        session.connect()
        report = Downloader(session, BarStore(Path(args.store)), progress=not args.no_progress).run(
            symbols, args.bar_size, sessions)
    except (DownloadInputError, ConfigError, BarDataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except IBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; bars fetched so far are stored, run again to continue", file=sys.stderr)
        return 130
    finally:
        if session is not None:
            session.disconnect()
    print(f"{report.requests} requests, {report.chunks_skipped} sessions already stored, bars added: "
          f"{report.bars_added}, pacing errors: {report.pacing_errors}; store: {Path(args.store) / args.bar_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
