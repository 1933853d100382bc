"""Out-of-sample evaluation: the purged walk-forward cross-validation and its metrics.

:func:`cross_validate` fits one pipeline per fold of :func:`ml.split.purged_walk_forward_splits` and
collects the out-of-fold (OOF) scores with per-fold metrics; :func:`summarize_cv` pools them. The metric
helpers (:func:`threshold_metrics`, :func:`reliability_table`) are shared with the training report.

Per-fold threshold metrics use a calibrator fit on the *earlier* folds' OOF scores only (fold 1 has none,
so its threshold metrics are null): no calibrator ever sees a score the model produced for its own
training data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from tqdm import tqdm

from config.settings import AppConfig, ModelConfig, bar_size_minutes
from ml.dataset import Dataset
from ml.model import ModelError
from ml.pipeline import make_calibrator, make_pipeline
from ml.split import purged_walk_forward_splits

logger = logging.getLogger(__name__)

RELIABILITY_BINS = 10
_PROB_EPS = 1e-6


def format_metric(x: float | None, spec: str = ".3f") -> str:
    """Return a metric formatted with ``spec``, or ``"-"`` when it is undefined (``None``)."""
    return "-" if x is None else format(x, spec)


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
                    len(test_idx), format_metric(folds[-1]["auc"]), time.perf_counter() - started)
    return CVResult(splits=splits, oof_raw=oof_raw, oof_forward=oof_forward, fold_of=fold_of, folds=folds)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize_cv(ds: Dataset, cv: CVResult, calibrated_oof: np.ndarray, threshold: float) -> dict[str, Any]:
    """Return the pooled CV metrics of a training report.

    Parameters
    ----------
    ds
        The dataset the CV ran on.
    cv
        The CV result.
    calibrated_oof
        The out-of-fold scores calibrated by the final calibrator (fit on all folds' OOF scores).
    threshold
        The entry threshold on ``p_up``.

    Returns
    -------
    dict
        Mean per-fold AUC, Brier and log loss, pooled OOF AUC and base rate, threshold metrics and Brier of
        the forward-calibrated scores (folds 2..), and the share of calibrated OOF scores at the threshold.
    """
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
