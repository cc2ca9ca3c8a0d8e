"""plan(): the scheduling rules on plain data, no daemon, no processes."""

from __future__ import annotations

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
