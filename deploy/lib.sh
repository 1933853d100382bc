#!/usr/bin/env bash
# Shared helpers for the deploy scripts (sourced, never run). No helper ever prints a variable's value
# unless the caller passes it explicitly, so secrets read through them stay out of logs.

# Print a timestamped message on stderr.
log() {
    printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >&2
}

# Print an error and exit with the given code (default 1).
die() {
    local code=1
    if [[ $# -gt 1 ]]; then
        code=$1
        shift
    fi
    log "error: $*"
    exit "$code"
}

# Succeed when a TCP connection to HOST PORT opens within 2 seconds (bash /dev/tcp, nothing sent).
port_open() {
    local host=$1 port=$2
    # shellcheck disable=SC2016 # $1/$2 expand in the child bash, not here
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# Wait up to TIMEOUT seconds for HOST PORT to accept connections.
wait_port() {
    local host=$1 port=$2 timeout_s=$3
    local deadline=$((SECONDS + timeout_s))
    until port_open "$host" "$port"; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
}

# Export KEY=VALUE lines of an env file (systemd EnvironmentFile syntax: comments, optional double
# quotes) for every KEY not already set, so the caller's environment wins. Nothing is evaluated.
load_env_file() {
    local file=$1 line key value
    [[ -r $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line#"${line%%[![:space:]]*}"}
        [[ -z $line || $line == \#* || $line != *=* ]] && continue
        key=${line%%=*}
        value=${line#*=}
        [[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
        if [[ $value == \"*\" && ${#value} -ge 2 ]]; then
            value=${value:1:${#value}-2}
        fi
        if [[ -z ${!key+set} ]]; then
            export "$key=$value"
        fi
    done <"$file"
}
