"""The daemon remembers phase durations per model key (store migration 3) and serves phase-aware ETAs:
the store and the recording hook on a plain Store, then the whole path through the daemon and the
fake engine's phase events."""

from __future__ import annotations

from pathlib import Path

from cosmos_tui import phase_timing
from cosmos_tui.queue import eta
from cosmos_tui.queue.core import apply
from cosmos_tui.store import Store

SPEC = {"mode": "video2world", "model_size": "2B", "num_steps": 4, "disable_guardrail": True,
        "disable_prompt_refiner": True, "prompt": "p", "save_path": "out.mp4"}


def on_phase(s: Store, jid: int, ev: dict, warn=None) -> dict:
    """What the daemon does with a phase event (daemon/service.py): the core's columns, the timings."""
    phase_timing.record_samples(s, jid, ev, warn=warn)
    return apply(s.job(jid), ev).columns


def end(phase: str, seconds: float, **kw) -> dict:
    return {"event": "phase", "job": 1, "phase": phase, "state": "end", "ok": True, "start": 100.0,
            "end": 100.0 + seconds, "seconds": seconds, "key": {"model_size": "2B"}, **kw}


def test_phase_samples_are_kept_per_model_key_across_store_reopens(tmp_path):
    s = Store(tmp_path / "jobs.db")
    jid = s.add_job(SPEC)
    for cols in (on_phase(s, jid, end("vae_decode", 3.0)),
                 on_phase(s, jid, end("vae_decode", 5.0)),
                 on_phase(s, jid, end("denoise", 10.0, units=5, cold=False))):
        s.update(jid, **cols)
    other = s.add_job({**SPEC, "model_size": "14B", "save_path": "b.mp4"})
    on_phase(s, other, end("vae_decode", 30.0))
    s.close()
    s = Store(tmp_path / "jobs.db")  # a daemon restart: the timings are still there
    stats = s.phase_stats()
    k2, k14 = phase_timing.key_of(SPEC), phase_timing.key_of({**SPEC, "model_size": "14B"})
    assert stats[k2]["vae_decode"] == eta.Stat(4.0, 2) and stats[k2]["denoise_step"] == eta.Stat(2.0, 1)
    assert stats[k14] == {"vae_decode": eta.Stat(30.0, 1)}  # never mixed with the 2B's
    assert s.job(jid)["phase"]["phase"] == "denoise" and s.job(jid)["phase"]["state"] == "end"


def test_on_phase_tracks_the_current_phase_cold_flag_and_resets_steps(tmp_path):
    s = Store(tmp_path / "jobs.db")
    jid = s.add_job({**SPEC, "mode": "lvg", "num_chunks": 2})
    s.update(jid, **on_phase(s, jid, end("loading", 40.0, component="pipeline")))
    s.update(jid, step=4)  # chunk 1 sampled its 4 steps
    cols = on_phase(s, jid, {"event": "phase", "phase": "denoise", "state": "start", "start": 1.0,
                                          "chunk": 2, "num_chunks": 2, "key": {}})
    assert cols["step"] == 0  # chunk 2's steps count from 0, not from chunk 1's 4
    s.update(jid, **cols)
    ph = s.job(jid)["phase"]
    assert ph["cold"] is True and ph["chunk"] == 2 and "key" not in ph
    back = on_phase(s, s.add_job({**SPEC, "save_path": "g.mp4"}),
                                 end("loading", 6.0, component="generator"))
    assert '"cold": false' in back["phase"]  # a parked generator coming back is no fresh engine
    assert apply({}, {"event": "started", "warm": True}).columns == {"phase": '{"cold": false}'}
    assert apply({}, {"event": "started"}).columns == {}  # an engine that doesn't say
    assert phase_timing.describe(end("denoise", 2.5, chunk=2, num_chunks=6)) == \
        "phase denoise done in 2.50 s [chunk 2/6]"


def test_timings_that_cannot_be_stored_do_not_stop_the_job(tmp_path, monkeypatch):
    s = Store(tmp_path / "jobs.db")
    jid = s.add_job(SPEC)

    def full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(s, "add_phase_sample", full)
    said = []
    phase_timing.record_samples(s, jid, end("vae_decode", 3.0), warn=said.append)  # no exception
    assert len(said) == 1 and "No space left" in said[0] and f"job {jid}" in said[0]


def test_queue_etas_from_the_store(tmp_path):
    s = Store(tmp_path / "jobs.db")
    key = phase_timing.key_of(SPEC)
    for stat, secs in (("text_encode", 0.25), ("vae_encode", 1.0), ("denoise_step", 2.0), ("vae_decode", 3.0),
                       ("writing", 0.75), ("loading", 40.0), ("warmup", 20.0)):
        s.add_phase_sample(key, stat, secs)
    a = s.add_job(SPEC)
    b = s.add_job({**SPEC, "save_path": "b.mp4"})
    s.update(a, state="running", gpus=[0], step=2,
             phase='{"phase": "denoise", "state": "start", "start": 0.0, "cold": false}')
    q = phase_timing.queue_etas(s, [0], [], paused=False, now=10.0)
    one = 0.25 + 1.0 + 5 * 2.0 + 3.0 + 0.75
    assert q.jobs[a] == eta.Estimate(3 * 2.0 + 3.0 + 0.75)  # 3 evaluations left, decode, write
    # b follows on GPU 0, on the engine a leaves warm with the same model: no load
    assert q.jobs[b] == eta.Estimate(q.jobs[a].seconds + one)
    wire = phase_timing.wire_fields(s.job(b), q)
    assert wire == {"phase": None, "eta_s": round(q.jobs[b].seconds, 1), "eta_partial": False}
    assert phase_timing.queue_fields(q)["eta_s"] == round(q.jobs[b].seconds, 1)
    # --after a job that is done: counted; --after one that is still queued behind: not yet
    d = s.add_job({**SPEC, "save_path": "d.mp4"})
    s.update(d, state="running")
    s.update(d, state="done")
    c = s.add_job({**SPEC, "save_path": "c.mp4"}, after=d)
    e = s.add_job({**SPEC, "save_path": "e.mp4"}, after=s.add_job({**SPEC, "save_path": "f.mp4"}, priority=-1))
    q = phase_timing.queue_etas(s, [0], [], paused=False, now=10.0)
    assert q.jobs[c] is not None and q.jobs[e] is None
    # nothing measured for a model: no ETA at all rather than "at least 0 s"
    fresh = Store(tmp_path / "fresh.db")
    c = fresh.add_job(SPEC)
    assert phase_timing.wire_fields(fresh.job(c), phase_timing.queue_etas(fresh, [0], [], False))["eta_s"] is None


def test_the_daemon_learns_phase_durations_and_serves_eta_and_phase(daemon, tmp_path, wait_until):
    base = {"num_gpus": 2, "disable_guardrail": True, "disable_prompt_refiner": True}
    # 10 steps of 0.1 s: the model's step time, so the jobs below are planned at a second or more
    first = daemon.submit({**base, "prompt": "phases sleep:1", "num_steps": 10, "save_path": str(tmp_path / "a.mp4")})
    wait_until(lambda: daemon.job(first)["state"] == "done", 60, what="the first job")
    log = Path(daemon.log_path(first)).read_text()
    assert "phase loading (pipeline) done in" in log and "phase denoise done in" in log
    assert daemon.job(first)["eta_s"] is None and daemon.job(first)["phase"] is None  # over
    # a long job on both GPUs, one more of the same model queued behind it
    long = daemon.submit({**base, "prompt": "phases sleep:3", "num_steps": 30, "save_path": str(tmp_path / "b.mp4")})
    after = daemon.submit({**base, "prompt": "phases sleep:1", "num_steps": 10, "save_path": str(tmp_path / "c.mp4")})
    running = wait_until(lambda: (j := daemon.job(long))["state"] == "running" and (j.get("phase") or {}).get(
        "phase") == "denoise" and j, 60, what="the long job to be denoising")
    assert running["eta_s"] is not None and running["eta_partial"] is False
    jobs = {j["id"]: j for j in daemon.jobs()}
    if jobs[long]["state"] == "running":  # (it may just have ended: then there is nothing to compare)
        # its own ~1.1 s after the long job's remaining time (both rounded to 0.1 s)
        assert jobs[after]["state"] == "queued" and jobs[after]["eta_s"] >= jobs[long]["eta_s"] + 0.5
    queue = daemon.queue()
    assert "eta_s" in queue and "eta_partial" in queue
    wait_until(lambda: daemon.job(after)["state"] == "done", 60, what="the queued job")
    assert daemon.queue()["eta_s"] is None  # nothing left to run
