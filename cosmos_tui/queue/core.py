"""Which queued jobs start now, on which GPUs and engines: decisions, not actions.

`plan` looks at plain data (the queue in order, the GPUs, what each engine holds) and returns what
the daemon should do; the daemon spawns, kills and sends. Kept apart so the rules can be tested
without processes and so the TUI's fake can follow the same rules as the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# every spec field that decides what a warm engine has loaded: a job may reuse an engine only when
# all of them match
MODEL_KEY_FIELDS = ("model_size", "resolution", "fps", "natten", "dit_path", "load_ema", "num_gpus")


def model_key(spec: dict) -> tuple:
    return tuple(spec.get(k) for k in MODEL_KEY_FIELDS)


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
         done: set[int] = frozenset()) -> list[Start | Evict]:
    """Decisions for `queued` (job dicts with id, spec, gpus_wanted, optional held and after; in
    queue order); `done` holds the ids of finished jobs, for dependencies.

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
        free = [g for g in gpus if g not in busy]
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
