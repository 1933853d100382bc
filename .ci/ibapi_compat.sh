#!/usr/bin/env bash
# ibsim compatibility run with IB's own Python client, ibapi 9.81.1.post1 from PyPI (EClient/EWrapper; it logs on
# at server version 157): handshake, contract details, bars, orders, brackets, cancels, executions, positions,
# completed orders, account summary, 162, 326, 1100/1102. ibapi is not a project dependency, so this builds its
# own venv with ibapi plus what ibsim needs, pinned like requirements.txt, and runs tests/compat/ibapi_smoke.py
# against `python -m ibsim`. Safe to re-run; the venv is reused while the pins are unchanged.
#
#   bash .ci/ibapi_compat.sh        (env: PYTHON=python3, IBAPI_VENV=.venv-ibapi)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${IBAPI_VENV:-.venv-ibapi}

pin() {  # the pinned requirement line for one package, from requirements.txt
    grep -iE "^$1==" requirements.txt || { echo "error: $1 is not pinned in requirements.txt" >&2; exit 2; }
}
REQS=("ibapi==9.81.1.post1" "$(pin pandas)" "$(pin numpy)" "$(pin pyarrow)" "$(pin exchange_calendars)"
      "$(pin pydantic)" "$(pin tomli_w)")

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${REQS[*]}" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQS[@]}"
    echo "${REQS[*]}" > "$stamp"
fi

exec "$VENV/bin/python" tests/compat/ibapi_smoke.py
