"""Configuration: typed, frozen, unknown keys and out-of-range values rejected with key and file named."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from config.settings import DEFAULT_CONFIG, ConfigError, load_config


def test_default_config_loads_with_documented_values() -> None:
    cfg = load_config()
    assert cfg.data.source == "synthetic"
    assert cfg.data.bar_size == "1min"
    assert 0 < cfg.strategy.p_up_entry_threshold < 1


def test_typo_in_a_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[strategy]\np_up_entry_treshold = 0.6\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*unknown key 'strategy\.p_up_entry_treshold'"):
        load_config(path)


def test_out_of_range_value_names_key_file_and_range(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[risk]\nmax_concurrent_positions = 0\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*risk\.max_concurrent_positions = 0.*greater than or equal to 1"):
        load_config(path)


def test_command_line_override_is_validated_like_the_file() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.p_up_entry_threshold = 1\.7.*less than or equal to 1"):
        load_config(overrides=["strategy.p_up_entry_threshold=1.7"])
    cfg = load_config(overrides=["strategy.max_hold_bars=20", "model.kind=logreg"])
    assert cfg.strategy.max_hold_bars == 20
    assert cfg.model.kind == "logreg"


def test_unknown_bar_size_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"data\.bar_size = '2min'"):
        load_config(overrides=["data.bar_size=2min"])


def test_embargo_shorter_than_label_horizon_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.embargo_bars = 40 must be >= strategy\.max_hold_bars \+ 1 = 61"):
        load_config(overrides=["strategy.max_hold_bars=60"])


def test_flatten_window_must_leave_a_bar_to_fill() -> None:
    with pytest.raises(ConfigError, match="flatten_minutes"):
        load_config(overrides=["data.bar_size=5min", "strategy.flatten_minutes=2"])


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[strategy\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(path)


def test_config_is_frozen() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    with pytest.raises(pydantic.ValidationError):
        cfg.strategy.stop_loss = 0.5  # type: ignore[misc]
