"""The daemon's side of phase-aware progress: what it learns from a job's phase events, and the ETAs
it serves. The rules are in cosmos_tui/queue/eta.py; this module only connects them to the store.

- `record_samples(store, job, ev)`: a phase event arrived. Its measured durations go into the store's
  phase_stats (per model key, remembered across jobs). The job's `phase` column (what it is doing now)
  is queue.core.apply's decision (queue/eta.phase_columns).
- `queue_etas(store, ...)`: every running and queued job's ETA and the whole queue's, for the job
  dicts (`eta_s`, `eta_partial`, `phase`) and the queue response (`eta_s`, `eta_partial`).
"""

from __future__ import annotations

import time
from typing import Iterable

from cosmos_tui.queue import eta
from cosmos_tui.queue.core import model_key

def where(ph: dict) -> str:
    """'chunk 2/6', 'generation 1/4', 'run 2/4', 'video 3/4, 5 trials': the unit a phase belongs to."""
    for k, n in (("chunk", "num_chunks"), ("generation", "num_generations"), ("run", "runs")):
        if ph.get(k) is not None:
            return f"{k} {ph[k]}/{ph.get(n) or '?'}"
    if ph.get("video") is not None:
        return f"video {ph['video']}/{ph.get('videos') or '?'}, {ph.get('trials') or '?'} trials"
    return ""


def describe(ev: dict) -> str:
    """One job-log line for a phase event."""
    name = str(ev.get("phase") or "?")
    what = " ".join(str(ev[k]) for k in ("component", "target") if ev.get(k))
    head = f"phase {name}" + (f" ({what})" if what else "")
    at = where(ev)
    at = f" [{at}]" if at else ""
    if ev.get("state") == "start":
        return f"{head} started{at}"
    secs = ev.get("seconds")
    took = f" in {secs:.2f} s" if isinstance(secs, (int, float)) else ""
    return f"{head} {'done' if ev.get('ok') else 'stopped'}{took}{at}"


def key_of(spec: dict) -> str:
    return eta.key_id(model_key(spec))


def record_samples(store, job: int, ev: dict, warn=None) -> None:
    """Fold a phase end event's measured durations into the store's phase_stats, under the job's model
    key. Timings that can't be stored are reported to `warn` and skipped: they only make later ETAs
    better, and must not stop the job."""
    samples = eta.samples(ev)
    if not samples:
        return
    try:
        row = store.job(job)
        if row is None:
            return
        key = key_of(row["spec"])
        for stat, seconds in samples:
            store.add_phase_sample(key, stat, seconds)
    except Exception as err:  # noqa: BLE001 - see the docstring
        if warn is not None:
            warn(f"could not store the phase timings of job {job} ({type(err).__name__}: {err}); "
                 f"ETAs of its model may be off")


def queue_etas(store, gpus: list[int], engines: Iterable, paused: bool, skip: Iterable[int] = (),
               now: float | None = None, fits=None) -> eta.QueueEta:
    """ETAs of the running and queued jobs (`skip`: ids whose state changed only in memory).
    `engines`: EngineViews (key, gpus, job); an idle one makes its GPUs warm for its model;
    `fits`: which GPUs can hold a job (queue/core.plan's)."""
    now = time.time() if now is None else now
    skip = set(skip)
    stats = store.phase_stats()
    rows = [r for r in store.jobs(("running", "queued")) if r["id"] not in skip]
    running, queued = [], []
    for r in rows:
        key = key_of(r["spec"])
        if r["state"] == "running":
            left = eta.remaining(r["spec"], stats.get(key, {}), r.get("phase"), now, r.get("step"),
                                 r.get("sec_per_step"), r.get("chunk") or r.get("generation"))
            running.append(eta.Running(r["id"], tuple(r.get("gpus") or ()), key, left, r["spec"]))
        else:
            queued.append(eta.Queued(r["id"], r["spec"], key, int(r.get("gpus_wanted") or 1),
                                     bool(r.get("held")), r.get("after")))
    # only the jobs some queued job runs --after matter (not every finished job of the history)
    afters = {q.after for q in queued if q.after is not None}
    done = {a for a in afters if (store.job(a) or {}).get("state") == "done"}
    warm = {g: eta.key_id(e.key) for e in engines if e.job is None and not e.dead for g in e.gpus}
    return eta.queue_eta(running, queued, list(gpus), stats, warm=warm, paused=paused, done=done, fits=fits)


def wire_fields(row: dict, etas: eta.QueueEta) -> dict:
    """`phase`, `eta_s` (seconds until the job is done; queued jobs include their wait) and
    `eta_partial` (true: some phase of its model was never measured, so it is a lower bound)."""
    est = _known(etas.jobs.get(row["id"]) if row["state"] in ("running", "queued") else None)
    return {
        "phase": row.get("phase") if row["state"] == "running" else None,
        "eta_s": round(est.seconds, 1) if est is not None else None,
        "eta_partial": bool(est.partial) if est is not None else False,
    }


def _known(est: eta.Estimate | None) -> eta.Estimate | None:
    # nothing measured at all is no estimate, not "at least 0 s"
    return None if est is None or (est.partial and est.seconds == 0) else est


def queue_fields(etas: eta.QueueEta) -> dict:
    total = _known(etas.total)
    return {"eta_s": round(total.seconds, 1) if total is not None else None,
            "eta_partial": bool(total.partial) if total is not None else False}
