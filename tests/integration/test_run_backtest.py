"""The README's main job end to end on a small SYNTHETIC universe: train, backtest, write every report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import run_backtest


def small_run_args(tmp_path: Path, *extra: str) -> list[str]:
    sets = [
        "data.synthetic.sessions=12", "data.synthetic.symbols=['AAA','BBB']",
        "model.max_iter=40", "model.cv_folds=3", "model.train_fraction=0.6",
        f"model.path='{tmp_path / 'model'}'", f"backtest.reports_dir='{tmp_path / 'reports'}'",
        f"data.store_dir='{tmp_path / 'store'}'",
    ]
    args = ["--quiet", "--run-id", "r1"]
    for s in sets:
        args += ["--set", s]
    return args + list(extra)


@pytest.mark.slow
def test_default_pipeline_writes_all_reports_labelled_synthetic(tmp_path: Path) -> None:
    assert run_backtest.main(small_run_args(tmp_path)) == 0
    run_dir = tmp_path / "reports" / "r1"
    for name in ("config.toml", "model_metadata.json", "trades.csv", "daily.csv", "summary.json",
                 "tearsheet.html", "training_report.json"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["synthetic"] is True
    assert "SYNTHETIC" in summary["data"]
    assert summary["out_of_sample"] is True
    assert "SYNTHETIC" in (run_dir / "tearsheet.html").read_text(errors="ignore")
    trades = pd.read_csv(run_dir / "trades.csv")
    assert list(trades.columns) == ["symbol", "entry_time", "exit_time", "entry_price", "exit_price", "quantity",
                                    "exit_reason", "p_up_at_entry", "pnl", "commission", "bars_held"]
    assert set(trades["exit_reason"]) <= {"STOP", "TARGET", "TIMEOUT", "EOD"}
    daily = pd.read_csv(run_dir / "daily.csv")
    assert {"trades", "wins", "pnl", "max_drawdown", "blocked_daily_loss", "blocked_cooldown"} <= set(daily.columns)
    assert summary["trades"] == len(trades) == int(daily["trades"].sum())
    meta = json.loads((run_dir / "model_metadata.json").read_text())
    # the backtest starts after the model's training range: out of sample
    assert pd.Timestamp(meta["training_end"]) < pd.Timestamp(trades["entry_time"].min())


@pytest.mark.slow
def test_second_run_reuses_the_trained_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_backtest.main(small_run_args(tmp_path, "--no-tearsheet")) == 0
    capsys.readouterr()
    assert run_backtest.main(small_run_args(tmp_path, "--no-tearsheet", "--run-id", "r2")) == 0
    assert "Training" not in capsys.readouterr().out


def test_config_typo_exits_2_with_key_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_backtest.main(["--quiet", "--set", "risk.max_positions=3"]) == 2
    assert "unknown key 'risk.max_positions'" in capsys.readouterr().err


def test_missing_data_path_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert run_backtest.main(small_run_args(tmp_path, "--data", str(missing))) == 2
    assert f"{missing}: no such file or directory" in capsys.readouterr().err
