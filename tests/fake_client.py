"""An in-process stand-in for cosmos_tui.client.Client (the API in docs/CONTRACTS.md), built on
the daemon itself so it cannot disagree with it.

Behind the client API is a real `cosmos_tui.daemon.service.Daemon` on a real job store, answered
by the daemon's own request handlers (`framing.dispatch`, the same JSON round trip, the same
refusals). What is missing is the socket and the engine processes: engines are stubs, and jobs
only move when a test says so (`start`, `step`, `finish`, `fail`, `emit`), each turned into the
engine events a real engine would send and fed to the daemon's `on_engine_event` (so the core's
`apply` decides). `start` follows the core's `plan`: a job the daemon would not start now (queue
order, held, after, paused, GPUs busy) is refused with an AssertionError.

Every call is recorded in `calls`. `down = True` makes every call fail the way a vanished daemon
does (DaemonNotRunning). Timestamps come from `clock`. All store work happens on one thread
(sqlite connections belong to their thread; the TUI calls from worker threads).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from cosmos_tui import paths
from cosmos_tui.client import DaemonError, DaemonNotRunning, _job
from cosmos_tui.gpu import DemoBackend
from cosmos_tui.queue.core import Start, model_key, plan
from cosmos_tui.queue.resolve import gpu_fit

FAKE_PID = 4242


class StubEngine:
    """What the daemon knows of an engine, without a process: killing it is its exit."""

    def __init__(self, daemon, key: tuple, gpus: list[int], pid: int):
        self.daemon, self.key, self.gpus = daemon, key, list(gpus)
        self.pid = pid
        self.job: int | None = None
        self.cancelling = False
        self.dead = False
        self.sent: list[dict] = []

    def send(self, request: dict) -> None:
        self.sent.append(request)

    async def kill(self, grace: float = 0.0) -> None:
        if not self.dead:
            self.dead = True
            await self.daemon.on_engine_exit(self, -15)


class FakeClient:
    def __init__(self, log_dir: str | Path, gpu=None, clock=lambda: 1_700_000_000.0):
        from cosmos_tui.daemon.service import Daemon
        from cosmos_tui.store import Store

        # the directory jobs are submitted from, with the spec's default input as a project has it
        self.work = Path(log_dir).parent / "work"
        default_input = self.work / "assets" / "video2world" / "input0.jpg"
        default_input.parent.mkdir(parents=True, exist_ok=True)
        default_input.write_bytes(b"\xff\xd8\xff fake jpeg")
        self.gpu = gpu or DemoBackend(2)
        self.clock = clock
        self.down = False
        self.calls: list[tuple] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-daemon")
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._pids = itertools.count(50_000)  # per fake, so logs that name an engine read the same each run

        def make():
            paths.ensure_home()
            return Daemon(Store(paths.db_path()), gpu=self.gpu, clock=clock)

        self.daemon = self._pool.submit(make).result()
        # the daemon's thread and loop go when the fake does
        weakref.finalize(self, self._pool.shutdown, wait=False)

    # -- plumbing --

    def _on_daemon(self, fn, *args):
        """Run fn(*args) (a coroutine function or not) on the daemon's thread and loop."""
        async def call():
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            for _ in range(3):  # let what it started (an engine kill) run
                await asyncio.sleep(0)
            return result

        with self._lock:
            return self._pool.submit(lambda: self._loop.run_until_complete(call())).result()

    def _request(self, name: str, recorded: tuple, op: str, **fields):
        from cosmos_tui.daemon.framing import dispatch

        self.calls.append((name, *recorded))
        if self.down:
            raise DaemonNotRunning("no cosmos-tui daemon is running (fake daemon is down)")
        resp = json.loads(json.dumps(self._on_daemon(dispatch, self.daemon, {"op": op, **fields}), default=str))
        if not resp.get("ok"):
            raise DaemonError(resp.get("error") or f"{op} failed", resp.get("kind") or "refused")
        return resp.get("result")

    def _fix_created(self, ids: list[int]) -> None:
        # the store stamps new jobs with the wall clock; the fake's clock is the test's
        self._on_daemon(lambda: [self.daemon.store.update(i, created=self.clock()) for i in ids])

    # -- the client API --

    def ping(self) -> dict:
        return {**self._request("ping", (), "ping"), "pid": FAKE_PID}

    def submit(self, spec: dict, preset: str | None = None, priority: int = 0, after: int | None = None) -> int:
        jid = self._request("submit", (spec, preset), "submit", spec=spec, preset=preset, priority=priority,
                            after=after, cwd=str(self.work))
        self._fix_created([jid])
        return jid

    def submit_batch(self, specs: list[dict], preset: str | None = None, priority: int = 0, base=None) -> list[int]:
        ids = self._request("submit_batch", (specs, preset), "submit_batch", specs=specs, preset=preset,
                            priority=priority, base=base or {}, cwd=str(self.work))
        self._fix_created(ids)
        return ids

    def submit_batch_partial(self, specs: list[dict], preset: str | None = None, priority: int = 0, base=None) -> dict:
        got = self._request("submit_batch", (specs, preset), "submit_batch", specs=specs, preset=preset,
                            priority=priority, base=base or {}, cwd=str(self.work), partial=True)
        self._fix_created(got["ids"])
        return got

    def jobs(self, states=None) -> list[dict]:
        return [_job(j) for j in self._request("jobs", (states,), "jobs", states=list(states) if states else None)]

    def job(self, id: int) -> dict:
        return _job(self._request("job", (id,), "job", job=id))

    def events(self, id: int, after: int = 0) -> list[dict]:
        return self._request("events", (id, after), "events", job=id, after=after)

    def cancel(self, id: int) -> str:
        return self._request("cancel", (id,), "cancel", job=id)

    def retry(self, id: int) -> int:
        new = self._request("retry", (id,), "retry", job=id)
        self._fix_created([new])
        return new

    def pause(self, reason: str | None = None) -> dict:
        return self._request("pause", (reason,), "pause", reason=reason)

    def resume(self) -> dict:
        return self._request("resume", (), "resume")

    def hold(self, id: int) -> bool:
        return self._request("hold", (id,), "hold", job=id)

    def release(self, id: int) -> bool:
        return self._request("release", (id,), "release", job=id)

    def move(self, id: int, offset: int = 0, to: int | None = None) -> int:
        return self._request("move", (id, offset), "move", job=id, offset=offset, to=to)

    def remove(self, ids: list[int]) -> list[int]:
        return self._request("remove", (list(ids),), "remove", jobs=list(ids))

    def clean(self, failed_only: bool = False) -> list[int]:
        return self._request("clean", (failed_only,), "clean", failed_only=failed_only)

    def edit(self, id: int, changes: dict) -> dict:
        return _job(self._request("edit", (id, changes), "edit", job=id, set=changes))

    def queue(self) -> dict:
        return self._request("queue", (), "queue")

    def gpus(self) -> list[dict]:
        return self._request("gpus", (), "gpus")

    def log_path(self, id: int) -> str:
        return self._request("log_path", (id,), "log_path", job=id)

    def shutdown(self, force: bool = False) -> str:
        # the real one stops the daemon's process; the fake's daemon has none to stop
        self.calls.append(("shutdown", force))
        return "stopping"

    # -- what the tests drive: the engine's side --

    def log(self, id: int, text: str) -> None:
        """A line in the job's log file, as the engine's stderr writes it there (no time stamp)."""
        self._on_daemon(self.daemon._append, paths.job_log_path(id), text)

    def emit(self, id: int, event: str, **fields) -> None:
        """An engine event of job `id`'s engine, as it would arrive on the engine's stdout."""
        def deliver():
            eng = next((e for e in self.daemon.engines if e.job == id), None)
            if eng is None:
                raise AssertionError(f"job {id} is not running: no engine would send its {event!r} event")
            self.daemon.on_engine_event(eng, {"event": event, "job": id, "t": self.clock(), **fields})

        self._on_daemon(deliver)

    def start(self, id: int, gpus=None) -> None:
        """Start job `id` as the daemon's scheduler would (on `gpus`, else where plan() puts it)."""
        self._on_daemon(self._start, id, None if gpus is None else tuple(gpus))
        row = self._on_daemon(self.daemon.store.job, id)
        self.emit(id, "started", mode=row["mode"], spec=row["spec"], engine_pid=row["engine_pid"])

    def _start(self, id: int, gpus: tuple | None) -> None:
        d = self.daemon
        states = {j["id"]: j["state"] for j in d.store.jobs()}
        queued = d.store.queued()
        decisions = plan(queued, list(range(d.gpu_count)), d.engine_views(), paused=d.paused,
                         done={i for i, s in states.items() if s == "done"}, fits=gpu_fit(d.gpu_totals))
        start = next((x for x in decisions if isinstance(x, Start) and x.job_id == id), None)
        if start is None:
            raise AssertionError(f"the daemon would not start job {id} now (state {states.get(id)}, paused "
                                 f"{d.paused}); its plan is {decisions}")
        row = next(j for j in queued if j["id"] == id)
        gpus = gpus or start.gpus
        busy = {g for e in d.engines if e.job is not None for g in e.gpus}
        if len(gpus) != row["gpus_wanted"] or set(gpus) & busy:
            raise AssertionError(f"job {id} wants {row['gpus_wanted']} free GPU(s); {gpus} are not (busy: {busy})")
        key = model_key(row["spec"])
        eng = next((e for e in d.engines if e.job is None and e.key == key and tuple(e.gpus) == tuple(gpus)), None)
        if eng is None:
            for idle in [e for e in d.engines if e.job is None and set(e.gpus) & set(gpus)]:
                d.engines.remove(idle)  # evicted, as _carry_out does
            eng = StubEngine(d, key, list(gpus), next(self._pids))
            d.engines.append(eng)
        d.start_job(row, eng)

    def step(self, id: int, seconds: float = 0.5, memory: int | None = None, chunk=None, generation=None,
             total: int | None = None) -> None:
        row = self._on_daemon(self.daemon.store.job, id)
        total = total or row["total_steps"] or row["spec"].get("num_steps", 35)
        fields = {"step": (row["step"] or 0) + 1, "total": total, "seconds": seconds}
        fields.update({k: v for k, v in (("chunk", chunk), ("generation", generation)) if v is not None})
        self.emit(id, "step", **fields)
        if memory is not None:
            self.emit(id, "memory", allocated=memory, reserved=memory, peak=memory, device=0)

    def finish(self, id: int, outputs: list[str] = (), kinds: list[str] | None = None) -> None:
        for i, p in enumerate(outputs):
            self.emit(id, "output", path=p, kind=kinds[i] if kinds else "video")
        self.emit(id, "finished", outputs=list(outputs), seconds=1.0)

    def fail(self, id: int, error: str, reason: str = "crash") -> None:
        self.emit(id, "failed", error=error, reason=reason)

    def crash_daemon(self) -> None:
        """The daemon killed and started again: running jobs become interrupted, the queue pauses."""
        def crash():
            self.daemon.engines.clear()
            self.daemon.recover()

        self._on_daemon(crash)

    def set_outputs(self, id: int, outputs: list[dict]) -> None:
        """Replace a finished job's outputs (scaffolding: a test pointing a job at a real video)."""
        def put():
            with self.daemon.store._tx():
                self.daemon.store.db.execute("DELETE FROM outputs WHERE job=?", (id,))
            for o in outputs:
                self.daemon.store.add_output(id, o["path"], o.get("kind", "video"))

        self._on_daemon(put)


def screen_text(app) -> str:
    """The current screen of a running app as plain text: what a user reads. Used for assertions
    and text snapshots (readable diffs; colour is left to the SVG snapshots)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    lines = console.export_text(styles=False).splitlines()
    return "\n".join(line.rstrip() for line in lines[:height])
