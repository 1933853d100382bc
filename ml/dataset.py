"""The training dataset: every symbol's causal features pooled with triple-barrier labels, sorted by time.

:func:`build_dataset` turns ``symbol -> bars`` into a :class:`Dataset`: features from :mod:`ml.features`,
labels (the strategy's own trade outcome after costs) from :mod:`ml.labels`, and each label's interval
``[t, t_end]``, which the purged walk-forward folds (:mod:`ml.split`) need.

Training code: this is the one module besides tests that may import the forward-looking :mod:`ml.labels`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from feeds.bars import BarDataError
from ml.features import WARMUP_BARS, compute_features, usable_rows
from ml.label_params import LabelParams
from ml.labels import triple_barrier_labels
from ml.model import ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Pooled training samples of all symbols, sorted by signal time (then symbol).

    Attributes
    ----------
    X
        ``(n, len(FEATURE_NAMES))`` float64 features in :data:`ml.features.FEATURE_NAMES` order.
    y
        0/1 labels (1 = the simulated trade's net return is positive).
    t
        Entry signal time (bar start, UTC).
    t_end
        Label exit time (start of the exit bar, UTC); the label interval is ``[t, t_end]``.
    net_return
        The simulated trade's return net of slippage and commission.
    symbol
        Symbol of each sample.
    """

    X: np.ndarray
    y: np.ndarray
    t: pd.DatetimeIndex
    t_end: pd.DatetimeIndex
    net_return: np.ndarray
    symbol: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def _utc_index(frame: pd.DataFrame, symbol: str) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(frame.index)
    if index.tz is None:
        raise BarDataError(f"{symbol}: bars have a tz-naive index; expected tz-aware (UTC) bar starts")
    return index.tz_convert("UTC").as_unit("ns")


def _symbol_samples(
    symbol: str, bars: pd.DataFrame, params: LabelParams, commission: Callable[[float, float], float]
) -> dict[str, np.ndarray]:
    """Return the usable samples of one symbol as arrays (t and t_end as UTC int64 nanoseconds)."""
    index = _utc_index(bars, symbol)
    bars = bars.set_axis(index)
    X = compute_features(bars).to_numpy(dtype="float64")
    labels = triple_barrier_labels(bars, params, commission)
    keep = labels["eligible"].to_numpy(dtype=bool) & usable_rows(X)
    keep[: WARMUP_BARS - 1] = False
    exit_ns = pd.DatetimeIndex(labels["exit_time"]).as_unit("ns").asi8
    return {
        "X": X[keep],
        "y": labels["label"].to_numpy(dtype="float64")[keep].astype(np.int8),
        "t": index.asi8[keep],
        "t_end": exit_ns[keep],
        "net_return": labels["net_return"].to_numpy(dtype="float64")[keep],
        "symbol": np.full(int(keep.sum()), symbol, dtype=object),
    }


def build_dataset(
    frames: Mapping[str, pd.DataFrame],
    params: LabelParams,
    commission: Callable[[float, float], float],
    *,
    progress: bool = False,
) -> Dataset:
    """Pool features and triple-barrier labels of all symbols into one time-sorted dataset.

    A bar becomes a sample when the strategy could enter there and the trade resolves inside the data
    (label-eligible) and it has :data:`ml.features.WARMUP_BARS` bars of history (every feature defined
    except possibly ``gap``, which is NaN for a symbol's first session).

    Parameters
    ----------
    frames
        ``symbol -> bars`` (tz-aware ``DatetimeIndex`` of bar starts, OHLCV, regular trading hours).
    params
        Trade rules the labels simulate (see :func:`ml.label_params.label_params`).
    commission
        ``f(shares, price) -> USD``, e.g. from :func:`core.costs.commission_function`.
    progress
        Show a progress bar over symbols.

    Returns
    -------
    Dataset
        Samples sorted by signal time, ties by symbol name.
    """
    parts = [_symbol_samples(sym, frames[sym], params, commission)
             for sym in tqdm(sorted(frames), desc="features+labels", unit="symbol", disable=not progress)]
    if not parts:
        raise ModelError("no bar frames to build a training dataset from")
    pooled = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not len(pooled["y"]):
        raise ModelError("no label-eligible samples with full feature history; give the model more sessions")
    order = np.argsort(pooled["t"], kind="stable")  # symbols were concatenated in sorted order
    return Dataset(
        X=np.ascontiguousarray(pooled["X"][order]),
        y=pooled["y"][order],
        t=pd.DatetimeIndex(pooled["t"][order].astype("datetime64[ns]")).tz_localize("UTC"),
        t_end=pd.DatetimeIndex(pooled["t_end"][order].astype("datetime64[ns]")).tz_localize("UTC"),
        net_return=pooled["net_return"][order],
        symbol=pooled["symbol"][order],
    )
