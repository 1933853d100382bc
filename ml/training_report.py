"""The training report: ``training_report.json`` written next to the model bundle, and its text summary.

:func:`build_report` assembles the report from the bundle metadata and the CV result, :func:`write_report`
writes it next to the bundle (and into a backtest's run directory), :func:`format_report` renders the
short text that ``python -m ml.train`` and ``run_backtest.py`` print.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from config.settings import AppConfig
from core.files import atomic_write_json
from ml.dataset import Dataset
from ml.evaluate import CVResult, format_metric, reliability_table

logger = logging.getLogger(__name__)

REPORT_FILE = "training_report.json"


def build_report(
    cfg: AppConfig, metadata: dict[str, Any], ds: Dataset, cv: CVResult, *, train_seconds: float
) -> dict[str, Any]:
    """Return the training report of a saved bundle.

    Parameters
    ----------
    cfg
        The configuration the model was trained with.
    metadata
        The saved bundle's metadata; its ``cv`` entry is the CV summary with the per-fold metrics.
    ds
        The training dataset.
    cv
        The CV result (its forward-calibrated out-of-fold scores make the reliability table).
    train_seconds
        Wall-clock training time so far.

    Returns
    -------
    dict
        The bundle metadata (without ``cv``), the model path and CV settings, the CV metrics, the
        reliability table, notes on what each metric is computed on, and the training time.
    """
    fwd = cv.fold_of > 1
    return {
        **{k: v for k, v in metadata.items() if k != "cv"},
        "model_path": str(cfg.model.path),
        "cv_folds": cfg.model.cv_folds,
        "embargo_bars": cfg.model.embargo_bars,
        "cv": metadata["cv"],
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
        "train_seconds": round(train_seconds, 2),
    }


def write_report(report: dict[str, Any], model_dir: Path, run_dir: Path | None) -> None:
    """Write ``training_report.json`` into ``model_dir`` and, when given, into ``run_dir``."""
    atomic_write_json(model_dir / REPORT_FILE, report)
    if run_dir is not None:
        atomic_write_json(Path(run_dir) / REPORT_FILE, report)


def format_report(report: dict[str, Any]) -> str:
    """Return a short human-readable text version of a training report."""
    fmt = format_metric
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
            f"  {f['fold']:>4} {f['n_train']:>9} {f['n_test']:>8} {f['base_rate']:.3f} {fmt(f['auc']):>6} "
            f"{fmt(f['brier']):>6} {fmt(f['log_loss']):>8} {fmt(at['n_trades'], 'd'):>7} "
            f"{fmt(at['precision']):>5} {fmt(at['ev_per_trade'], '+.5f'):>11}"
        )
    fwd = s["forward_calibrated_at_threshold"]
    lines += [
        f"  mean AUC {fmt(s['mean_auc'])}, pooled OOF AUC {fmt(s['pooled_oof_auc'])}, "
        f"mean Brier {fmt(s['mean_brier'])}, mean log loss {fmt(s['mean_log_loss'])}",
        f"  folds 2..: {fwd['n_trades']} trades at threshold, precision {fmt(fwd['precision'])}, "
        f"EV/trade {fmt(fwd['ev_per_trade'], '+.5f')} (p_up calibrated on earlier folds only; fold 1: null)",
        f"  share of OOF samples with final calibrated p_up >= {thr}: "
        f"{s['share_oof_calibrated_above_threshold']:.2%}",
        "Reliability (calibrated OOF p_up, folds 2..):  bin        mean_p  observed   count",
    ]
    for b in report["reliability"]["bins"]:
        if b["count"]:
            lines.append(f"  {b['bin_lo']:.1f}-{b['bin_hi']:.1f}  {fmt(b['mean_predicted']):>8} "
                         f"{fmt(b['observed']):>9} {b['count']:>7}")
    lines.append(f"Trained in {report.get('train_seconds', float('nan')):.1f} s")
    return "\n".join(lines)
