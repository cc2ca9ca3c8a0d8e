"""The Spec tab: the fields that matter for the job's mode, the ones set for this job first."""

from __future__ import annotations

from textual.widgets import Static

from cosmos_tui.presets import load_preset
from cosmos_tui.widgets.spec_view import spec_text
from test_app import fake, make_app, table, wait_for  # noqa: F401  (fixture)


def _spec(preset: str, **over) -> dict:
    return {**load_preset(preset).spec.model_dump(mode="json"), **over}


def _sections(text: str) -> dict[str, list[str]]:
    out, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" "):
            current = line
            out[current] = []
        elif line.strip() and current is not None:
            out[current].append(line.split("=")[0].strip())
    return out


def test_video2world_from_an_image_lists_what_was_set_first_and_hides_other_modes_fields():
    text = spec_text(_spec("tiny-cpu", seed=7))
    head = text.splitlines()[0]
    assert head.startswith("video2world from an image · 8 set for this job")
    s = _sections(text)
    assert s["set for this job"] == ["model_size", "prompt", "input_path", "seed", "num_steps", "save_path",
                                     "disable_guardrail", "disable_prompt_refiner"]
    assert "guidance" in s["defaults"] and "seed" not in s["defaults"]
    # an image is one conditioning frame, and chunks / generations are other modes' fields
    assert text.splitlines()[-1] == ("not used by video2world from an image: num_conditional_frames, num_chunks, "
                                     "num_generations, num_critic_trials, skip_generation")
    assert "(built-in, " in text  # the long default negative prompt takes one line


def test_long_video_and_best_of_n_show_their_own_fields():
    lvg = _sections(spec_text(_spec("tiny-cpu", mode="lvg")))
    assert "num_chunks" in lvg["defaults"] and "num_conditional_frames" in lvg["defaults"]
    assert not any("num_generations" in v for v in lvg["defaults"])
    best = spec_text(_spec("tiny-cpu", mode="bestofn", num_generations=4, save_path="output/best"))
    s = _sections(best)
    assert best.startswith("best-of-N from an image")
    assert "num_generations" in s["set for this job"] and "num_critic_trials" in s["defaults"]
    assert "num_chunks" in best.splitlines()[-1]
    video = _sections(spec_text(_spec("tiny-cpu", input_path="clip.mp4", num_conditional_frames=5)))
    assert "num_conditional_frames" in video["set for this job"]


def test_user_text_in_the_spec_is_data():
    text = spec_text(_spec("tiny-cpu", prompt="a [bold]cat[/bold] \x1b[2J\x9b"))
    assert 'prompt                 = "a [bold]cat[/bold] \\u001b[2J?"' in text


async def test_the_spec_tab_shows_the_mode_view(fake):
    a = fake.submit({"mode": "bestofn", "prompt": "a kite", "save_path": "output/best"}, preset="tiny-cpu")
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        app.selected_job = a
        app.action_open_job()
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "JobScreen", what="job screen")
        await pilot.press("i")
        text = str(app.screen.query_one("#job-spec", Static).render())
        assert text.startswith("best-of-N from an image")
        assert text.index("set for this job") < text.index("defaults")
        assert "num_critic_trials" in text and "num_chunks" in text.splitlines()[-1]
