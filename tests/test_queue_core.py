"""plan(): the scheduling rules on plain data, no daemon, no processes."""

from __future__ import annotations

from cosmos_tui.queue.core import EngineView, Evict, Start, model_key, plan


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
