"""The unfitted model for a configuration: the scikit-learn classifier pipeline and the probability calibrator.

:func:`make_pipeline` builds the classifier of ``model.kind``, :func:`model_params` names the
hyperparameters recorded in the model metadata, and :func:`make_calibrator` builds the calibrator of
``model.calibration`` (the calibrator classes themselves live in :mod:`ml.model`, next to the bundle that
stores them).
"""

from __future__ import annotations

import logging
from typing import Any

from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from config.settings import ModelConfig
from ml.model import Calibrator, IsotonicCalibrator, SigmoidCalibrator

logger = logging.getLogger(__name__)


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


def model_params(model_cfg: ModelConfig) -> dict[str, Any]:
    """Return the classifier hyperparameters of ``model.kind`` as recorded in the model metadata."""
    if model_cfg.kind == "logreg":
        return {"C": model_cfg.logreg_c}
    return {"learning_rate": model_cfg.learning_rate, "max_iter": model_cfg.max_iter,
            "max_leaf_nodes": model_cfg.max_leaf_nodes, "min_samples_leaf": model_cfg.min_samples_leaf,
            "l2_regularization": model_cfg.l2_regularization, "early_stopping": False}


def make_calibrator(kind: str) -> Calibrator:
    """Return an unfitted calibrator for ``model.calibration`` (``"isotonic"`` or ``"sigmoid"``)."""
    return SigmoidCalibrator() if kind == "sigmoid" else IsotonicCalibrator()
