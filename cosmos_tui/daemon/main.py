"""Process entry: the single-instance lock, daemonising (--detach) and serving until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import signal
import sys
import traceback

from cosmos_tui import paths
from cosmos_tui.daemon.engines import STREAM_LIMIT
from cosmos_tui.daemon.framing import handle_client
from cosmos_tui.daemon.linger import linger_warning
from cosmos_tui.daemon.log import log
from cosmos_tui.daemon.notify import HookConfigError, load_hook
from cosmos_tui.daemon.service import Daemon
from cosmos_tui.store import Store, StoreError


async def _serve(ready_fd: int | None) -> int:
    db = paths.db_path()
    missing_db = not db.exists() and paths.log_dir().is_dir() and any(paths.log_dir().glob("job-*.log"))
    try:
        store = Store(db)
    except (StoreError, paths.UnsafePathError) as err:
        _report(ready_fd, f"error: {err}")
        return 2
    daemon = Daemon(store)
    store.on_warning = daemon.warn
    if missing_db:
        daemon.warn(f"the job database {db} was missing at start although job logs exist in {paths.log_dir()}; "
                     f"the queue starts empty; restore the file from a backup (with the daemon stopped) to get "
                     f"the old jobs back")
    try:
        load_hook()
    except HookConfigError as err:  # told now, not first when a job ends; the daemon runs without it
        daemon.warn(str(err))
    warning = linger_warning()
    if warning:
        daemon.warnings.append(warning)
        log("warning: " + warning)
    daemon.recover()
    run = paths.ensure_run_dir()
    sock = paths.socket_path()
    paths.check_socket_path(sock)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # stale: we hold the lock, so no live daemon owns it
    old = os.umask(0o177)  # the socket is born 0600; no window where others could connect
    try:
        server = await asyncio.start_unix_server(functools.partial(handle_client, daemon), path=str(sock), limit=STREAM_LIMIT)
    finally:
        os.umask(old)
    os.chmod(sock, 0o600)
    os.chmod(run, 0o700)
    paths.write_private_atomic(paths.pid_path(), f"{os.getpid()}\n")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(
            daemon.shutdown("the daemon was stopped (signal) while this job ran; retry it to run it again")))
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log(f"listening on {sock} (GPUs: {daemon.gpu_count}, backend {getattr(daemon.gpu, 'kind', '?')})")
    _report(ready_fd, "ok\n" + "\n".join(daemon.warnings))
    scheduler = asyncio.create_task(daemon.schedule_loop())
    watchdog = asyncio.create_task(daemon.watch_store())
    daemon.wake.set()
    await daemon.stopped.wait()
    server.close()
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    with contextlib.suppress(FileNotFoundError):
        paths.pid_path().unlink()
    scheduler.cancel()
    watchdog.cancel()
    store.close()
    log("stopped")
    return 0


def _report(fd: int | None, message: str) -> None:
    if fd is None:
        if message.startswith("error"):
            print(message, file=sys.stderr)
        return
    with contextlib.suppress(OSError):
        os.write(fd, message.encode())
        os.close(fd)


def _take_lock():
    paths.ensure_run_dir()
    f = os.fdopen(paths.open_private(paths.lock_path(), os.O_RDWR | os.O_CREAT), "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    detach = "--detach" in argv
    try:
        paths.ensure_home()
        paths.ensure_run_dir()
    except paths.UnsafePathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ready_fd = None
    if detach:
        r, w = os.pipe()
        if os.fork() > 0:
            # the short-lived parent: relay the daemon's start verdict to whoever launched us
            os.close(w)
            chunks = []
            while True:
                b = os.read(r, 65536)
                if not b:
                    break
                chunks.append(b)
            msg = b"".join(chunks).decode(errors="replace")
            if msg.startswith("ok"):
                rest = msg[2:].strip()
                if rest:
                    print(rest)
                os._exit(0)
            sys.stderr.write((msg or f"the daemon exited while starting; see {paths.daemon_log_path()}") + "\n")
            os._exit(2)
        os.close(r)
        os.setsid()  # no controlling terminal, no SIGHUP from a dying SSH session or tmux
        log = paths.open_private(paths.daemon_log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        os.chdir("/")
        ready_fd = w
    lock = _take_lock()
    if lock is None:
        pid = paths.pid_path().read_text().strip() if paths.pid_path().exists() else "?"
        _report(ready_fd, f"ok\nalready running (pid {pid})")
        if ready_fd is None:
            print(f"a cosmos-tui daemon is already running (pid {pid})", file=sys.stderr)
        return 0
    try:
        return asyncio.run(_serve(ready_fd))
    except Exception as err:
        log("fatal:\n" + traceback.format_exc())
        _report(ready_fd, f"error: the daemon failed to start: {err}")
        return 1
