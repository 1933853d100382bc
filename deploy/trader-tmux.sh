#!/usr/bin/env bash
# Run IB Gateway and the trader in one tmux session (the simple way; systemd is the robust one).
#
#   deploy/trader-tmux.sh start     windows: gateway (IBC), trader (run_live.py, once the API port is open), logs
#   deploy/trader-tmux.sh stop      SIGTERM to the trader (clean stop, state persisted), then the gateway
#   deploy/trader-tmux.sh attach    look at it (detach again with Ctrl-b d; Ctrl-c in the trader window stops it)
#   deploy/trader-tmux.sh status    what runs, exit codes, whether the API port is open
#
# Settings come from the environment, then from $TRADER_ENV_FILE (default /opt/trader/etc/trader.env,
# written by bootstrap.sh), then defaults. The main ones: GATEWAY_CMD (default: IBC's launcher; for a
# rehearsal `python -m ibsim --port 4002 ...`), TRADER_CMD (default: $PYTHON run_live.py $TRADER_ARGS),
# GATEWAY_HOST/GATEWAY_PORT (127.0.0.1:4002), GATEWAY_WAIT (seconds, 600), LOG_DIR, RUN_DIR,
# TMUX_SOCKET (tmux -L name, default trader: a private tmux server), SESSION (trader).
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
# shellcheck source=deploy/lib.sh
source "$HERE/lib.sh"

load_settings() {
    load_env_file "${TRADER_ENV_FILE:-/opt/trader/etc/trader.env}"
    APP_DIR=${APP_DIR:-$(cd "$HERE/.." && pwd)}
    if [[ -z ${PYTHON:-} ]]; then
        if [[ -x $APP_DIR/.venv/bin/python ]]; then PYTHON=$APP_DIR/.venv/bin/python; else PYTHON=python3; fi
    fi
    STATE_DIR=${STATE_DIR:-$APP_DIR/state}
    LOG_DIR=${LOG_DIR:-$APP_DIR/logs}
    RUN_DIR=${RUN_DIR:-$STATE_DIR/run}
    SECRETS_FILE=${SECRETS_FILE:-}
    GATEWAY_HOST=${GATEWAY_HOST:-127.0.0.1}
    GATEWAY_PORT=${GATEWAY_PORT:-4002}
    GATEWAY_WAIT=${GATEWAY_WAIT:-600}
    GATEWAY_CMD=${GATEWAY_CMD:-/opt/trader/bin/gateway-start.sh}
    TRADER_ARGS=${TRADER_ARGS:-}
    TRADER_CMD=${TRADER_CMD:-$PYTHON run_live.py $TRADER_ARGS}
    TRADER_RESTART_DELAY=${TRADER_RESTART_DELAY:-30}
    STOP_TIMEOUT=${STOP_TIMEOUT:-120}
    TMUX_SOCKET=${TMUX_SOCKET:-trader}
    SESSION=${SESSION:-trader}
}

tm() {
    tmux -L "$TMUX_SOCKET" "$@"
}

running() {
    tm has-session -t "=$SESSION" 2>/dev/null
}

# Send the command's output to the pane and to LOG_DIR/tmux-NAME.log (tee ignores Ctrl-C, SIGTERM and the
# pane's hang-up, so the trader's last lines still reach the file while it shuts down).
tee_output() {
    mkdir -p "$LOG_DIR"
    exec > >(trap '' INT TERM HUP; exec tee -a "$LOG_DIR/tmux-$1.log") 2>&1
}

# Run a command line in the foreground with its pid in RUN_DIR/NAME.pid; record its exit code.
run_recorded() {
    local name=$1 cmd=$2 rc=0
    log "$name: $cmd"
    (
        echo "$BASHPID" >"$RUN_DIR/$name.pid"
        eval "exec $cmd"
    ) || rc=$?
    rm -f "$RUN_DIR/$name.pid"
    # Log first: the .exit file tells `stop` that this window has said its last word.
    log "$name exited with code $rc"
    echo "$rc" >"$RUN_DIR/$name.exit"
    return "$rc"
}

window_gateway() {
    tee_output gateway
    run_recorded gateway "$GATEWAY_CMD" || true
}

window_trader() {
    tee_output trader
    if [[ -n $SECRETS_FILE ]]; then load_env_file "$SECRETS_FILE"; fi
    local rc
    while true; do
        log "trader: waiting up to ${GATEWAY_WAIT}s for the gateway API on $GATEWAY_HOST:$GATEWAY_PORT"
        if ! wait_port "$GATEWAY_HOST" "$GATEWAY_PORT" "$GATEWAY_WAIT"; then
            log "trader: gateway port $GATEWAY_HOST:$GATEWAY_PORT still closed after ${GATEWAY_WAIT}s"
            echo 3 >"$RUN_DIR/trader.exit"
        else
            rc=0
            run_recorded trader "$TRADER_CMD" || rc=$?
            if ((rc == 0 || rc == 2)) || [[ -e $RUN_DIR/stopping ]]; then
                return 0 # done, or bad input that a restart cannot fix
            fi
        fi
        [[ -e $RUN_DIR/stopping ]] && return 0
        log "trader: restarting in ${TRADER_RESTART_DELAY}s (stop with: $SELF stop)"
        sleep "$TRADER_RESTART_DELAY"
    done
}

window_logs() {
    mkdir -p "$LOG_DIR"
    touch "$LOG_DIR/live.log"
    exec tail -n 50 -F "$LOG_DIR/live.log"
}

cmd_start() {
    if running; then
        log "session '$SESSION' already running (tmux -L $TMUX_SOCKET); see: $SELF status"
        return 0
    fi
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    rm -f "$RUN_DIR/stopping" "$RUN_DIR/trader.exit" "$RUN_DIR/gateway.exit"
    # the windows read the resolved settings from here (a tmux server keeps its own environment)
    local env_file=$RUN_DIR/tmux-session.env var
    (
        umask 077
        for var in APP_DIR PYTHON STATE_DIR LOG_DIR RUN_DIR SECRETS_FILE GATEWAY_HOST GATEWAY_PORT \
            GATEWAY_WAIT GATEWAY_CMD TRADER_CMD TRADER_RESTART_DELAY TMUX_SOCKET SESSION; do
            printf 'export %s=%q\n' "$var" "${!var}"
        done
        printf 'export PYTHONUNBUFFERED=1\n'
    ) >"$env_file"
    local launch
    launch="env TRADER_TMUX_ENV=$(printf %q "$env_file") bash $(printf %q "$SELF")"
    # the options come first so that a window that exits at once keeps its last words on screen
    tm start-server \; set-option -g remain-on-exit on \; set-option -g history-limit 20000 \; \
        new-session -d -s "$SESSION" -n gateway -c "$APP_DIR" "$launch _window gateway"
    tm new-window -d -t "=$SESSION:" -n trader -c "$APP_DIR" "$launch _window trader"
    tm new-window -d -t "=$SESSION:" -n logs -c "$APP_DIR" "$launch _window logs"
    log "started tmux session '$SESSION' (tmux -L $TMUX_SOCKET): gateway, trader, logs; attach: $SELF attach"
}

# SIGTERM the process recorded in RUN_DIR/NAME.pid and wait until it has gone.
stop_process() {
    local name=$1 timeout_s=$2 pid deadline
    pid=$(cat "$RUN_DIR/$name.pid" 2>/dev/null || true)
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        return 0
    fi
    log "stopping $name (pid $pid, SIGTERM, up to ${timeout_s}s)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout_s))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "warning: $name did not stop in ${timeout_s}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
}

cmd_stop() {
    if ! running; then
        log "session '$SESSION' is not running"
        return 0
    fi
    mkdir -p "$RUN_DIR"
    touch "$RUN_DIR/stopping"
    local rc=0
    stop_process trader "$STOP_TIMEOUT" || rc=1
    # let the trader window log, record its exit code and end (pane dead) before anything is killed
    for _ in $(seq 1 50); do
        [[ -f "$RUN_DIR/trader.exit" &&
            "$(tm list-panes -t "=$SESSION:trader" -F '#{pane_dead}' 2>/dev/null)" == 1 ]] && break
        sleep 0.2
    done
    sleep 0.2
    stop_process gateway 60 || rc=1
    sleep 0.5
    tm kill-session -t "=$SESSION"
    rm -f "$RUN_DIR/stopping"
    log "stopped; trader exit code: $(cat "$RUN_DIR/trader.exit" 2>/dev/null || echo none)"
    return "$rc"
}

cmd_status() {
    local ok=0 pid
    if running; then
        echo "session '$SESSION' running (tmux -L $TMUX_SOCKET)"
        tm list-panes -s -t "=$SESSION" -F '  #{window_name}: #{?pane_dead,exited #{pane_dead_status},running}'
    else
        echo "session '$SESSION' not running"
        ok=1
    fi
    for name in gateway trader; do
        pid=$(cat "$RUN_DIR/$name.pid" 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            echo "$name: pid $pid alive"
        else
            echo "$name: not running (last exit code: $(cat "$RUN_DIR/$name.exit" 2>/dev/null || echo none))"
            ok=1
        fi
    done
    if port_open "$GATEWAY_HOST" "$GATEWAY_PORT"; then
        echo "gateway API $GATEWAY_HOST:$GATEWAY_PORT: open"
    else
        echo "gateway API $GATEWAY_HOST:$GATEWAY_PORT: closed"
        ok=1
    fi
    return "$ok"
}

main() {
    local cmd=${1:-}
    if [[ $cmd == _window ]]; then
        # shellcheck source=/dev/null
        source "$TRADER_TMUX_ENV"
        case ${2:-} in
            gateway) window_gateway ;;
            trader) window_trader ;;
            logs) window_logs ;;
            *) die 2 "unknown window '${2:-}'" ;;
        esac
        return 0
    fi
    load_settings
    case $cmd in
        start) cmd_start ;;
        stop) cmd_stop ;;
        attach) exec tmux -L "$TMUX_SOCKET" attach -t "=$SESSION" ;;
        status) cmd_status ;;
        *)
            sed -n '2,8p' "$SELF" | sed 's/^# \{0,1\}//'
            exit 2
            ;;
    esac
}

main "$@"
