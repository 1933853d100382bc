"""Load the bars a config asks for: the SYNTHETIC demo universe or the user's files."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from config.settings import AppConfig
from feeds.bars import BarDataError, clip_dates, load_bars
from feeds.synthetic import SYNTHETIC_LABEL, generate_universe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Universe:
    """Bars per symbol plus a label that says where they came from (shown in every report)."""

    frames: dict[str, pd.DataFrame]
    label: str
    synthetic: bool


def load_universe(cfg: AppConfig) -> Universe:
    """Return the bars for ``cfg.data`` (synthetic when ``source == "synthetic"``), clipped to start/end."""
    data = cfg.data
    if data.source == "synthetic":
        if data.bar_size != "1min":
            raise BarDataError("data.source = 'synthetic' generates 1-minute bars; set data.bar_size = '1min'")
        syn = data.synthetic
        frames = generate_universe(syn)
        if data.symbols:
            unknown = [s for s in data.symbols if s not in frames]
            if unknown:
                raise BarDataError(f"data.symbols: {unknown} not in the synthetic universe {list(frames)}")
            frames = {s: frames[s] for s in data.symbols}
        label = f"{SYNTHETIC_LABEL}; seed={syn.seed}, planted_edge={syn.planted_edge}"
        synthetic = True
    else:
        frames = load_bars(data.source, data.bar_size, data.symbols, calendar=data.calendar,
                           store_dir=data.store_dir)
        label = f"files from {data.source}"
        synthetic = False
    frames = clip_dates(frames, data.start, data.end)
    empty = [s for s, f in frames.items() if f.empty]
    if empty:
        raise BarDataError(f"no bars left for {empty} between data.start={data.start} and data.end={data.end}")
    return Universe(frames, label, synthetic)
