#!/usr/bin/env bash
# Health check of a running deployment. Prints one line per check and exits 1 naming what failed:
#
#   port     the gateway's API port accepts connections (GATEWAY_HOST:GATEWAY_PORT, 127.0.0.1:4002)
#   bar      the last bar arrived recently: the newest LOG_DIR/decisions-*.jsonl (one line per symbol
#            per bar) changed less than HC_MAX_BAR_AGE seconds ago (default 300). Checked only while
#            the market is open (XNYS via exchange_calendars when PYTHON has it, else Mon-Fri
#            09:30-16:00 New York); HC_BAR_CHECK=always|never overrides that
#   process  the trader is alive: systemd unit HC_UNIT (e.g. trader.service) when set, else the pid in
#            RUN_DIR/trader.pid (written by trader-tmux.sh)
#   heartbeat the trader's loop is turning and connected to IB: the newest STATE_DIR/heartbeat-*.json
#            (rewritten by run_live.py every 10 s, market open or not) is less than HC_MAX_HEARTBEAT_AGE
#            seconds old (default 120), does not say "connected": false, and does not say new entries have
#            been paused (IB down, 1100, re-sync) for more than HC_MAX_PAUSE seconds (default 600)
#
#   deploy/healthcheck.sh                 run every check
#   deploy/healthcheck.sh wait-port [S]   wait up to S seconds (default 600) for the API port (trader.service)
#
# Settings: the environment, then $TRADER_ENV_FILE (default /opt/trader/etc/trader.env).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib.sh
source "$HERE/lib.sh"

load_env_file "${TRADER_ENV_FILE:-/opt/trader/etc/trader.env}"
APP_DIR=${APP_DIR:-$(cd "$HERE/.." && pwd)}
LOG_DIR=${LOG_DIR:-$APP_DIR/logs}
STATE_DIR=${STATE_DIR:-$APP_DIR/state}
RUN_DIR=${RUN_DIR:-$STATE_DIR/run}
PYTHON=${PYTHON:-python3}
GATEWAY_HOST=${GATEWAY_HOST:-127.0.0.1}
GATEWAY_PORT=${GATEWAY_PORT:-4002}
HC_MAX_BAR_AGE=${HC_MAX_BAR_AGE:-300}
HC_BAR_CHECK=${HC_BAR_CHECK:-auto}
HC_UNIT=${HC_UNIT:-}
HC_MAX_HEARTBEAT_AGE=${HC_MAX_HEARTBEAT_AGE:-120}
HC_MAX_PAUSE=${HC_MAX_PAUSE:-600}

FAILED=()

ok() { echo "OK   $1: $2"; }

# The most recently modified file matching GLOB directly in DIR (empty when none).
newest_file() {
    find "$1" -maxdepth 1 -name "$2" -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-
}

# Seconds since FILE was last modified.
age_of() { echo $(($(date +%s) - $(stat -c %Y "$1"))); }
fail() {
    echo "FAIL $1: $2"
    FAILED+=("$1")
}

check_port() {
    if port_open "$GATEWAY_HOST" "$GATEWAY_PORT"; then
        ok port "$GATEWAY_HOST:$GATEWAY_PORT accepts connections"
    else
        fail port "$GATEWAY_HOST:$GATEWAY_PORT is closed (gateway down, restarting, or waiting for 2FA?)"
    fi
}

# Succeed when the market is open now and was open HC_MAX_BAR_AGE seconds ago (so a bar is due).
market_open() {
    local rc=0
    "$PYTHON" - "$HC_MAX_BAR_AGE" 2>/dev/null <<'EOF' || rc=$?
import sys

import exchange_calendars as xc
import pandas as pd

cal = xc.get_calendar("XNYS")
now = pd.Timestamp.now(tz="UTC").floor("min")
then = now - pd.Timedelta(seconds=int(sys.argv[1]))
sys.exit(0 if cal.is_trading_minute(now) and cal.is_trading_minute(then.ceil("min")) else 10)
EOF
    case $rc in
        0) return 0 ;;
        10) return 1 ;;
    esac
    # no calendar: weekdays 09:30 + max age .. 16:00 New York (holidays are not known here)
    local dow hhmm start
    dow=$(TZ=America/New_York date +%u)
    hhmm=$(TZ=America/New_York date +%H%M)
    start=$(TZ=America/New_York date -d "09:30 today + $HC_MAX_BAR_AGE seconds" +%H%M)
    ((dow <= 5 && 10#$hhmm >= 10#$start && 10#$hhmm < 1600))
}

check_bar() {
    local newest age
    case $HC_BAR_CHECK in
        never)
            ok bar "not checked (HC_BAR_CHECK=never)"
            return 0
            ;;
        auto)
            if ! market_open; then
                ok bar "not checked: market closed"
                return 0
            fi
            ;;
    esac
    newest=$(newest_file "$LOG_DIR" 'decisions-*.jsonl')
    if [[ -z $newest ]]; then
        fail bar "no decisions-*.jsonl in $LOG_DIR: no bar has arrived yet"
        return 0
    fi
    age=$(age_of "$newest")
    if ((age > HC_MAX_BAR_AGE)); then
        fail bar "last bar ${age}s ago ($(basename "$newest")), more than ${HC_MAX_BAR_AGE}s: stale data feed"
    else
        ok bar "last bar ${age}s ago ($(basename "$newest"))"
    fi
}

check_process() {
    local pid
    if [[ -n $HC_UNIT ]]; then
        pid=$(systemctl show -p MainPID --value "$HC_UNIT" 2>/dev/null || echo 0)
        if systemctl is-active --quiet "$HC_UNIT" && [[ ${pid:-0} != 0 ]]; then
            ok process "$HC_UNIT active (pid $pid)"
        else
            fail process "$HC_UNIT is not running ($(systemctl is-active "$HC_UNIT" 2>/dev/null || true))"
        fi
        return 0
    fi
    pid=$(cat "$RUN_DIR/trader.pid" 2>/dev/null || true)
    if [[ -z $pid ]]; then
        fail process "no $RUN_DIR/trader.pid: the trader is not running"
    elif kill -0 "$pid" 2>/dev/null; then
        ok process "trader pid $pid alive"
    else
        fail process "trader pid $pid (from $RUN_DIR/trader.pid) is dead"
    fi
}

check_heartbeat() {
    local newest age since paused
    newest=$(newest_file "$STATE_DIR" 'heartbeat-*.json')
    if [[ -z $newest ]]; then
        fail heartbeat "no heartbeat-*.json in $STATE_DIR: the trader's loop has not started"
        return 0
    fi
    age=$(age_of "$newest")
    if ((age > HC_MAX_HEARTBEAT_AGE)); then
        fail heartbeat "$(basename "$newest") is ${age}s old, more than ${HC_MAX_HEARTBEAT_AGE}s: the trader's loop is stuck"
    elif grep -q '"connected": false' "$newest"; then
        since=$(sed -n 's/.*"down_since": "\([^"]*\)".*/\1/p' "$newest")
        fail heartbeat "the trader reports IB disconnected${since:+ since $since} (it keeps reconnecting)"
    elif paused=$(sed -n 's/.*"paused_seconds": \([0-9]*\).*/\1/p' "$newest") && ((${paused:-0} > HC_MAX_PAUSE)); then
        since=$(sed -n 's/.*"paused_since": "\([^"]*\)".*/\1/p' "$newest")
        fail heartbeat "new entries paused for ${paused}s${since:+ (since $since)}, more than ${HC_MAX_PAUSE}s, with IB connected"
    else
        ok heartbeat "${age}s ago, IB connected ($(basename "$newest"))"
    fi
}

main() {
    case ${1:-check} in
        wait-port)
            local timeout_s=${2:-600}
            if wait_port "$GATEWAY_HOST" "$GATEWAY_PORT" "$timeout_s"; then
                echo "gateway API $GATEWAY_HOST:$GATEWAY_PORT is open"
                return 0
            fi
            echo "gateway API $GATEWAY_HOST:$GATEWAY_PORT still closed after ${timeout_s}s" >&2
            return 1
            ;;
        check)
            check_port
            check_bar
            check_process
            check_heartbeat
            if ((${#FAILED[@]})); then
                echo "UNHEALTHY: ${FAILED[*]}"
                return 1
            fi
            echo "HEALTHY"
            ;;
        *)
            sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            return 2
            ;;
    esac
}

main "$@"
