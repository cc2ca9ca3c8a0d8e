"""Which queued jobs start now, on which GPUs and engines: decisions, not actions.

`plan` looks at plain data (the queue in order, the GPUs, what each engine holds) and returns what
the daemon should do; the daemon spawns, kills and sends. Kept apart so the rules can be tested
without processes and so the TUI's fake can follow the same rules as the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cosmos_tui.gpu import cpu_only, slot_name
from cosmos_tui.queue.eta import phase_columns, started_columns
from cosmos_tui.queue.resolve import resolved_path

def model_key(spec: dict) -> tuple:
    """Can a warm engine that ran one job take another? Only when their keys are equal. The one
    definition is the engine's own (engine.spec.build_key: every BuildConfig field, the offload and
    downcast flags included), imported here lazily because engine.spec pulls in pydantic and,
    through it, socket, which this package must not load."""
    from engine.spec import BUILD_FIELDS, build_key

    try:
        return build_key(spec)
    except ValueError:
        # a stored spec this version no longer accepts: still a key, so one bad job cannot stop
        # the scheduler (the engine refuses the job itself, with the reason)
        return tuple((f, spec.get(f)) for f in BUILD_FIELDS)


@dataclass(frozen=True)
class EngineView:
    id: int
    key: tuple
    gpus: tuple[int, ...]
    job: int | None = None
    # exited but not yet reaped: it cannot take a job, yet its GPUs stay busy while it holds one
    dead: bool = False


@dataclass(frozen=True)
class Start:
    job_id: int
    gpus: tuple[int, ...]
    engine_key: tuple
    reuse_engine: int | None = None  # None: spawn a fresh engine on `gpus`


@dataclass(frozen=True)
class Evict:
    engine_id: int


@dataclass
class _Engines:
    """The engines as they will be once the decisions so far are carried out."""

    views: list[EngineView] = field(default_factory=list)

    def busy(self) -> set[int]:
        return {g for e in self.views if e.job is not None for g in e.gpus}

    def idle(self) -> list[EngineView]:
        return [e for e in self.views if e.job is None]


def waiting_on(job: dict, done: set[int]) -> str | None:
    """Why a queued job is not a candidate now (held, or its dependency not done), else None.
    Such a job is passed over, not waited for: holding the head must not stop the queue."""
    if job.get("held"):
        return "held"
    after = job.get("after")
    if after is not None and after not in done:
        return f"after job {after}"
    return None


def dependency_failed(job: dict, states: dict[int, str]) -> bool:
    """A job `--after` one that ended without output can never run: it fails ("dependency")."""
    after = job.get("after")
    return after is not None and states.get(after) in ("failed", "cancelled", "interrupted")


def plan(queued: list[dict], gpus: list[int], engines: list[EngineView], paused: bool = False,
         done: set[int] = frozenset(), fits: Callable[[dict, int], bool] | None = None) -> list[Start | Evict]:
    """Decisions for `queued` (job dicts with id, spec, gpus_wanted, optional held and after; in
    queue order); `done` holds the ids of finished jobs, for dependencies. `fits(job, gpu)`: can that
    GPU hold the job's weights (a machine with GPUs of different sizes); None: every GPU can.

    Strict queue order: each job is taken in turn; one with an idle warm engine of its model starts
    there; otherwise, when too few GPUs are free, nothing behind it starts, not even a 1-GPU job
    that would fit, so a big job is never starved by small ones. Evictions come right before the
    Start that needs their GPUs.
    """
    if paused:
        return []
    state = _Engines(list(engines))
    out: list[Start | Evict] = []
    for job in queued:
        if waiting_on(job, done):
            continue
        key = model_key(job["spec"])
        busy = state.busy()
        warm = next((e for e in state.idle() if not e.dead and e.key == key and not set(e.gpus) & busy), None)
        if warm is not None:
            out.append(Start(job["id"], tuple(warm.gpus), key, warm.id))
            state.views = [e if e is not warm else EngineView(e.id, e.key, e.gpus, job["id"]) for e in state.views]
            continue
        n = job["gpus_wanted"]
        # a GPU too small for this job is not free for it: the engine would refuse the job on it
        free = [g for g in gpus if g not in busy and (fits is None or fits(job, g))]
        if len(free) < n:
            break
        # GPUs no idle engine holds first: a warm engine of another model may serve a later job
        idle_on = {g for e in state.idle() for g in e.gpus}
        chosen = tuple(sorted(free, key=lambda g: (g in idle_on, g))[:n])
        evicted = [e for e in state.idle() if set(e.gpus) & set(chosen)]
        out.extend(Evict(e.id) for e in evicted)
        gone = {id(e) for e in evicted}
        state.views = [e for e in state.views if id(e) not in gone]
        out.append(Start(job["id"], chosen, key, None))
        # the engine to be spawned: no id yet, and busy, so nothing later reuses or evicts it
        state.views.append(EngineView(-job["id"], key, chosen, job["id"]))
    return out


def wait_reason(job: dict, place: int | None, paused: bool, states: dict[int, str], gpus: list[int] = (),
                fits: Callable[[dict, int], bool] | None = None, backend: str | None = None) -> str | None:
    """What a queued job is waiting for, in words for `ls` and the TUI; None when not queued.
    `gpus` and `fits` as plan() has them: a job that only some GPUs can hold says which. `backend`: the
    GPU backend's kind, which names the slots (cosmos_tui.gpu.slot_name)."""
    if job.get("state") != "queued":
        return None
    waiting = waiting_on(job, set())
    if paused:
        return "queue paused"
    if waiting == "held":
        return "held; release it to run"
    if waiting and states.get(job["after"]) != "done":
        return f"waiting for job {job['after']} to finish"
    if place == 1:
        if cpu_only(backend):
            return "waiting for the CPU (it runs one job at a time)"
        usable = [g for g in gpus if fits(job, g)] if fits is not None else gpus
        if len(usable) < len(gpus):
            names = ", ".join(slot_name(g, backend) for g in usable)
            return f"waiting for {job.get('gpus_wanted', 1)} free GPU(s) large enough for its weights (GPU {names})"
        return f"waiting for {job.get('gpus_wanted', 1)} free GPU(s)"
    return f"number {place} in the queue"


# -- what an engine event does to a job --

CANCELLED_ERROR = "cancelled on request"
STEP_TIME_SMOOTHING = 0.3  # weight of the newest step in the running mean of seconds per step


@dataclass(frozen=True)
class Decision:
    """What one engine event does to its job; the daemon stores and acts, in this order: the
    event itself (unless `record` is False), `columns`, `outputs`, `critic`; then `state` (with
    `state_columns`), then the engine: freed for the next job, or restarted."""

    record: bool = True
    state: str | None = None  # None: the job stays in its state
    columns: dict = field(default_factory=dict)
    state_columns: dict = field(default_factory=dict)
    outputs: tuple[tuple[str, str], ...] = ()  # (path, kind)
    critic: bool = False
    frees_engine: bool = False
    restart_engine: bool = False  # a fresh process: after OOM the next job gets the whole GPU back
    pause: str | None = None  # pause the queue, with this reason


IGNORE = Decision(record=False)


def _output_path(job: dict, path) -> str:
    # the engine names its files relative to the directory the job was submitted from (it runs there);
    # stored as written, `show`, the TUI's `m` Play and the notification hook would look for them
    # wherever they themselves run
    return resolved_path(job.get("cwd"), str(path))


def apply(job: dict, ev: dict, cancelling: bool = False) -> Decision:
    """The decision for engine event `ev` (engine/events.py) of `job` (its current columns:
    sec_per_step, peak_mem). `cancelling`: the daemon is killing this job's engine, so the kill,
    not the engine's last word, decides how it ends."""
    kind = ev.get("event")
    t = ev.get("t")
    if kind in ("finished", "failed") and cancelling:
        return IGNORE
    if kind == "step":
        cols = {"step": ev.get("step"), "total_steps": ev.get("total")}
        for unit in ("chunk", "generation"):
            if ev.get(unit) is not None:
                cols[unit] = ev[unit]
        seconds = ev.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
            prev = job.get("sec_per_step")
            cols["sec_per_step"] = (seconds if prev is None
                                    else (1 - STEP_TIME_SMOOTHING) * prev + STEP_TIME_SMOOTHING * seconds)
        return Decision(columns=cols)
    if kind == "phase":  # where the job is now; the daemon also learns the durations (phase_timing)
        return Decision(columns=phase_columns(job.get("phase"), ev))
    if kind == "started":
        return Decision(columns=started_columns(ev))
    if kind == "chunk":
        return Decision(columns={"chunk": ev.get("chunk"), "num_chunks": ev.get("total")})
    if kind == "generation":
        return Decision(columns={"generation": ev.get("generation"), "num_generations": ev.get("total")})
    if kind == "memory":
        peak = ev.get("peak")
        if isinstance(peak, (int, float)) and not isinstance(peak, bool):
            return Decision(columns={"peak_mem": max(int(peak), job.get("peak_mem") or 0)})
        return Decision()
    if kind == "output":
        return Decision(outputs=((_output_path(job, ev["path"]), ev.get("kind") or "video"),) if ev.get("path") else ())
    if kind == "critic":
        return Decision(critic=True)
    if kind == "finished":
        return Decision(state="done", state_columns={"finished": t}, frees_engine=True,
                        outputs=tuple((_output_path(job, p), "video") for p in ev.get("outputs") or []))
    if kind == "failed":
        reason = ev.get("reason") or "crash"
        if reason == "cancelled":
            return Decision(state="cancelled", frees_engine=True,
                            state_columns={"finished": t, "error": CANCELLED_ERROR, "reason": "cancelled"})
        oom = reason == "oom"
        return Decision(state="failed", frees_engine=True, restart_engine=oom,
                        state_columns={"finished": t, "error": ev.get("error") or "failed", "reason": reason},
                        pause=(f"job {job.get('id')} ran out of GPU memory; change its settings (or free the "
                               f"GPU), then resume the queue") if oom else None)
    return Decision()  # log, output of text...: stored and logged, nothing else changes


# -- removing, cleaning and editing jobs (pueue's remove / clean / edit) --

FINISHED = ("done", "failed", "cancelled", "interrupted")


def removal_problem(job: dict, jobs: list[dict]) -> str | None:
    """Why `job` cannot be removed (one sentence with the fix), else None. Only finished jobs go;
    one that a queued job runs `--after` must stay while it would still fail that job."""
    if job["state"] not in FINISHED:
        verb = "cancel it first" if job["state"] == "running" else "cancel it first (or edit it)"
        return f"job {job['id']} is {job['state']}; only finished jobs can be removed: {verb}"
    if job["state"] != "done":
        waiting = [j["id"] for j in jobs if j["state"] == "queued" and j.get("after") == job["id"]]
        if waiting:
            return (f"job {waiting[0]} runs after job {job['id']}, which is {job['state']}; cancel or remove job "
                    f"{waiting[0]} first")
    return None


def to_clean(jobs: list[dict], failed_only: bool = False) -> list[int]:
    """The finished jobs `clean` removes: all of them, or only the failed ones (failed,
    interrupted); cancelled and done stay with `failed_only`. Never one a removal would refuse."""
    states = ("failed", "interrupted") if failed_only else FINISHED
    return [j["id"] for j in jobs if j["state"] in states and removal_problem(j, jobs) is None]


def edit_problem(job: dict) -> str | None:
    """Only a queued job (held or not) can have its spec changed: a running one has its spec
    loaded, a finished one is history (retry it, then edit the retry)."""
    if job["state"] == "queued":
        return None
    fix = "cancel it, retry it and edit the new job" if job["state"] == "running" else \
        f"retry it (cosmos-tui retry {job['id']}) and edit the new job"
    return f"job {job['id']} is {job['state']}; only a queued job can be edited: {fix}"
