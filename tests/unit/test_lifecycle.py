"""Tests for ml/lifecycle.py: what a model bundle must match, and the live side's quarantine from training code."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from config.settings import load_config
from feeds.synthetic import generate_universe
from ml.label_params import label_params
from ml.lifecycle import expected_metadata, load_live_model
from ml.train import train_model

REPO = Path(__file__).resolve().parents[2]
SMALL = ["data.synthetic.sessions=15", 'data.synthetic.symbols=["A", "B"]', "model.max_iter=30"]
TRAINING_MODULES = ("ml.train", "ml.labels", "ml.dataset", "ml.evaluate", "ml.training_report")

LOAD_LIVE_MODEL = """
import sys
import run_live
from config.settings import load_config
from ml.lifecycle import load_live_model

load_live_model(load_config(None, sys.argv[1:]), train_if_missing=False)
print(sorted(set(sys.modules) & {modules!r}))
"""


def test_expected_metadata_is_the_bar_size_and_the_label_params() -> None:
    cfg = load_config(None, ["data.bar_size='5min'", "strategy.stop_loss=0.004"])

    expect = expected_metadata(cfg)

    assert expect == {"bar_size": "5min", "label_params": label_params(cfg).to_dict()}
    assert expect["label_params"]["bar_minutes"] == 5
    assert expect["label_params"]["stop_loss"] == 0.004


def test_loading_the_live_model_imports_neither_training_code_nor_labels(tmp_path: Path) -> None:
    overrides = [*SMALL, f"model.path='{tmp_path / 'model'}'"]
    cfg = load_config(None, overrides)
    with threadpool_limits(limits=1, user_api="openmp"):
        train_model(cfg, generate_universe(cfg.data.synthetic), "test", progress=False)
    code = LOAD_LIVE_MODEL.format(modules=set(TRAINING_MODULES))

    done = subprocess.run([sys.executable, "-c", code, *overrides], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_live_model_is_logged_with_path_hash_and_training_range_and_other_symbols_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "model"
    trained = load_config(None, [*SMALL, f"model.path='{path}'"])
    with threadpool_limits(limits=1, user_api="openmp"):
        bundle, _ = train_model(trained, generate_universe(trained.data.synthetic), "test bars", progress=False)
    live = load_config(None, [*SMALL, f"model.path='{path}'", "data.symbols=['A', 'C']"])

    with caplog.at_level(logging.INFO, logger="ml.lifecycle"):
        loaded = load_live_model(live, train_if_missing=False)

    assert loaded.sha256 == bundle.sha256 == hashlib.sha256((path / "model.joblib").read_bytes()).hexdigest()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    meta = bundle.metadata
    assert any(str(path) in m and loaded.sha256[:12] in m and meta["training_start"][:10] in m
               and meta["training_end"][:10] in m and "test bars" in m for m in info), info
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "['C']" in warnings[0]
    assert "['A', 'B']" in warnings[0]
