"""One plain function per request: `op_<name>(daemon, request) -> result` (a coroutine where the
request has to wait for a process). They check the request, act on the Daemon's state and return
what goes back as "result"; a RequestError (or the core's SubmitError / TransitionError) is the
one-sentence refusal. No sockets here, so they are tested on a Daemon with no engines or loop.
"""

from __future__ import annotations

import asyncio
import os

from cosmos_tui import paths, phase_timing
from cosmos_tui.daemon.log import log
from cosmos_tui.queue.core import edit_problem, removal_problem, to_clean
from cosmos_tui.queue.resolve import (SubmitError, check_checkpoints, check_gpu_memory, check_inputs, check_save_path, edit_spec, resolve_spec,
                                      resolved_path)
from cosmos_tui.store import TERMINAL

PROTOCOL_VERSION = 1


class RequestError(ValueError):
    """A request the daemon can't honour; the message goes back to the client as is."""


# -- request fields --


def _job_id(d, req: dict) -> int:
    jid = req.get("job", req.get("id"))
    if not isinstance(jid, int) or isinstance(jid, bool):
        raise RequestError(f"job: expected a job id (an integer), got {jid!r}")
    if d.store.job(jid) is None:
        raise RequestError(f"job {jid} does not exist")
    return jid


def _checked(d, overrides, preset: str | None, cwd: str | None, claimed: set[str], source: str = "") -> dict:
    spec = resolve_spec(overrides, preset, d.gpu_count, source)
    check_inputs(spec, cwd, source)
    if isinstance(overrides, dict) and "save_path" in overrides:
        # a path the user named is refused over a file no job wrote; the preset's path is not theirs to
        # fix from the TUI's form (it has no save_path field), so the store gives it a fresh name instead
        check_save_path(spec, cwd, claimed, source)
    _fits_here(d, spec, cwd, source)
    return spec


def _fits_here(d, spec: dict, cwd: str | None, source: str = "") -> None:
    """What this machine must have for the job, checked at submit, edit and retry: GPUs that can hold its
    weights, and its checkpoints on disk."""
    check_gpu_memory(spec, d.gpu_totals, source)
    check_checkpoints(spec, cwd, source)


def _priority(req: dict) -> int:
    p = req.get("priority", 0)
    if not isinstance(p, int) or isinstance(p, bool):
        raise RequestError(f"priority: expected an integer, got {p!r}")
    return p


def _cwd(req: dict) -> str | None:
    cwd = req.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise RequestError("cwd: expected a directory path")
    return cwd


def _after(d, req: dict) -> int | None:
    after = req.get("after")
    if after is None:
        return None
    if not isinstance(after, int) or isinstance(after, bool) or d.store.job(after) is None:
        raise RequestError(f"after: {after!r} is not the id of a job; give the id of an existing job")
    state = d.store.job(after)["state"]
    if state in ("failed", "cancelled", "interrupted"):
        raise RequestError(f"after: job {after} is {state} and will never finish; retry it first, then "
                           f"submit after the retry")
    return after


# -- the requests --


def op_ping(d, req):
    return {"pong": True, "pid": os.getpid(), "protocol": PROTOCOL_VERSION, "home": str(d.home),
            "started": d.started, "warnings": d.warnings}


def op_submit(d, req):
    cwd = _cwd(req)
    after = _after(d, req)
    spec = _checked(d, req.get("spec"), req.get("preset"), cwd, d.store.claimed_paths())
    jid = d.store.add_job(spec, req.get("preset"), _priority(req), cwd, after=after)
    d.job_log(jid, f"job {jid} queued" + (f" from preset {req.get('preset')}" if req.get("preset") else ""))
    d.wake.set()
    return jid


def op_submit_batch(d, req):
    """All or none; with `partial`, the good items are queued and the bad ones listed:
    {"ids": [...], "refused": [{"item": n, "error": "..."}]}."""
    specs = req.get("specs")
    if not isinstance(specs, list) or not specs:
        raise RequestError("specs: expected a non-empty list of spec objects")
    base = req.get("base") or {}
    if not isinstance(base, dict):
        raise RequestError("base: expected a JSON object of spec fields")
    cwd, priority = _cwd(req), _priority(req)
    claimed = d.store.claimed_paths()
    good, refused = [], []
    for i, s in enumerate(specs):
        try:
            good.append(_checked(d, {**base, **(s if isinstance(s, dict) else {"_": s})}, req.get("preset"),
                                 cwd, claimed, source=f"item {i + 1}: "))
        except SubmitError as err:
            refused.append({"item": i + 1, "error": str(err)})
    if refused and not req.get("partial"):
        raise RequestError("; ".join(r["error"] for r in refused))
    ids = d.store.add_jobs(good, req.get("preset"), priority, cwd) if good else []
    d.wake.set()
    return {"ids": ids, "refused": refused} if req.get("partial") else ids


def op_jobs(d, req):
    states = req.get("states")
    if states is not None and (not isinstance(states, list) or not all(isinstance(s, str) for s in states)):
        raise RequestError("states: expected a list of state names")
    return d.jobs_wire(states)


def op_job(d, req):
    jid = _job_id(d, req)
    row = d.store.job(jid)
    place = None
    if row["state"] == "queued":
        place = [j["id"] for j in d.store.queued()].index(jid) + 1
    return d.job_wire(row, place)


def op_events(d, req):
    jid = _job_id(d, req)
    after = req.get("after", 0)
    if not isinstance(after, int):
        raise RequestError("after: expected an event sequence number")
    return d.store.events(jid, after)


def op_cancel(d, req):
    jid = _job_id(d, req)
    row = d.store.job(jid)
    if row["state"] in TERMINAL:
        raise RequestError(f"job {jid} is already {row['state']}; nothing to cancel")
    if row["state"] != "queued" and d.slurm.owns(jid):
        return d.slurm.cancel(jid)  # scancel; the follower records the end when Slurm reports it
    eng = next((e for e in d.engines if e.job == jid), None)
    if row["state"] == "queued" or eng is None:
        d.finish_cancelled(jid)
        return "cancelled"
    return _cancel_running(d, jid, eng)


async def _cancel_running(d, jid: int, eng):
    await d.stop_job_engine(eng, jid)
    # the exit watcher records the cancellation; wait for it so the reply means "done"
    for _ in range(100):
        if d.store.job(jid)["state"] != "running":
            break
        await asyncio.sleep(0.05)
    return "cancelled"


def op_retry(d, req):
    jid = _job_id(d, req)
    row = d.store.job(jid)
    if row["state"] not in TERMINAL:
        raise RequestError(f"job {jid} is {row['state']}; only finished, failed, cancelled or interrupted jobs can be retried")
    # what may have changed since the first attempt was queued is checked now, not when the retry's turn
    # comes: its input file, the checkpoints, this machine's GPUs (not its save_path: it is the attempt's own)
    spec, cwd = row["spec"], row["cwd"]
    check_inputs(spec, cwd, f"job {jid}: ")
    _fits_here(d, spec, cwd, f"job {jid}: ")
    # same spec, same output path: a long video resumes from the chunks its first attempt saved
    new = d.store.add_job(spec, row["preset"], row["priority"], cwd, attempt_of=jid, front=True)
    d.job_log(new, f"job {new} queued: a new attempt of job {jid}")
    d.wake.set()
    return new


def op_pause(d, req):
    d.set_paused(True, req.get("reason") or "paused by the user")
    return op_queue(d, req)


def op_resume(d, req):
    d.set_paused(False)
    return op_queue(d, req)


def op_move(d, req):
    jid = _job_id(d, req)
    offset, to = req.get("offset", 0), req.get("to")
    if not isinstance(offset, int) or (to is not None and not isinstance(to, int)):
        raise RequestError("offset/to: expected integers")
    try:
        return d.store.move(jid, offset, to)
    except ValueError as err:
        raise RequestError(str(err)) from None


def _set_held(d, req, held: bool):
    jid = _job_id(d, req)
    state = d.store.job(jid)["state"]
    if state != "queued":
        raise RequestError(f"job {jid} is {state}; only a queued job can be {'held' if held else 'released'}")
    d.store.update(jid, held=int(held))
    d.job_log(jid, f"job {jid} {'held' if held else 'released'}")
    d.wake.set()
    return held


def op_hold(d, req):
    return _set_held(d, req, True)


def op_release(d, req):
    return _set_held(d, req, False)


def _job_ids(d, req: dict) -> list[int]:
    ids = req.get("jobs")
    if not isinstance(ids, list) or not ids:
        raise RequestError("jobs: expected a non-empty list of job ids")
    return [_job_id(d, {"job": i}) for i in ids]


def op_remove(d, req):
    """Forget finished jobs (all named ones, or none): rows, events and job logs; outputs stay on
    disk. Returns the ids removed."""
    ids = _job_ids(d, req)
    jobs = d.store.jobs()
    by_id = {j["id"]: j for j in jobs}
    for jid in ids:
        problem = removal_problem(by_id[jid], jobs)
        if problem:
            raise RequestError(problem)
    return _remove(d, ids)


def op_clean(d, req):
    """Remove every finished job (`failed_only`: only failed and interrupted ones). Returns the
    ids removed."""
    failed_only = req.get("failed_only", False)
    if not isinstance(failed_only, bool):
        raise RequestError("failed_only: expected true or false")
    ids = to_clean(d.store.jobs(), failed_only)
    return _remove(d, ids) if ids else []


def _remove(d, ids: list[int]) -> list[int]:
    d.store.remove(ids)
    for jid in ids:
        d.unsaved.pop(jid, None)
        try:
            paths.job_log_path(jid).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log(f"could not delete the log of removed job {jid}: {err}")
    log(f"removed job(s) {', '.join(map(str, ids))}")
    return ids


def op_edit(d, req):
    """Change fields of a queued (or held) job's spec, checked like a submit. Returns the job."""
    jid = _job_id(d, req)
    row = d.store.job(jid)
    problem = edit_problem(row)
    if problem:
        raise RequestError(problem)
    others = {resolved_path(j["cwd"], j["spec"].get("save_path") or "") for j in d.store.jobs() if j["id"] != jid}
    spec = edit_spec(row["spec"], req.get("set"), d.gpu_count, row["cwd"], others)
    _fits_here(d, spec, row["cwd"])
    try:
        d.store.set_spec(jid, spec)
    except ValueError as err:  # it started while we checked
        raise RequestError(str(err)) from None
    changed = sorted(k for k in spec if spec.get(k) != row["spec"].get(k))
    d.job_log(jid, f"job {jid} edited: {', '.join(changed) or 'nothing changed'}")
    d.wake.set()
    return op_job(d, {"job": jid})


def op_queue(d, req):
    counts: dict[str, int] = {}
    for j in d.store.jobs():
        counts[j["state"]] = counts.get(j["state"], 0) + 1
    return {
        "paused": d.paused,
        "reason": d.store.get_meta("pause_reason"),
        "counts": counts,
        "engines": [{"pid": e.pid, "gpus": e.gpus, "job": e.job, "model": dict(e.key)}
                    for e in d.engines],
        "gpu_backend": getattr(d.gpu, "kind", "?"),
        "gpu_count": d.gpu_count,
        "warnings": d.warnings,
        **phase_timing.queue_fields(d.etas()),  # eta_s, eta_partial: until the whole queue is done
    }


def op_gpus(d, req):
    holders = {g: e for e in d.engines for g in e.gpus}
    out = []
    for g in d.gpu.list():
        e = holders.get(g["index"])
        out.append({**g, "job": e.job if e else None, "engine": (("busy" if e.job else "idle") if e else None)})
    return out


def op_log_path(d, req):
    return str(paths.job_log_path(_job_id(d, req)))


def op_shutdown(d, req):
    running = [e.job for e in d.engines if e.job is not None] + list(d.slurm.runs)
    if running and not req.get("force"):
        raise RequestError(
            f"job(s) {', '.join(map(str, running))} are running; cancel them first or stop with force "
            f"(they will be marked interrupted)"
        )
    asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(
        d.shutdown("the daemon was stopped while this job ran; retry it to run it again")))
    return "stopping"


HANDLERS = {name[3:]: fn for name, fn in dict(globals()).items() if name.startswith("op_") and callable(fn)}
