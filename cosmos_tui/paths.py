"""Where the workstation keeps its state: the job database, per-job logs and the daemon's socket.

Everything lives under one home directory: platformdirs' user state dir, or $COSMOS_TUI_HOME
(tests point it at a temporary directory). The socket sits in a private `run/` directory inside
that home on purpose, not in $XDG_RUNTIME_DIR: systemd-logind removes the runtime dir at the last
logout, which would orphan a daemon that is meant to outlive the SSH session.
"""

from __future__ import annotations

import os
import stat
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


class UnsafePathError(OSError):
    """A state path another user could read, plant or take over; the message says which and the fix."""


def ensure_private_dir(d: Path) -> Path:
    """`d` as a real directory of ours, mode 0700: created so, tightened if looser; a symlink or a
    directory of another user is refused (either would let someone read prompts or take the socket)."""
    d = Path(d)
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{d} is a symbolic link; cosmos-tui keeps its state only in a real directory "
                              f"of yours: remove the link (rm {d}) or set COSMOS_TUI_HOME elsewhere")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{d} is not a directory; move it aside or set COSMOS_TUI_HOME elsewhere")
    if st.st_uid != os.getuid():
        raise UnsafePathError(f"{d} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); set "
                              f"COSMOS_TUI_HOME to a directory of your own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)
    return d


def check_private_file(path: Path) -> None:
    """An existing state file must be a regular file of ours; it is tightened to 0600."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} is not a regular file (a symbolic link or something else); "
                              f"remove it (rm {path}) so cosmos-tui can create its own")
    if st.st_uid != os.getuid():
        raise UnsafePathError(f"{path} belongs to uid {st.st_uid}, not to you; remove it so cosmos-tui can "
                              f"create its own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o600)


def open_private(path: Path, flags: int) -> int:
    """os.open for state files: never follows a planted symlink; new files are born 0600."""
    check_private_file(path)
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def open_append(path: Path):
    """A binary append handle on a log file (see open_private)."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")


def write_private_atomic(path: Path, text: str) -> None:
    """Write via a fresh temp file (O_EXCL: a planted file or link there is an error, not a target)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_home() -> Path:
    # prompts, specs and logs are the user's business: private from the start, and checked each start
    return ensure_private_dir(home())


def run_dir() -> Path:
    return home() / "run"


def ensure_run_dir() -> Path:
    """The socket's directory, created 0700 (and tightened if someone loosened it)."""
    ensure_home()
    return ensure_private_dir(run_dir())


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


def ensure_log_dir() -> Path:
    ensure_home()
    return ensure_private_dir(log_dir())


def job_log_path(job_id: int) -> Path:
    return log_dir() / f"job-{job_id}.log"


def engine_log_path() -> Path:
    """Engine output that belongs to no job (model loading between jobs, shutdown)."""
    return log_dir() / "engines.log"


def daemon_log_path() -> Path:
    return home() / "daemon.log"
