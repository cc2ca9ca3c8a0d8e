"""plan(): the scheduling rules on plain data, no daemon, no processes."""

from __future__ import annotations

import pytest

from cosmos_tui.queue.core import EngineView, Evict, Start, dependency_failed, model_key, plan, waiting_on


def job(jid: int, gpus: int = 1, size: str = "2B") -> dict:
    return {"id": jid, "gpus_wanted": gpus, "spec": {"model_size": size, "num_gpus": gpus}}


K2 = model_key(job(0)["spec"])
K14 = model_key(job(0, size="14B")["spec"])


def test_jobs_on_disjoint_gpus_run_side_by_side():
    assert plan([job(1), job(2)], [0, 1], []) == [Start(1, (0,), K2), Start(2, (1,), K2)]


def test_busy_gpus_are_not_planned_again():
    eng = EngineView(7, K2, (0,), job=9)
    assert plan([job(1), job(2)], [0, 1], [eng]) == [Start(1, (1,), K2)]


def test_an_idle_engine_with_the_same_model_is_reused():
    warm = EngineView(7, K2, (1,))
    assert plan([job(1)], [0, 1], [warm]) == [Start(1, (1,), K2, reuse_engine=7)]


def test_an_idle_engine_with_another_model_is_evicted_when_its_gpus_are_needed():
    other = EngineView(7, K14, (0,))
    assert plan([job(1)], [0], [other]) == [Evict(7), Start(1, (0,), K2)]


def test_free_gpus_are_taken_before_an_idle_engine_of_another_model():
    other = EngineView(7, K14, (0,))
    assert plan([job(1)], [0, 1], [other]) == [Start(1, (1,), K2)]


def test_a_dead_engine_is_not_reused():
    dead = EngineView(7, K2, (0,), dead=True)
    assert plan([job(1)], [0], [dead]) == [Evict(7), Start(1, (0,), K2)]


def test_a_two_gpu_job_at_the_head_blocks_the_queue():
    busy = EngineView(7, K2, (0,), job=9)
    # strict order (as the daemon always did): the 1-GPU job behind waits although GPU 1 is free
    assert plan([job(1, gpus=2), job(2)], [0, 1], [busy]) == []


def test_a_job_with_a_warm_engine_starts_even_when_the_next_is_blocked():
    busy = EngineView(7, K2, (0,), job=9)
    warm = EngineView(8, K2, (1,))
    assert plan([job(1), job(2)], [0, 1], [busy, warm]) == [Start(1, (1,), K2, reuse_engine=8)]


def test_a_paused_queue_plans_nothing():
    assert plan([job(1)], [0], [], paused=True) == []


def test_a_held_job_is_passed_over_and_does_not_block_the_queue():
    assert plan([{**job(1), "held": True}, job(2)], [0], []) == [Start(2, (0,), K2)]


def test_a_job_after_another_waits_until_it_is_done():
    dependent = {**job(2), "after": 1}
    assert plan([dependent, job(3)], [0], []) == [Start(3, (0,), K2)]
    assert plan([dependent], [0], [], done={1}) == [Start(2, (0,), K2)]


def test_a_dependency_that_failed_or_was_cancelled_fails_the_dependent():
    dependent = {**job(2), "after": 1}
    assert dependency_failed(dependent, {1: "failed"}) and dependency_failed(dependent, {1: "cancelled"})
    assert not dependency_failed(dependent, {1: "running"}) and not dependency_failed(job(3), {})
    assert waiting_on(dependent, set()) == "after job 1" and waiting_on({**job(1), "held": 1}, set()) == "held"


# -- apply(): what an engine event does to a job --

from cosmos_tui.queue.core import CANCELLED_ERROR, Decision, apply, wait_reason  # noqa: E402
from cosmos_tui.queue.job import Job, WireError  # noqa: E402

RUNNING = {"id": 4, "state": "running", "sec_per_step": None, "peak_mem": None}


def test_a_step_stores_progress_and_a_running_mean_of_step_time():
    first = apply(RUNNING, {"event": "step", "job": 4, "step": 1, "total": 10, "seconds": 2.0, "chunk": 2})
    assert first == Decision(columns={"step": 1, "total_steps": 10, "chunk": 2, "sec_per_step": 2.0})
    # 0.7 * 2.0 + 0.3 * 1.0: both sides compute the same expression, so equality is exact
    later = apply({**RUNNING, "sec_per_step": 2.0}, {"event": "step", "step": 2, "total": 10, "seconds": 1.0})
    assert later.columns["sec_per_step"] == 0.7 * 2.0 + 0.3 * 1.0
    assert later.state is None and not later.frees_engine


def test_memory_keeps_the_peak_and_outputs_are_listed():
    assert apply({**RUNNING, "peak_mem": 500}, {"event": "memory", "peak": 300}).columns == {"peak_mem": 500}
    assert apply(RUNNING, {"event": "output", "path": "/o/a.mp4"}).outputs == (("/o/a.mp4", "video"),)
    assert apply(RUNNING, {"event": "critic", "score": 3}).critic
    assert apply(RUNNING, {"event": "log", "message": "hi"}) == Decision()


def test_relative_outputs_are_stored_under_the_directory_the_job_was_submitted_from():
    # the engine runs in the job's cwd and names files as the spec gave them; `show` and Play run elsewhere
    job = {**RUNNING, "cwd": "/home/u/proj"}
    assert apply(job, {"event": "output", "path": "output/a.mp4", "kind": "spec"}).outputs == (
        ("/home/u/proj/output/a.mp4", "spec"),)
    assert apply(job, {"event": "finished", "outputs": ["out/../b.mp4", "/abs/c.mp4"]}).outputs == (
        ("/home/u/proj/b.mp4", "video"), ("/abs/c.mp4", "video"))


def test_finished_makes_the_job_done_and_frees_the_engine():
    d = apply(RUNNING, {"event": "finished", "t": 9.0, "outputs": ["/o/a.mp4"]})
    assert d.state == "done" and d.state_columns == {"finished": 9.0} and d.frees_engine
    assert d.outputs == (("/o/a.mp4", "video"),) and not d.restart_engine and d.pause is None


def test_an_oom_fails_the_job_restarts_the_engine_and_pauses_the_queue():
    d = apply(RUNNING, {"event": "failed", "t": 5.0, "reason": "oom", "error": "CUDA out of memory"})
    assert d.state == "failed" and d.frees_engine and d.restart_engine
    assert d.state_columns == {"finished": 5.0, "error": "CUDA out of memory", "reason": "oom"}
    assert d.pause.startswith("job 4 ran out of GPU memory")
    crash = apply(RUNNING, {"event": "failed", "t": 5.0, "error": "boom"})
    assert crash.state_columns["reason"] == "crash" and not crash.restart_engine and crash.pause is None


def test_a_cancelled_failure_cancels_and_the_kill_decides_while_cancelling():
    d = apply(RUNNING, {"event": "failed", "t": 1.0, "reason": "cancelled"})
    assert d.state == "cancelled" and d.state_columns["error"] == CANCELLED_ERROR
    # while the daemon kills the engine, its last word is not even stored: the exit records the cancel
    assert apply(RUNNING, {"event": "finished"}, cancelling=True) == Decision(record=False)
    assert apply(RUNNING, {"event": "step", "step": 1, "total": 2}, cancelling=True).columns["step"] == 1


def test_wait_reasons():
    q = {"id": 2, "state": "queued", "gpus_wanted": 2}
    assert wait_reason(q, 1, False, {}) == "waiting for 2 free GPU(s)"
    assert wait_reason(q, 3, False, {}) == "number 3 in the queue"
    assert wait_reason(q, 1, True, {}) == "queue paused"
    assert wait_reason({**q, "held": 1}, 1, False, {}) == "held; release it to run"
    assert wait_reason({**q, "after": 1}, 1, False, {1: "running"}) == "waiting for job 1 to finish"
    assert wait_reason({**q, "after": 1}, 1, False, {1: "done"}) == "waiting for 2 free GPU(s)"
    assert wait_reason({**q, "state": "running"}, None, False, {}) is None


def test_on_a_cpu_only_machine_the_wait_is_for_the_cpu_not_a_gpu():
    q = {"id": 2, "state": "queued", "gpus_wanted": 1}
    assert wait_reason(q, 1, False, {}, [0], None, "cpu") == "waiting for the CPU (it runs one job at a time)"
    assert wait_reason(q, 1, False, {}, [0], None, "nvml") == "waiting for 1 free GPU(s)"
    assert wait_reason(q, 2, False, {}, [0], None, "cpu") == "number 2 in the queue"


def test_the_job_wire_type_round_trips_and_refuses_what_is_not_a_job():
    row = {"id": 3, "state": "running", "mode": "lvg", "spec": {"num_chunks": 4}, "held": 0, "position": 7,
           "step": 5, "total_steps": 10, "sec_per_step": 2.0, "chunk": 2}
    job = Job.from_row(row, place=None)
    assert job.num_chunks == 4 and job.held is False
    # the ETA is the daemon's phase-aware one (cosmos_tui/phase_timing.py), handed in, not guessed here
    assert job.eta_s is None and Job.from_row(row, eta_s=50.0, eta_partial=True).eta_partial is True
    wire = job.to_wire()
    assert "position" not in wire and Job.from_wire(wire) == job
    assert Job.from_wire({"id": 1, "state": "done", "from_a_newer_daemon": 1}).state == "done"
    with pytest.raises(WireError, match="expected a job object"):
        Job.from_wire(["not", "a", "job"])
    with pytest.raises(WireError, match="unknown state 'zombie'"):
        Job.from_wire({"id": 1, "state": "zombie"})


def test_the_model_key_is_the_engines_build_key_offload_flags_included():
    from engine.spec import build_key

    spec = {"model_size": "2B", "offload_text_encoder": True}
    assert model_key(spec) == build_key(spec)
    # a warm engine built with T5 offloaded to the CPU must not run a job that wants it on the GPU
    warm = EngineView(7, model_key(spec), (0,))
    wants_gpu_t5 = {"id": 2, "gpus_wanted": 1, "spec": {**spec, "offload_text_encoder": False}}
    assert plan([wants_gpu_t5], [0], [warm]) == [Evict(7), Start(2, (0,), model_key(wants_gpu_t5["spec"]))]
    for flag in ("downcast_text_encoder", "offload_guardrail", "offload_prompt_refiner"):
        assert model_key({**spec, flag: True}) != model_key(spec), flag
    assert model_key({**spec, "prompt": "another", "seed": 9}) == model_key(spec)  # per-job fields


def test_a_job_goes_to_a_gpu_that_can_hold_it_and_waits_for_one_in_queue_order():
    # GPU 0 is small, GPU 1 large; the 14B job only fits GPU 1
    fits = lambda j, g: g == 1 or j["spec"]["model_size"] == "2B"  # noqa: E731
    assert plan([job(1, size="14B")], [0, 1], [], fits=fits) == [Start(1, (1,), K14)]
    # with GPU 1 busy it waits, and the queue behind it waits too (strict order, as for GPU counts)
    busy = EngineView(7, K2, (1,), job=9)
    assert plan([job(1, size="14B"), job(2)], [0, 1], [busy], fits=fits) == []
    # a small job still takes the small GPU, leaving the large one to the big job behind it
    assert plan([job(1), job(2, size="14B")], [0, 1], [], fits=fits) == [Start(1, (0,), K2), Start(2, (1,), K14)]
    # and says what it waits for, naming the GPUs that can hold it
    queued = {**job(1, size="14B"), "state": "queued"}
    assert wait_reason(queued, 1, False, {}, [0, 1], fits) == "waiting for 1 free GPU(s) large enough for its " \
                                                             "weights (GPU 1)"
    assert wait_reason({**queued, "spec": {"model_size": "2B"}}, 1, False, {}, [0, 1], fits) == "waiting for 1 free GPU(s)"


def test_gpu_fit_compares_a_jobs_weights_with_each_gpu_only_where_sizes_differ():
    from cosmos_tui.queue.resolve import gpu_fit

    GIB = 1024**3
    assert gpu_fit([80 * GIB, 80 * GIB]) is None  # one size: submit's check covers it
    assert gpu_fit([80 * GIB, None]) is None  # a size unknown (no NVML): nothing to compare
    fits = gpu_fit([64 * GIB, 96 * GIB])
    big = {"id": 1, "spec": {"model_size": "14B"}}  # 78.7 GiB of weights (tests/test_footprint.py)
    small = {"id": 2, "spec": {"model_size": "2B"}}  # 55.8 GiB
    assert [fits(big, 0), fits(big, 1), fits(small, 0), fits(small, 1)] == [False, True, True, True]
    # the Slurm cluster's GPUs are not these; a spec this version refuses is the engine's to explain
    assert fits({"id": 3, "spec": {"model_size": "14B", "executor": "slurm"}}, 0)
    assert fits({"id": 4, "spec": {"model_size": "14B", "num_steps": "many"}}, 0)


def test_gpu_fit_validates_each_jobs_spec_once_per_call_not_once_per_gpu(monkeypatch):
    # the daemon builds it for every plan and every ETA: on an 8-GPU box a long queue would otherwise be
    # validated 8 times over on each refresh
    import engine.spec
    from cosmos_tui.queue.resolve import gpu_fit

    calls = []
    real = engine.spec.spec_from_dict
    monkeypatch.setattr(engine.spec, "spec_from_dict", lambda d, *a: calls.append(d) or real(d, *a))
    fits = gpu_fit([40 * 1024**3] * 4 + [96 * 1024**3] * 4)
    job = {"id": 1, "spec": {"model_size": "14B"}}
    assert [fits(job, g) for g in range(8)] == [False] * 4 + [True] * 4
    assert len(calls) == 1


def test_the_daemon_spawns_a_jobs_engine_on_a_gpu_that_can_hold_it(tmp_path):
    import asyncio

    from cosmos_tui import paths
    from cosmos_tui.daemon import handlers as h
    from cosmos_tui.daemon.service import Daemon
    from cosmos_tui.gpu import DemoBackend
    from cosmos_tui.store import Store

    GIB = 1024**3
    paths.ensure_home()
    d = Daemon(Store(paths.db_path()), gpu=DemoBackend(2, mem_total=[64 * GIB, 96 * GIB]))
    spawned = []

    async def spawn(key, gpus, num_gpus):
        spawned.append(gpus)
        raise OSError("no engine in this test")  # the job fails; the scheduler stops there

    d.spawn_engine = spawn
    try:
        (tmp_path / "in.jpg").write_bytes(b"\xff\xd8\xff fake jpeg")
        h.op_submit(d, {"spec": {"input_path": "in.jpg", "prompt": "a kite", "model_size": "14B"}, "cwd": str(tmp_path)})
        asyncio.run(d.schedule())
        assert spawned == [[1]]
    finally:
        d.store.close()
