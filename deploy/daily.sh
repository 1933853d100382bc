#!/usr/bin/env bash
# Daily job after the close (trader-daily.timer, or cron): write the day's summary if the trader did
# not (it writes it itself after the last bar when it was running; a provisional one from a stop
# mid-day is replaced), run the backtest with a tearsheet into REPORTS_DIR, compress and prune old
# per-day logs.
#
#   deploy/daily.sh            settings from the environment, then $TRADER_ENV_FILE (bootstrap's trader.env)
#   DAILY_SKIP_BACKTEST=1 deploy/daily.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib.sh
source "$HERE/lib.sh"

load_env_file "${TRADER_ENV_FILE:-/opt/trader/etc/trader.env}"
APP_DIR=${APP_DIR:-$(cd "$HERE/.." && pwd)}
PYTHON=${PYTHON:-$APP_DIR/.venv/bin/python}
LOG_DIR=${LOG_DIR:-$APP_DIR/logs}
REPORTS_DIR=${REPORTS_DIR:-$APP_DIR/reports}
TRADER_ARGS=${TRADER_ARGS:-}
BACKTEST_CONFIG=${BACKTEST_CONFIG:-config/backtest.toml}
BACKTEST_ARGS=${BACKTEST_ARGS:---set backtest.reports_dir=$REPORTS_DIR}
KEEP_DAYS=${KEEP_DAYS:-90}
DAY=${DAY:-$(TZ=America/New_York date +%F)}

cd "$APP_DIR"
rc=0

log "daily summary $DAY"
# shellcheck disable=SC2086 # TRADER_ARGS is a list of words, as in the systemd unit
"$PYTHON" deploy/daily_summary.py --day "$DAY" $TRADER_ARGS || rc=$?

if [[ ${DAILY_SKIP_BACKTEST:-0} != 1 ]]; then
    log "backtest tearsheet into $REPORTS_DIR/daily-$DAY"
    # shellcheck disable=SC2086 # BACKTEST_ARGS is a list of words
    "$PYTHON" run_backtest.py --config "$BACKTEST_CONFIG" --run-id "daily-$DAY" --quiet $BACKTEST_ARGS || rc=$?
fi

log "compress per-day logs older than 7 days, delete those older than $KEEP_DAYS days"
find "$LOG_DIR" -maxdepth 1 -type f \( -name 'decisions-*.jsonl' -o -name 'summary-*' \) -mtime +7 \
    ! -name '*.gz' -exec gzip -9 {} + 2>/dev/null || true
find "$LOG_DIR" -maxdepth 1 -type f -name '*.gz' -mtime +"$KEEP_DAYS" -delete 2>/dev/null || true
find "$REPORTS_DIR" -mindepth 1 -maxdepth 1 -type d -name 'daily-*' -mtime +"$KEEP_DAYS" \
    -exec rm -rf {} + 2>/dev/null || true

exit "$rc"
