"""Time-ordered splits: train/test sessions for a backtest and the purged walk-forward folds of the CV.

:func:`split_sessions` cuts bars at one exchange date into the model's training sessions and the
out-of-sample rest. :func:`purged_walk_forward_splits` cuts the training samples into walk-forward CV
folds whose training side is purged of labels reaching into the test fold and embargoed before it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.calendar import local_dates
from ml.model import ModelError

logger = logging.getLogger(__name__)


def split_sessions(
    frames: Mapping[str, pd.DataFrame], fraction: float
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Split bars into the first ``fraction`` of the trading sessions and the rest.

    Sessions are the exchange-local (America/New_York) dates present in any frame, so every symbol is cut
    at the same date. Symbols with no bars on one side are left out of that side.

    Parameters
    ----------
    frames
        ``symbol -> bars`` with tz-aware indexes.
    fraction
        Share of sessions for the first part, in (0, 1); at least one session goes to each part.

    Returns
    -------
    tuple
        ``(train_frames, test_frames)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction = {fraction}: expected 0 < fraction < 1")
    local = {sym: local_dates(pd.DatetimeIndex(f.index)) for sym, f in frames.items()}
    dates = np.unique(np.concatenate([d.to_numpy() for d in local.values()])) if local else np.array([])
    if len(dates) < 2:
        raise ModelError(f"need at least 2 trading sessions to split train/test, got {len(dates)}")
    n_train = min(max(math.floor(round(fraction * len(dates), 9)), 1), len(dates) - 1)
    cutoff = dates[n_train]
    train, test = {}, {}
    for sym, f in frames.items():
        first = (local[sym] < cutoff)
        if first.any():
            train[sym] = f.loc[first]
        if (~first).any():
            test[sym] = f.loc[~first]
    logger.info("split %d sessions: %d train (to %s), %d test (from %s)", len(dates), n_train,
                pd.Timestamp(dates[n_train - 1]).date(), len(dates) - n_train, pd.Timestamp(cutoff).date())
    return train, test


def _utc_ns(times: Sequence[Any] | np.ndarray | pd.DatetimeIndex) -> np.ndarray:
    """Return times as int64 nanoseconds (UTC when tz-aware)."""
    index = pd.DatetimeIndex(times)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns").asi8


def purged_walk_forward_splits(
    t: Sequence[Any] | np.ndarray | pd.DatetimeIndex,
    t_end: Sequence[Any] | np.ndarray | pd.DatetimeIndex,
    n_folds: int,
    embargo: pd.Timedelta,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return purged, embargoed walk-forward (train, test) index pairs.

    The unique signal times are cut into ``n_folds + 1`` contiguous blocks. Fold k tests block k + 1
    (every sample whose ``t`` lies in it) and trains on samples with ``t < test_start - embargo`` whose
    label interval ends before the test fold (``t_end < test_start``).

    Parameters
    ----------
    t
        Signal time per sample.
    t_end
        Label end (exit) time per sample, ``>= t``.
    n_folds
        Number of test folds (>= 1).
    embargo
        Gap before each test fold from which no training sample may start.

    Returns
    -------
    list of tuple of numpy.ndarray
        ``(train_idx, test_idx)`` per fold, oldest fold first; indices are sorted.
    """
    t_ns, end_ns = _utc_ns(t), _utc_ns(t_end)
    if len(t_ns) != len(end_ns):
        raise ValueError(f"t and t_end differ in length ({len(t_ns)} vs {len(end_ns)})")
    if n_folds < 1:
        raise ValueError(f"n_folds = {n_folds}: expected >= 1")
    unique = np.unique(t_ns)
    if len(unique) < n_folds + 1:
        raise ModelError(f"{len(unique)} distinct signal times cannot make {n_folds} walk-forward folds")
    embargo_ns = pd.Timedelta(embargo).value
    splits = []
    for block in np.array_split(unique, n_folds + 1)[1:]:
        start, stop = block[0], block[-1]
        test_idx = np.flatnonzero((t_ns >= start) & (t_ns <= stop))
        train_idx = np.flatnonzero((t_ns < start - embargo_ns) & (end_ns < start))
        splits.append((train_idx, test_idx))
    return splits
