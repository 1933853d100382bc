#!/usr/bin/env bash
# Set up (or update) a server for the paper trader: system packages, the service user, a release of this
# repository with its own virtual environment, IB Gateway + IBC configured from deploy/templates/, the
# systemd units, log rotation. Idempotent: re-running changes only what differs (and says so).
#
#   sudo deploy/bootstrap.sh                          # as root on Ubuntu 22.04 / 24.04
#   sudo RELEASE_REF=v0.3.0 deploy/bootstrap.sh       # install another tag and make it current
#
# Every setting is a variable (defaults below). For a sandbox run (the tests):
#   DEPLOY_ROOT=/tmp/root SKIP_APT=1 SKIP_USER=1 SKIP_DOWNLOADS=1 SKIP_PIP=1 deploy/bootstrap.sh
# Paths written into files are the final ones (like make's DESTDIR); files land under DEPLOY_ROOT.
# Secrets (IB login, webhook URL) are read from files with mode 600 and never printed.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # '&' in a password must stay a literal '&'

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/lib.sh
source "$HERE/lib.sh"

DEPLOY_ROOT=${DEPLOY_ROOT:-/}
TRADER_USER=${TRADER_USER:-trader}
TRADER_HOME=${TRADER_HOME:-/opt/trader}
IBC_DIR=${IBC_DIR:-/opt/ibc}
SOURCE_DIR=${SOURCE_DIR:-$(cd "$HERE/.." && pwd)}
RELEASE_REF=${RELEASE_REF:-HEAD}
API_PORT=${API_PORT:-4002}
TIMEZONE=${TIMEZONE:-America/New_York}
AUTO_RESTART_TIME=${AUTO_RESTART_TIME:-11:45 PM}
COLD_RESTART_TIME=${COLD_RESTART_TIME:-}
EXISTING_SESSION_ACTION=${EXISTING_SESSION_ACTION:-primary}
IBC_COMMAND_PORT=${IBC_COMMAND_PORT:-0}
XVFB_DISPLAY=${XVFB_DISPLAY:-:99}
IBC_VERSION=${IBC_VERSION:-3.20.0}
IBC_URL=${IBC_URL:-https://github.com/IbcAlpha/IBC/releases/download/$IBC_VERSION/IBCLinux-$IBC_VERSION.zip}
IBC_SHA256=${IBC_SHA256:-}
IB_GATEWAY_URL=${IB_GATEWAY_URL:-https://download2.interactivebrokers.com/installers/ibgateway/stable-standalone/ibgateway-stable-standalone-linux-x64.sh}
IB_GATEWAY_MAJOR=${IB_GATEWAY_MAJOR:-}
CREDENTIALS_FILE=${CREDENTIALS_FILE:-$TRADER_HOME/etc/ib-credentials}
ADMIN_USER=${ADMIN_USER:-${SUDO_USER:-}}
SKIP_APT=${SKIP_APT:-0}
SKIP_USER=${SKIP_USER:-0}
SKIP_DOWNLOADS=${SKIP_DOWNLOADS:-0}
SKIP_PIP=${SKIP_PIP:-0}
if [[ $DEPLOY_ROOT == / ]]; then SKIP_SYSTEMCTL=${SKIP_SYSTEMCTL:-0}; else SKIP_SYSTEMCTL=${SKIP_SYSTEMCTL:-1}; fi

ROOT=${DEPLOY_ROOT%/}        # prefix for file operations ('' for /)
R_HOME=$ROOT$TRADER_HOME     # where files go; $TRADER_HOME is what goes into them
R_IBC=$ROOT$IBC_DIR
CHANGES=0

step() { log "== $*"; }
changed() { CHANGES=$((CHANGES + 1)); log "   $*"; }

# Give PATH to the service user (no-op in a sandbox).
own() {
    if [[ $SKIP_USER != 1 ]]; then chown "$TRADER_USER:$TRADER_USER" "$@"; fi
}

# Create a directory with a mode (and the service user as owner).
ensure_dir() {
    local dir=$1 mode=$2
    if [[ ! -d $dir ]]; then
        mkdir -p "$dir"
        changed "created $dir"
    fi
    if [[ $(stat -c %a "$dir") != "$mode" ]]; then chmod "$mode" "$dir"; fi
    own "$dir"
}

# Write CONTENT to DEST with MODE only if it differs (atomic rename; never prints the content).
install_content() {
    local dest=$1 mode=$2 content=$3 tmp
    if [[ -f $dest ]] && cmp -s <(printf '%s\n' "$content") "$dest"; then
        if [[ $(stat -c %a "$dest") != "$mode" ]]; then
            chmod "$mode" "$dest"
            changed "mode $mode on $dest"
        fi
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$dest.XXXXXX") # mode 600 from the start: the content may be secret
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    [[ $dest == "$ROOT/etc/"* ]] || own "$tmp"
    mv -f "$tmp" "$dest"
    changed "wrote $dest (mode $mode)"
}

# Render TEMPLATE (tokens @NAME@) with the named variables into DEST with MODE.
render() {
    local template=$1 dest=$2 mode=$3 content name token
    shift 3
    content=$(<"$template")
    # every token in the template must be provided (a typo would otherwise ship literally)
    local rest=$content
    while [[ $rest =~ @([A-Z][A-Z0-9_]*)@ ]]; do
        token=${BASH_REMATCH[1]}
        [[ " $* " == *" $token "* ]] || die 2 "$template: no value for @$token@"
        rest=${rest#*"@$token@"}
    done
    for name in "$@"; do
        content=${content//"@$name@"/"${!name}"}
    done
    install_content "$dest" "$mode" "$content"
}

# Create DEST from TEMPLATE only when DEST does not exist yet (files the user or a program edits).
seed() {
    local template=$1 dest=$2 mode=$3
    shift 3
    if [[ -e $dest ]]; then
        if [[ $(stat -c %a "$dest") != "$mode" ]]; then
            chmod "$mode" "$dest"
            changed "mode $mode on $dest"
        fi
        return 0
    fi
    render "$template" "$dest" "$mode" "$@"
}

# ---------------------------------------------------------------------------------------------------

pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    die 2 "Python 3.11+ not found (Ubuntu 22.04: apt-get install python3.11 python3.11-venv)"
}

install_packages() {
    step "system packages"
    if [[ $SKIP_APT == 1 ]]; then
        log "   skipped (SKIP_APT=1)"
        return 0
    fi
    local packages=(xvfb tmux openjdk-17-jre unzip curl git rsync ca-certificates logrotate
        libxtst6 libxrender1 libxi6 python3-venv python3-pip)
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        packages+=(python3.11 python3.11-venv) # Ubuntu 22.04 ships 3.10
    fi
    local missing=()
    local p
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
        changed "installed ${missing[*]}"
    fi
}

setup_timezone() {
    step "time zone $TIMEZONE"
    if [[ $SKIP_SYSTEMCTL == 1 ]] || ! command -v timedatectl >/dev/null; then
        log "   skipped (not the live system)"
        return 0
    fi
    if [[ $(timedatectl show -p Timezone --value) != "$TIMEZONE" ]]; then
        timedatectl set-timezone "$TIMEZONE"
        changed "time zone set to $TIMEZONE"
    fi
}

setup_user() {
    step "service user $TRADER_USER"
    if [[ $SKIP_USER == 1 ]]; then
        log "   skipped (SKIP_USER=1): files stay owned by $(id -un)"
        return 0
    fi
    if ! id -u "$TRADER_USER" >/dev/null 2>&1; then
        useradd --system --create-home --home-dir "$TRADER_HOME" --shell /bin/bash \
            --comment "IB paper trader" "$TRADER_USER"
        changed "created user $TRADER_USER"
    fi
    if [[ -n $ADMIN_USER && $ADMIN_USER != root ]] && ! id -nG "$ADMIN_USER" | grep -qw "$TRADER_USER"; then
        usermod -aG "$TRADER_USER" "$ADMIN_USER" # lets the SSH user read logs and reports
        changed "added $ADMIN_USER to group $TRADER_USER"
    fi
}

setup_layout() {
    step "folders under $R_HOME"
    ensure_dir "$R_HOME" 750
    local d
    for d in releases bin var var/logs var/state var/run var/reports var/models ibc/logs Jts Jts/ibgateway; do
        ensure_dir "$R_HOME/$d" 750
    done
    ensure_dir "$R_HOME/etc" 700 # credentials and secrets
    ensure_dir "$R_HOME/ibc" 700 # IBC's config.ini holds the login
}

release_name() {
    if [[ -n ${RELEASE:-} ]]; then
        echo "$RELEASE"
    elif git -C "$SOURCE_DIR" rev-parse --git-dir >/dev/null 2>&1; then
        git -C "$SOURCE_DIR" describe --tags --always "$RELEASE_REF"
    else
        die 2 "SOURCE_DIR $SOURCE_DIR is not a git checkout: set RELEASE=<name>"
    fi
}

install_release() {
    local name dir python
    name=$(release_name)
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die 2 "release name '$name' has unsafe characters"
    dir=$R_HOME/releases/$name
    step "release $name"
    if [[ ! -d $dir ]]; then
        rm -rf "$dir.partial"
        mkdir -p "$dir.partial"
        if git -C "$SOURCE_DIR" rev-parse --git-dir >/dev/null 2>&1 && [[ -z ${RELEASE:-} ]]; then
            git -C "$SOURCE_DIR" archive --format=tar "$RELEASE_REF" | tar -x -C "$dir.partial"
        else
            tar -C "$SOURCE_DIR" --exclude=./.git --exclude='./.venv*' --exclude=./state --exclude=./logs \
                --exclude=./reports --exclude=./store --exclude='__pycache__' --exclude=./.pytest_cache \
                -cf - . | tar -x -C "$dir.partial"
        fi
        mv "$dir.partial" "$dir"
        changed "unpacked $name into $dir"
    fi
    python=$(pick_python)
    if [[ ! -x $dir/.venv/bin/python ]]; then
        if [[ $SKIP_PIP == 1 ]]; then
            "$python" -m venv --without-pip "$dir/.venv"
        else
            "$python" -m venv "$dir/.venv"
        fi
        changed "virtual environment $dir/.venv ($("$python" --version))"
    fi
    local stamp=$dir/.venv/.requirements.sha256 want
    want=$(sha256sum "$dir/requirements.txt" | cut -d' ' -f1)
    if [[ $SKIP_PIP == 1 ]]; then
        log "   pip skipped (SKIP_PIP=1)"
    elif [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
        "$dir/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
        echo "$want" >"$stamp"
        changed "installed the pinned requirements"
    fi
    chmod 755 "$dir/deploy/"*.sh
    if [[ $SKIP_USER != 1 ]]; then chown -R "$TRADER_USER:$TRADER_USER" "$dir"; fi
    # switch atomically: current -> releases/<name> (relative, so the tree can move)
    if [[ $(readlink "$R_HOME/current" 2>/dev/null) != "releases/$name" ]]; then
        ln -sfn "releases/$name" "$R_HOME/current.new"
        mv -Tf "$R_HOME/current.new" "$R_HOME/current"
        changed "current -> releases/$name"
    fi
}

install_ibc() {
    step "IBC $IBC_VERSION in $R_IBC"
    if [[ $SKIP_DOWNLOADS == 1 ]]; then
        log "   skipped (SKIP_DOWNLOADS=1)"
        return 0
    fi
    if [[ -f $R_IBC/.installed-version && $(cat "$R_IBC/.installed-version") == "$IBC_VERSION" ]]; then
        return 0
    fi
    local tmp
    tmp=$(mktemp -d)
    curl -fsSL --retry 3 -o "$tmp/ibc.zip" "$IBC_URL"
    if [[ -n $IBC_SHA256 ]]; then
        echo "$IBC_SHA256  $tmp/ibc.zip" | sha256sum -c --quiet - || die "IBC download: checksum mismatch"
    fi
    mkdir -p "$R_IBC"
    unzip -o -q "$tmp/ibc.zip" -d "$R_IBC"
    chmod 755 "$R_IBC"/*.sh "$R_IBC"/scripts/*.sh
    echo "$IBC_VERSION" >"$R_IBC/.installed-version"
    rm -rf "$tmp"
    changed "installed IBC $IBC_VERSION"
}

install_gateway() {
    step "IB Gateway (offline/standalone installer) in $R_HOME/Jts/ibgateway"
    if [[ $SKIP_DOWNLOADS == 1 ]]; then
        log "   skipped (SKIP_DOWNLOADS=1)"
        return 0
    fi
    if compgen -G "$R_HOME/Jts/ibgateway/[0-9]*/jars" >/dev/null && [[ ${IB_GATEWAY_REINSTALL:-0} != 1 ]]; then
        return 0
    fi
    local tmp major jar
    tmp=$(mktemp -d)
    curl -fsSL --retry 3 -o "$tmp/ibgateway.sh" "$IB_GATEWAY_URL"
    sh "$tmp/ibgateway.sh" -q -dir "$tmp/install" >/dev/null
    major=$IB_GATEWAY_MAJOR
    if [[ -z $major ]]; then
        jar=$(find "$tmp/install/jars" -name 'jts4launch-*.jar' | head -n 1)
        major=$(basename "$jar" .jar)
        major=${major#jts4launch-}
    fi
    [[ $major =~ ^[0-9]+$ ]] || die "cannot tell the IB Gateway version: set IB_GATEWAY_MAJOR (e.g. 1030)"
    rm -rf "$R_HOME/Jts/ibgateway/$major"
    mv "$tmp/install" "$R_HOME/Jts/ibgateway/$major"
    if [[ $SKIP_USER != 1 ]]; then chown -R "$TRADER_USER:$TRADER_USER" "$R_HOME/Jts"; fi
    rm -rf "$tmp"
    changed "installed IB Gateway $major"
}

# Read IB_USERNAME / IB_PASSWORD from the credentials file without evaluating or printing it.
read_credentials() {
    IB_USERNAME=
    IB_PASSWORD=
    local file=$ROOT$CREDENTIALS_FILE line key
    if [[ ! -f $file ]]; then
        return 0
    fi
    if [[ $(stat -c %a "$file") != 600 ]]; then
        chmod 600 "$file"
        changed "mode 600 on $file (it was readable by others)"
    fi
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line == \#* || $line != *=* ]] && continue
        key=${line%%=*}
        case $key in
            IB_USERNAME) IB_USERNAME=${line#*=} ;;
            IB_PASSWORD) IB_PASSWORD=${line#*=} ;;
        esac
    done <"$file"
}

configure() {
    step "configuration from deploy/templates"
    local t=$HERE/templates
    seed "$t/ib-credentials.tmpl" "$ROOT$CREDENTIALS_FILE" 600 TRADER_USER
    seed "$t/secrets.env.tmpl" "$R_HOME/etc/secrets.env" 600 TRADER_USER
    if [[ ! -e $R_HOME/etc/trader.toml ]]; then
        install_content "$R_HOME/etc/trader.toml" 640 "$(<"$SOURCE_DIR/config/paper.toml")"
    fi
    render "$t/trader.env.tmpl" "$R_HOME/etc/trader.env" 644 TRADER_HOME API_PORT TIMEZONE
    read_credentials
    render "$t/ibc-config.ini.tmpl" "$R_HOME/ibc/config.ini" 600 CREDENTIALS_FILE IB_USERNAME IB_PASSWORD \
        EXISTING_SESSION_ACTION API_PORT TIMEZONE AUTO_RESTART_TIME COLD_RESTART_TIME IBC_COMMAND_PORT
    if [[ -z $IB_USERNAME || -z $IB_PASSWORD ]]; then
        log "   note: no IB login in $CREDENTIALS_FILE yet: fill it in (mode 600) and re-run"
    fi
    unset IB_USERNAME IB_PASSWORD
    seed "$t/jts.ini.tmpl" "$R_HOME/Jts/jts.ini" 600 API_PORT TIMEZONE # the gateway rewrites it
    render "$t/gateway-start.sh.tmpl" "$R_HOME/bin/gateway-start.sh" 755 IBC_DIR TRADER_HOME API_PORT XVFB_DISPLAY
}

install_units() {
    step "systemd units and log rotation"
    local unit
    for unit in ib-gateway.service trader.service trader-daily.service trader-daily.timer \
        trader-health.service trader-health.timer; do
        render "$HERE/systemd/$unit" "$ROOT/etc/systemd/system/$unit" 644 TRADER_HOME TRADER_USER API_PORT
    done
    render "$HERE/logrotate/trader" "$ROOT/etc/logrotate.d/trader" 644 TRADER_HOME TRADER_USER
    if [[ $SKIP_SYSTEMCTL == 1 ]]; then
        log "   systemctl skipped (DEPLOY_ROOT=$DEPLOY_ROOT)"
    elif command -v systemctl >/dev/null; then
        systemctl daemon-reload
        log "   enable with: systemctl enable --now ib-gateway trader trader-daily.timer trader-health.timer"
    fi
}

main() {
    if [[ $DEPLOY_ROOT == / && $(id -u) != 0 ]]; then
        die 2 "run as root (sudo), or set DEPLOY_ROOT to a sandbox folder"
    fi
    log "bootstrap: root=$DEPLOY_ROOT home=$TRADER_HOME user=$TRADER_USER port=$API_PORT"
    install_packages
    setup_timezone
    setup_user
    setup_layout
    install_release
    install_ibc
    install_gateway
    configure
    install_units
    if ((CHANGES == 0)); then
        log "done: nothing to change"
    else
        log "done: $CHANGES change(s)"
    fi
}

main "$@"
