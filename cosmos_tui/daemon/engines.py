"""Engine processes: spawn one in a process group of its own, read what it writes, kill the group.

Nothing here knows about jobs' rules; the service decides what an event or an exit means.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Awaitable, Callable

STREAM_LIMIT = 64 * 1024 * 1024  # a batch request or an engine's critic answers can be long lines
TERM_GRACE_S = 5.0
PR_SET_PDEATHSIG = 1


def _package_root(name: str) -> str:
    found = importlib.util.find_spec(name)
    return str(Path(list(found.submodule_search_locations)[0]).parent)


def engine_command(num_gpus: int) -> list[str]:
    override = os.environ.get("COSMOS_TUI_ENGINE_CMD")
    if override:
        return shlex.split(override)
    if num_gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_gpus}",
                "-m", "engine.server"]
    return [sys.executable, "-m", "engine.server"]


def _with_pythonpath(env: dict, root: str) -> dict:
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


def _die_with_parent(parent: int):
    """preexec_fn for engines: the kernel SIGKILLs the child when the daemon dies, however it dies
    (an engine that never reads its stdin would otherwise hold its GPUs with no daemon)."""

    def set_pdeathsig() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the daemon died before the prctl took effect
            os._exit(1)

    return set_pdeathsig


def is_our_engine(pid: int, home: Path) -> bool:
    """True when `pid` is an engine started for this home (left over by a daemon that died)."""
    marker = f"COSMOS_TUI_ENGINE_OF={home}".encode()
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Engine:
    """One engine process group and the job it is running, if any."""

    def __init__(self, key: tuple, gpus: list[int], proc: asyncio.subprocess.Process):
        self.key = key
        self.gpus = gpus
        self.proc = proc
        self.pid = proc.pid  # also its process group id: engines start in a session of their own
        self.job: int | None = None
        self.cancelling = False
        self.dead = False
        self.reader: asyncio.Task | None = None

    def send(self, request: dict) -> None:
        if self.proc.stdin is None or self.proc.stdin.is_closing():
            raise ConnectionError("engine stdin is closed")
        self.proc.stdin.write((json.dumps(request) + "\n").encode())

    def signal_group(self, sig: int) -> None:
        kill_group(self.pid, sig)

    async def kill(self, grace: float = TERM_GRACE_S) -> None:
        """SIGTERM the whole group (torchrun's workers, a job's helpers), SIGKILL what is left."""
        self.signal_group(signal.SIGTERM)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)
        # stragglers that ignored SIGTERM, or children whose parent already exited
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)

    async def wait_exit(self) -> int | None:
        """The leader's exit status, once the reader has drained what it wrote before dying
        (bounded: a surviving child holding the pipe open must not stall us); then the rest of
        the group is killed so nothing lingers on the GPUs."""
        rc = await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.reader), 2.0)
        self.dead = True
        self.signal_group(signal.SIGKILL)
        return rc


async def spawn(key: tuple, gpus: list[int], num_gpus: int, home: Path) -> Engine:
    """Start an engine on `gpus` (CUDA_VISIBLE_DEVICES), in a new session, dying with us."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env["COSMOS_TUI_ENGINE_OF"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    _with_pythonpath(env, _package_root("engine"))
    cmd = engine_command(num_gpus)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        preexec_fn=_die_with_parent(os.getpid()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=env,
        cwd=str(home),
        limit=STREAM_LIMIT,
    )
    return Engine(key, gpus, proc)


async def read_events(eng: Engine, on_event: Callable[[dict], None], on_text: Callable[[str], None]) -> None:
    """Engine stdout: each JSON object line to `on_event`, anything else to `on_text`."""
    stream = eng.proc.stdout
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line longer than STREAM_LIMIT
            on_text("engine wrote an over-long line; dropped")
            continue
        if not raw:
            return
        line = raw.decode(errors="replace").strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
            if not isinstance(ev, dict):
                raise ValueError
        except ValueError:
            on_text(f"[engine stdout] {line}")
            continue
        on_event(ev)


async def read_stderr(eng: Engine, on_line: Callable[[str], None]) -> None:
    while True:
        try:
            raw = await eng.proc.stderr.readline()
        except ValueError:
            continue
        if not raw:
            return
        on_line(raw.decode(errors="replace").rstrip("\n"))


def start_readers(eng: Engine, on_event, on_text, on_stderr, on_exit: Callable[[int | None], Awaitable[None]]) -> None:
    eng.reader = asyncio.create_task(read_events(eng, on_event, on_text))
    asyncio.create_task(read_stderr(eng, on_stderr))

    async def exit_watcher() -> None:
        await on_exit(await eng.wait_exit())

    asyncio.create_task(exit_watcher())
