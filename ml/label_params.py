"""Label parameters: the trade rules a training label simulates, derived from the configuration.

:class:`LabelParams` and :func:`label_params` hold no look-ahead code. They live apart from the labels
themselves (:mod:`ml.labels`, training only) so the model-loading side (:mod:`ml.lifecycle`, the live
process) can check a model bundle's ``label_params`` against the configuration without importing the
forward-looking label code or the training modules.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from config.settings import AppConfig, bar_size_minutes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelParams:
    """The trade rules a label simulates (stored in the model metadata)."""

    stop_loss: float
    take_profit: float
    max_hold_bars: int
    flatten_minutes: int
    no_new_entries_minutes: int
    slippage_bps: float
    commission: str
    notional: float
    bar_minutes: int
    calendar: str = "XNYS"
    tiered_monthly_shares: int = 0

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return asdict(self)


def label_params(cfg: AppConfig) -> LabelParams:
    """Return the label (trade-simulation) parameters implied by a configuration.

    The notional is the typical position the sizer takes (``risk_per_trade_fraction × starting_cash /
    stop_loss``, at most the starting cash), so per-share commission minimums are priced as traded.

    Parameters
    ----------
    cfg
        The application configuration.

    Returns
    -------
    LabelParams
        Parameters for :func:`ml.labels.triple_barrier_labels`, also stored in the model metadata.
    """
    s, c = cfg.strategy, cfg.costs
    notional = min(cfg.risk.risk_per_trade_fraction * cfg.backtest.starting_cash / s.stop_loss,
                   cfg.backtest.starting_cash)
    return LabelParams(
        stop_loss=s.stop_loss,
        take_profit=s.take_profit,
        max_hold_bars=s.max_hold_bars,
        flatten_minutes=s.flatten_minutes,
        no_new_entries_minutes=s.no_new_entries_minutes,
        slippage_bps=c.slippage_bps,
        commission=c.commission,
        notional=float(notional),
        bar_minutes=bar_size_minutes(cfg.data.bar_size),
        calendar=cfg.data.calendar,
        tiered_monthly_shares=c.tiered_monthly_shares,
    )
