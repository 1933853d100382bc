#!/usr/bin/env bash
# One entry point for the README quick start. Each command sets itself up (a virtual environment in .venv
# with the pinned requirements, re-installed only when a requirements file changes) and is safe to re-run.
#
#   ./dev.sh backtest [run_backtest.py options]   train the demo model if needed, backtest, write a tearsheet
#   ./dev.sh test [pytest options]                run the test suite
#   ./dev.sh lint                                 ruff check + import contracts (lint-imports) + mypy
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

ensure_venv() {
    local reqs="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "error: Python 3.11+ is required (found $("$PYTHON" --version 2>&1))" >&2; exit 2; }
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.requirements.sha256"
    local want
    want=$(cat requirements.txt "$reqs" | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    backtest)
        ensure_venv requirements.txt
        exec "$VENV/bin/python" run_backtest.py "$@"
        ;;
    test)
        ensure_venv requirements-dev.txt
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    lint)
        ensure_venv requirements-dev.txt
        "$VENV/bin/python" -m ruff check .
        "$VENV/bin/lint-imports"
        exec "$VENV/bin/python" -m mypy core config feeds ml strategies engines analyzers ibsim benchmarks \
            run_backtest.py run_live.py
        ;;
    *)
        sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
