"""Model bundle: a fitted scikit-learn pipeline, its probability calibrator and metadata, checked at load.

A bundle is a directory holding ``model.joblib`` (pipeline + calibrator) and ``metadata.json`` (feature names
and order, feature code version, label parameters, training range and symbols, data fingerprint, library
versions, CV metrics). joblib files execute code when loaded: load only bundles you trained yourself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.isotonic import IsotonicRegression
from sklearn.pipeline import Pipeline

from core.files import atomic_write, atomic_write_json
from ml.features import FEATURE_NAMES, FEATURE_VERSION

logger = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
BUNDLE_FORMAT = 1
_EPS = 1e-6


class ModelError(ValueError):
    """A model bundle is missing, unreadable, or does not match what the caller runs."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p / (1.0 - p))


class IsotonicCalibrator:
    """Isotonic map from raw scores to probabilities (fit on out-of-fold predictions only)."""

    def __init__(self) -> None:
        self.iso_: IsotonicRegression | None = None

    def fit(self, raw: np.ndarray, y: np.ndarray) -> IsotonicCalibrator:
        """Fit on raw out-of-fold scores and their 0/1 labels."""
        self.iso_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        return self

    def predict(self, raw: np.ndarray) -> np.ndarray:
        """Return calibrated probabilities."""
        if self.iso_ is None:
            raise ModelError("calibrator used before fit")
        return np.asarray(self.iso_.predict(raw), dtype="float64")


class SigmoidCalibrator:
    """Platt scaling on the logit of raw scores: ``p = 1 / (1 + exp(-(a * logit(raw) + b)))``."""

    def __init__(self) -> None:
        self.a_: float | None = None
        self.b_: float | None = None

    def fit(self, raw: np.ndarray, y: np.ndarray) -> SigmoidCalibrator:
        """Fit on raw out-of-fold scores and their 0/1 labels."""
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - only needed when fitting

        lr = LogisticRegression(C=1e6).fit(_logit(raw).reshape(-1, 1), y)
        self.a_, self.b_ = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        return self

    def predict(self, raw: np.ndarray) -> np.ndarray:
        """Return calibrated probabilities."""
        if self.a_ is None or self.b_ is None:
            raise ModelError("calibrator used before fit")
        return 1.0 / (1.0 + np.exp(-(self.a_ * _logit(raw) + self.b_)))


#: Either calibrator; a bundle stores one.
Calibrator = IsotonicCalibrator | SigmoidCalibrator


def library_versions() -> dict[str, str]:
    """Return the versions that matter for reloading a pickled pipeline."""
    import pandas as pd  # noqa: PLC0415

    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "joblib": joblib.__version__}


@dataclass
class ModelBundle:
    """A fitted pipeline plus calibrator plus metadata; :meth:`predict_p_up` gives calibrated ``p_up``."""

    pipeline: Pipeline
    calibrator: Calibrator
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # of model.joblib as loaded: the version a live run logs at start ("" before save/load)

    def predict_p_up(self, X: np.ndarray) -> np.ndarray:
        """Return calibrated P(trade outcome positive) for feature rows in :data:`FEATURE_NAMES` order."""
        X = np.asarray(X, dtype="float64")
        if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
            raise ModelError(f"expected a 2-D array with {len(FEATURE_NAMES)} feature columns, got {X.shape}")
        raw = self.pipeline.predict_proba(X)[:, 1]
        return self.calibrator.predict(raw)

    def save(self, path: str | Path) -> None:
        """Write ``model.joblib`` and ``metadata.json`` into directory ``path`` (atomically)."""
        directory = Path(path)
        meta = {
            "format": BUNDLE_FORMAT,
            "feature_names": list(FEATURE_NAMES),
            "feature_version": FEATURE_VERSION,
            "library_versions": library_versions(),
            **self.metadata,
        }
        atomic_write(directory / MODEL_FILE,
                     lambda p: joblib.dump({"pipeline": self.pipeline, "calibrator": self.calibrator}, p))
        atomic_write_json(directory / METADATA_FILE, meta)
        self.metadata = meta
        self.sha256 = file_sha256(directory / MODEL_FILE)

    @classmethod
    def load(cls, path: str | Path, expect: dict[str, Any] | None = None) -> ModelBundle:
        """Load a bundle and check it matches this code and the caller's expectations.

        Parameters
        ----------
        path
            Bundle directory.
        expect
            Metadata entries that must be equal, e.g. ``{"bar_minutes": 1, "label_params": {...}}``;
            nested dicts are compared key by key.

        Raises
        ------
        ModelError
            Missing/unreadable files, other feature names, order or version, other scikit-learn version,
            or an ``expect`` mismatch; the message names the file and the field.
        """
        directory = Path(path)
        meta_path, model_path = directory / METADATA_FILE, directory / MODEL_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{meta_path}: model metadata not found (train a model with python -m ml.train)") \
                from None
        except ValueError as exc:
            raise ModelError(f"{meta_path}: not valid JSON: {exc}") from None
        _check_metadata(meta, meta_path, expect or {})
        try:
            digest = file_sha256(model_path)
            blob = joblib.load(model_path)
            pipeline, calibrator = blob["pipeline"], blob["calibrator"]
        except FileNotFoundError:
            raise ModelError(f"{model_path}: model file not found") from None
        except Exception as exc:  # joblib/pickle raise many types for a corrupt or foreign file
            raise ModelError(f"{model_path}: not a model bundle written by ml.train ({type(exc).__name__}: {exc})") \
                from None
        if not hasattr(pipeline, "predict_proba") or not hasattr(calibrator, "predict"):
            raise ModelError(f"{model_path}: expected a fitted classifier pipeline and a calibrator")
        return cls(pipeline=pipeline, calibrator=calibrator, metadata=meta, sha256=digest)


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_metadata(meta: dict[str, Any], meta_path: Path, expect: dict[str, Any]) -> None:
    if meta.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{meta_path}: bundle format {meta.get('format')!r}, expected {BUNDLE_FORMAT}")
    names = meta.get("feature_names")
    if names != list(FEATURE_NAMES):
        missing = sorted(set(FEATURE_NAMES) - set(names or []))
        extra = sorted(set(names or []) - set(FEATURE_NAMES))
        detail = f"missing {missing}, unexpected {extra}" if (missing or extra) else "same names, other order"
        raise ModelError(f"{meta_path}: feature_names do not match ml.features.FEATURE_NAMES ({detail}); retrain")
    if meta.get("feature_version") != FEATURE_VERSION:
        raise ModelError(f"{meta_path}: feature_version {meta.get('feature_version')!r}, code has "
                         f"{FEATURE_VERSION!r}; retrain the model")
    trained_with = meta.get("library_versions", {}).get("scikit-learn")
    if trained_with != sklearn.__version__:
        raise ModelError(f"{meta_path}: trained with scikit-learn {trained_with}, running {sklearn.__version__}; "
                         "retrain (pickled models are not portable across versions)")
    for key, want in expect.items():
        have = meta.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            diffs = [f"{key}.{k}: model has {have.get(k)!r}, config has {v!r}"
                     for k, v in want.items() if have.get(k) != v]
            if diffs:
                raise ModelError(f"{meta_path}: model was trained for other settings: " + "; ".join(diffs)
                                 + " (retrain, e.g. python run_backtest.py --retrain)")
        elif have != want:
            raise ModelError(f"{meta_path}: {key}: model has {have!r}, expected {want!r} (retrain)")
