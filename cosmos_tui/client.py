"""The daemon's socket protocol, for the CLI and the TUI alike.

One short connection per call, so a Client can be shared by threads (the TUI calls it from worker
threads); the TUI polls `jobs()` / `events()`.

    c = Client.connect()            # starts the daemon if none is running
    jid = c.submit({"prompt": "a cat"}, preset="tiny-cpu")
    c.job(jid)["state"]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cosmos_tui import paths


class DaemonError(RuntimeError):
    """The daemon refused a request; the message is its one-sentence reason. `kind` is the
    daemon's classification (cosmos_tui/daemon/framing.py): "refused", "unknown_op", "malformed",
    "internal"; match on it (or on the subclasses), never on the sentence."""

    def __init__(self, message: str, kind: str = "refused"):
        super().__init__(message)
        self.kind = kind


class DaemonNotRunning(DaemonError):
    """Nothing listens on the socket."""

    def __init__(self, message: str, kind: str = "not_running"):
        super().__init__(message, kind)


class DaemonGone(DaemonNotRunning):
    """The daemon went away (or hung up) before answering: it is stopping or died."""

    def __init__(self, message: str, kind: str = "gone"):
        super().__init__(message, kind)


class Client:
    def __init__(self, socket_path: str | os.PathLike | None = None, timeout: float = 120.0):
        self.socket_path = Path(socket_path) if socket_path else paths.socket_path()
        self.timeout = timeout

    @classmethod
    def connect(cls, autostart: bool = True, socket_path: str | os.PathLike | None = None) -> "Client":
        """A client whose daemon answers; starts one first when `autostart` and none is running."""
        client = cls(socket_path)
        try:
            client.ping()
            return client
        except DaemonNotRunning:
            if not autostart:
                raise
        start_daemon()
        client.ping()
        return client

    # -- transport --

    def _check_owner(self) -> None:
        """A socket (or its directory) of another user, or behind a symlink, could be someone
        catching our submits: refuse to talk to it."""
        import stat

        for p in (self.socket_path.parent, self.socket_path):
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                return  # nothing there: connect() says the daemon is not running
            if stat.S_ISLNK(st.st_mode):
                raise DaemonError(f"{p} is a symbolic link, which cosmos-tui never makes; someone may be "
                                  f"intercepting the daemon's socket: remove it and start the daemon again")
            if st.st_uid != os.getuid():
                raise DaemonError(f"{p} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); it is not "
                                  f"your daemon's: remove it or set COSMOS_TUI_HOME to a directory of your own")

    def _open(self, timeout: float | None) -> socket.socket:
        self._check_owner()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            s.close()
            raise DaemonNotRunning(
                f"no cosmos-tui daemon is running (socket {self.socket_path}: {err.strerror}); "
                f"start one with `cosmos-tui daemon start`"
            ) from None
        return s

    def request(self, op: str, **fields):
        """Send one request and return its result, or raise DaemonError with the daemon's message."""
        s = self._open(self.timeout)
        try:
            s.sendall((json.dumps({"op": op, **fields}) + "\n").encode())
            with s.makefile("rb") as f:
                line = f.readline()
        except (ConnectionResetError, BrokenPipeError):
            raise DaemonGone(f"the daemon went away while answering {op!r} (it may be stopping)") from None
        finally:
            s.close()
        if not line:
            raise DaemonGone(f"the daemon closed the connection without answering {op!r}")
        try:
            resp = json.loads(line)
        except ValueError:
            raise DaemonError(f"the daemon answered {op!r} with something that is not JSON: {line[:80]!r}",
                              "malformed") from None
        if not isinstance(resp, dict) or not resp.get("ok"):
            error = resp.get("error") if isinstance(resp, dict) else None
            raise DaemonError(error or f"{op} failed", (resp.get("kind") if isinstance(resp, dict) else None) or "refused")
        return resp.get("result")

    # -- the API --

    def ping(self) -> dict:
        return self.request("ping")

    def submit(self, spec: dict, preset: str | None = None, priority: int = 0, after: int | None = None) -> int:
        """`after`: the job waits until that job is done, and fails ("dependency") if it fails or is
        cancelled."""
        return self.request("submit", spec=spec, preset=preset, priority=priority, cwd=os.getcwd(), after=after)

    def submit_batch(self, specs: list[dict], preset: str | None = None, priority: int = 0,
                     base: dict | None = None) -> list[int]:
        """One job per item of `specs` (each merged over `base` over the preset); all or none."""
        return self.request("submit_batch", specs=specs, preset=preset, priority=priority, base=base or {},
                            cwd=os.getcwd())

    def submit_batch_partial(self, specs: list[dict], preset: str | None = None, priority: int = 0,
                             base: dict | None = None) -> dict:
        """Queue the good items, refuse the bad: {"ids": [...], "refused": [{"item": n, "error"}]}."""
        return self.request("submit_batch", specs=specs, preset=preset, priority=priority, base=base or {},
                            cwd=os.getcwd(), partial=True)

    def jobs(self, states: list[str] | None = None) -> list[dict]:
        return [_job(j) for j in self.request("jobs", states=list(states) if states else None) or []]

    def job(self, id: int) -> dict:
        return _job(self.request("job", job=id))

    def events(self, id: int, after: int = 0) -> list[dict]:
        return self.request("events", job=id, after=after)

    def cancel(self, id: int) -> str:
        return self.request("cancel", job=id)

    def retry(self, id: int) -> int:
        return self.request("retry", job=id)

    def pause(self, reason: str | None = None) -> dict:
        return self.request("pause", reason=reason)

    def resume(self) -> dict:
        return self.request("resume")

    def hold(self, id: int) -> bool:
        """Keep a queued job in its place but pass it over until `release`; returns True."""
        return self.request("hold", job=id)

    def release(self, id: int) -> bool:
        """Let a held job run again; returns False (it is no longer held)."""
        return self.request("release", job=id)

    def move(self, id: int, offset: int = 0, to: int | None = None) -> int:
        """Move a queued job `offset` places (negative = sooner) or to 1-based place `to`; returns
        its new place."""
        return self.request("move", job=id, offset=offset, to=to)

    def remove(self, ids: list[int]) -> list[int]:
        """Forget finished jobs (all of `ids` or none; their videos stay on disk); returns the ids."""
        return self.request("remove", jobs=list(ids))

    def clean(self, failed_only: bool = False) -> list[int]:
        """Remove every finished job, or only the failed and interrupted ones; returns the ids."""
        return self.request("clean", failed_only=failed_only)

    def edit(self, id: int, changes: dict) -> dict:
        """Change spec fields of a queued (or held) job, checked like a submit; returns the job."""
        return _job(self.request("edit", job=id, set=changes))

    def queue(self) -> dict:
        return self.request("queue")

    def gpus(self) -> list[dict]:
        return self.request("gpus")

    def log_path(self, id: int) -> str:
        return self.request("log_path", job=id)

    def shutdown(self, force: bool = False) -> str:
        return self.request("shutdown", force=force)


def _job(data) -> dict:
    """A job answer checked against the wire type, with every field present (defaults for the
    ones an older daemon does not send)."""
    from cosmos_tui.queue.job import Job, WireError

    try:
        return Job.from_wire(data).to_wire()
    except WireError as err:
        raise DaemonError(str(err), "malformed") from None


def start_daemon(timeout: float = 60.0) -> list[str]:
    """Start the detached daemon (a no-op if one runs) and wait until it answers. Returns the
    warnings it printed (e.g. how to enable lingering). Raises DaemonError with its reason if it
    could not start (e.g. a damaged job database)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    try:
        out = subprocess.run(
            [sys.executable, "-m", "cosmos_tui.daemon", "--detach"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise DaemonError(f"the daemon did not start within {timeout:.0f} s; see {paths.daemon_log_path()}") from None
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip() or f"exit code {out.returncode}"
        raise DaemonError(msg.removeprefix("error: "))
    client = Client()
    deadline = time.time() + timeout
    while True:
        try:
            client.ping()
            break
        except DaemonNotRunning:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    return [line for line in out.stdout.splitlines() if line.strip()]
