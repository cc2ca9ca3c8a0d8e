"""The Daemon: the state the request handlers work on (store, engines, warnings), the scheduler
that carries out the core's plan, and what engine events and exits do to jobs.

The rules themselves are pure and live in cosmos_tui.queue.core; this class only acts on them.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from pathlib import Path

from cosmos_tui import paths, phase_timing
from cosmos_tui.daemon import engines as engine_procs
from cosmos_tui.daemon.engines import Engine
from cosmos_tui.daemon.log import describe, log
from cosmos_tui.executors.slurm import SlurmExecutor
from cosmos_tui.gpu import slots_phrase
from cosmos_tui.daemon.notify import HookConfigError, hook_argv, hook_env, job_fields, load_hook, run_hook
from cosmos_tui.queue.core import (CANCELLED_ERROR, Decision, EngineView, Evict, Start, apply, dependency_failed, plan,
                                   wait_reason, waiting_on)
from cosmos_tui.queue.job import Job
from cosmos_tui.queue.resolve import gpu_fit
from cosmos_tui.queue.state import TransitionError
from cosmos_tui.store import Store


class Daemon:
    def __init__(self, store: Store, gpu=None, clock=time.time):
        from cosmos_tui.gpu import gpu_backend

        self.home = paths.home()
        self.store = store
        self.gpu = gpu or gpu_backend()
        gpus = self.gpu.list()
        self.gpu_count = len(gpus)
        # total memory per GPU (None without NVML), for the submit check that a job's weights can fit
        self.gpu_totals = [g.get("mem_total") for g in gpus]
        self.engines: list[Engine] = []
        self.wake = asyncio.Event()
        self.stopped = asyncio.Event()
        self.warnings: list[str] = []
        # state changes the store could not take (disk full): shown to clients until stored
        self.unsaved: dict[int, dict] = {}
        self.clock = clock  # every time a job records (the TUI's test fake runs on a fixed one)
        self.started = clock()
        self.hooks: set[asyncio.Task] = set()  # notification hooks still running
        # jobs whose spec says executor = "slurm" run on a cluster instead of a local engine
        self.slurm = SlurmExecutor(self)
        paths.ensure_log_dir()

    # -- start-up and shutdown --

    def recover(self) -> None:
        interrupted = self.store.recover_interrupted()
        for job in interrupted:
            pid = job.get("engine_pid")
            if pid and engine_procs.is_our_engine(pid, self.home):
                log(f"killing the engine group {pid} left over from job {job['id']}")
                engine_procs.kill_group(pid)
            self.job_log(job["id"], "the daemon stopped while this job ran: marked interrupted")
        self.slurm.recover(interrupted)
        if interrupted:
            ids = ", ".join(str(j["id"]) for j in interrupted)
            self.set_paused(True, f"job(s) {ids} were interrupted when the daemon stopped; retry them, then resume")
            log(f"interrupted on restart: {ids}; queue paused")

    @property
    def paused(self) -> bool:
        return bool(self.store.get_meta("paused", False))

    def set_paused(self, paused: bool, reason: str | None = None) -> None:
        self.store.set_meta("paused", paused)
        self.store.set_meta("pause_reason", reason if paused else None)
        if not paused:
            self.wake.set()

    async def shutdown(self, interrupted_reason: str) -> None:
        await self.slurm.shutdown(interrupted_reason)
        for eng in list(self.engines):
            if eng.job is not None:
                job = eng.job
                eng.job = None
                self.store.update(job, state="interrupted", finished=self.clock(), reason="interrupted",
                                  error=interrupted_reason)
                self.job_log(job, interrupted_reason)
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
                log("scheduler error:\n" + traceback.format_exc())

    async def watch_store(self, interval: float = 2.0) -> None:
        """Between writes, too: a deleted jobs.db is noticed while the queue is idle."""
        while not self.stopped.is_set():
            await asyncio.sleep(interval)
            try:
                self.store.check_file()
            except Exception:
                log("checking the job database failed:\n" + traceback.format_exc())

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
            decisions = plan(queued, list(range(self.gpu_count)), self.engine_views(), done=done,
                             fits=gpu_fit(self.gpu_totals))
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
                    log(f"stopping idle engine {e.pid} on {self.slots(e.gpus)} for another model")
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
        eng = await engine_procs.spawn(key, gpus, num_gpus, self.home)
        self.engines.append(eng)
        log(f"engine {eng.pid} started on {self.slots(gpus)}: {' '.join(engine_procs.engine_command(num_gpus))}")
        engine_procs.start_readers(
            eng,
            on_event=lambda ev: self._guarded_event(eng, ev),
            on_text=lambda text: self.job_log(eng.job, text),
            on_stderr=lambda text: self._engine_stderr(eng, text),
            on_exit=lambda rc: self.on_engine_exit(eng, rc),
        )
        return eng

    @property
    def gpu_kind(self) -> str | None:
        return getattr(self.gpu, "kind", None)

    def slots(self, gpus) -> str:
        """`gpus` for a log line, named as every client names them (cosmos_tui.gpu.slots_phrase)."""
        return slots_phrase(list(gpus), self.gpu_kind)

    def start_job(self, job: dict, eng: Engine) -> None:
        jid = job["id"]
        eng.cancelling = False
        # stored before it is sent: a job that could not be marked running must not run unrecorded
        self.store.update(jid, state="running", started=self.clock(), gpus=eng.gpus, engine_pid=eng.pid,
                          step=None, total_steps=None, error=None, reason=None)
        eng.job = jid
        self.job_log(jid, f"job {jid} starts on {self.slots(eng.gpus)} (engine pid {eng.pid})")
        try:
            eng.send({"op": "run", "job": jid, "spec": job["spec"], "cwd": job.get("cwd")})
        except (ConnectionError, OSError) as err:
            # the exit watcher sees the dead engine and fails the job with the reason
            log(f"could not send job {jid} to engine {eng.pid}: {err}")

    async def stop_job_engine(self, eng: Engine, jid: int) -> None:
        """Cancel a running job: kill its engine's group; the exit watcher records `cancelled`."""
        eng.cancelling = True
        self.job_log(jid, f"cancelling: stopping engine process group {eng.pid}")
        if eng in self.engines:
            self.engines.remove(eng)
        await eng.kill()

    # -- engine output --

    def _engine_stderr(self, eng: Engine, text: str) -> None:
        if eng.job is not None:
            self._append(paths.job_log_path(eng.job), text)
        else:
            self._append(paths.engine_log_path(), f"[engine {eng.pid}] {text}")

    def _guarded_event(self, eng: Engine, ev: dict) -> None:
        try:
            self.on_engine_event(eng, ev)
        except Exception:
            log("error handling an engine event:\n" + traceback.format_exc())

    async def on_engine_exit(self, eng: Engine, rc: int | None) -> None:
        if eng in self.engines:
            self.engines.remove(eng)
        how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with code {rc}"
        log(f"engine {eng.pid} {how}")
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
            self._append(paths.engine_log_path(), f"[engine {eng.pid}] stray event {json.dumps(ev, default=str)[:300]}")
            return
        try:
            decision = self.on_job_event(job, ev, cancelling=eng.cancelling)
        except Exception as err:
            # a job whose events can't be stored must not hold its GPUs forever: stop it, say why
            log(f"could not record a {kind!r} event of job {job}:\n" + traceback.format_exc())
            self._abandon_job(eng, job, f"could not record the engine's {kind!r} event ({type(err).__name__}: "
                                        f"{err}); check the disk under {self.home}, then retry the job")
            return
        if decision.frees_engine:
            eng.job = None
            if decision.restart_engine and eng in self.engines:
                self.engines.remove(eng)
                asyncio.create_task(eng.kill(grace=2.0))
            self.wake.set()

    def on_job_event(self, job: int, ev: dict, cancelling: bool = False) -> Decision:
        """An engine event of `job`, wherever its engine runs (a local process, a Slurm job): the core's
        decision, recorded and carried out. Raises when the event cannot be stored; the state change
        itself never is lost (see _set_state)."""
        ev.setdefault("t", self.clock())
        decision = apply(self.store.job(job) or {"id": job}, ev, cancelling=cancelling)
        self._record(job, ev, decision)
        if decision.state is not None:
            self._set_state(job, decision.state, **decision.state_columns)
        if decision.pause:
            self._safely("pause the queue", self.set_paused, True, decision.pause)
        return decision

    def _record(self, job: int, ev: dict, decision: Decision) -> None:
        if not decision.record:
            return
        self.store.add_event(job, ev)
        self.job_log(job, describe(ev))
        if decision.columns:
            self.store.update(job, **decision.columns)
        for path, kind in decision.outputs:
            self.store.add_output(job, path, kind)
        if ev.get("event") == "phase":
            phase_timing.record_samples(self.store, job, ev, warn=log)  # what the ETA learns
        if decision.critic:
            self.store.add_critic(job, ev)

    def _abandon_job(self, eng: Engine, job: int, error: str) -> None:
        eng.job = None
        if eng in self.engines:
            self.engines.remove(eng)
        asyncio.create_task(eng.kill(grace=2.0))
        self.fail_job(job, error, "crash")
        self.wake.set()

    # -- job state changes --

    def _set_state(self, job: int, state: str, **cols) -> None:
        """Persist a state change; when the store can't take it, keep it in memory and warn, so the
        queue moves on and `ls` shows the truth until the daemon restarts."""
        try:
            self.store.update(job, state=state, **cols)
            self.unsaved.pop(job, None)
        except TransitionError as err:
            log(f"refused state change: {err}")  # a bug or a race: the stored state stands
            return
        except Exception as err:
            self._unsaved_state(job, state, cols, err)
        self.notify(job, state)

    def _unsaved_state(self, job: int, state: str, cols: dict, err: Exception) -> None:
        log(f"could not store job {job} becoming {state}:\n" + traceback.format_exc())
        note = f"could not store the change of state ({type(err).__name__}: {err})"
        if cols.get("error"):
            cols["error"] = f"{cols['error']}; {note}"
        else:
            cols["error"] = note
        self.unsaved[job] = {"state": state, **cols}
        self.warn(f"the job database could not be written ({err}); job {job} is {state} in memory only; "
                  f"free space under {self.home}")

    def notify(self, job: int, state: str) -> None:
        """Run the configured hook (daemon/notify.py) for a job that ended, in the background;
        nothing it does can fail the job or stop the queue."""
        try:
            hook = load_hook()
        except HookConfigError as err:
            self.warn(str(err))
            return
        if hook is None or state not in hook.on:
            return
        try:
            row = self.store.job(job)
            wire = self.job_wire(row) if row else {"id": job, "state": state}
        except Exception:  # the store failing is why we are here, perhaps: what we know will do
            wire = {"id": job, "state": state, **self.unsaved.get(job, {})}
        fields = job_fields(wire)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log(f"notification hook for job {job} skipped: no event loop (not in a running daemon)")
            return
        task = loop.create_task(run_hook(hook_argv(hook, fields), hook_env(fields), hook.timeout_s, log,
                                        str(self.home)))
        self.hooks.add(task)
        task.add_done_callback(self.hooks.discard)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log("warning: " + message)

    def _safely(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as err:
            log(f"could not {what}: {type(err).__name__}: {err}")

    def settle(self, job: int, ev: dict) -> None:
        """An end the daemon decided itself (a crash, a dependency, a cancel): the same event and
        the same rules as one the engine reports, stored as far as the store lets us."""
        decision = apply({"id": job}, ev)
        self._safely(f"store the {ev.get('reason')} event of job {job}", self.store.add_event, job, ev)
        self.job_log(job, describe(ev))
        self._set_state(job, decision.state, **decision.state_columns)
        if decision.pause:
            self._safely("pause the queue", self.set_paused, True, decision.pause)

    def fail_job(self, job: int, error: str, reason: str) -> None:
        self.settle(job, {"event": "failed", "job": job, "t": self.clock(), "error": error, "reason": reason})

    def finish_cancelled(self, job: int) -> None:
        self.settle(job, {"event": "failed", "job": job, "t": self.clock(), "error": CANCELLED_ERROR,
                          "reason": "cancelled"})

    # -- logs --

    def _append(self, path: Path, text: str) -> None:
        try:
            # backslashreplace: a non-UTF-8 path or prompt in an event must not stop the logging
            with paths.open_append(path) as f:
                f.write((text + "\n").encode("utf-8", "backslashreplace"))
        except (OSError, ValueError) as err:
            log(f"cannot write {path}: {err}")

    def job_log(self, job: int | None, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        if job is None:
            self._append(paths.engine_log_path(), f"{stamp} {text}")
        else:
            self._append(paths.job_log_path(job), f"{stamp} {text}")

    # -- jobs for clients --

    def etas(self):
        """Phase-aware ETAs of every running and queued job and of the whole queue (queue/eta.py)."""
        skip = [j for j, cols in self.unsaved.items() if cols.get("state") not in ("queued", "running")]
        return phase_timing.queue_etas(self.store, list(range(self.gpu_count)), self.engine_views(), self.paused,
                                       skip, now=self.clock(), fits=gpu_fit(self.gpu_totals))

    def job_wire(self, row: dict, place: int | None = None, states: dict[int, str] | None = None,
                 etas=None) -> dict:
        """The wire form (queue.job.Job) of a store row, with what only the daemon knows: changes
        the store could not take, outputs, critic answers, the place and what it waits for."""
        row = {**row, **self.unsaved.get(row["id"], {})}
        if states is None:
            after = row.get("after")
            states = {after: (self.store.job(after) or {}).get("state")} if after is not None else {}
        return Job.from_row(
            row, outputs=self.store.outputs(row["id"]), critic=self.store.critic(row["id"]),
            log_path=str(paths.job_log_path(row["id"])), place=place,
            wait_reason=wait_reason(row, place, self.paused, states, list(range(self.gpu_count)),
                                    gpu_fit(self.gpu_totals), self.gpu_kind),
            **phase_timing.wire_fields(row, etas or self.etas()),
        ).to_wire()

    def jobs_wire(self, states=None) -> list[dict]:
        rows = self.store.jobs(states)
        every = {j["id"]: j["state"] for j in (rows if not states else self.store.jobs())}
        out, place, etas = [], 0, self.etas()
        for r in rows:
            if r["state"] == "queued":
                place += 1
            out.append(self.job_wire(r, place if r["state"] == "queued" else None, every, etas))
        return out
