"""Bar files: schema, validation errors naming file/row/field, RTH filtering by the exchange calendar, store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.calendar import minutes_to_close
from feeds.bars import BarDataError, BarStore, discover_files, filter_rth, load_bars

HEADER = "datetime,open,high,low,close,volume\n"


def write(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return path


def good_rows(n: int = 5, start: str = "2024-01-03T09:30:00-05:00") -> list[str]:
    t0 = pd.Timestamp(start)
    return [f"{(t0 + pd.Timedelta(minutes=i)).isoformat()},10,10.5,9.5,10.2,100" for i in range(n)]


def test_symbol_is_taken_from_the_file_name_up_to_the_first_underscore(tmp_path: Path) -> None:
    write(tmp_path / "NVDA_1min.csv", good_rows())
    frames = load_bars(tmp_path, "1min")
    assert list(frames) == ["NVDA"]
    frame = frames["NVDA"]
    assert str(frame.index.tz) == "UTC"
    assert frame.index[0] == pd.Timestamp("2024-01-03 14:30", tz="UTC")
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]


def test_explicit_symbol_overrides_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", good_rows())
    assert list(discover_files([f"AAPL={path}"])) == ["AAPL"]


def test_gzip_csv_and_parquet_are_read(tmp_path: Path) -> None:
    frame = pd.read_csv(write(tmp_path / "X_1min.csv", good_rows()))
    frame.to_csv(tmp_path / "Y_1min.csv.gz", index=False)
    (tmp_path / "X_1min.csv").unlink()
    frame.assign(datetime=pd.to_datetime(frame["datetime"], utc=True)).to_parquet(tmp_path / "Z_1min.parquet")
    frames = load_bars(tmp_path, "1min")
    assert sorted(frames) == ["Y", "Z"]
    pd.testing.assert_frame_equal(frames["Y"], frames["Z"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("2024-01-03T09:32:00-05:00,10,10.5,9.5,,100", r"row 3: field 'close' is NaN"),
        ("2024-01-03T09:32:00-05:00,10,10.5,9.5,abc,100", r"row 3: field 'close' = 'abc' is not a number"),
        ("2024-01-03T09:32:00-05:00,10,9.0,9.5,10.2,100", r"row 3: OHLC inconsistent"),
        ("2024-01-03T09:32:00-05:00,-1,10.5,-2,10.2,100", r"row 3: field 'open' = -1.0 <= 0"),
        ("2024-01-03T09:31:00-05:00,10,10.5,9.5,10.2,100", r"row 3: duplicate timestamp"),
        ("2024-01-03T09:32:30-05:00,10,10.5,9.5,10.2,100", r"row 3: timestamp .* is not on the 1-minute bar grid"),
        ("2024-01-03 09:32:00,10,10.5,9.5,10.2,100", r"row 3: field 'datetime' .* has no UTC offset"),
        ("yesterday,10,10.5,9.5,10.2,100", r"row 3: field 'datetime' = 'yesterday' is not ISO 8601"),
    ],
)
def test_malformed_row_is_reported_with_file_row_and_field(tmp_path: Path, row: str, message: str) -> None:
    rows = [*good_rows(2), row]
    path = write(tmp_path / "BAD_1min.csv", rows)
    with pytest.raises(BarDataError, match=message) as info:
        load_bars(path, "1min")
    assert str(path) in str(info.value)


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "X_1min.csv"
    path.write_text("datetime,open,high,low,close\n2024-01-03T09:30:00-05:00,1,1,1,1\n")
    with pytest.raises(BarDataError, match=r"missing column.*volume"):
        load_bars(path, "1min")


def test_bar_size_must_match_the_config(tmp_path: Path) -> None:
    t0 = pd.Timestamp("2024-01-03T09:30:00-05:00")
    rows = [f"{(t0 + pd.Timedelta(minutes=5 * i)).isoformat()},10,10.5,9.5,10.2,100" for i in range(5)]
    path = write(tmp_path / "X_5min.csv", rows)
    with pytest.raises(BarDataError, match=r"5 minutes apart.*says 1 minutes"):
        load_bars(path, "1min")
    assert len(load_bars(path, "5min")["X"]) == 5


def test_rth_filter_uses_the_exchange_calendar_holidays_and_half_days() -> None:
    # 2024-07-03 is a half day (13:00 close), 2024-07-04 a holiday, 2024-07-05 a full day
    idx = pd.DatetimeIndex(
        pd.to_datetime(["2024-07-03 09:29", "2024-07-03 09:30", "2024-07-03 12:59", "2024-07-03 13:00",
                        "2024-07-04 10:00", "2024-07-05 15:59", "2024-07-05 16:00"])
        .tz_localize("America/New_York").tz_convert("UTC"), name="datetime")
    frame = pd.DataFrame({c: 1.0 for c in ("open", "high", "low", "close", "volume")}, index=idx)
    kept = filter_rth(frame, 1).index.tz_convert("America/New_York").strftime("%m-%d %H:%M").tolist()
    assert kept == ["07-03 09:30", "07-03 12:59", "07-05 15:59"]
    mtc = minutes_to_close(filter_rth(frame, 1).index, 1)
    assert mtc.tolist() == [209.0, 0.0, 0.0]


def test_store_serves_prepared_bars_until_the_source_changes(tmp_path: Path) -> None:
    src = write(tmp_path / "X_1min.csv", good_rows())
    store_dir = tmp_path / "store"
    first = load_bars(src, "1min", store_dir=store_dir)["X"]
    data_path, _ = BarStore(store_dir).paths("X", "1min")
    assert data_path.exists()
    pd.testing.assert_frame_equal(load_bars(src, "1min", store_dir=store_dir)["X"], first)
    write(src, good_rows(7))
    assert len(load_bars(src, "1min", store_dir=store_dir)["X"]) == 7


def test_real_shared_data_loads_when_present() -> None:
    path = Path(__file__).resolve().parents[2].parent / "shared/data/real/pyalgotrade/SPY_1min.csv.gz"
    if not path.exists():
        pytest.skip("../shared/data/real not available")
    frame = load_bars(path, "1min")["SPY"]
    days = frame.index.tz_convert("America/New_York").normalize()
    assert np.all(pd.Series(days).value_counts() == 390)  # extended hours dropped, RTH complete
