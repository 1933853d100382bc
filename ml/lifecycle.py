"""Model loading policy: which model bundle a run uses, and when it is trained first.

:func:`expected_metadata` is what a bundle must match to be used with a configuration (bar size and label
parameters). :func:`obtain_backtest_model` loads the configured bundle for a backtest, or trains it when it
is missing, forced, or trained on other data. :func:`load_live_model` loads it for the live process, which
trains only the demo model under ``--sim``.

The training modules are imported only when a model is actually trained, so the live process never loads
them (nor the forward-looking :mod:`ml.labels`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from config.settings import AppConfig
from feeds.bars import frame_fingerprint
from ml.label_params import label_params
from ml.model import METADATA_FILE, ModelBundle

logger = logging.getLogger(__name__)


def expected_metadata(cfg: AppConfig) -> dict[str, Any]:
    """Return the metadata entries a model bundle must match to be used with ``cfg``.

    These are the bar size and the label parameters, ``{"bar_size": ..., "label_params": {...}}``: the
    ``expect`` argument of :meth:`ml.model.ModelBundle.load`.
    """
    return {"bar_size": cfg.data.bar_size, "label_params": label_params(cfg).to_dict()}


def obtain_backtest_model(
    cfg: AppConfig, train_frames: Mapping[str, pd.DataFrame], data_label: str, run_dir: Path, *, retrain: bool,
    explicit: bool, progress: bool,
) -> ModelBundle:
    """Load the configured model bundle, or train it when missing, forced, or trained on other data.

    Parameters
    ----------
    cfg
        The application configuration (``model.path`` is the bundle directory).
    train_frames
        ``symbol -> bars`` of the training sessions.
    data_label
        Human-readable description of the data, stored in the bundle.
    run_dir
        The backtest's report directory; a new training report is also written there.
    retrain
        Train even when a matching bundle exists.
    explicit
        The model path was given explicitly: use the bundle even when it was trained on other data.
    progress
        Show progress bars while training.

    Returns
    -------
    ModelBundle
        The loaded or newly trained bundle.

    Raises
    ------
    ModelError
        The existing bundle does not match the configuration, or training failed for lack of data.
    """
    path = Path(cfg.model.path)
    if not retrain and (path / METADATA_FILE).exists():
        bundle = ModelBundle.load(path, expect=expected_metadata(cfg))
        same_data = bundle.metadata.get("data_fingerprint") == frame_fingerprint(train_frames)
        if same_data or explicit:
            if not same_data:
                logger.warning("model %s was trained on other data (%s)", path, bundle.metadata.get("data_label"))
            logger.info("using model %s", path)
            return bundle
        logger.info("model %s was trained on other data; retraining on this data", path)
    from ml.train import train_model  # noqa: PLC0415 - training code only when a model is trained
    from ml.training_report import format_report  # noqa: PLC0415

    print(f"Training {cfg.model.kind} model on {sum(len(f) for f in train_frames.values()):,} bars ...")
    bundle, report = train_model(cfg, train_frames, data_label, run_dir=run_dir, progress=progress)
    print(format_report(report))
    return bundle


def load_live_model(cfg: AppConfig, *, train_if_missing: bool) -> ModelBundle:
    """Load the configured model bundle, checked against the configuration.

    Parameters
    ----------
    cfg
        The application configuration (``model.path`` is the bundle directory).
    train_if_missing
        When no bundle exists, train the demo model first on the first ``model.train_fraction`` of the
        configured universe's sessions (``run_live.py --sim``).

    Returns
    -------
    ModelBundle
        The loaded bundle.

    Raises
    ------
    ModelError
        No bundle (and no training asked for), or one that does not match the configuration.
    """
    path = Path(cfg.model.path)
    if not (path / METADATA_FILE).exists() and train_if_missing:
        from feeds.universe import load_universe  # noqa: PLC0415
        from ml.split import split_sessions  # noqa: PLC0415
        from ml.train import train_model  # noqa: PLC0415 - training code only when a model is trained

        universe = load_universe(cfg)
        train_frames, _ = split_sessions(universe.frames, cfg.model.train_fraction)
        logger.info("no model at %s: training the demo model on %s", path, universe.label)
        train_model(cfg, train_frames, universe.label, progress=False)
    bundle = ModelBundle.load(path, expect=expected_metadata(cfg))
    log_live_model(bundle, path, cfg.data.symbols)
    return bundle


def log_live_model(bundle: ModelBundle, path: Path, symbols: Sequence[str]) -> None:
    """Log which model a live run trades (path, file hash, training range and data) and warn when the configured
    symbols are not the ones it was trained on."""
    meta = bundle.metadata
    trained_on = sorted(meta.get("symbols") or [])
    logger.info("model %s: %s, model.joblib sha256 %s, trained on %s (%d symbols) from %s to %s, data fingerprint "
                "%s, features v%s, scikit-learn %s", path, meta.get("model_kind", "?"), bundle.sha256[:12],
                meta.get("data_label", "?"), len(trained_on), meta.get("training_start", "?"),
                meta.get("training_end", "?"), str(meta.get("data_fingerprint", "?"))[:12],
                meta.get("feature_version", "?"), meta.get("library_versions", {}).get("scikit-learn", "?"))
    unseen = sorted(set(symbols) - set(trained_on))
    if unseen:
        logger.warning("data.symbols %s are not among the model's training symbols %s: its p_up for them is "
                       "an extrapolation (retrain on them, or trade the symbols it was trained on)", unseen,
                       trained_on)
    elif set(trained_on) - set(symbols):
        logger.info("trading %d of the model's %d training symbols", len(set(symbols)), len(trained_on))
