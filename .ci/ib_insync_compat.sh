#!/usr/bin/env bash
# ibsim compatibility run with the archived ib_insync client (0.9.86): connect + bars + market order.
# ib_insync and ib_async cannot share a virtual environment (both ship an `eventkit` package), so this
# builds its own venv with ib_insync plus what ibsim needs, pinned like requirements.txt, and runs
# tests/compat/ib_insync_smoke.py against `python -m ibsim`. Safe to re-run; the venv is reused while the
# pins are unchanged.
#
#   bash .ci/ib_insync_compat.sh        (env: PYTHON=python3, IB_INSYNC_VENV=.venv-ib_insync)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=.ci/compat_venv.sh
source .ci/compat_venv.sh
VENV=${IB_INSYNC_VENV:-.venv-ib_insync}
compat_venv "$VENV" "ib_insync==0.9.86"
if "$VENV/bin/python" -c "import ib_async" 2>/dev/null; then
    echo "error: $VENV has ib_async installed; ib_insync needs a venv of its own" >&2
    exit 2
fi

exec "$VENV/bin/python" tests/compat/ib_insync_smoke.py
