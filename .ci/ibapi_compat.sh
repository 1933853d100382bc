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

# shellcheck source=.ci/compat_venv.sh
source .ci/compat_venv.sh
VENV=${IBAPI_VENV:-.venv-ibapi}
compat_venv "$VENV" "ibapi==9.81.1.post1"

exec "$VENV/bin/python" tests/compat/ibapi_smoke.py
