"""Read, validate, RTH-filter and store intraday bars.

Input schema (CSV, CSV.gz or Parquet): ``datetime,open,high,low,close,volume``; ``datetime`` is ISO 8601
with a UTC offset and labels the bar **start**. One file per symbol; the symbol is the file name up to the
first ``_`` (``NVDA_1min.csv.gz`` → ``NVDA``) unless given explicitly as ``SYMBOL=path``.

Everything returned is a frame indexed by a tz-aware **UTC** ``DatetimeIndex`` named ``datetime`` with float64
columns ``open, high, low, close, volume``, sorted, validated and restricted to regular trading hours of the
exchange calendar (holidays and half days included).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from config.settings import bar_size_minutes
from core.calendar import EXCHANGE_TZ, local_dates, session_bounds
from core.files import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

COLUMNS = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
STORE_FORMAT_VERSION = 1
_SUFFIXES = (".csv.gz", ".csv", ".parquet", ".pq")


class BarDataError(ValueError):
    """Bars are malformed; the message names the file, the row (1-based data row) and the field."""




def symbol_from_path(path: Path) -> str:
    """Return the symbol encoded in a bar file name (text before the first ``_`` or the suffix)."""
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.split("_", 1)[0].upper()


def discover_files(source: str | Path | Sequence[str | Path]) -> dict[str, Path]:
    """Map symbols to bar files from a directory, a file, ``SYM=path`` items, or a list of those."""
    items: list[str | Path] = [source] if isinstance(source, str | Path) else list(source)
    found: dict[str, Path] = {}
    for item in items:
        explicit: str | None = None
        target = item
        if isinstance(item, str) and "=" in item and not Path(item).exists():
            explicit, target = item.split("=", 1)
        path = Path(target).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.lower().endswith(_SUFFIXES))
            if not files:
                raise BarDataError(f"{path}: no bar files (*.csv, *.csv.gz, *.parquet) in this directory")
        elif path.is_file():
            files = [path]
        else:
            raise BarDataError(f"{path}: no such file or directory")
        for f in files:
            sym = (explicit or symbol_from_path(f)).upper()
            if sym in found:
                raise BarDataError(f"{f}: symbol {sym} already comes from {found[sym]}; give one file per symbol")
            found[sym] = f
    return found


def read_bar_file(path: Path) -> pd.DataFrame:
    """Read one bar file into a UTC-indexed frame without validating values (see :func:`validate_bars`)."""
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            raw = pd.read_parquet(path)
            if "datetime" not in raw.columns and raw.index.name == "datetime":
                raw = raw.reset_index()
        else:
            raw = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BarDataError(f"{path}: cannot be read as bars: {exc}") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in ("datetime", *COLUMNS) if c not in raw.columns]
    if missing:
        raise BarDataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected header datetime,open,high,low,close,volume"
        )
    ts = _parse_datetimes(raw["datetime"], path)
    frame = pd.DataFrame(index=pd.DatetimeIndex(ts, name="datetime").as_unit("ns"))
    for col in COLUMNS:
        values = pd.to_numeric(raw[col], errors="coerce")
        bad = values.isna() & raw[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise BarDataError(f"{path}: row {row + 1}: field '{col}' = {raw[col].iloc[row]!r} is not a number")
        frame[col] = values.to_numpy(dtype="float64")
    return frame


def _parse_datetimes(col: pd.Series, path: Path) -> pd.DatetimeIndex:
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(col).tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(col.dtype):
        raise BarDataError(f"{path}: field 'datetime' has no time zone; expected ISO 8601 with a UTC offset")
    text = col.astype("string")
    try:
        parsed = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, TypeError):
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0]) if parsed.isna().any() else 0
        raise BarDataError(
            f"{path}: row {row + 1}: field 'datetime' = {col.iloc[row]!r} is not ISO 8601 with a UTC offset"
        ) from None
    no_offset = ~text.str.contains(r"(?:[+-]\d\d:?\d\d|Z)$", regex=True, na=False)
    if no_offset.any():
        row = int(np.flatnonzero(no_offset.to_numpy())[0])
        raise BarDataError(
            f"{path}: row {row + 1}: field 'datetime' = {col.iloc[row]!r} has no UTC offset "
            "(expected e.g. 2025-09-15T09:30:00-04:00)"
        )
    return pd.DatetimeIndex(parsed)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_bars(frame: pd.DataFrame, source: str, bar_minutes: int) -> None:
    """Check timestamps and values; raise :class:`BarDataError` naming ``source``, row and field.

    Checks: no NaN, strictly increasing unique timestamps, positive prices, non-negative volume,
    OHLC consistency (``low <= open, close <= high``), timestamps on the bar grid, and a bar size equal
    to ``bar_minutes`` (the smallest spacing between bars of one day).
    """
    if frame.empty:
        raise BarDataError(f"{source}: no bars")
    for col in COLUMNS:
        nan = frame[col].isna().to_numpy()
        if nan.any():
            raise BarDataError(f"{source}: row {_first(nan) + 1}: field '{col}' is NaN/empty")
    ns = frame.index.as_unit("ns").asi8
    step = np.diff(ns)
    if (step == 0).any():
        row = _first(step == 0) + 2
        raise BarDataError(f"{source}: row {row}: duplicate timestamp {frame.index[row - 1]}")
    if (step < 0).any():
        row = _first(step < 0) + 2
        raise BarDataError(
            f"{source}: row {row}: timestamp {frame.index[row - 1]} is earlier than the row before; "
            "expected increasing timestamps"
        )
    for col in PRICE_COLUMNS:
        bad = (frame[col] <= 0).to_numpy()
        if bad.any():
            raise BarDataError(f"{source}: row {_first(bad) + 1}: field '{col}' = {frame[col].iloc[_first(bad)]} <= 0")
    bad = (frame["volume"] < 0).to_numpy()
    if bad.any():
        raise BarDataError(f"{source}: row {_first(bad) + 1}: field 'volume' is negative")
    o, h, lo, c = (frame[k].to_numpy() for k in PRICE_COLUMNS)
    bad = (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (h < lo)
    if bad.any():
        r = _first(bad)
        raise BarDataError(
            f"{source}: row {r + 1}: OHLC inconsistent (open={o[r]}, high={h[r]}, low={lo[r]}, close={c[r]}); "
            "expected low <= open, close <= high"
        )
    _validate_bar_size(frame.index, source, bar_minutes)


def _validate_bar_size(index: pd.DatetimeIndex, source: str, bar_minutes: int) -> None:
    secs = index.as_unit("ns").asi8 // 1_000_000_000
    off_grid = (secs % (bar_minutes * 60)) != 0
    if off_grid.any():
        r = _first(off_grid)
        raise BarDataError(
            f"{source}: row {r + 1}: timestamp {index[r]} is not on the {bar_minutes}-minute bar grid; "
            f"expected bar starts at multiples of {bar_minutes} minutes (is data.bar_size right?)"
        )
    local_day = index.tz_convert(EXCHANGE_TZ).normalize().asi8
    same_day = local_day[1:] == local_day[:-1]
    steps = np.diff(secs)[same_day]
    if steps.size and int(steps.min()) != bar_minutes * 60:
        raise BarDataError(
            f"{source}: bars are {int(steps.min()) // 60} minutes apart at the closest, but data.bar_size "
            f"says {bar_minutes} minutes"
        )


def filter_rth(frame: pd.DataFrame, bar_minutes: int, calendar: str = "XNYS") -> pd.DataFrame:
    """Keep bars that start at or after the session open and end at or before the session close."""
    if frame.empty:
        return frame
    opens, closes = session_bounds(frame.index, calendar)
    start = frame.index.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    end = start + np.timedelta64(bar_minutes, "m")
    keep = ~np.isnat(opens) & (start >= opens) & (end <= closes)
    return frame.loc[keep]


def _fingerprint(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def frame_fingerprint(frames: Mapping[str, pd.DataFrame]) -> str:
    """Return a short content hash of a set of bar frames (used in model metadata and reports)."""
    h = hashlib.sha256()
    for sym in sorted(frames):
        f = frames[sym]
        h.update(sym.encode())
        h.update(f.index.as_unit("ns").asi8.tobytes())
        h.update(np.ascontiguousarray(f[list(COLUMNS)].to_numpy()).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class BarStore:
    """Parquet store of prepared (validated, RTH-filtered) bars: ``<root>/<bar_size>/<SYMBOL>.parquet``.

    Each entry has a ``.json`` sidecar recording where it came from; a source file whose size or
    modification time changed is re-read. The IB downloader writes into the same layout.
    """

    root: Path

    def paths(self, symbol: str, bar_size: str) -> tuple[Path, Path]:
        """Return the (Parquet, metadata) paths for one symbol."""
        base = self.root / bar_size / symbol
        return base.with_suffix(".parquet"), base.with_suffix(".json")

    def get(self, symbol: str, bar_size: str, fingerprint: dict[str, object]) -> pd.DataFrame | None:
        """Return stored bars when the stored fingerprint matches, else ``None``."""
        data_path, meta_path = self.paths(symbol, bar_size)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("fingerprint") != fingerprint or meta.get("format") != STORE_FORMAT_VERSION:
            return None
        try:
            return pd.read_parquet(data_path)
        except (OSError, ValueError):
            logger.warning("bar store entry %s unreadable; re-reading the source", data_path)
            return None

    def put(self, symbol: str, bar_size: str, frame: pd.DataFrame, fingerprint: dict[str, object]) -> None:
        """Store prepared bars atomically with their fingerprint."""
        data_path, meta_path = self.paths(symbol, bar_size)
        atomic_write(data_path, lambda p: frame.to_parquet(p, engine="pyarrow"))
        atomic_write_json(
            meta_path,
            {"format": STORE_FORMAT_VERSION, "symbol": symbol, "bar_size": bar_size, "rows": len(frame),
             "first": str(frame.index[0]) if len(frame) else None,
             "last": str(frame.index[-1]) if len(frame) else None, "fingerprint": fingerprint},
        )


def prepare_file(path: Path, bar_size: str, calendar: str = "XNYS", rth_only: bool = True) -> pd.DataFrame:
    """Read, validate and (optionally) RTH-filter one bar file."""
    minutes = bar_size_minutes(bar_size)
    frame = read_bar_file(path)
    validate_bars(frame, str(path), minutes)
    if rth_only:
        before = len(frame)
        frame = filter_rth(frame, minutes, calendar)
        if before != len(frame):
            logger.info("%s: dropped %d bars outside regular trading hours", path.name, before - len(frame))
        if frame.empty:
            raise BarDataError(f"{path}: no bars inside regular trading hours")
    return frame


def load_bars(
    source: str | Path | Sequence[str | Path],
    bar_size: str = "1min",
    symbols: Iterable[str] | None = None,
    rth_only: bool = True,
    calendar: str = "XNYS",
    store_dir: str | Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Load bars for each symbol from files, through the Parquet store when ``store_dir`` is given.

    Parameters
    ----------
    source
        A directory, a file, ``SYMBOL=path`` items, or a list of those.
    bar_size
        ``"1min"`` or ``"5min"``; the files' bar spacing must match.
    symbols
        Keep only these symbols (error if one is missing); all when ``None`` or empty.
    rth_only
        Keep only regular-trading-hours bars of ``calendar``.
    store_dir
        Root of the Parquet store of prepared bars; ``None`` disables it.

    Returns
    -------
    dict
        ``symbol -> frame`` (UTC ``DatetimeIndex`` named ``datetime``; float64 OHLCV), in source order.
    """
    files = discover_files(source)
    wanted = [s.upper() for s in symbols or []]
    if wanted:
        missing = [s for s in wanted if s not in files]
        if missing:
            raise BarDataError(f"{source}: no file for symbol(s) {', '.join(missing)} (found: {', '.join(files)})")
        files = {s: files[s] for s in wanted}
    store = BarStore(Path(store_dir)) if store_dir is not None else None
    out: dict[str, pd.DataFrame] = {}
    for sym, path in files.items():
        fp = {**_fingerprint(path), "rth_only": rth_only, "calendar": calendar}
        frame = store.get(sym, bar_size, fp) if store else None
        if frame is None:
            frame = prepare_file(path, bar_size, calendar, rth_only)
            if store:
                store.put(sym, bar_size, frame, fp)
        out[sym] = frame
    return out


def clip_dates(frames: Mapping[str, pd.DataFrame], start: str | None, end: str | None) -> dict[str, pd.DataFrame]:
    """Restrict frames to exchange-time dates ``start`` .. ``end`` (inclusive, ``YYYY-MM-DD``)."""
    out: dict[str, pd.DataFrame] = {}
    for sym, f in frames.items():
        local = local_dates(pd.DatetimeIndex(f.index))
        keep = np.ones(len(f), dtype=bool)
        if start:
            keep &= local >= pd.Timestamp(start)
        if end:
            keep &= local <= pd.Timestamp(end)
        out[sym] = f.loc[keep]
    return out
