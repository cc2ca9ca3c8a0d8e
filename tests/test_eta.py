"""The phase-aware ETA on plain data (cosmos_tui/queue/eta.py). Every timing here is a multiple of 1/4,
so all sums are exact in binary floating point and the expected numbers are compared with ==."""

from __future__ import annotations

from cosmos_tui.queue import eta
from cosmos_tui.queue.eta import Estimate, Queued, Running, Stat

# one model's measured seconds per unit
STATS = {
    "loading": Stat(40.0, 3), "warmup": Stat(20.0, 3), "guardrail_text": Stat(0.5, 9), "refine": Stat(4.0, 9),
    "text_encode": Stat(0.25, 9), "vae_encode": Stat(1.0, 9), "denoise_step": Stat(2.0, 90),
    "vae_decode": Stat(3.0, 9), "guardrail_video": Stat(1.5, 9), "writing": Stat(0.75, 9),
    "critic_load": Stat(10.0, 2), "critic_trial": Stat(5.0, 10),
}
PLAIN = {"disable_guardrail": True, "disable_prompt_refiner": True}
# one plain generation of n steps: text encode + VAE encode + (n + 1) evaluations + VAE decode
GEN = lambda n: 0.25 + 1.0 + 2.0 * (n + 1) + 3.0  # noqa: E731


def test_what_a_phase_end_teaches():
    end = {"event": "phase", "state": "end", "ok": True}
    assert eta.samples({**end, "phase": "vae_decode", "seconds": 3.0}) == [("vae_decode", 3.0)]
    # 36 evaluations of a warm pipeline: seconds per evaluation
    assert eta.samples({**end, "phase": "denoise", "seconds": 72.0, "units": 36, "cold": False}) == [
        ("denoise_step", 2.0)]
    # a cold one: the first step's compilation goes to warmup, not into every step
    assert eta.samples({**end, "phase": "denoise", "seconds": 92.0, "units": 36, "cold": True,
                        "first_step_s": 22.0}) == [("denoise_step", 2.0), ("warmup", 20.0)]
    assert eta.samples({**end, "phase": "critic", "seconds": 25.0, "units": 5, "trials": 5}) == [("critic_trial", 5.0)]
    assert eta.samples({**end, "phase": "guardrail", "target": "video", "seconds": 1.5}) == [("guardrail_video", 1.5)]
    assert eta.samples({**end, "phase": "guardrail", "target": "prompt", "seconds": 0.5}) == [("guardrail_text", 0.5)]
    assert eta.samples({**end, "phase": "loading", "component": "critic", "seconds": 10.0}) == [("critic_load", 10.0)]
    # nothing from a start, a phase that failed, or garbage
    assert eta.samples({**end, "state": "start", "phase": "refine", "seconds": 4.0}) == []
    assert eta.samples({**end, "ok": False, "phase": "denoise", "seconds": 1.0, "units": 5}) == []
    assert eta.samples({**end, "phase": "denoise", "seconds": "soon"}) == []
    assert eta.samples({**end, "phase": "dreaming", "seconds": 1.0}) == []


def test_blend_is_the_mean_at_first_then_follows_a_change():
    s = eta.blend(None, 4.0)
    s = eta.blend(s, 2.0)
    assert s == Stat(3.0, 2)  # mean of two
    for _ in range(20):
        s = eta.blend(s, 8.0)
    assert s.samples == 22 and 7.9 < s.seconds < 8.0  # moves towards the new speed, not stuck at the mean


def test_a_single_video_cold_and_warm():
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    assert eta.job_total(spec, STATS, cold=False) == Estimate(GEN(4) + 0.75)
    assert eta.job_total(spec, STATS, cold=True) == Estimate(40.0 + 20.0 + GEN(4) + 0.75)
    full = {"mode": "video2world", "num_steps": 4}
    checks = 0.5 + 4.0 + 0.5 + 1.5  # prompt check, refine, refined-prompt check, video check
    assert eta.job_total(full, STATS, cold=False).seconds == GEN(4) + 0.75 + checks
    bench = {**spec, "benchmark": True}  # four runs, one write
    assert eta.job_total(bench, STATS, cold=False).seconds == 4 * GEN(4) + 0.75
    # run 2 decoded: runs 3 and 4 and the write (which the engine reports as part of the last run)
    decoded = {"phase": "vae_decode", "state": "end", "run": 2, "runs": 4}
    assert eta.remaining(bench, STATS, decoded, now=0.0).seconds == 2 * GEN(4) + 0.75
    writing = {"phase": "writing", "state": "start", "start": 0.0, "run": 4, "runs": 4}
    assert eta.remaining(bench, STATS, writing, now=0.5).seconds == 0.25


def test_a_four_step_job_plans_five_evaluations_and_counts_down_by_step():
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    phase = {"phase": "denoise", "state": "start", "start": 0.0}
    # 3 of 4 steps done: step 4 and the final clean pass left (2 evaluations), then decode and write
    assert eta.remaining(spec, STATS, phase, now=100.0, step=3) == Estimate(2 * 2.0 + 3.0 + 0.75)


def test_long_video_counts_the_chunks_left():
    spec = {"mode": "lvg", "num_chunks": 6, "num_steps": 35, **PLAIN}
    per_chunk = GEN(35) + 0.75  # every chunk writes the partial video
    assert eta.job_total(spec, STATS, cold=False).seconds == 6 * per_chunk
    # chunk 3 of 6, 10 of 35 steps done: 26 evaluations of chunk 3, its decode and write, 3 chunks more
    phase = {"phase": "denoise", "state": "start", "start": 0.0, "chunk": 3, "num_chunks": 6}
    left = eta.remaining(spec, STATS, phase, now=50.0, step=10)
    assert left == Estimate(26 * 2.0 + 3.0 + 0.75 + 3 * per_chunk)
    # the last chunk's write ended: nothing left
    end = {"phase": "writing", "state": "end", "chunk": 6, "num_chunks": 6}
    assert eta.remaining(spec, STATS, end, now=0.0) == Estimate(0.0)


def test_best_of_n_counts_generations_and_critic_trials():
    spec = {"mode": "bestofn", "num_generations": 4, "num_critic_trials": 5, "num_steps": 35}
    gen = 0.5 + 4.0 + 0.5 + GEN(35) + 1.5 + 0.75  # checks, refine, sampling, video check, write
    critic = 10.0 + 4 * 5 * 5.0  # load, then 5 trials for each of 4 videos
    assert eta.job_total(spec, STATS, cold=False).seconds == 4 * gen + critic
    # generation 2 decoding for 1 s already (of 3): the rest of it, two more generations, the critic
    phase = {"phase": "vae_decode", "state": "start", "start": 10.0, "generation": 2, "num_generations": 4}
    assert eta.remaining(spec, STATS, phase, now=11.0).seconds == 2.0 + 1.5 + 0.75 + 2 * gen + critic
    # the refined prompt's check of generation 3 ended: what follows it, not the refine again
    phase = {"phase": "guardrail", "target": "refined_prompt", "state": "end", "generation": 3}
    assert eta.remaining(spec, STATS, phase, now=0.0).seconds == gen - (0.5 + 4.0 + 0.5) + gen + critic
    # critic of video 3 running: its trials (elapsed time off), then video 4's
    phase = {"phase": "critic", "state": "start", "start": 0.0, "video": 3, "videos": 4, "trials": 5}
    assert eta.remaining(spec, STATS, phase, now=5.0) == Estimate(25.0 - 5.0 + 25.0)


def test_a_cold_job_pays_the_load_and_the_first_steps_compilation():
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    loading = {"phase": "loading", "state": "start", "start": 0.0, "component": "pipeline", "cold": True}
    assert eta.remaining(spec, STATS, loading, now=10.0) == Estimate(30.0 + 20.0 + GEN(4) + 0.75)
    denoise = {"phase": "denoise", "state": "start", "start": 0.0, "cold": True}
    assert eta.remaining(spec, STATS, denoise, now=0.0, step=0).seconds == 20.0 + 5 * 2.0 + 3.0 + 0.75
    assert eta.remaining(spec, STATS, denoise, now=0.0, step=1).seconds == 4 * 2.0 + 3.0 + 0.75
    # before any phase event: the whole plan, load included, unless the engine said it holds the model
    assert eta.remaining(spec, STATS, None, now=0.0) == eta.job_total(spec, STATS, cold=True)
    assert eta.remaining(spec, STATS, {"cold": False}, now=0.0) == eta.job_total(spec, STATS, cold=False)


def test_unmeasured_phases_make_a_partial_lower_bound_and_the_jobs_own_step_time_helps():
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    phase = {"phase": "denoise", "state": "start", "start": 0.0}
    nothing = eta.remaining(spec, {}, phase, now=0.0, step=1)
    assert nothing.partial and nothing.seconds == 0.0 and "denoise_step" in nothing.missing
    own = eta.remaining(spec, {}, phase, now=0.0, step=1, sec_per_step=2.0)
    assert own.seconds == 4 * 2.0 and own.partial and own.missing == {"vae_decode", "writing"}
    assert not eta.remaining(spec, STATS, phase, now=0.0, step=1).partial
    # an engine that reports steps but no phases: taken to be in the denoise of its chunk
    lvg = {"mode": "lvg", "num_chunks": 3, "num_steps": 4, **PLAIN}
    assert eta.remaining(lvg, STATS, None, now=0.0, step=1, unit=2) == Estimate(4 * 2.0 + 3.0 + 0.75 + GEN(4) + 0.75)


def test_queue_eta_lays_jobs_on_gpus_in_order():
    a, b = eta.key_id(("2B", "720")), eta.key_id(("14B", "720"))
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    one = GEN(4) + 0.75  # a warm run
    stats = {a: STATS, b: STATS}
    running = [Running(1, (0,), a, Estimate(100.0))]
    queued = [Queued(2, spec, a), Queued(3, spec, b), Queued(4, spec, a, gpus_wanted=2)]
    q = eta.queue_eta(running, queued, [0, 1], stats, warm={1: b})
    # job 2 takes GPU 1 now (free first), where an idle engine holds model b: it must load (cold)
    assert q.jobs[2] == Estimate(60.0 + one)
    # job 3 (model b) waits for the first free GPU: GPU 1 after job 2 (GPU 0 frees at 100)
    assert q.jobs[3] == Estimate(min(100.0, 60.0 + one) + 60.0 + one)
    # job 4 wants both GPUs: it starts when the later of them is free, and loads (a 1-GPU engine won't do)
    assert q.jobs[4].seconds == max(100.0, q.jobs[3].seconds) + 60.0 + one
    assert q.total == q.jobs[4] and q.jobs[1] == Estimate(100.0)


def test_queue_eta_reuses_a_warm_engine_and_keeps_head_of_line_order():
    a = eta.key_id(("2B",))
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    one = GEN(4) + 0.75
    q = eta.queue_eta([], [Queued(1, spec, a), Queued(2, spec, a)], [0], {a: STATS}, warm={0: a})
    assert q.jobs[1] == Estimate(one) and q.jobs[2] == Estimate(2 * one)  # no load for either
    # two free GPUs, the warm engine on the second: the job goes there and loads nothing
    q = eta.queue_eta([], [Queued(1, spec, a)], [0, 1], {a: STATS}, warm={1: a})
    assert q.jobs[1] == Estimate(one)
    # a 2-GPU job at the head holds back the 1-GPU job behind it, even though GPU 1 is free now
    running = [Running(9, (0,), a, Estimate(50.0))]
    q = eta.queue_eta(running, [Queued(1, spec, a, gpus_wanted=2), Queued(2, spec, a)], [0, 1], {a: STATS})
    assert q.jobs[1].seconds == 50.0 + 60.0 + one
    assert q.jobs[2].seconds >= 50.0  # starts no earlier than the job ahead of it


def test_queue_eta_puts_a_job_only_on_gpus_that_can_hold_it():
    a = eta.key_id(("2B",))
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    one = GEN(4) + 0.75
    # GPU 1 is busy for 50 s and is the only one that holds job 1: it waits for it, though GPU 0 is free now
    running = [Running(9, (1,), a, Estimate(50.0))]
    only_1 = lambda job, g: g == 1  # noqa: E731
    q = eta.queue_eta(running, [Queued(1, spec, a)], [0, 1], {a: STATS}, fits=only_1)
    assert q.jobs[1] == Estimate(50.0 + one)
    assert eta.queue_eta(running, [Queued(1, spec, a)], [0, 1], {a: STATS}).jobs[1] == Estimate(60.0 + one)
    # no GPU can hold it: not counted (submit refuses such a job; a stored one must not hang the total)
    assert eta.queue_eta([], [Queued(1, spec, a)], [0], {a: STATS}, fits=only_1).jobs[1] is None


def test_queue_eta_leaves_out_held_paused_and_dependent_jobs():
    a = eta.key_id(("2B",))
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    one = GEN(4) + 0.75
    q = eta.queue_eta([], [Queued(1, spec, a, held=True), Queued(2, spec, a, after=1), Queued(3, spec, a)],
                      [0], {a: STATS}, warm={0: a})
    assert q.jobs[1] is None and q.jobs[2] is None and q.jobs[3] == Estimate(one)
    q = eta.queue_eta([], [Queued(1, spec, a), Queued(2, spec, a, after=1)], [0], {a: STATS}, warm={0: a})
    assert q.jobs[2] == Estimate(2 * one)  # after job 1: counted once it is in the plan
    q = eta.queue_eta([Running(7, (0,), a, Estimate(5.0))], [Queued(1, spec, a)], [0], {a: STATS}, paused=True)
    assert q.jobs[1] is None and q.total is None  # a paused queue does not finish by itself
    q = eta.queue_eta([Running(7, (0,), a, Estimate(5.0))], [], [0], {a: STATS}, paused=True)
    assert q.total == Estimate(5.0)  # paused with nothing queued: the running job's end is the queue's
    assert eta.queue_eta([], [], [0], {}).total is None
    # a model never measured: partial, and the queue's total says so
    q = eta.queue_eta([], [Queued(1, spec, eta.key_id(("14B",)))], [0], {a: STATS})
    assert q.jobs[1].partial and q.total.partial


def test_eta_imports_no_asyncio_sockets_textual_or_torch():
    import subprocess
    import sys

    code = ("import sys, cosmos_tui.queue.eta\n"
            "print(' '.join(m for m in ('asyncio', 'socket', 'textual', 'torch') if m in sys.modules))")
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == ""


def test_a_job_after_best_of_n_brings_the_parked_generator_back():
    spec = {"mode": "video2world", "num_steps": 4, **PLAIN}
    stats = {**STATS, "onload": Stat(6.0, 2)}
    assert eta.job_total(spec, stats, cold=False, onload=True).seconds == 6.0 + GEN(4) + 0.75
    # never measured (a CPU parks nothing): nothing to add, and no reason to call the estimate partial
    assert eta.job_total(spec, STATS, cold=False, onload=True) == Estimate(GEN(4) + 0.75)
    onload = {"phase": "loading", "component": "generator", "state": "start", "start": 0.0}
    assert eta.remaining(spec, stats, onload, now=2.0).seconds == 4.0 + GEN(4) + 0.75
    assert eta.samples({"event": "phase", "state": "end", "ok": True, "phase": "loading", "component": "generator",
                        "seconds": 6.0}) == [("onload", 6.0)]
    # in the queue: the job behind a best-of-N on its GPU pays the onload, one behind a plain video doesn't
    a = eta.key_id(("2B",))
    bon = {"mode": "bestofn", "num_generations": 2, "num_critic_trials": 1, **PLAIN}
    q = eta.queue_eta([Running(1, (0,), a, Estimate(10.0), bon)], [Queued(2, spec, a)], [0], {a: stats})
    assert q.jobs[2] == Estimate(10.0 + 6.0 + GEN(4) + 0.75)
    q = eta.queue_eta([Running(1, (0,), a, Estimate(10.0), spec)], [Queued(2, spec, a)], [0], {a: stats})
    assert q.jobs[2] == Estimate(10.0 + GEN(4) + 0.75)


def test_fast_mode_steps_are_timed_apart_and_borrow_exact_ones_until_measured():
    spec = {"mode": "video2world", "num_steps": 4, "fast_threshold": 0.1, **PLAIN}
    end = {"event": "phase", "state": "end", "ok": True, "phase": "denoise", "units": 5, "fast_threshold": 0.1}
    assert eta.samples({**end, "seconds": 5.0}) == [("denoise_step_fast", 1.0)]
    assert eta.job_total(spec, STATS, cold=False) == Estimate(GEN(4) + 0.75)  # exact steps: a ceiling
    fast = {**STATS, "denoise_step_fast": Stat(1.0, 3)}
    assert eta.job_total(spec, fast, cold=False) == Estimate(GEN(4) - 5 * 2.0 + 5 * 1.0 + 0.75)
    assert eta.job_total({**spec, "fast_threshold": 0.0}, fast, cold=False) == Estimate(GEN(4) + 0.75)
