"""Phase events from the engine on the tiny profile: every part of a job says when it starts and ends,
steps count what the user asked for (the final clean pass apart), and the fields the ETA needs are there."""

from __future__ import annotations

import pytest

from cosmos_tui.queue import eta
from engine import phases
from engine.modes import run_job
from engine.spec import BUILD_FIELDS
from tests.tiny import tiny_spec

pytestmark = pytest.mark.slow


def ends(evs: list[dict]) -> list[dict]:
    return [e for e in evs if e["event"] == "phase" and e["state"] == "end"]


def check_pairs(evs: list[dict]) -> None:
    """Each start has its end, in order, no phase nested in another, end = start + seconds."""
    open_ = None
    for e in (e for e in evs if e["event"] == "phase"):
        assert e["phase"] in phases.PHASES and set(e["key"]) == set(BUILD_FIELDS)
        if e["state"] == "start":
            assert open_ is None, f"{e['phase']} started inside {open_['phase']}"
            open_ = e
        else:
            assert open_ is not None and open_["phase"] == e["phase"] and e["start"] == open_["start"]
            assert e["end"] == pytest.approx(e["start"] + e["seconds"])  # same float sum both sides
            assert e["ok"] is True and e["seconds"] >= 0
            open_ = None
    assert open_ is None


def check_plan(spec, evs: list[dict], refined: bool = True) -> None:
    """The ETA's plan of the job (cosmos_tui/queue/eta.job_plan) is what the engine did, phase for phase:
    a phase the plan lacks would make the ETA start over from the top."""
    done = ends(evs)
    seen = [(eta.stat_of(e), eta.unit_of(e), eta.tag_of(e)) for e in done]
    cold = any(e["phase"] == "loading" and e.get("component") == "pipeline" for e in done)
    planned = [(i.stat, i.unit, i.tag) for i in eta.job_plan(spec.model_dump(), cold) if i.stat != "warmup"]
    if not refined:  # the tiny refiner kept the prompt: there was no refined prompt to check
        planned = [p for p in planned if p[2] != "refined_prompt"]
    assert seen == planned


def test_one_video_reports_each_phase_once_in_order_and_steps_of_the_request(tmp_path):
    from engine.pipeline import _WARM

    _WARM.clear()  # a cold pipeline: the job loads it, and its first denoise is the cold one
    spec = tiny_spec(tmp_path, num_steps=4, disable_guardrail=False, disable_prompt_refiner=False,
                     save_path=str(tmp_path / "one.mp4"))
    evs: list[dict] = []
    run_job(spec, emit=evs.append)
    check_pairs(evs)
    names = [(e["phase"], e.get("target")) for e in ends(evs)]
    assert names == [("loading", None), ("guardrail", "prompt"), ("refine", None), ("guardrail", "refined_prompt"),
                     ("text_encode", None), ("vae_encode", None), ("denoise", None), ("vae_decode", None),
                     ("guardrail", "video"), ("writing", None)] or names == [
        # the tiny refiner may keep the prompt as it is (None): then there is no refined prompt to check
        ("loading", None), ("guardrail", "prompt"), ("refine", None), ("text_encode", None), ("vae_encode", None),
        ("denoise", None), ("vae_decode", None), ("guardrail", "video"), ("writing", None)]
    check_plan(spec, evs, refined=("guardrail", "refined_prompt") in names)
    steps = [e for e in evs if e["event"] == "step"]
    # a 4-step job never says step 5/5: four steps of 4, then the final clean pass, told apart
    assert [(e["step"], e["total"], e.get("final", False)) for e in steps] == [
        (1, 4, False), (2, 4, False), (3, 4, False), (4, 4, False), (4, 4, True)]
    denoise = next(e for e in ends(evs) if e["phase"] == "denoise")
    assert denoise["units"] == 5 and denoise["steps"] == 4 and denoise["cold"] is True
    assert denoise["first_step_s"] == steps[0]["seconds"] or denoise["first_step_s"] == pytest.approx(
        steps[0]["seconds"], abs=1e-4)  # the step event rounds to 4 decimals, the phase to 6
    assert denoise["key"]["model_size"] == "tiny"
    # warm now: a second job loads nothing and its denoise is not cold
    evs2: list[dict] = []
    run_job(spec.model_copy(update={"save_path": str(tmp_path / "two.mp4")}), emit=evs2.append)
    assert "loading" not in [e["phase"] for e in ends(evs2)]
    # and its `started` said so beforehand (the daemon's first ETA guess: no load)
    assert [e["warm"] for e in evs if e["event"] == "started"] == [False]
    assert [e["warm"] for e in evs2 if e["event"] == "started"] == [True]
    assert next(e for e in ends(evs2) if e["phase"] == "denoise")["cold"] is False


def test_long_video_phases_carry_their_chunk(tmp_path):
    spec = tiny_spec(tmp_path, num_steps=1, mode="lvg", num_chunks=2, save_path=str(tmp_path / "long.mp4"))
    evs: list[dict] = []
    run_job(spec, emit=evs.append)
    check_pairs(evs)
    gen = [(e["phase"], e.get("chunk"), e.get("num_chunks")) for e in ends(evs) if e["phase"] != "loading"]
    per_chunk = ["text_encode", "vae_encode", "denoise", "vae_decode"]
    assert gen == [(p, 1, 2) for p in per_chunk] + [("writing", 1, 2)] + [(p, 2, 2) for p in per_chunk] + [
        ("writing", 2, 2)]
    check_plan(spec, evs)
    writes = [e for e in ends(evs) if e["phase"] == "writing"]
    assert writes[0]["partial"] is True and writes[1]["frames"] > writes[0]["frames"]


def test_best_of_n_phases_carry_generation_and_critic_trials(tmp_path):
    spec = tiny_spec(tmp_path, num_steps=1, mode="bestofn", num_generations=2, num_critic_trials=2,
                     input_name="cup.png", save_path=str(tmp_path / "bon"))
    evs: list[dict] = []
    run_job(spec, emit=evs.append)
    check_pairs(evs)
    done = ends(evs)
    assert [e.get("generation") for e in done if e["phase"] == "denoise"] == [1, 2]
    assert all(e.get("num_generations") == 2 for e in done if e["phase"] in ("denoise", "writing"))
    assert [e.get("component") for e in done if e["phase"] == "loading"][-1] == "critic"
    check_plan(spec, evs)
    critic = [e for e in done if e["phase"] == "critic"]
    assert [(e["video"], e["videos"], e["trials"], e["units"]) for e in critic] == [(1, 2, 2, 2), (2, 2, 2, 2)]


def test_a_parked_generator_coming_back_is_a_loading_phase(tmp_path):
    from engine import memory
    from engine.pipeline import Video2WorldPipeline
    from engine.spec import BuildConfig

    spec = tiny_spec(tmp_path, num_steps=1, save_path=str(tmp_path / "back.mp4"))
    # a pipeline of its own, not the process's warm one (get_pipeline): a parked state left behind by a
    # failure here must not reach other tests on this worker
    pipe = Video2WorldPipeline(BuildConfig.from_spec(spec))
    pipe.load()
    # as best-of-N leaves it on a GPU: a CPU pipeline parks nothing by itself, so park its CPU tensors here
    # (a `select` that takes every tensor, as tests/test_memory.py does)
    pipe._parking = memory.HostParking(select=lambda t: True)
    for part in (pipe.dit, pipe.vae, pipe.text_encoder):
        if part is not None:
            pipe._parking.park(part)
    pipe._offloaded = True
    evs: list[dict] = []
    pipe.set_emit(evs.append)
    pipe.generate(spec)
    check_pairs(evs)
    assert [(e["phase"], e.get("component")) for e in ends(evs)][0] == ("loading", "generator")
    assert eta.samples(ends(evs)[0])[0][0] == "onload"
    assert not pipe._offloaded


def test_benchmark_runs_are_phases_of_their_run(tmp_path):
    spec = tiny_spec(tmp_path, num_steps=1, benchmark=True, save_path=str(tmp_path / "bench.mp4"))
    evs: list[dict] = []
    run_job(spec, emit=evs.append)
    check_pairs(evs)
    check_plan(spec, evs)  # four runs, then one write, which belongs to the last run
    assert [e.get("run") for e in ends(evs) if e["phase"] == "denoise"] == [1, 2, 3, 4]


def test_a_phase_left_by_an_exception_ends_not_ok():
    from engine import events

    evs: list[dict] = []
    with pytest.raises(ZeroDivisionError):
        with phases.phase(events.Emitter(evs.append), "denoise", {"model_size": "tiny"}):
            1 / 0
    assert [(e["state"], e.get("ok")) for e in evs] == [("start", None), ("end", False)]
    with pytest.raises(ValueError, match="unknown phase"):
        with phases.phase(events.Emitter(evs.append), "dreaming", {}):
            pass


def test_plain_progress_lines_for_phases_and_the_final_pass():
    from engine.progress import describe

    assert describe({"event": "step", "step": 4, "total": 4, "final": True, "seconds": 0.5}).startswith("final pass")
    assert describe({"event": "phase", "phase": "vae_decode", "state": "end", "ok": True, "seconds": 1.25}) == \
        "vae decode took 1.25 s"
    assert describe({"event": "phase", "phase": "vae_decode", "state": "start"}) is None
