"""How long a job and the whole queue will take, from measured phase durations. Pure: plain data in,
numbers out (no asyncio, sockets, textual or torch).

The engine reports each phase of a job (engine/phases.py: loading, guardrail, refine, text_encode,
vae_encode, denoise, vae_decode, critic, writing) with its duration. `samples` turns one phase's end
event into per-unit timings ("stats"): seconds per denoise evaluation, per critic trial, per VAE
decode, per load... Stats are kept per model key (the build a job runs on), so a 14B 720p step is
never used to time a tiny one, and remembered across jobs (the store's phase_stats table).

A job's plan (`job_plan`) lists its units of work from its spec: per generation (a long video's
chunk, a best-of-N candidate, a benchmark run) the guardrail checks, refine, text encode, VAE encode,
num_steps + 1 denoise evaluations, VAE decode, the video check and the write; for best-of-N then the
critic's load and num_critic_trials trials per candidate; a load first when the job needs a fresh
engine. `remaining` is the part of the plan after the job's current phase (plus what is left of
that one); `queue_eta` lays the queued jobs after the running ones on the GPUs, in queue order.

Where a stat was never measured its items count as zero and the estimate says `partial`: a lower
bound, shown as such, rather than a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

# what one phase end event teaches, per unit of its work
STATS = ("loading", "warmup", "onload", "guardrail_text", "refine", "text_encode", "vae_encode", "denoise_step",
         "denoise_step_fast",
         "vae_decode", "guardrail_video", "writing", "critic_load", "critic_trial")

# counted as nothing while never measured (not "partial"): on a CPU, best-of-N parks nothing, so there
# is never a generator to bring back
OPTIONAL = frozenset({"onload"})

# a stat never measured may borrow another's: a fast-mode step takes at most an exact one
FALLBACK = {"denoise_step_fast": "denoise_step"}

MIN_WEIGHT = 0.2  # after five samples, a new one moves the average by a fifth: it follows a change


@dataclass(frozen=True)
class Stat:
    seconds: float  # mean seconds per unit
    samples: int


Stats = Mapping[str, Stat]


def key_id(model_key: Iterable) -> str:
    """A model key (a tuple of field values, or of (name, value) pairs) as a stable string."""
    return json.dumps(list(model_key), default=str, separators=(",", ":"))


def blend(old: Stat | None, seconds: float) -> Stat:
    """The mean of the first samples, then an exponential average (a new driver, another GPU clock)."""
    if old is None:
        return Stat(seconds, 1)
    n = old.samples + 1
    w = max(1.0 / n, MIN_WEIGHT)
    return Stat(old.seconds + w * (seconds - old.seconds), n)


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 else None


def _denoise_stat(fast_threshold) -> str:
    # fast mode (a step cache) skips network calls: its steps are timed apart from exact ones
    return "denoise_step_fast" if isinstance(fast_threshold, (int, float)) and fast_threshold > 0 else "denoise_step"


def stat_of(phase: Mapping) -> str | None:
    """The stat a phase event's work belongs to (guardrail and loading split by what they do)."""
    name = phase.get("phase", phase.get("name"))
    if name == "loading":
        return {"critic": "critic_load", "generator": "onload"}.get(phase.get("component"), "loading")
    if name == "guardrail":
        return "guardrail_video" if phase.get("target") == "video" else "guardrail_text"
    if name == "denoise":
        return _denoise_stat(phase.get("fast_threshold"))
    if name == "critic":
        return "critic_trial"
    return name if name in STATS else None


def samples(ev: Mapping) -> list[tuple[str, float]]:
    """(stat, seconds per unit) from a phase `end` event; nothing from a start, a failed phase or junk."""
    if ev.get("event") != "phase" or ev.get("state") != "end" or ev.get("ok") is not True:
        return []
    seconds = _num(ev.get("seconds"))
    stat = stat_of(ev)
    if seconds is None or stat is None:
        return []
    if stat.startswith("denoise_step"):
        units = int(_num(ev.get("units")) or (_num(ev.get("steps")) or 0) + 1)
        first = _num(ev.get("first_step_s"))
        if ev.get("cold") and first is not None and units > 1:
            # the first step of a fresh pipeline includes compilation: charged to the load, not the steps
            per = max(0.0, (seconds - first) / (units - 1))
            return [(stat, per), ("warmup", max(0.0, first - per))]
        return [(stat, seconds / max(1, units))]
    if stat == "critic_trial":
        return [("critic_trial", seconds / max(1, int(_num(ev.get("units")) or _num(ev.get("trials")) or 1)))]
    return [(stat, seconds)]


# -- a job's plan --


@dataclass(frozen=True)
class Item:
    stat: str
    count: float  # units of the stat (denoise: evaluations; critic: trials)
    unit: int = 0  # the generation / chunk / run (1-based) or the critic's video; 0 for the job's load
    tag: str = ""  # which of a unit's two text checks: "prompt" or "refined_prompt"


def _int(spec: Mapping, name: str, default: int) -> int:
    v = spec.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default


def job_plan(spec: Mapping, cold: bool, onload: bool = False) -> list[Item]:
    """The job's units of work in the order the engine does them. `cold`: it needs a fresh engine;
    `onload`: its warm engine's generator is parked on the CPU (the job before it was a best-of-N)."""
    mode = spec.get("mode") or "video2world"
    steps = _int(spec, "num_steps", 35)
    guard = not spec.get("disable_guardrail")
    refine = not spec.get("disable_prompt_refiner")
    items: list[Item] = []
    if cold and not (mode == "bestofn" and spec.get("skip_generation")):
        items += [Item("loading", 1), Item("warmup", 1)]
    elif onload and not (mode == "bestofn" and spec.get("skip_generation")):
        items.append(Item("onload", 1))
    if mode == "lvg":
        units = _int(spec, "num_chunks", 6)
    elif mode == "bestofn":
        units = 0 if spec.get("skip_generation") else _int(spec, "num_generations", 4)
    else:
        units = 4 if spec.get("benchmark") else 1  # engine/modes/video2world.py BENCHMARK_RUNS
    for u in range(1, units + 1):
        if guard:
            items.append(Item("guardrail_text", 1, u, "prompt"))
        if refine:
            items.append(Item("refine", 1, u))
            if guard:
                items.append(Item("guardrail_text", 1, u, "refined_prompt"))  # the refined prompt is checked too
        items += [Item("text_encode", 1, u), Item("vae_encode", 1, u), Item(_denoise_stat(spec.get("fast_threshold")), steps + 1, u),
                  Item("vae_decode", 1, u)]
        if guard:
            items.append(Item("guardrail_video", 1, u))
        if mode != "video2world" or u == units:
            items.append(Item("writing", 1, u))  # each chunk's partial video, each candidate; v2w once
    if mode == "bestofn":
        videos = _int(spec, "num_generations", 4)
        items.append(Item("critic_load", 1))
        items += [Item("critic_trial", _int(spec, "num_critic_trials", 5), v) for v in range(1, videos + 1)]
    return items


@dataclass(frozen=True)
class Estimate:
    seconds: float
    partial: bool = False  # some part was never measured for this model: a lower bound
    missing: frozenset = field(default_factory=frozenset)

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.seconds + other.seconds, self.partial or other.partial, self.missing | other.missing)


ZERO = Estimate(0.0)


def _latest(estimates: list[Estimate]) -> Estimate:
    """The latest of several moments; partial when any of them is (a lower bound of a max is one)."""
    return Estimate(max(e.seconds for e in estimates), any(e.partial for e in estimates),
                    frozenset().union(*(e.missing for e in estimates)))


def _cost(items: Iterable[Item], stats: Stats, live: Mapping[str, float] | None = None) -> Estimate:
    total, missing = 0.0, set()
    for it in items:
        s = stats.get(it.stat) or stats.get(FALLBACK.get(it.stat, ""))
        per = s.seconds if s is not None else (live or {}).get(it.stat)
        if per is None:
            if it.stat not in OPTIONAL:
                missing.add(it.stat)
        else:
            total += per * it.count
    return Estimate(total, bool(missing), frozenset(missing))


def job_total(spec: Mapping, stats: Stats, cold: bool, onload: bool = False) -> Estimate:
    return _cost(job_plan(spec, cold, onload), stats)


def parks_generator(spec: Mapping) -> bool:
    """A best-of-N job leaves its engine's generator on the CPU (the critic had the GPU)."""
    return spec.get("mode") == "bestofn" and not spec.get("skip_generation")


def tag_of(phase: Mapping) -> str:
    """Which of a unit's two text checks a guardrail phase is ("" for every other phase)."""
    return (phase.get("target") or "prompt") if stat_of(phase) == "guardrail_text" else ""


def unit_of(phase: Mapping) -> int:
    """The generation / chunk / run a phase belongs to, the critic's video, 0 for a load."""
    if phase.get("phase", phase.get("name")) == "critic":
        return int(phase.get("video") or 1)
    if phase.get("phase", phase.get("name")) == "loading":
        return 0
    for k in ("chunk", "generation", "run"):
        if isinstance(phase.get(k), int):
            return phase[k]
    return 1


def remaining(spec: Mapping, stats: Stats, phase: Mapping | None, now: float, step: int | None = None,
              sec_per_step: float | None = None, unit: int | None = None) -> Estimate:
    """What is left of a running job. `phase`: its latest phase event (phase, state, start, chunk /
    generation / run / video, target, component) plus `cold` (it loads its engine), or None before
    the first (or only `cold`, from the engine's `started`); `step`: denoise steps done in the current
    generation; `sec_per_step`: the job's own step time, used while its model has no denoise stat yet
    (the first job on a new model); `unit`: its chunk / generation counter, for an engine that reports
    steps but no phases (the job is then taken to be in that unit's denoise)."""
    live = {_denoise_stat(spec.get("fast_threshold")): sec_per_step} if sec_per_step else None
    if (not phase or not stat_of(phase)) and step:
        phase = {**(phase or {}), "phase": "denoise", "state": "start", "chunk": unit or 1}
    if not phase or not stat_of(phase):
        # before the first phase: the whole plan, with a load unless the engine said it holds the model
        return _cost(job_plan(spec, cold=(phase or {}).get("cold", True)), stats, live)
    items = job_plan(spec, cold=bool(phase.get("cold")), onload=stat_of(phase) == "onload")
    here = (stat_of(phase), unit_of(phase), tag_of(phase))
    at = next((i for i, it in enumerate(items) if (it.stat, it.unit, it.tag) == here), None)
    if at is None:
        # a phase the plan doesn't have (a resumed long video's chunk numbering is in the plan; a
        # benchmark of another count is not): nothing better than the whole remaining work from the top
        return _cost(items, stats, live)
    if phase.get("state") == "end":
        return _cost(items[at + 1:], stats, live)
    current = items[at]
    if current.stat.startswith("denoise_step"):
        done = min(current.count, max(0, step or 0))
        cur = _cost([Item(current.stat, current.count - done, current.unit)], stats, live)
        if done == 0 and phase.get("cold") and current.unit == 1:
            cur = cur + _cost([Item("warmup", 1)], stats)  # the first step compiles
    else:
        cur = _cost([current], stats, live)
        started = _num(phase.get("start"))
        if started is not None and not cur.partial:
            cur = Estimate(max(0.0, cur.seconds - max(0.0, now - started)))
    return cur + _cost(items[at + 1:], stats, live)


# -- the whole queue --


@dataclass(frozen=True)
class Running:
    id: int
    gpus: tuple[int, ...]
    key: str
    left: Estimate
    spec: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Queued:
    id: int
    spec: Mapping
    key: str
    gpus_wanted: int = 1
    held: bool = False
    after: int | None = None


@dataclass(frozen=True)
class QueueEta:
    jobs: dict  # job id -> Estimate of the seconds until it is done (None: not counted; held, paused...)
    total: Estimate | None  # until every counted job is done; None with nothing to run or paused


def queue_eta(running: list[Running], queued: list[Queued], gpus: list[int], stats: Mapping[str, Stats],
              warm: Mapping[int, str] | None = None, paused: bool = False, done: set[int] = frozenset(),
              fits: Callable[[dict, int], bool] | None = None) -> QueueEta:
    """Lay the queued jobs (in queue order) after the running ones on the GPUs: strict head-of-line
    order as the scheduler (queue/core.plan), each job on the GPUs that free up first, preferring ones
    whose engine holds its model (no load then). `warm`: GPU -> model key of an idle engine on it;
    `stats`: per model key; `done`: ids of finished jobs (for --after); `fits`: plan's, which GPUs can
    hold a job's weights (None: all)."""
    free = {g: ZERO for g in gpus}
    model = dict(warm or {})
    parked: dict[int, bool] = {}  # the engine's generator is on the CPU after a best-of-N
    jobs: dict = {}
    for r in running:
        jobs[r.id] = r.left
        for g in r.gpus:
            free[g] = r.left
            model[g] = r.key
            parked[g] = parks_generator(r.spec)
    start_floor = ZERO
    for q in queued:
        as_job = {"id": q.id, "spec": q.spec}  # the form plan() hands `fits`
        usable = [g for g in free if fits is None or fits(as_job, g)]
        if paused or q.held or q.gpus_wanted > len(usable) or (
                q.after is not None and q.after not in done and jobs.get(q.after) is None):
            jobs[q.id] = None  # held, paused, waiting on a job that is not coming, or too big for this box
            continue
        chosen = sorted(usable, key=lambda g: (free[g].seconds, model.get(g) != q.key, g))[:q.gpus_wanted]
        start = _latest([start_floor, *(free[g] for g in chosen)] +
                        ([jobs[q.after]] if jobs.get(q.after) is not None else []))
        cold = not all(model.get(g) == q.key for g in chosen)
        onload = any(parked.get(g) for g in chosen)
        finish = start + job_total(q.spec, stats.get(q.key, {}), cold, onload)
        jobs[q.id] = finish
        for g in chosen:
            free[g], model[g], parked[g] = finish, q.key, parks_generator(q.spec)
        start_floor = start
    counted = [e for e in jobs.values() if e is not None]
    if not counted or (paused and queued):
        return QueueEta(jobs, None)  # nothing to run, or a paused queue that will not finish by itself
    return QueueEta(jobs, _latest(counted))


# -- a job's `phase` column, from its engine events (queue/core.apply stores it) --

# the fields of a phase event that say where the job is (the build key and the rest stay in the log)
PHASE_FIELDS = ("phase", "state", "start", "end", "seconds", "chunk", "num_chunks", "generation",
                "num_generations", "run", "runs", "video", "videos", "trials", "target", "component", "steps",
                "partial", "fast_threshold")


def phase_columns(prev: Mapping | None, ev: Mapping) -> dict:
    """The job columns a phase event sets: `phase` (JSON: where the job is, plus `cold` once it has
    built its engine) and, when a denoise starts, `step` back to 0 (a new chunk's or generation's
    steps are not the last one's)."""
    now = {k: ev[k] for k in PHASE_FIELDS if k in ev}
    built = ev.get("phase") == "loading" and ev.get("component") in (None, "pipeline")
    now["cold"] = bool((prev or {}).get("cold")) or built
    cols = {"phase": json.dumps(now, default=str)}
    if ev.get("phase") == "denoise" and ev.get("state") == "start":
        cols["step"] = 0
    return cols


def started_columns(ev: Mapping) -> dict:
    """The engine's `started` says whether it already holds the job's model: the plan's first guess
    (a load or not) until the first phase event."""
    if not isinstance(ev.get("warm"), bool):
        return {}
    return {"phase": json.dumps({"cold": not ev["warm"]})}
