"""Where the workstation keeps its state: the job database, per-job logs and the daemon's socket.

Everything lives under one home directory: platformdirs' user state dir, or $COSMOS_TUI_HOME
(tests point it at a temporary directory). The socket sits in a private `run/` directory inside
that home on purpose, not in $XDG_RUNTIME_DIR: systemd-logind removes the runtime dir at the last
logout, which would orphan a daemon that is meant to outlive the SSH session.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "cosmos-tui"
# sun_path is 108 bytes on Linux, including the terminating NUL
MAX_SOCKET_PATH = 107


def home() -> Path:
    env = os.environ.get("COSMOS_TUI_HOME")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_state_dir

    return Path(user_state_dir(APP_NAME, appauthor=False))


def ensure_home() -> Path:
    h = home()
    if not h.exists():
        # prompts, specs and logs are the user's business: private from the start
        h.mkdir(parents=True, mode=0o700)
    return h


def run_dir() -> Path:
    return home() / "run"


def ensure_run_dir() -> Path:
    """The socket's directory, created 0700 (and tightened if someone loosened it)."""
    d = run_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def socket_path() -> Path:
    return run_dir() / "daemon.sock"


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise OSError(
            f"socket path {str(path)!r} is longer than {MAX_SOCKET_PATH} bytes, the limit of a Unix "
            f"socket; set COSMOS_TUI_HOME to a shorter directory"
        )


def lock_path() -> Path:
    return run_dir() / "daemon.lock"


def pid_path() -> Path:
    return run_dir() / "daemon.pid"


def db_path() -> Path:
    return home() / "jobs.db"


def log_dir() -> Path:
    return home() / "logs"


def job_log_path(job_id: int) -> Path:
    return log_dir() / f"job-{job_id}.log"


def engine_log_path() -> Path:
    """Engine output that belongs to no job (model loading between jobs, shutdown)."""
    return log_dir() / "engines.log"


def daemon_log_path() -> Path:
    return home() / "daemon.log"
