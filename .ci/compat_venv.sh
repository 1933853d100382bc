# shellcheck shell=bash
# Sourced by the client compatibility runs (.ci/*_compat.sh): build or reuse a virtual environment with one IB
# client plus what ibsim needs, pinned like requirements.txt (re-installed only when the pins change).
#
#   compat_venv VENV CLIENT_PIN      e.g. compat_venv .venv-ibapi ibapi==9.81.1.post1

pin() {  # the pinned requirement line for one package, from requirements.txt
    grep -iE "^$1==" requirements.txt || { echo "error: $1 is not pinned in requirements.txt" >&2; exit 2; }
}

compat_venv() {
    local venv=$1 client=$2
    local reqs=("$client" "$(pin pandas)" "$(pin numpy)" "$(pin pyarrow)" "$(pin exchange_calendars)"
                "$(pin pydantic)" "$(pin tomli_w)")
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    local stamp="$venv/.requirements"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${reqs[*]}" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
        echo "${reqs[*]}" > "$stamp"
    fi
}
