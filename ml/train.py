"""Train the p_up classifier: pooled dataset, purged walk-forward CV, out-of-fold calibration, bundle.

This module holds :func:`train_model` and the command line; run it as
``python -m ml.train [--config PATH] [--set key=value ...] [--data DIR_OR_FILES] [--quiet]``.

:func:`train_model` runs the training steps, each in its own module:

1. :func:`ml.dataset.build_dataset` pools every symbol's causal features (:mod:`ml.features`) with
   triple-barrier labels (:mod:`ml.labels`, the strategy's own trade outcome after costs, for the trade
   rules of :func:`ml.label_params.label_params`), sorted by signal time.
2. :func:`ml.evaluate.cross_validate` runs the purged walk-forward CV
   (:func:`ml.split.purged_walk_forward_splits`): the signal times are cut into ``cv_folds + 1``
   contiguous blocks; fold k tests block k + 1 and trains only on earlier samples whose label interval
   ends before the test fold (purge) and that start at least the embargo before it.
3. The out-of-fold (OOF) raw scores of all folds fit the probability calibrator
   (:func:`ml.pipeline.make_calibrator`): the calibrator never sees a score the model produced for its own
   training data. Per-fold threshold metrics use a calibrator fit on the *earlier* folds' OOF scores only
   (fold 1 has none, so its threshold metrics are null).
4. The final pipeline (:func:`ml.pipeline.make_pipeline`) is fit once on all samples and saved with the
   calibrator and metadata (:class:`ml.model.ModelBundle`) to ``model.path``, next to
   ``training_report.json`` (:mod:`ml.training_report`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.base import clone
from tqdm import tqdm

from config.settings import AppConfig, ConfigError, load_config
from core.costs import commission_function
from feeds.bars import BarDataError, clip_dates, frame_fingerprint, load_bars
from feeds.universe import load_universe
from ml.dataset import Dataset, build_dataset
from ml.evaluate import cross_validate, summarize_cv
from ml.label_params import label_params
from ml.model import ModelBundle, ModelError
from ml.pipeline import make_calibrator, make_pipeline, model_params
from ml.split import split_sessions
from ml.training_report import build_report, format_report, write_report

logger = logging.getLogger(__name__)


def _bundle_metadata(
    cfg: AppConfig, ds: Dataset, frames: Mapping[str, pd.DataFrame], *, data_label: str,
    cv_report: dict[str, Any],
) -> dict[str, Any]:
    params = label_params(cfg)
    return {
        "model_kind": cfg.model.kind,
        "model_params": {**model_params(cfg.model), "random_state": cfg.model.random_state},
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
    cv_report = {**summarize_cv(ds, cv, calibrated_oof, threshold), "folds": cv.folds}
    metadata = _bundle_metadata(cfg, ds, frames, data_label=data_label, cv_report=cv_report)
    bundle = ModelBundle(pipeline=pipeline, calibrator=calibrator, metadata=metadata)
    bundle.save(cfg.model.path)
    report = build_report(cfg, bundle.metadata, ds, cv, train_seconds=time.perf_counter() - started)
    write_report(report, Path(cfg.model.path), run_dir)
    return bundle, report


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
