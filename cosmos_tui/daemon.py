"""The queue daemon: one per user, detached from any terminal, the only writer of the job store.

It listens on a Unix socket (0600, in a 0700 directory) for JSON-line requests, schedules queued
jobs onto free GPUs, runs each on an engine subprocess (`python -m engine.server`, or torchrun for
several GPUs) and stores every event the engine reports. Idle engines stay up, so the next job with
the same model starts warm.

Faults it is built for:
  * the daemon killed mid-job: on restart the job is `interrupted`, the queue paused (not auto-run),
    and the job's output directory left alone so a retry of a long video resumes from its chunks;
  * an engine crash or CUDA out-of-memory: that job fails with the reason, OOM pauses the queue,
    other jobs are untouched;
  * a bad request: a one-sentence error back, the daemon keeps going.

Socket protocol: one JSON object per line each way. A request is {"op": ..., ...}; the response is
{"ok": true, "result": ...} or {"ok": false, "error": "one sentence"}. `watch` answers once, then
streams event objects: engine events (engine/events.py) and the daemon's own
{"event": "state", "job", "state"} and {"event": "queue", "paused", "reason"}.

Run `python -m cosmos_tui.daemon --detach` (what the client's autostart does) or in the foreground
without the flag (logs to stderr; good for a systemd user unit).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import glob
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from cosmos_tui import paths
from cosmos_tui.executors.slurm import SlurmExecutor
from cosmos_tui.queue.core import (MODEL_KEY_FIELDS, EngineView, Evict, Start, dependency_failed, model_key, plan,
                                   waiting_on)
from cosmos_tui.queue.resolve import SubmitError, check_inputs, check_save_path, resolve_spec
from cosmos_tui.queue.state import TransitionError
from cosmos_tui.store import TERMINAL, Store, StoreError

PROTOCOL_VERSION = 1
STREAM_LIMIT = 64 * 1024 * 1024  # a batch request or an engine's critic answers can be long lines
TERM_GRACE_S = 5.0


class RequestError(ValueError):
    """A request the daemon can't honour; the message goes back to the client as is."""


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [daemon {os.getpid()}] {message}", file=sys.stderr, flush=True)


# -- systemd-logind: will the user's processes survive logout? --

LOGIND_CONF = [
    "/etc/systemd/logind.conf",
    "/etc/systemd/logind.conf.d/*.conf",
    "/run/systemd/logind.conf.d/*.conf",
    "/usr/lib/systemd/logind.conf.d/*.conf",
]


def _logind_setting(key: str, patterns: list[str]) -> str | None:
    value = None
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                lines = Path(path).read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                line = line.strip()
                if line.startswith((";", "#")) or "=" not in line:
                    continue
                k, _, v = line.partition("=")
                if k.strip() == key:
                    value = v.strip()  # later files and lines win, as in systemd
    return value


def linger_warning(user: str | None = None, conf_patterns: list[str] | None = None, linger: str | None = None) -> str | None:
    """A one-line warning when logind will kill this user's processes at logout, else None."""
    user = user or getpass.getuser()
    patterns = conf_patterns if conf_patterns is not None else LOGIND_CONF
    kill = (_logind_setting("KillUserProcesses", patterns) or "no").lower()
    if kill not in ("yes", "true", "1", "on"):
        return None
    excluded = (_logind_setting("KillExcludeUsers", patterns) or "root").split()
    if user in excluded:
        return None
    if linger is None:
        if os.path.exists(f"/var/lib/systemd/linger/{user}"):
            linger = "yes"
        else:
            try:
                out = subprocess.run(
                    ["loginctl", "show-user", user, "-p", "Linger", "--value"],
                    capture_output=True, text=True, timeout=3,
                )
                linger = out.stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                linger = ""
    if linger == "yes":
        return None
    return (
        f"systemd-logind kills {user}'s processes at logout (KillUserProcesses=yes) and lingering is off, "
        f"so queued jobs would stop when you log out; run `loginctl enable-linger {user}` once to fix it"
    )


# -- engines --


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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def kill(self, grace: float = TERM_GRACE_S) -> None:
        """SIGTERM the whole group (torchrun's workers, a job's helpers), SIGKILL what is left."""
        self.signal_group(signal.SIGTERM)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)
        # stragglers that ignored SIGTERM, or children whose parent already exited
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)


PR_SET_PDEATHSIG = 1


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


def _is_our_engine(pid: int, home: Path) -> bool:
    marker = f"COSMOS_TUI_ENGINE_OF={home}".encode()
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


# -- the daemon --


class Daemon:
    def __init__(self, store: Store, gpu=None):
        from cosmos_tui.gpu import gpu_backend

        self.home = paths.home()
        self.store = store
        self.gpu = gpu or gpu_backend()
        self.gpu_count = len(self.gpu.list())
        self.engines: list[Engine] = []
        self.watchers: set[asyncio.Queue] = set()
        self.wake = asyncio.Event()
        self.stopped = asyncio.Event()
        self.warnings: list[str] = []
        # state changes the store could not take (disk full): shown to clients until stored
        self.unsaved: dict[int, dict] = {}
        self.started = time.time()
        # jobs whose spec says executor = "slurm" run on a cluster instead of a local engine
        self.slurm = SlurmExecutor(self)
        paths.ensure_log_dir()

    # -- start-up and shutdown --

    def recover(self) -> None:
        interrupted = self.store.recover_interrupted()
        for job in interrupted:
            pid = job.get("engine_pid")
            if pid and _is_our_engine(pid, self.home):
                _log(f"killing the engine group {pid} left over from job {job['id']}")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            self._job_log(job["id"], "the daemon stopped while this job ran: marked interrupted")
        self.slurm.recover(interrupted)
        if interrupted:
            ids = ", ".join(str(j["id"]) for j in interrupted)
            self.set_paused(True, f"job(s) {ids} were interrupted when the daemon stopped; retry them, then resume")
            _log(f"interrupted on restart: {ids}; queue paused")

    @property
    def paused(self) -> bool:
        return bool(self.store.get_meta("paused", False))

    def set_paused(self, paused: bool, reason: str | None = None) -> None:
        self.store.set_meta("paused", paused)
        self.store.set_meta("pause_reason", reason if paused else None)
        self.broadcast({"event": "queue", "job": None, "t": time.time(), "paused": paused, "reason": reason})
        if not paused:
            self.wake.set()

    async def shutdown(self, interrupted_reason: str) -> None:
        await self.slurm.shutdown(interrupted_reason)
        for eng in list(self.engines):
            if eng.job is not None:
                job = eng.job
                eng.job = None
                self.store.update(job, state="interrupted", finished=time.time(), reason="interrupted",
                                  error=interrupted_reason)
                self._job_log(job, interrupted_reason)
                self.broadcast_state(job, "interrupted")
        for eng in list(self.engines):
            await eng.kill(grace=2.0)
        self.stopped.set()

    # -- scheduling --

    async def schedule_loop(self) -> None:
        while not self.stopped.is_set():
            await self.wake.wait()
            self.wake.clear()
            try:
                await self.schedule()
            except Exception:
                _log("scheduler error:\n" + traceback.format_exc())

    async def watch_store(self, interval: float = 2.0) -> None:
        """Between writes, too: a deleted jobs.db is noticed while the queue is idle."""
        while not self.stopped.is_set():
            await asyncio.sleep(interval)
            try:
                self.store.check_file()
            except Exception:
                _log("checking the job database failed:\n" + traceback.format_exc())

    def engine_views(self) -> list[EngineView]:
        return [EngineView(e.pid, e.key, tuple(e.gpus), e.job, e.dead) for e in self.engines]

    async def schedule(self) -> None:
        """Carry out plan()'s decisions. An engine that cannot be spawned fails its job and the
        rest is planned again: the GPUs it would have taken are free for the jobs behind it."""
        while not (self.paused or self.stopped.is_set()):
            # a job whose failure the store could not take is over all the same: planning it again
            # would spawn (and fail) forever
            queued = [j for j in self.store.queued() if self.unsaved.get(j["id"], {}).get("state", "queued") == "queued"]
            states = {j["id"]: j["state"] for j in self.store.jobs()}
            # to a fixed point: a chain a <- b <- c fails as a whole, not one link per wake-up
            while failing := [j for j in queued if dependency_failed(j, states)]:
                for j in failing:
                    self.fail_job(j["id"], f"job {j['after']}, which this job runs after, is "
                                           f"{states[j['after']]}", "dependency")
                    states[j["id"]] = "failed"
                    queued.remove(j)
            done = {i for i, st in states.items() if st == "done"}
            # Slurm jobs go to the cluster as soon as they may start; plan() places the rest on local GPUs
            queued = await self.slurm.dispatch(queued, lambda j: waiting_on(j, done) is None)
            decisions = plan(queued, list(range(self.gpu_count)), self.engine_views(), done=done)
            if not await self._carry_out(decisions, {j["id"]: j for j in queued}):
                return

    async def _carry_out(self, decisions: list[Start | Evict], jobs: dict[int, dict]) -> bool:
        """True when a decision could not be carried out and the queue must be planned again."""
        by_pid = {e.pid: e for e in self.engines}
        waited = False
        for d in decisions:
            if isinstance(d, Evict):
                e = by_pid.get(d.engine_id)
                if e is not None and e in self.engines:
                    _log(f"stopping idle engine {e.pid} on GPUs {e.gpus} for another model")
                    self.engines.remove(e)
                    await e.kill(grace=2.0)
                    waited = True
                continue
            job = jobs[d.job_id]
            if waited and (self.store.job(d.job_id) or {}).get("state") != "queued":
                return True  # cancelled (or the queue changed) while an engine was being stopped
            if d.reuse_engine is not None:
                eng = by_pid[d.reuse_engine]
                if eng.dead or eng not in self.engines:
                    return True  # it exited since the plan was made
            else:
                try:
                    eng = await self.spawn_engine(d.engine_key, list(d.gpus), job["gpus_wanted"])
                except OSError as err:
                    self.fail_job(job["id"], f"could not start the engine: {err}", "crash")
                    return True
            self.start_job(job, eng)
        return False

    async def spawn_engine(self, key: tuple, gpus: list[int], num_gpus: int) -> Engine:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        env["COSMOS_TUI_ENGINE_OF"] = str(self.home)
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
            cwd=str(self.home),
            limit=STREAM_LIMIT,
        )
        eng = Engine(key, gpus, proc)
        self.engines.append(eng)
        _log(f"engine {eng.pid} started on GPUs {gpus}: {' '.join(cmd)}")
        eng.reader = asyncio.create_task(self._read_events(eng))
        asyncio.create_task(self._read_stderr(eng))
        asyncio.create_task(self._watch_exit(eng))
        return eng

    def start_job(self, job: dict, eng: Engine) -> None:
        jid = job["id"]
        eng.cancelling = False
        # stored before it is sent: a job that could not be marked running must not run unrecorded
        self.store.update(jid, state="running", started=time.time(), gpus=eng.gpus, engine_pid=eng.pid,
                          step=None, total_steps=None, error=None, reason=None)
        eng.job = jid
        self._job_log(jid, f"job {jid} starts on GPUs {eng.gpus} (engine pid {eng.pid})")
        self.broadcast_state(jid, "running")
        try:
            eng.send({"op": "run", "job": jid, "spec": job["spec"], "cwd": job.get("cwd")})
        except (ConnectionError, OSError) as err:
            # the exit watcher sees the dead engine and fails the job with the reason
            _log(f"could not send job {jid} to engine {eng.pid}: {err}")

    # -- engine output --

    async def _read_events(self, eng: Engine) -> None:
        stream = eng.proc.stdout
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than STREAM_LIMIT
                self._job_log(eng.job, "engine wrote an over-long line; dropped")
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
                self._job_log(eng.job, f"[engine stdout] {line}")
                continue
            try:
                self.on_engine_event(eng, ev)
            except Exception:
                _log("error handling an engine event:\n" + traceback.format_exc())

    async def _read_stderr(self, eng: Engine) -> None:
        while True:
            try:
                raw = await eng.proc.stderr.readline()
            except ValueError:
                continue
            if not raw:
                return
            text = raw.decode(errors="replace").rstrip("\n")
            if eng.job is not None:
                self._append(paths.job_log_path(eng.job), text)
            else:
                self._append(paths.engine_log_path(), f"[engine {eng.pid}] {text}")

    async def _watch_exit(self, eng: Engine) -> None:
        rc = await eng.proc.wait()
        # let the reader drain what the engine wrote before it died (bounded: a surviving child
        # holding the pipe open must not stall us)
        if eng.reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(eng.reader), 2.0)
        eng.dead = True
        if eng in self.engines:
            self.engines.remove(eng)
        # the leader is gone; make sure nothing of its group lingers on the GPUs
        eng.signal_group(signal.SIGKILL)
        how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
        _log(f"engine {eng.pid} {how}")
        if eng.job is not None:
            job, eng.job = eng.job, None
            if eng.cancelling:
                self.finish_cancelled(job)
            else:
                self.fail_job(job, f"the engine {how} while running this job; see the job log", "crash")
        self.wake.set()

    def on_engine_event(self, eng: Engine, ev: dict) -> None:
        kind = ev.get("event")
        if kind in ("ready", "pong"):
            return
        job = ev.get("job")
        if job is None or job != eng.job:
            self._append(paths.engine_log_path(), f"[engine {eng.pid}] stray event {json.dumps(ev)[:300]}")
            return
        if eng.cancelling and kind in ("finished", "failed"):
            return  # the kill decides: cancelled
        ev.setdefault("t", time.time())
        try:
            self._record_event(job, kind, ev)
        except Exception as err:
            # a job whose events can't be stored must not hold its GPUs forever: stop it, say why
            _log(f"could not record a {kind!r} event of job {job}:\n" + traceback.format_exc())
            self._abandon_job(eng, job, f"could not record the engine's {kind!r} event ({type(err).__name__}: "
                                        f"{err}); check the disk under {self.home}, then retry the job")
            return
        self.broadcast(ev)
        if kind == "finished":
            eng.job = None
            self._set_state(job, "done", finished=time.time())
            self.wake.set()
        elif kind == "failed":
            eng.job = None
            reason = ev.get("reason") or "crash"
            if reason == "cancelled":
                self.finish_cancelled(job)
            else:
                self.fail_job(job, ev.get("error") or "failed", reason, stored=True)
            if reason == "oom":
                # a fresh process gives the next job the whole GPU back, fragmentation included
                self.engines.remove(eng)
                asyncio.create_task(eng.kill(grace=2.0))
            self.wake.set()

    def _record_event(self, job: int, kind: str, ev: dict) -> None:
        self.store.add_event(job, ev)
        self._job_log(job, _describe(ev))
        cols: dict = {}
        if kind == "step":
            row = self.store.job(job)
            cols.update(step=ev.get("step"), total_steps=ev.get("total"))
            if ev.get("chunk") is not None:
                cols["chunk"] = ev["chunk"]
            if ev.get("generation") is not None:
                cols["generation"] = ev["generation"]
            seconds = ev.get("seconds")
            if isinstance(seconds, (int, float)) and seconds >= 0:
                prev = row.get("sec_per_step")
                cols["sec_per_step"] = seconds if prev is None else 0.7 * prev + 0.3 * seconds
        elif kind == "chunk":
            cols.update(chunk=ev.get("chunk"), num_chunks=ev.get("total"))
        elif kind == "generation":
            cols.update(generation=ev.get("generation"), num_generations=ev.get("total"))
        elif kind == "memory":
            peak = ev.get("peak")
            if isinstance(peak, (int, float)):
                row = self.store.job(job)
                cols["peak_mem"] = max(int(peak), row.get("peak_mem") or 0)
        elif kind == "output" and ev.get("path"):
            self.store.add_output(job, str(ev["path"]), ev.get("kind") or "video")
        elif kind == "critic":
            self.store.add_critic(job, ev)
        elif kind == "finished":
            for p in ev.get("outputs") or []:
                self.store.add_output(job, str(p), "video")
        if cols:
            self.store.update(job, **cols)

    def _abandon_job(self, eng: Engine, job: int, error: str) -> None:
        eng.job = None
        if eng in self.engines:
            self.engines.remove(eng)
        asyncio.create_task(eng.kill(grace=2.0))
        self.fail_job(job, error, "crash")
        self.wake.set()

    def _set_state(self, job: int, state: str, **cols) -> None:
        """Persist a state change; when the store can't take it, keep it in memory and warn, so the
        queue moves on and `ls` shows the truth until the daemon restarts."""
        try:
            self.store.update(job, state=state, **cols)
            self.unsaved.pop(job, None)
        except TransitionError as err:
            _log(f"refused state change: {err}")  # a bug or a race: the stored state stands
            return
        except Exception as err:
            _log(f"could not store job {job} becoming {state}:\n" + traceback.format_exc())
            note = f"could not store the change of state ({type(err).__name__}: {err})"
            if cols.get("error"):
                cols["error"] = f"{cols['error']}; {note}"
            else:
                cols["error"] = note
            self.unsaved[job] = {"state": state, **cols}
            self._warn(f"the job database could not be written ({err}); job {job} is {state} in memory only; "
                       f"free space under {self.home}")
        self.broadcast_state(job, state)

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            _log("warning: " + message)
            self.broadcast({"event": "queue", "job": None, "t": time.time(), "paused": self.paused,
                            "reason": self.store.get_meta("pause_reason") if self._store_readable() else None,
                            "warnings": self.warnings})

    def _store_readable(self) -> bool:
        try:
            self.store.get_meta("paused")
            return True
        except Exception:
            return False

    def _safely(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as err:
            _log(f"could not {what}: {type(err).__name__}: {err}")

    # -- job state changes --

    def fail_job(self, job: int, error: str, reason: str, stored: bool = False) -> None:
        if not stored:
            ev = {"event": "failed", "job": job, "t": time.time(), "error": error, "reason": reason}
            self._safely(f"store the failure of job {job}", self.store.add_event, job, ev)
            self._job_log(job, _describe(ev))
            self.broadcast(ev)
        self._set_state(job, "failed", finished=time.time(), error=error, reason=reason)
        if reason == "oom":
            self._safely("pause the queue", self.set_paused, True,
                         f"job {job} ran out of GPU memory; change its settings (or free the GPU), then resume the queue")

    def finish_cancelled(self, job: int) -> None:
        ev = {"event": "failed", "job": job, "t": time.time(), "error": "cancelled on request", "reason": "cancelled"}
        self._safely(f"store the cancellation of job {job}", self.store.add_event, job, ev)
        self._job_log(job, _describe(ev))
        self.broadcast(ev)
        self._set_state(job, "cancelled", finished=time.time(), error="cancelled on request", reason="cancelled")

    # -- watchers and logs --

    def broadcast(self, ev: dict) -> None:
        for q in list(self.watchers):
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                # a watcher that stopped reading is dropped, not allowed to hold the daemon's memory
                self.watchers.discard(q)
                q.get_nowait()
                q.put_nowait(None)

    def broadcast_state(self, job: int, state: str) -> None:
        self.broadcast({"event": "state", "job": job, "t": time.time(), "state": state})

    def _append(self, path: Path, text: str) -> None:
        try:
            # backslashreplace: a non-UTF-8 path or prompt in an event must not stop the logging
            with paths.open_append(path) as f:
                f.write((text + "\n").encode("utf-8", "backslashreplace"))
        except (OSError, ValueError) as err:
            _log(f"cannot write {path}: {err}")

    def _job_log(self, job: int | None, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if job is None:
            self._append(paths.engine_log_path(), f"{stamp} {text}")
        else:
            self._append(paths.job_log_path(job), f"{stamp} {text}")

    # -- job dicts for clients --

    def job_dict(self, row: dict, place: int | None = None) -> dict:
        row = {**row, **self.unsaved.get(row["id"], {})}
        spec = row["spec"]
        d = {k: row[k] for k in (
            "id", "state", "mode", "preset", "prompt", "spec", "created", "started", "finished", "step",
            "total_steps", "chunk", "num_chunks", "generation", "num_generations", "sec_per_step", "gpus",
            "peak_mem", "error", "reason", "attempt_of", "priority", "gpus_wanted", "cwd", "engine_pid",
        )}
        d["held"], d["after"] = bool(row.get("held")), row.get("after")
        if d["num_chunks"] is None and row["mode"] == "lvg":
            d["num_chunks"] = spec.get("num_chunks")
        if d["num_generations"] is None and row["mode"] == "bestofn":
            d["num_generations"] = spec.get("num_generations")
        d["eta_s"] = _eta(d) if row["state"] == "running" else None
        d["outputs"] = self.store.outputs(row["id"])
        d["critic"] = self.store.critic(row["id"])
        d["log_path"] = str(paths.job_log_path(row["id"]))
        d["place"] = place
        d["wait_reason"] = None
        if row["state"] == "queued":
            waiting = waiting_on(row, set())
            if self.paused:
                d["wait_reason"] = "queue paused"
            elif waiting == "held":
                d["wait_reason"] = "held; release it to run"
            elif waiting and (self.store.job(row["after"]) or {}).get("state") != "done":
                d["wait_reason"] = f"waiting for job {row['after']} to finish"
            elif place == 1:
                d["wait_reason"] = f"waiting for {row['gpus_wanted']} free GPU(s)"
            else:
                d["wait_reason"] = f"number {place} in the queue"
        return d

    def job_dicts(self, states=None) -> list[dict]:
        rows = self.store.jobs(states)
        out, place = [], 0
        for r in rows:
            if r["state"] == "queued":
                place += 1
            out.append(self.job_dict(r, place if r["state"] == "queued" else None))
        return out

    # -- request handlers: op_<name>(request) -> result --

    def _job_id(self, req: dict) -> int:
        jid = req.get("job", req.get("id"))
        if not isinstance(jid, int) or isinstance(jid, bool):
            raise RequestError(f"job: expected a job id (an integer), got {jid!r}")
        if self.store.job(jid) is None:
            raise RequestError(f"job {jid} does not exist")
        return jid

    def _resolve(self, overrides, preset: str | None, source: str = "") -> dict:
        return resolve_spec(overrides, preset, self.gpu_count, source)

    def _checked(self, overrides, preset: str | None, cwd: str | None, claimed: set[str], source: str = "") -> dict:
        spec = self._resolve(overrides, preset, source)
        check_inputs(spec, cwd, source)
        check_save_path(spec, cwd, claimed, source)
        return spec

    def _priority(self, req: dict) -> int:
        p = req.get("priority", 0)
        if not isinstance(p, int) or isinstance(p, bool):
            raise RequestError(f"priority: expected an integer, got {p!r}")
        return p

    def _cwd(self, req: dict) -> str | None:
        cwd = req.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise RequestError("cwd: expected a directory path")
        return cwd

    def op_ping(self, req):
        return {"pong": True, "pid": os.getpid(), "protocol": PROTOCOL_VERSION, "home": str(self.home),
                "started": self.started, "warnings": self.warnings}

    def _after(self, req: dict) -> int | None:
        after = req.get("after")
        if after is None:
            return None
        if not isinstance(after, int) or isinstance(after, bool) or self.store.job(after) is None:
            raise RequestError(f"after: {after!r} is not the id of a job; give the id of an existing job")
        state = self.store.job(after)["state"]
        if state in ("failed", "cancelled", "interrupted"):
            raise RequestError(f"after: job {after} is {state} and will never finish; retry it first, then "
                               f"submit after the retry")
        return after

    def op_submit(self, req):
        cwd = self._cwd(req)
        after = self._after(req)
        spec = self._checked(req.get("spec"), req.get("preset"), cwd, self.store.claimed_paths())
        jid = self.store.add_job(spec, req.get("preset"), self._priority(req), cwd, after=after)
        self._job_log(jid, f"job {jid} queued" + (f" from preset {req.get('preset')}" if req.get("preset") else ""))
        self.broadcast_state(jid, "queued")
        self.wake.set()
        return jid

    def op_submit_batch(self, req):
        """All or none; with `partial`, the good items are queued and the bad ones listed:
        {"ids": [...], "refused": [{"item": n, "error": "..."}]}."""
        specs = req.get("specs")
        if not isinstance(specs, list) or not specs:
            raise RequestError("specs: expected a non-empty list of spec objects")
        base = req.get("base") or {}
        if not isinstance(base, dict):
            raise RequestError("base: expected a JSON object of spec fields")
        cwd, priority = self._cwd(req), self._priority(req)
        claimed = self.store.claimed_paths()
        good, refused = [], []
        for i, s in enumerate(specs):
            try:
                good.append(self._checked({**base, **(s if isinstance(s, dict) else {"_": s})}, req.get("preset"),
                                          cwd, claimed, source=f"item {i + 1}: "))
            except SubmitError as err:
                refused.append({"item": i + 1, "error": str(err)})
        if refused and not req.get("partial"):
            raise RequestError("; ".join(r["error"] for r in refused))
        ids = self.store.add_jobs(good, req.get("preset"), priority, cwd) if good else []
        for jid in ids:
            self.broadcast_state(jid, "queued")
        self.wake.set()
        return {"ids": ids, "refused": refused} if req.get("partial") else ids

    def op_jobs(self, req):
        states = req.get("states")
        if states is not None and (not isinstance(states, list) or not all(isinstance(s, str) for s in states)):
            raise RequestError("states: expected a list of state names")
        return self.job_dicts(states)

    def op_job(self, req):
        jid = self._job_id(req)
        row = self.store.job(jid)
        place = None
        if row["state"] == "queued":
            place = [j["id"] for j in self.store.queued()].index(jid) + 1
        return self.job_dict(row, place)

    def op_events(self, req):
        jid = self._job_id(req)
        after = req.get("after", 0)
        if not isinstance(after, int):
            raise RequestError("after: expected an event sequence number")
        return self.store.events(jid, after)

    async def op_cancel(self, req):
        jid = self._job_id(req)
        row = self.store.job(jid)
        if row["state"] in TERMINAL:
            raise RequestError(f"job {jid} is already {row['state']}; nothing to cancel")
        if row["state"] == "queued":
            self.finish_cancelled(jid)
            return "cancelled"
        if self.slurm.owns(jid):
            return await self.slurm.cancel(jid)
        eng = next((e for e in self.engines if e.job == jid), None)
        if eng is None:
            self.finish_cancelled(jid)
            return "cancelled"
        eng.cancelling = True
        self._job_log(jid, f"cancelling: stopping engine process group {eng.pid}")
        if eng in self.engines:
            self.engines.remove(eng)
        await eng.kill()
        # the exit watcher records the cancellation; wait for it so the reply means "done"
        for _ in range(100):
            if self.store.job(jid)["state"] != "running":
                break
            await asyncio.sleep(0.05)
        return "cancelled"

    def op_retry(self, req):
        jid = self._job_id(req)
        row = self.store.job(jid)
        if row["state"] not in TERMINAL:
            raise RequestError(f"job {jid} is {row['state']}; only finished, failed, cancelled or interrupted jobs can be retried")
        # same spec, same output path: a long video resumes from the chunks its first attempt saved
        new = self.store.add_job(row["spec"], row["preset"], row["priority"], row["cwd"], attempt_of=jid, front=True)
        self._job_log(new, f"job {new} queued: a new attempt of job {jid}")
        self.broadcast_state(new, "queued")
        self.wake.set()
        return new

    def op_pause(self, req):
        self.set_paused(True, req.get("reason") or "paused by the user")
        return self.op_queue(req)

    def op_resume(self, req):
        self.set_paused(False)
        return self.op_queue(req)

    def op_move(self, req):
        jid = self._job_id(req)
        offset, to = req.get("offset", 0), req.get("to")
        if not isinstance(offset, int) or (to is not None and not isinstance(to, int)):
            raise RequestError("offset/to: expected integers")
        try:
            place = self.store.move(jid, offset, to)
        except ValueError as err:
            raise RequestError(str(err)) from None
        self.broadcast({"event": "queue", "job": jid, "t": time.time(), "paused": self.paused,
                        "reason": self.store.get_meta("pause_reason")})
        return place

    def _set_held(self, req, held: bool):
        jid = self._job_id(req)
        state = self.store.job(jid)["state"]
        if state != "queued":
            raise RequestError(f"job {jid} is {state}; only a queued job can be {'held' if held else 'released'}")
        self.store.update(jid, held=int(held))
        self._job_log(jid, f"job {jid} {'held' if held else 'released'}")
        self.broadcast({"event": "queue", "job": jid, "t": time.time(), "paused": self.paused,
                        "reason": self.store.get_meta("pause_reason")})
        self.wake.set()
        return held

    def op_hold(self, req):
        return self._set_held(req, True)

    def op_release(self, req):
        return self._set_held(req, False)

    def op_queue(self, req):
        counts: dict[str, int] = {}
        for j in self.store.jobs():
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        return {
            "paused": self.paused,
            "reason": self.store.get_meta("pause_reason"),
            "counts": counts,
            "engines": [{"pid": e.pid, "gpus": e.gpus, "job": e.job, "model": dict(zip(MODEL_KEY_FIELDS, e.key))}
                        for e in self.engines],
            "gpu_backend": getattr(self.gpu, "kind", "?"),
            "gpu_count": self.gpu_count,
            "warnings": self.warnings,
        }

    def op_gpus(self, req):
        holders = {}
        for e in self.engines:
            for g in e.gpus:
                holders[g] = e
        out = []
        for g in self.gpu.list():
            e = holders.get(g["index"])
            out.append({**g, "job": e.job if e else None, "engine": (("busy" if e.job else "idle") if e else None)})
        return out

    def op_log_path(self, req):
        return str(paths.job_log_path(self._job_id(req)))

    async def op_shutdown(self, req):
        running = [e.job for e in self.engines if e.job is not None] + list(self.slurm.runs)
        if running and not req.get("force"):
            raise RequestError(
                f"job(s) {', '.join(map(str, running))} are running; cancel them first or stop with force "
                f"(they will be marked interrupted)"
            )
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(
            self.shutdown("the daemon was stopped while this job ran; retry it to run it again")))
        return "stopping"

    # -- the socket --

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:
                    await self._respond(writer, {"ok": False, "error": f"request line longer than {STREAM_LIMIT} bytes"})
                    return
                if not raw:
                    return
                if not raw.strip():
                    continue
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                        raise ValueError("not an object with an op")
                except ValueError:
                    await self._respond(writer, {
                        "ok": False,
                        "error": f"malformed request {raw[:80].decode(errors='replace')!r}: send one JSON object "
                                 f"per line with an \"op\" field",
                    })
                    continue
                op = req["op"]
                if op == "watch":
                    await self._respond(writer, {"ok": True, "result": "watching"})
                    await self._watch(req, reader, writer)
                    return
                handler = getattr(self, f"op_{op}", None)
                if handler is None:
                    known = sorted(n[3:] for n in dir(self) if n.startswith("op_")) + ["watch"]
                    resp = {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(known)}"}
                else:
                    try:
                        result = handler(req)
                        if asyncio.iscoroutine(result):
                            result = await result
                        resp = {"ok": True, "result": result}
                    except (RequestError, SubmitError, TransitionError) as err:
                        resp = {"ok": False, "error": str(err)}
                    except Exception as err:  # a bug must not take the queue down with it
                        _log(f"error in {op}:\n" + traceback.format_exc())
                        resp = {"ok": False, "error": f"internal error in {op}: {type(err).__name__}: {err}"}
                await self._respond(writer, resp)
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, resp: dict) -> None:
        writer.write((json.dumps(resp, default=str) + "\n").encode())
        await writer.drain()

    async def _watch(self, req: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        only = req.get("job")
        q: asyncio.Queue = asyncio.Queue(maxsize=10000)
        self.watchers.add(q)
        gone = asyncio.create_task(reader.read())  # EOF when the client hangs up
        try:
            while not self.stopped.is_set():
                get = asyncio.create_task(q.get())
                done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    get.cancel()
                    return
                ev = get.result()
                if ev is None:
                    return
                if only is not None and ev.get("job") != only:
                    continue
                writer.write((json.dumps(ev, default=str) + "\n").encode())
                await writer.drain()
        finally:
            self.watchers.discard(q)
            gone.cancel()


def _describe(ev: dict) -> str:
    kind = ev.get("event")
    if kind == "log":
        return f"{(ev.get('level') or 'info').upper()} {ev.get('message')}"
    if kind == "step":
        extra = "".join(f" {k} {ev[k]}" for k in ("chunk", "generation") if ev.get(k) is not None)
        secs = ev.get("seconds")
        return f"step {ev.get('step')}/{ev.get('total')}{extra}" + (f" ({secs:.2f} s)" if isinstance(secs, (int, float)) else "")
    if kind == "failed":
        return f"FAILED ({ev.get('reason')}): {ev.get('error')}"
    rest = {k: v for k, v in ev.items() if k not in ("event", "job", "t", "spec")}
    return f"{kind} {json.dumps(rest, default=str)}"


def _eta(d: dict) -> float | None:
    sps, step, total = d.get("sec_per_step"), d.get("step"), d.get("total_steps")
    if not sps or not total or step is None:
        return None
    remaining = total - step
    for unit, units in (("chunk", "num_chunks"), ("generation", "num_generations")):
        if d.get(units):
            remaining += max(0, d[units] - (d.get(unit) or 1)) * total
    return remaining * sps


# -- process entry --


async def _serve(ready_fd: int | None) -> int:
    db = paths.db_path()
    missing_db = not db.exists() and paths.log_dir().is_dir() and any(paths.log_dir().glob("job-*.log"))
    try:
        store = Store(db)
    except (StoreError, paths.UnsafePathError) as err:
        _report(ready_fd, f"error: {err}")
        return 2
    daemon = Daemon(store)
    store.on_warning = daemon._warn
    if missing_db:
        daemon._warn(f"the job database {db} was missing at start although job logs exist in {paths.log_dir()}; "
                     f"the queue starts empty; restore the file from a backup (with the daemon stopped) to get "
                     f"the old jobs back")
    warning = linger_warning()
    if warning:
        daemon.warnings.append(warning)
        _log("warning: " + warning)
    daemon.recover()
    run = paths.ensure_run_dir()
    sock = paths.socket_path()
    paths.check_socket_path(sock)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # stale: we hold the lock, so no live daemon owns it
    old = os.umask(0o177)  # the socket is born 0600; no window where others could connect
    try:
        server = await asyncio.start_unix_server(daemon.handle_client, path=str(sock), limit=STREAM_LIMIT)
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
    _log(f"listening on {sock} (GPUs: {daemon.gpu_count}, backend {getattr(daemon.gpu, 'kind', '?')})")
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
    _log("stopped")
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
        _log("fatal:\n" + traceback.format_exc())
        _report(ready_fd, f"error: the daemon failed to start: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
