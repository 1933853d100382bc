"""Backtest and training throughput: the full ML strategy against backtrader's stock ``PandasData`` feed.

    python -m benchmarks.backtest                       # full size (~10 min on 2 cores)
    python -m benchmarks.backtest --quick               # smoke run (40 sessions)
    python -m benchmarks.backtest --data /work/shared/data/real/alert_overlay/5min --bar-size 5min

In one run, on the same bars, it measures and prints:

1. bars per second of the full strategy (``engines.backtest.run_backtest`` exactly as ``run_backtest.py``
   calls it: ``BarFrameFeed``, ``MLStrategy`` with an ``MLSignal`` on a real trained ``ModelBundle``, the risk
   gates, OCO brackets and the ``DailyEquity`` analyzer; the risk observers only feed ``--plot`` charts and
   are off, as in ``run_backtest.py``) and of a baseline (backtrader's
   stock ``bt.feeds.PandasData`` with an empty ``bt.Strategy``, ``stdstats=False, runonce=True,
   preload=True``), and the ratio full / baseline, for 1 symbol and for 10 symbols;
2. the seconds of the full strategy on 20 symbols;
3. the peak resident memory of every run (``ru_maxrss`` of a fresh process per run);
4. the time of the purged walk-forward CV plus the final fit on about 1M training samples.

What is timed: from building the ``Cerebro`` to the end of the run (``run_backtest`` collects the result
frames too); feed preloading and the indicator's batched ``once()`` are included. Not timed: generating or
loading the bars, training the backtest's model, starting the process. ``PandasData`` gets tz-naive UTC
frames (converted before the clock starts) so backtrader's per-bar tz conversion is not charged to the
baseline. Each measurement runs in a fresh ``spawn`` process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger("benchmarks.backtest")

TARGET_RATIO = 1.5
TARGET_BIG_SECONDS = 60.0
TARGET_PEAK_MB = 2048.0
TARGET_TRAIN_SECONDS = 120.0
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """How much data each measurement uses."""

    sessions: int  # backtest sessions (synthetic)
    small: int  # symbols of the first comparison
    mid: int  # symbols of the second comparison
    big: int  # symbols of the full-strategy-only run
    model_sessions: int  # sessions the backtest's model is trained on
    train_sessions: int  # sessions of the training benchmark (synthetic)
    train_symbols: int


FULL = Sizes(sessions=252, small=1, mid=10, big=20, model_sessions=40, train_sessions=445, train_symbols=6)
QUICK = Sizes(sessions=40, small=1, mid=10, big=20, model_sessions=20, train_sessions=60, train_symbols=6)


@dataclass
class Job:
    """One measurement, run in its own process (a plain dataclass so it pickles for ``spawn``)."""

    kind: str  # "full", "baseline" or "train"
    label: str
    frames_path: str | None = None
    model_dir: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    repeat: int = 1
    synthetic: dict[str, Any] | None = None  # SyntheticConfig fields for the training benchmark
    threads: int | None = None  # native thread-pool limit (OpenMP/BLAS) in the child; None = library default


# ------------------------------------------------------------------------------------------ measured code


def _empty_strategy() -> type:
    """Return a ``bt.Strategy`` whose ``next`` does nothing (built lazily: backtrader loads in the child)."""
    import backtrader as bt  # noqa: PLC0415

    class Empty(bt.Strategy):
        def next(self) -> None:
            pass

    return Empty


def _baseline_once(naive_frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Stock ``PandasData`` feeds + an empty strategy; return seconds."""
    import backtrader as bt  # noqa: PLC0415

    empty = _empty_strategy()
    cpu, started = time.process_time(), time.perf_counter()
    cerebro = bt.Cerebro(stdstats=False, runonce=True, preload=True)
    for sym, frame in naive_frames.items():
        cerebro.adddata(bt.feeds.PandasData(dataname=frame), name=sym)
    cerebro.addstrategy(empty)
    cerebro.run()
    return {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def _full_once(frames: dict[str, pd.DataFrame], cfg: Any, bundle: Any) -> dict[str, Any]:
    """The backtest engine's ``run_backtest`` as ``run_backtest.py`` calls it (no progress bar, no chart);
    return seconds and outcome."""
    from engines.backtest import run_backtest  # noqa: PLC0415

    cpu, started = time.process_time(), time.perf_counter()
    result = run_backtest(cfg, frames, bundle, progress=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    blocked = int(result.blocked["count"].sum()) if len(result.blocked) else 0
    final = float(result.daily_equity.iloc[-1]) if len(result.daily_equity) else math.nan
    return {"seconds": seconds, "cpu_seconds": cpu, "trades": len(result.trades), "blocked": blocked,
            "final_equity": final}


def _best(fn: Callable[[], dict[str, Any]], repeat: int) -> dict[str, Any]:
    runs = [fn() for _ in range(max(1, repeat))]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "all_seconds": [round(r["seconds"], 3) for r in runs]}


def _rss_mb() -> float:
    """Current resident set size in MB (Linux ``/proc``; falls back to the peak elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _maxrss_mb()


def _maxrss_mb() -> float:
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _train_job(job: Job) -> dict[str, Any]:
    """Time dataset building, the purged walk-forward CV, calibration and the final fit."""
    from sklearn.base import clone  # noqa: PLC0415

    from config.settings import SyntheticConfig, load_config  # noqa: PLC0415
    from core.costs import commission_function  # noqa: PLC0415
    from feeds.synthetic import generate_universe  # noqa: PLC0415
    from ml.dataset import build_dataset  # noqa: PLC0415
    from ml.evaluate import cross_validate  # noqa: PLC0415
    from ml.label_params import label_params  # noqa: PLC0415
    from ml.pipeline import make_calibrator, make_pipeline  # noqa: PLC0415

    cfg = load_config(job.config, job.overrides)
    if job.frames_path is not None:
        frames = pd.read_pickle(job.frames_path)
    else:
        frames = generate_universe(SyntheticConfig(**(job.synthetic or {})))
    rss_before = _rss_mb()
    cpu0, t0 = time.process_time(), time.perf_counter()
    ds = build_dataset(frames, label_params(cfg),
                       commission_function(cfg.costs.commission, cfg.costs.tiered_monthly_shares))
    t1 = time.perf_counter()
    cv = cross_validate(cfg, ds)
    in_oof = cv.fold_of > 0
    make_calibrator(cfg.model.calibration).fit(cv.oof_raw[in_oof], ds.y[in_oof])
    t2 = time.perf_counter()
    clone(make_pipeline(cfg.model)).fit(ds.X, ds.y)
    t3 = time.perf_counter()
    aucs = [f["auc"] for f in cv.folds if f["auc"] is not None]
    return {"samples": len(ds), "features": int(ds.X.shape[1]), "folds": len(cv.splits),
            "symbols": len(frames), "bars": int(sum(len(f) for f in frames.values())),
            "dataset_seconds": t1 - t0, "cv_seconds": t2 - t1, "final_fit_seconds": t3 - t2,
            "seconds": t3 - t1, "cpu_seconds": time.process_time() - cpu0,
            "mean_auc": sum(aucs) / len(aucs) if aucs else None,
            "rss_before_mb": rss_before}


def run_job(job: Job) -> dict[str, Any]:
    """Run one measurement (in a fresh process) and return its figures, including peak RSS."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    if job.threads is not None:
        # threadpoolctl limits only the native libraries loaded so far: load scikit-learn's OpenMP runtime
        # (HistGradientBoosting fit/predict) first, or the backtest's predict_proba runs on every core.
        import sklearn.ensemble  # noqa: F401, PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - a scikit-learn dependency

        threadpool_limits(job.threads)
    load_before = os.getloadavg()[0]
    if job.kind == "train":
        out = _train_job(job)
    else:
        frames: dict[str, pd.DataFrame] = pd.read_pickle(job.frames_path)
        out = {"symbols": len(frames), "bars": int(sum(len(f) for f in frames.values()))}
        if job.kind == "baseline":
            naive = {s: f.tz_convert("UTC").tz_localize(None) for s, f in frames.items()}
            del frames
            out["rss_before_mb"] = _rss_mb()
            out.update(_best(lambda: _baseline_once(naive), job.repeat))
        else:
            from config.settings import load_config  # noqa: PLC0415
            from ml.model import ModelBundle  # noqa: PLC0415

            cfg = load_config(job.config, job.overrides)
            if job.model_dir is None:
                raise ValueError(f"{job.label}: a full-strategy job needs model_dir")
            bundle = ModelBundle.load(job.model_dir)
            out["rss_before_mb"] = _rss_mb()
            out.update(_best(lambda: _full_once(frames, cfg, bundle), job.repeat))
    out["peak_rss_mb"] = _maxrss_mb()
    out["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    out["bars_per_second"] = out["bars"] / out["seconds"] if job.kind != "train" else None
    return out


def run_in_fresh_process(job: Job) -> dict[str, Any]:
    """Run ``job`` in a new ``spawn`` process so its peak RSS is not inflated by earlier runs."""
    logger.info("running %s ...", job.label)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        out = pool.submit(run_job, job).result()
    logger.info("%s: %.2f s measured (%.1f s with process start and data loading)", job.label, out["seconds"],
                time.perf_counter() - started)
    return {"label": job.label, "kind": job.kind, **out}


# -------------------------------------------------------------------------------------------------- setup


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backtest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 40 sessions, a small training benchmark")
    ap.add_argument("--repeat", type=int, default=1, help="best of N for each backtest measurement")
    ap.add_argument("--data", nargs="+", default=None, metavar="DIR_OR_FILE",
                    help="real bar files or directories (through feeds.bars.load_bars) instead of synthetic")
    ap.add_argument("--bar-size", choices=("1min", "5min"), default="1min")
    ap.add_argument("--symbols", nargs="+", default=None, help="with --data: use these symbols (first = 1-symbol run)")
    ap.add_argument("--config", default=None, help="TOML config (default: config/backtest.toml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the strategy and the model, e.g. strategy.p_up_entry_threshold=0.5")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit native thread pools (OpenMP: HGB fit/predict) in every measurement; "
                         "default: the libraries' own (all cores)")
    ap.add_argument("--skip-train", action="store_true", help="skip the ~1M-sample training benchmark")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="afterwards, cProfile the 1-symbol full run and print the top N functions")
    return ap.parse_args(argv)


def _synthetic_frames(sizes: Sizes) -> dict[str, pd.DataFrame]:
    from config.settings import SyntheticConfig  # noqa: PLC0415
    from feeds.synthetic import generate_universe  # noqa: PLC0415

    symbols = tuple(f"SYN{i:02d}" for i in range(sizes.big))
    return generate_universe(SyntheticConfig(sessions=sizes.sessions, symbols=symbols))


def _real_frames(args: argparse.Namespace, sizes: Sizes) -> dict[str, pd.DataFrame]:
    from feeds.bars import discover_files, load_bars  # noqa: PLC0415

    wanted = [s.upper() for s in args.symbols] if args.symbols else list(discover_files(args.data))[: sizes.big]
    source = args.data[0] if len(args.data) == 1 else args.data
    return load_bars(source, args.bar_size, wanted, store_dir=None)


def _subset(frames: dict[str, pd.DataFrame], n: int) -> dict[str, pd.DataFrame]:
    return dict(list(frames.items())[:n])


def _first_sessions(frames: dict[str, pd.DataFrame], sessions: int, symbols: int) -> dict[str, pd.DataFrame]:
    """Return the first ``sessions`` exchange dates of the first ``symbols`` frames (the model's slice)."""
    from core.calendar import local_dates  # noqa: PLC0415

    out = {}
    for sym, f in _subset(frames, symbols).items():
        days = local_dates(pd.DatetimeIndex(f.index))
        cut = days.unique()[: sessions]
        out[sym] = f.loc[days.isin(cut)]
    return out


def train_backtest_model(cfg_path: str | None, overrides: list[str], frames: dict[str, pd.DataFrame],
                         model_dir: Path) -> dict[str, Any]:
    """Train the backtest's model once on a small slice (not timed as backtest throughput)."""
    from config.settings import load_config  # noqa: PLC0415
    from ml.train import train_model  # noqa: PLC0415

    cfg = load_config(cfg_path, [*overrides, f"model.path={str(model_dir)!r}"])
    started = time.perf_counter()
    _, report = train_model(cfg, frames, "benchmark slice", progress=False)
    seconds = time.perf_counter() - started
    cv = report.get("cv", {})
    mean_auc = cv.get("mean_auc", cv.get("summary", {}).get("mean_auc"))  # the report layout has changed before
    logger.info("backtest model trained on %d samples in %.1f s (mean CV AUC %s)", report["n_samples"], seconds,
                mean_auc)
    return {"samples": report["n_samples"], "seconds": seconds, "mean_auc": mean_auc, "symbols": sorted(frames)}


def _git_revision() -> str:
    """Return the short commit of the code under test, with ``+dirty`` when tracked files are modified."""
    import subprocess  # noqa: PLC0415

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _environment() -> dict[str, Any]:
    import backtrader as bt  # noqa: PLC0415
    import sklearn  # noqa: PLC0415

    return {"commit": _git_revision(), "python": platform.python_version(), "backtrader": bt.__version__,
            "scikit-learn": sklearn.__version__,
            "pandas": pd.__version__, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "machine": platform.machine()}


# ------------------------------------------------------------------------------------------------- report


def _fmt_row(r: dict[str, Any]) -> str:
    bps = f"{r['bars_per_second']:>11,.0f}" if r.get("bars_per_second") else f"{'':>11}"
    trades = f"{r['trades']:>7,}" if "trades" in r else f"{'-':>7}"
    return (f"{r['label']:<36} {r['symbols']:>4} {r['bars']:>10,} {r['seconds']:>9.2f} {bps} "
            f"{r['peak_rss_mb']:>9.0f} {trades} {r['cpu_seconds']:>8.2f}")


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def format_report(res: dict[str, Any]) -> str:
    """Return the human-readable table of a benchmark result."""
    lines = [f"Data: {res['data']}",
             f"Environment: {json.dumps(res['environment'])}; native threads: {res['threads'] or 'library default'}",
             f"Backtest model: trained on {res['model']['samples']:,} samples of {', '.join(res['model']['symbols'])} "
             f"(not timed)", "",
             f"{'measurement':<36} {'sym':>4} {'bars':>10} {'seconds':>9} {'bars/s':>11} {'peak MB':>9} "
             f"{'trades':>7} {'CPU s':>8}",
             "-" * 101]
    lines += [_fmt_row(r) for r in res["runs"]]
    lines.append("(seconds: wall clock, build Cerebro + run + collect results; bars/s = all symbols' bars / "
                 "seconds; peak MB: ru_maxrss of the measuring process; CPU s: process time, all threads)")
    lines.append("")
    for name, ratio in res["ratios"].items():
        lines.append(f"ratio full / baseline, {name:<11} {ratio:6.2f}x   target >= {TARGET_RATIO}x  "
                     f"{_verdict(ratio >= TARGET_RATIO)}   (CPU-time ratio {res['cpu_ratios'][name]:.2f}x)")
    big = res.get("big")
    if big:
        lines.append(f"full strategy, {big['symbols']} symbols:      {big['seconds']:6.1f} s   target < "
                     f"{TARGET_BIG_SECONDS:.0f} s   {_verdict(big['seconds'] < TARGET_BIG_SECONDS)}")
    peak = res["peak_rss_mb"]
    lines.append(f"peak RSS over all backtest runs: {peak:6.0f} MB   target < {TARGET_PEAK_MB:.0f} MB  "
                 f"{_verdict(peak < TARGET_PEAK_MB)}")
    tr = res.get("training")
    if tr:
        lines += ["", f"Training ({tr['symbols']} symbols, {tr['bars']:,} bars): {tr['samples']:,} samples x "
                      f"{tr['features']} features, {tr['folds']} purged walk-forward folds + final fit",
                  f"  dataset (features + labels) {tr['dataset_seconds']:7.1f} s   (not in the target)",
                  f"  CV + calibration            {tr['cv_seconds']:7.1f} s",
                  f"  final fit                   {tr['final_fit_seconds']:7.1f} s",
                  f"  CV + final fit              {tr['seconds']:7.1f} s   target < {TARGET_TRAIN_SECONDS:.0f} s  "
                  f"{_verdict(tr['seconds'] < TARGET_TRAIN_SECONDS)}",
                  f"  peak RSS                    {tr['peak_rss_mb']:7.0f} MB  target < {TARGET_PEAK_MB:.0f} MB  "
                  f"{_verdict(tr['peak_rss_mb'] < TARGET_PEAK_MB)}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ profile


def profile_full(frames: dict[str, pd.DataFrame], cfg_path: str | None, overrides: list[str], model_dir: Path,
                 top: int) -> str:
    """cProfile one full-strategy run and return our functions by cumulative time and all by own time."""
    import cProfile  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    from config.settings import load_config  # noqa: PLC0415
    from ml.model import ModelBundle  # noqa: PLC0415

    cfg = load_config(cfg_path, overrides)
    bundle = ModelBundle.load(model_dir)
    prof = cProfile.Profile()
    prof.enable()
    _full_once(frames, cfg, bundle)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]  # pstats keeps the table in .stats
    total = sum(v[2] for v in stats.values())
    rows = [(key, v[1], v[2], v[3]) for key, v in stats.items()]  # (file, line, fn), calls, own, cumulative

    def name(key: tuple[str, int, str]) -> str:
        path = Path(key[0])
        short = str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name
        return f"{short}:{key[1]}({key[2]})"

    ours = [r for r in rows if Path(r[0][0]).is_relative_to(REPO_ROOT) and "site-packages" not in r[0][0]]
    head = f"{'s':>8} {'share':>6} {'s':>8} {'calls':>9}  function"
    out = [f"cProfile of the full strategy, {len(frames)} symbol(s): {total:.2f} s of own time in total "
           "(profiling overhead included; shares are what matter)", "",
           f"Our code by cumulative time (top {top}; columns: cumulative, share, own):", head]
    for key, calls, own, cum in sorted(ours, key=lambda r: -r[3])[:top]:
        out.append(f"{cum:8.2f} {cum / total:6.1%} {own:8.2f} {calls:9,}  {name(key)}")
    out += ["", f"All functions by own time (top {top}; columns: own, share, cumulative):", head]
    for key, calls, own, cum in sorted(rows, key=lambda r: -r[2])[:top]:
        out.append(f"{own:8.2f} {own / total:6.1%} {cum:8.2f} {calls:9,}  {name(key)}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- main


def _backtest_jobs(tmp: Path, frames: dict[str, pd.DataFrame], sizes: Sizes, args: argparse.Namespace,
                   model_dir: Path) -> list[Job]:
    counts = sorted({min(n, len(frames)) for n in (sizes.small, sizes.mid)})
    jobs = []
    common = {"model_dir": str(model_dir), "config": args.config, "overrides": args.overrides,
              "repeat": args.repeat, "threads": args.threads}
    for n in counts:
        path = tmp / f"frames_{n}.pkl"
        pd.to_pickle(_subset(frames, n), path)
        jobs.append(Job("baseline", f"baseline PandasData+empty, {n} sym", str(path), **common))
        jobs.append(Job("full", f"full strategy, {n} sym", str(path), **common))
    big = min(sizes.big, len(frames))
    if big not in counts:
        path = tmp / f"frames_{big}.pkl"
        pd.to_pickle(_subset(frames, big), path)
        jobs.append(Job("full", f"full strategy, {big} sym", str(path), **common))
    return jobs


def _train_job_spec(tmp: Path, frames: dict[str, pd.DataFrame], sizes: Sizes, args: argparse.Namespace) -> Job:
    if args.data:
        path = tmp / "frames_train.pkl"
        pd.to_pickle(frames, path)
        return Job("train", "training benchmark", str(path), config=args.config, overrides=args.overrides,
                   threads=args.threads)
    symbols = [f"TRN{i:02d}" for i in range(sizes.train_symbols)]
    return Job("train", "training benchmark", config=args.config, overrides=args.overrides, threads=args.threads,
               synthetic={"sessions": sizes.train_sessions, "symbols": symbols})


def _summarise(
    runs: list[dict[str, Any]],
) -> tuple[dict[str, float], dict[str, float], dict[str, Any] | None]:
    by = {(r["kind"], r["symbols"]): r for r in runs}
    pairs = {f"{n} symbol{'s' if n > 1 else ''}": (by[("full", n)], by[("baseline", n)])
             for kind, n in by if kind == "baseline" and ("full", n) in by}
    ratios = {k: b["seconds"] / f["seconds"] for k, (f, b) in pairs.items()}  # same bars: bars/s ratio
    cpu_ratios = {k: b["cpu_seconds"] / f["cpu_seconds"] for k, (f, b) in pairs.items()}
    fulls = [r for r in runs if r["kind"] == "full"]
    big = max(fulls, key=lambda r: r["symbols"]) if fulls else None
    return ratios, cpu_ratios, big


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the bars and the model, run every measurement, return the result."""
    sizes = QUICK if args.quick else FULL
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.bar_size={args.bar_size!r}")
    elif args.bar_size != "1min":
        raise SystemExit("the synthetic universe has 1-minute bars; --bar-size 5min needs --data")
    args.overrides = overrides
    env = _environment()
    logger.info("environment: %s", env)
    frames = _real_frames(args, sizes) if args.data else _synthetic_frames(sizes)
    data = (f"bars from {' '.join(args.data)} ({args.bar_size})" if args.data else
            f"SYNTHETIC demo data, {sizes.sessions} sessions of 1-min RTH bars per symbol")
    logger.info("data: %s; %d symbols, %s bars", data, len(frames), f"{sum(len(f) for f in frames.values()):,}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir:
        tmp = Path(tmpdir)
        model_dir = tmp / "model"
        model = train_backtest_model(args.config, overrides, _first_sessions(frames, sizes.model_sessions, 2),
                                     model_dir)
        runs = [run_in_fresh_process(job) for job in _backtest_jobs(tmp, frames, sizes, args, model_dir)]
        training = None if args.skip_train else run_in_fresh_process(_train_job_spec(tmp, frames, sizes, args))
        profile = (profile_full(_subset(frames, 1), args.config, overrides, model_dir, args.profile)
                   if args.profile else None)
    ratios, cpu_ratios, big = _summarise(runs)
    return {"data": data, "environment": env, "model": model, "runs": runs, "ratios": ratios,
            "cpu_ratios": cpu_ratios, "big": big,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "training": training, "profile": profile,
            "quick": args.quick, "repeat": args.repeat, "threads": args.threads,
            "targets": {"ratio": TARGET_RATIO, "big_seconds": TARGET_BIG_SECONDS, "peak_mb": TARGET_PEAK_MB,
                        "train_seconds": TARGET_TRAIN_SECONDS}}


def _json_line(res: dict[str, Any]) -> str:
    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return round(x, 3) if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean({k: v for k, v in res.items() if k != "profile"}), separators=(",", ":"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 even when a target is missed: this is a measurement)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = run(args)
    print(format_report(res))
    if res["profile"]:
        print()
        print(res["profile"])
    print()
    print("BENCHMARK_JSON " + _json_line(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

