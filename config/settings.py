"""Typed, frozen, validated configuration tree loaded from TOML.

One ``AppConfig`` holds every parameter, nested per concern. Unknown keys are rejected and every
error names the key, the file and what was expected::

    config/backtest.toml: strategy.p_up_entry_threshold = 1.7: Input should be less than or equal to 1
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_DIR / "backtest.toml"

BarSize = Literal["1min", "5min"]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names file, key and expectation."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class SyntheticConfig(_Frozen):
    """The embedded SYNTHETIC demo universe (the project ships no third-party data)."""

    seed: int = 7
    symbols: tuple[str, ...] = ("SYNA", "SYNB", "SYNC", "SYND", "SYNE", "SYNF")
    start: str = Field("2024-01-02", description="first session, YYYY-MM-DD")
    sessions: int = Field(63, ge=5, le=2600, description="number of trading sessions (about 3 months)")
    planted_edge: float = Field(
        0.6, ge=0.0, lt=1.0,
        description="share of one-bar variance from planted reverting jumps; 0 gives a pure random walk",
    )


class DataConfig(_Frozen):
    """Where bars come from and how they are prepared."""

    source: str = Field("synthetic", description="'synthetic' or a directory / file(s) of bars")
    symbols: tuple[str, ...] = Field((), description="symbols to use; empty means every file found")
    bar_size: BarSize = "1min"
    calendar: Literal["XNYS"] = "XNYS"
    store_dir: str = Field("store/bars", description="Parquet store of prepared bars")
    start: str | None = Field(None, description="first date to use (YYYY-MM-DD, exchange time)")
    end: str | None = Field(None, description="last date to use (YYYY-MM-DD, exchange time)")
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(_Frozen):
    """Classifier, cross-validation and calibration."""

    kind: Literal["hgb", "logreg"] = "hgb"
    random_state: int = 42
    path: str = Field("models/demo", description="model bundle directory (model.joblib + metadata.json)")
    train_fraction: float = Field(
        0.6, gt=0.0, lt=1.0,
        description="share of sessions used for training; the backtest runs on the rest (out of sample)",
    )
    cv_folds: int = Field(5, ge=2, le=20)
    embargo_bars: int = Field(40, ge=0, description="bars dropped before each test fold (>= label horizon)")
    calibration: Literal["isotonic", "sigmoid"] = "isotonic"
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)
    max_iter: int = Field(200, ge=10, le=5000)
    max_leaf_nodes: int = Field(15, ge=2, le=255)
    min_samples_leaf: int = Field(200, ge=1)
    l2_regularization: float = Field(1.0, ge=0.0)
    logreg_c: float = Field(1.0, gt=0.0)


class StrategyConfig(_Frozen):
    """Entry signal and exits. Prices are fractions of the entry fill price."""

    p_up_entry_threshold: float = Field(0.55, ge=0.0, le=1.0)
    stop_loss: Fraction = 0.004
    take_profit: Fraction = 0.006
    max_hold_bars: int = Field(30, ge=1, le=2000)
    no_new_entries_minutes: int = Field(
        15, ge=0, le=390, description="no new entries when a bar ends this close to the session close"
    )
    flatten_minutes: int = Field(
        5, ge=1, le=390, description="flatten every position when a bar ends this close to the close"
    )


class RiskConfig(_Frozen):
    """Fixed-fraction sizing and the risk gates."""

    risk_per_trade_fraction: float = Field(
        0.001, gt=0.0, le=0.1,
        description="equity lost if the stop is hit: shares = fraction x equity / (price x stop_loss)",
    )
    daily_loss_limit: float = Field(
        0.02, gt=0.0, lt=1.0, description="block entries once the day's P&L <= -limit x start-of-day equity"
    )
    max_concurrent_positions: int = Field(4, ge=1, le=500)
    cooldown_bars_after_stop: int = Field(15, ge=0, le=10_000)


class CostConfig(_Frozen):
    """Commission (IBKR US stocks) and slippage."""

    commission: Literal["ibkr_fixed", "ibkr_tiered", "none"] = "ibkr_fixed"
    tiered_monthly_shares: int = Field(
        0, ge=0, description="shares already traded this month, selects the IBKR Tiered rate band"
    )
    slippage_bps: float = Field(1.0, ge=0.0, le=500.0)


class BacktestConfig(_Frozen):
    """Backtest run settings."""

    starting_cash: float = Field(100_000.0, gt=0.0)
    benchmark: str | None = Field(None, description="benchmark symbol; default: the data's first symbol")
    reports_dir: str = "reports"
    tearsheet: bool = True


class WebhookConfig(_Frozen):
    """Optional daily-summary notification. The URL comes from an environment variable, never the file."""

    kind: Literal["none", "slack", "telegram", "json"] = "none"
    url_env: str = Field("TRADER_WEBHOOK_URL", description="environment variable holding the webhook URL")
    telegram_chat_id_env: str = Field("TRADER_TELEGRAM_CHAT_ID", description="env var with the Telegram chat id")
    timeout_seconds: float = Field(10.0, gt=0.0, le=120.0)


class LiveConfig(_Frozen):
    """Live (paper) trading against IB Gateway / TWS. Paper-safe defaults."""

    host: str = "127.0.0.1"
    port: int = Field(4002, ge=1, le=65535, description="IB Gateway paper port 4002 (TWS paper 7497)")
    client_id: int = Field(17, ge=0, le=2_000_000_000)
    account: str | None = Field(None, description="account id; default: the only managed account")
    allow_live: bool = Field(False, description="allow a non-paper account or a live port (4001/7496)")
    dry_run: bool = Field(False, description="log every decision, send no orders")
    strategy_id: str = Field("mlx", pattern=r"^[A-Za-z0-9]{1,8}$", description="prefix of every orderRef")
    state_dir: str = "state"
    log_dir: str = "logs"
    kill_switch_file: str = Field("state/KILL", description="while this file exists, no new entries")
    poll_offset_seconds: float = Field(2.0, ge=0.0, le=30.0, description="poll this long after a bar closes")
    stale_after_bars: int = Field(3, ge=1, le=100, description="report stale data after this many missed bars")
    request_timeout_seconds: float = Field(20.0, gt=0.0, le=300.0)
    pacing_small_bars_only: bool = Field(
        True, description="IB applies the 60-per-10-minutes rule to bars of 30 s or less only"
    )
    reconnect_initial_seconds: float = Field(1.0, gt=0.0, le=60.0)
    reconnect_max_seconds: float = Field(60.0, gt=0.0, le=3600.0)
    alert_after_seconds: float = Field(300.0, gt=0.0, description="alert when disconnected this long")
    sim_speed: float = Field(60.0, gt=0.0, le=10_000.0, description="--sim clock speed (simulated s per s)")
    webhook: WebhookConfig = WebhookConfig()


class AppConfig(_Frozen):
    """The whole configuration tree."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    risk: RiskConfig = RiskConfig()
    costs: CostConfig = CostConfig()
    backtest: BacktestConfig = BacktestConfig()
    live: LiveConfig = LiveConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> AppConfig:
        bar_minutes = bar_size_minutes(self.data.bar_size)
        s = self.strategy
        if s.flatten_minutes < bar_minutes:
            raise ValueError(
                f"strategy.flatten_minutes = {s.flatten_minutes} must be >= the bar size ({bar_minutes} min) "
                "so the flatten order fills before the close"
            )
        if s.no_new_entries_minutes < s.flatten_minutes:
            raise ValueError(
                f"strategy.no_new_entries_minutes = {s.no_new_entries_minutes} must be >= "
                f"strategy.flatten_minutes = {s.flatten_minutes}"
            )
        if self.model.embargo_bars < s.max_hold_bars + 1:
            raise ValueError(
                f"model.embargo_bars = {self.model.embargo_bars} must be >= strategy.max_hold_bars + 1 = "
                f"{s.max_hold_bars + 1} (the label horizon)"
            )
        return self


def bar_size_minutes(bar_size: str) -> int:
    """Return the bar length in minutes for a config bar size such as ``"5min"``."""
    return int(bar_size.removesuffix("min"))


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key '{key}' (check the spelling; see config/backtest.toml)")
        else:
            shown = f" = {err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
            lines.append(f"{origin}: {key}{shown}: {err['msg']}")
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. strategy.max_hold_bars=20")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as hgb or a path
    return key.strip().split("."), value


def _set_nested(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AppConfig:
    """Load, merge command-line overrides into, and validate a TOML configuration.

    Parameters
    ----------
    path
        TOML file; ``config/backtest.toml`` when ``None``.
    overrides
        ``section.key=value`` strings (TOML values; bare words are strings) applied on top of the file.

    Raises
    ------
    ConfigError
        The file is missing or malformed, a key is unknown or a value is out of range.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        tree = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
    origin = str(cfg_path)
    for item in overrides or []:
        keys, value = _parse_override(item)
        _set_nested(tree, keys, value)
    if overrides:
        origin = f"{cfg_path} (with overrides {', '.join(overrides)})"
    try:
        return AppConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def dump_config(cfg: AppConfig, path: Path) -> None:
    """Write the resolved configuration as TOML (atomically)."""
    from core.files import atomic_write_text  # noqa: PLC0415 - avoid an import cycle at package load

    data = cfg.model_dump(mode="json", exclude_none=True)
    atomic_write_text(path, tomli_w.dumps(data))
