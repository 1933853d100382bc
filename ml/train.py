"""Train the p_up classifier: pooled dataset, purged walk-forward CV, out-of-fold calibration, bundle.

Run as ``python -m ml.train [--config PATH] [--set key=value ...] [--data DIR_OR_FILES] [--quiet]``.

The pipeline:

1. :func:`build_dataset` pools every symbol's causal features (:mod:`ml.features`) with triple-barrier
   labels (:mod:`ml.labels`, the strategy's own trade outcome after costs), sorted by signal time.
2. :func:`purged_walk_forward_splits` cuts the signal times into ``cv_folds + 1`` contiguous blocks; fold k
   tests block k + 1 and trains only on earlier samples whose label interval ends before the test fold
   (purge) and that start at least the embargo before it.
3. The out-of-fold (OOF) raw scores of all folds fit the probability calibrator: the calibrator never sees
   a score the model produced for its own training data. Per-fold threshold metrics use a calibrator fit on
   the *earlier* folds' OOF scores only (fold 1 has none, so its threshold metrics are null).
4. The final pipeline is fit once on all samples and saved with the calibrator and metadata
   (:class:`ml.model.ModelBundle`) to ``model.path``, next to ``training_report.json``.

This is the one module besides tests that may import the forward-looking :mod:`ml.labels`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from config.settings import AppConfig, ConfigError, ModelConfig, bar_size_minutes, load_config
from core.costs import commission_function
from core.files import atomic_write_json
from feeds.bars import EXCHANGE_TZ, BarDataError, clip_dates, frame_fingerprint, load_bars
from feeds.universe import load_universe
from ml.features import WARMUP_BARS, compute_features, usable_rows
from ml.label_params import LabelParams, label_params
from ml.labels import triple_barrier_labels
from ml.model import IsotonicCalibrator, ModelBundle, ModelError, SigmoidCalibrator

logger = logging.getLogger(__name__)

REPORT_FILE = "training_report.json"
RELIABILITY_BINS = 10
_PROB_EPS = 1e-6

Calibrator = IsotonicCalibrator | SigmoidCalibrator


# ------------------------------------------------------------------------------------------------- pipeline


def make_pipeline(model_cfg: ModelConfig) -> Pipeline:
    """Return an unfitted classifier pipeline for ``model.kind`` (``"hgb"`` or ``"logreg"``).

    ``hgb`` runs exactly ``max_iter`` boosting iterations (no early stopping: its validation split would be
    random, not time-ordered). ``logreg`` imputes missing values (the first session's ``gap``) with the
    training median and standardises before the regression.
    """
    if model_cfg.kind == "logreg":
        return Pipeline([
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=model_cfg.logreg_c, max_iter=1000,
                                       random_state=model_cfg.random_state)),
        ])
    return Pipeline([
        ("clf", HistGradientBoostingClassifier(
            learning_rate=model_cfg.learning_rate,
            max_iter=model_cfg.max_iter,
            max_leaf_nodes=model_cfg.max_leaf_nodes,
            min_samples_leaf=model_cfg.min_samples_leaf,
            l2_regularization=model_cfg.l2_regularization,
            early_stopping=False,
            random_state=model_cfg.random_state,
        )),
    ])


def _model_params(model_cfg: ModelConfig) -> dict[str, Any]:
    if model_cfg.kind == "logreg":
        return {"C": model_cfg.logreg_c}
    return {"learning_rate": model_cfg.learning_rate, "max_iter": model_cfg.max_iter,
            "max_leaf_nodes": model_cfg.max_leaf_nodes, "min_samples_leaf": model_cfg.min_samples_leaf,
            "l2_regularization": model_cfg.l2_regularization, "early_stopping": False}


def make_calibrator(kind: str) -> Calibrator:
    """Return an unfitted calibrator for ``model.calibration`` (``"isotonic"`` or ``"sigmoid"``)."""
    return SigmoidCalibrator() if kind == "sigmoid" else IsotonicCalibrator()


# -------------------------------------------------------------------------------------------------- dataset


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
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not len(cat["y"]):
        raise ModelError("no label-eligible samples with full feature history; give the model more sessions")
    order = np.argsort(cat["t"], kind="stable")  # symbols were concatenated in sorted order
    return Dataset(
        X=np.ascontiguousarray(cat["X"][order]),
        y=cat["y"][order],
        t=pd.DatetimeIndex(cat["t"][order].astype("datetime64[ns]")).tz_localize("UTC"),
        t_end=pd.DatetimeIndex(cat["t_end"][order].astype("datetime64[ns]")).tz_localize("UTC"),
        net_return=cat["net_return"][order],
        symbol=cat["symbol"][order],
    )


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
    local = {sym: pd.DatetimeIndex(f.index).tz_convert(EXCHANGE_TZ).tz_localize(None).normalize()
             for sym, f in frames.items()}
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


# ------------------------------------------------------------------------------------------------------- CV


def _as_ns(times: Sequence[Any] | np.ndarray | pd.DatetimeIndex) -> np.ndarray:
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
    t_ns, end_ns = _as_ns(t), _as_ns(t_end)
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


def _fit_predict(
    model_cfg: ModelConfig, ds: Dataset, train_idx: np.ndarray, test_idx: np.ndarray, fold: int
) -> np.ndarray:
    X, y = ds.X, ds.y
    if len(train_idx) == 0 or np.unique(y[train_idx]).size < 2:
        raise ModelError(f"CV fold {fold}: the training window has {len(train_idx)} samples and not both "
                         "label classes; use more sessions or fewer model.cv_folds")
    pipe = clone(make_pipeline(model_cfg)).fit(X[train_idx], y[train_idx])
    return pipe.predict_proba(X[test_idx])[:, 1]


def _prob_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    two_classes = np.unique(y).size == 2
    clipped = np.clip(p, _PROB_EPS, 1.0 - _PROB_EPS)
    return {
        "auc": float(roc_auc_score(y, p)) if two_classes else None,
        "brier": float(brier_score_loss(y, p)) if len(y) else None,
        "log_loss": float(log_loss(y, clipped, labels=[0, 1])) if len(y) else None,
    }


def threshold_metrics(
    p: np.ndarray, y: np.ndarray, net_return: np.ndarray, threshold: float
) -> dict[str, float | int | None]:
    """Return precision, trade count and mean net return per trade of samples with ``p >= threshold``."""
    take = p >= threshold
    n = int(take.sum())
    return {
        "n_trades": n,
        "precision": float(y[take].mean()) if n else None,
        "ev_per_trade": float(net_return[take].mean()) if n else None,
    }


def reliability_table(p: np.ndarray, y: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict[str, Any]]:
    """Return equal-width bins of predicted probability: mean prediction, observed frequency, count."""
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        rows.append({"bin_lo": b / bins, "bin_hi": (b + 1) / bins, "count": n,
                     "mean_predicted": float(p[sel].mean()) if n else None,
                     "observed": float(y[sel].mean()) if n else None})
    return rows


@dataclass(frozen=True)
class CVResult:
    """Out-of-fold results of the purged walk-forward CV.

    ``oof_raw`` holds the raw model score of each sample predicted by the fold model that did not train on
    it (NaN outside every test fold); ``oof_forward`` the same score calibrated by a calibrator fit on the
    earlier folds' OOF scores only (NaN in fold 1 and outside the folds); ``fold_of`` the 1-based fold
    (0 outside the folds).
    """

    splits: list[tuple[np.ndarray, np.ndarray]]
    oof_raw: np.ndarray
    oof_forward: np.ndarray
    fold_of: np.ndarray
    folds: list[dict[str, Any]]


def _iso(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").isoformat()


def _fold_report(
    fold: int, ds: Dataset, split: tuple[np.ndarray, np.ndarray], *,
    raw: np.ndarray, forward: np.ndarray | None, threshold: float,
) -> dict[str, Any]:
    train_idx, test_idx = split
    y, t_ns = ds.y[test_idx], ds.t.asi8
    none_metrics = {"n_trades": None, "precision": None, "ev_per_trade": None}
    return {
        "fold": fold,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "train_end": _iso(t_ns[train_idx[-1]]),
        "test_start": _iso(t_ns[test_idx[0]]),
        "test_end": _iso(t_ns[test_idx[-1]]),
        "base_rate": float(y.mean()),
        **_prob_metrics(y, raw),
        "brier_calibrated": float(brier_score_loss(y, forward)) if forward is not None else None,
        "at_threshold": (threshold_metrics(forward, y, ds.net_return[test_idx], threshold)
                         if forward is not None else none_metrics),
    }


def cross_validate(cfg: AppConfig, ds: Dataset, progress: bool = False) -> CVResult:
    """Run the purged walk-forward CV and return out-of-fold scores and per-fold metrics.

    Per fold: ROC AUC, Brier score and log loss of the raw out-of-sample scores, the base rate, and at the
    entry threshold the precision, trade count and mean net return per trade, using scores calibrated by a
    calibrator fit on the earlier folds' out-of-fold scores only (null for fold 1).
    """
    embargo = pd.Timedelta(minutes=cfg.model.embargo_bars * bar_size_minutes(cfg.data.bar_size))
    splits = purged_walk_forward_splits(ds.t, ds.t_end, cfg.model.cv_folds, embargo)
    n = len(ds)
    oof_raw, oof_forward = np.full(n, np.nan), np.full(n, np.nan)
    fold_of = np.zeros(n, dtype=np.int16)
    folds = []
    threshold = cfg.strategy.p_up_entry_threshold
    bar = tqdm(splits, desc="CV folds", unit="fold", disable=not progress)
    for k, (train_idx, test_idx) in enumerate(bar, start=1):
        started = time.perf_counter()
        raw = _fit_predict(cfg.model, ds, train_idx, test_idx, k)
        forward = None
        if k > 1:
            seen = fold_of > 0  # only earlier folds' out-of-fold scores
            forward = make_calibrator(cfg.model.calibration).fit(oof_raw[seen], ds.y[seen]).predict(raw)
            oof_forward[test_idx] = forward
        oof_raw[test_idx], fold_of[test_idx] = raw, k
        folds.append(_fold_report(k, ds, (train_idx, test_idx), raw=raw, forward=forward,
                                  threshold=threshold))
        logger.info("fold %d/%d: train %d, test %d, AUC %s (%.1f s)", k, len(splits), len(train_idx),
                    len(test_idx), _fmt(folds[-1]["auc"]), time.perf_counter() - started)
    return CVResult(splits=splits, oof_raw=oof_raw, oof_forward=oof_forward, fold_of=fold_of, folds=folds)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _summary(ds: Dataset, cv: CVResult, calibrated_oof: np.ndarray, threshold: float) -> dict[str, Any]:
    in_oof = cv.fold_of > 0
    fwd = cv.fold_of > 1
    y_oof = ds.y[in_oof]
    return {
        "mean_auc": _mean([f["auc"] for f in cv.folds]),
        "mean_brier": _mean([f["brier"] for f in cv.folds]),
        "mean_log_loss": _mean([f["log_loss"] for f in cv.folds]),
        "pooled_oof_auc": _prob_metrics(y_oof, cv.oof_raw[in_oof])["auc"],
        "oof_samples": int(in_oof.sum()),
        "oof_base_rate": float(y_oof.mean()),
        "forward_calibrated_at_threshold": threshold_metrics(
            cv.oof_forward[fwd], ds.y[fwd], ds.net_return[fwd], threshold),
        "forward_calibrated_brier": (float(brier_score_loss(ds.y[fwd], cv.oof_forward[fwd]))
                                     if fwd.any() else None),
        "share_oof_calibrated_above_threshold": float((calibrated_oof >= threshold).mean()),
    }


# ------------------------------------------------------------------------------------------------ training


def _metadata(
    cfg: AppConfig, ds: Dataset, frames: Mapping[str, pd.DataFrame], *, data_label: str,
    cv_report: dict[str, Any],
) -> dict[str, Any]:
    params = label_params(cfg)
    return {
        "model_kind": cfg.model.kind,
        "model_params": {**_model_params(cfg.model), "random_state": cfg.model.random_state},
        "calibration": cfg.model.calibration,
        "label_params": params.to_dict(),
        "bar_minutes": params.bar_minutes,
        "bar_size": cfg.data.bar_size,
        "training_start": ds.t[0].isoformat(),
        "training_end": ds.t[-1].isoformat(),
        "symbols": sorted(frames),
        "data_fingerprint": frame_fingerprint(frames),
        "data_label": data_label,
        "n_samples": len(ds),
        "base_rate": float(ds.y.mean()),
        "threshold": cfg.strategy.p_up_entry_threshold,
        "cv": cv_report,
    }


def train_model(
    cfg: AppConfig,
    frames: Mapping[str, pd.DataFrame],
    data_label: str,
    run_dir: Path | None = None,
    progress: bool = True,
) -> tuple[ModelBundle, dict[str, Any]]:
    """Train, cross-validate, calibrate and save the model; return the bundle and the training report.

    Parameters
    ----------
    cfg
        Configuration (``model``, ``strategy``, ``risk``, ``costs``, ``data.bar_size``, ``backtest``).
    frames
        ``symbol -> bars`` to train on (already restricted to the training sessions).
    data_label
        Human-readable description of the data (contains ``SYNTHETIC`` for the demo universe).
    run_dir
        When given, ``training_report.json`` is also written there.
    progress
        Show tqdm progress bars.

    Returns
    -------
    tuple
        ``(bundle, report)``; the bundle is saved to ``cfg.model.path`` together with the report.

    Raises
    ------
    ModelError
        Too little data for the walk-forward folds or a training window with a single label class.
    """
    started = time.perf_counter()
    params = label_params(cfg)
    commission = commission_function(cfg.costs.commission, cfg.costs.tiered_monthly_shares)
    ds = build_dataset(frames, params, commission, progress=progress)
    logger.info("dataset: %d samples, %d symbols, base rate %.3f, %s .. %s", len(ds), len(frames),
                ds.y.mean(), ds.t[0], ds.t[-1])
    cv = cross_validate(cfg, ds, progress=progress)
    in_oof = cv.fold_of > 0
    # The calibrator sees only out-of-fold scores: never a score for data its model was fit on.
    calibrator = make_calibrator(cfg.model.calibration).fit(cv.oof_raw[in_oof], ds.y[in_oof])
    calibrated_oof = calibrator.predict(cv.oof_raw[in_oof])
    with tqdm(total=1, desc="final fit", unit="fit", disable=not progress) as bar:
        pipeline = clone(make_pipeline(cfg.model)).fit(ds.X, ds.y)
        bar.update()
    threshold = cfg.strategy.p_up_entry_threshold
    cv_report = {**_summary(ds, cv, calibrated_oof, threshold), "folds": cv.folds}
    metadata = _metadata(cfg, ds, frames, data_label=data_label, cv_report=cv_report)
    bundle = ModelBundle(pipeline=pipeline, calibrator=calibrator, metadata=metadata)
    bundle.save(cfg.model.path)
    fwd = cv.fold_of > 1
    report = {
        **{k: v for k, v in bundle.metadata.items() if k != "cv"},
        "model_path": str(cfg.model.path),
        "cv_folds": cfg.model.cv_folds,
        "embargo_bars": cfg.model.embargo_bars,
        "cv": cv_report,
        "reliability": {
            "basis": "out-of-fold p_up of folds 2.., each calibrated by a calibrator fit on earlier folds "
                     "only",
            "bins": reliability_table(cv.oof_forward[fwd], ds.y[fwd]),
        },
        "notes": [
            "AUC, Brier and log loss per fold are on raw out-of-fold scores.",
            "Threshold metrics per fold use p_up calibrated on the earlier folds' out-of-fold scores only; "
            "fold 1 has no earlier folds, so its threshold metrics are null.",
            "The saved calibrator is fit on the pooled out-of-fold scores of all folds; the saved pipeline "
            "is refit on all samples.",
        ],
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    _write_reports(report, Path(cfg.model.path), run_dir)
    return bundle, report


def _write_reports(report: dict[str, Any], model_dir: Path, run_dir: Path | None) -> None:
    atomic_write_json(model_dir / REPORT_FILE, report)
    if run_dir is not None:
        atomic_write_json(Path(run_dir) / REPORT_FILE, report)


# -------------------------------------------------------------------------------------------------- report


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_report(report: dict[str, Any]) -> str:
    """Return a short human-readable text version of a training report."""
    s = report["cv"]
    thr = report["threshold"]
    lines = [
        f"Model {report['model_kind']} ({report['calibration']} calibration) -> "
        f"{report.get('model_path', '?')}",
        f"Data: {report['data_label']}",
        f"  {report['n_samples']} samples, {len(report['symbols'])} symbols, "
        f"{report['training_start']} .. {report['training_end']}, base rate {report['base_rate']:.3f}",
        f"Purged walk-forward CV ({len(report['cv']['folds'])} folds; threshold p_up >= {thr}):",
        "  fold   n_train   n_test  base    AUC  Brier  logloss  trades  prec    EV/trade",
    ]
    for f in report["cv"]["folds"]:
        at = f["at_threshold"]
        lines.append(
            f"  {f['fold']:>4} {f['n_train']:>9} {f['n_test']:>8} {f['base_rate']:.3f} {_fmt(f['auc']):>6} "
            f"{_fmt(f['brier']):>6} {_fmt(f['log_loss']):>8} {_fmt(at['n_trades'], 'd'):>7} "
            f"{_fmt(at['precision']):>5} {_fmt(at['ev_per_trade'], '+.5f'):>11}"
        )
    fwd = s["forward_calibrated_at_threshold"]
    lines += [
        f"  mean AUC {_fmt(s['mean_auc'])}, pooled OOF AUC {_fmt(s['pooled_oof_auc'])}, "
        f"mean Brier {_fmt(s['mean_brier'])}, mean log loss {_fmt(s['mean_log_loss'])}",
        f"  folds 2..: {fwd['n_trades']} trades at threshold, precision {_fmt(fwd['precision'])}, "
        f"EV/trade {_fmt(fwd['ev_per_trade'], '+.5f')} (p_up calibrated on earlier folds only; fold 1: null)",
        f"  share of OOF samples with final calibrated p_up >= {thr}: "
        f"{s['share_oof_calibrated_above_threshold']:.2%}",
        "Reliability (calibrated OOF p_up, folds 2..):  bin        mean_p  observed   count",
    ]
    for b in report["reliability"]["bins"]:
        if b["count"]:
            lines.append(f"  {b['bin_lo']:.1f}-{b['bin_hi']:.1f}  {_fmt(b['mean_predicted']):>8} "
                         f"{_fmt(b['observed']):>9} {b['count']:>7}")
    lines.append(f"Trained in {report.get('train_seconds', float('nan')):.1f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- CLI


def load_training_frames(
    cfg: AppConfig, data: Sequence[str] | None = None
) -> tuple[dict[str, pd.DataFrame], str]:
    """Load all bars for a configuration and return them with a data label.

    ``data`` (a directory, files or ``SYMBOL=path`` items) replaces ``cfg.data.source``; ``"synthetic"``
    generates the SYNTHETIC demo universe. Bars are clipped to ``data.start`` .. ``data.end``.
    """
    if data and len(data) > 1:
        frames = load_bars(list(data), cfg.data.bar_size, cfg.data.symbols, calendar=cfg.data.calendar,
                           store_dir=cfg.data.store_dir)
        return clip_dates(frames, cfg.data.start, cfg.data.end), f"files from {', '.join(data)}"
    if data:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": data[0]})})
    universe = load_universe(cfg)
    return universe.frames, universe.label


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ml.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML configuration (default: config/backtest.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set model.kind=logreg (repeatable)")
    parser.add_argument("--data", nargs="+", metavar="DIR_OR_FILES",
                        help="bar directory / files / SYMBOL=path items (overrides data.source)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training command line; return the process exit code (2 on a data/config/model error)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        frames, data_label = load_training_frames(cfg, args.data)
        train_frames, _ = split_sessions(frames, cfg.model.train_fraction)
        _, report = train_model(cfg, train_frames, data_label, progress=not args.quiet)
    except (ConfigError, BarDataError, ModelError) as exc:
        print(f"error: {'; '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
