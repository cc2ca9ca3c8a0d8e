"""The demo is labelled: tiny-profile jobs (seeded random weights) and made-up GPUs say so on screen."""

from __future__ import annotations

from cosmos_tui.widgets.banner import DemoBanner, demo_text
from fake_client import FakeClient, screen_text
from test_app import make_app, table, wait_for

T0 = 1_700_000_000.0


class _RealGpu:
    kind = "nvml"
    count = 1

    def list(self):
        return [{"index": 0, "name": "H200", "mem_used": 0, "mem_total": 80 * 1024**3, "util": 0, "temp": 30,
                 "power": 70, "processes": []}]


async def test_a_tiny_job_on_demo_gpus_puts_a_demo_line_on_every_main_screen(tmp_path):
    fake = FakeClient(tmp_path / "logs", clock=lambda: T0)  # demo GPUs
    a = fake.submit({}, preset="tiny-cpu")
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1 and app.gpus, what="row and GPUs")
        await wait_for(pilot, lambda: "DEMO" in screen_text(app), what="the demo line")
        first = screen_text(app).splitlines()[0]
        assert first.strip() == "DEMO · tiny profile: random weights, the video is noise · made-up demo GPUs"
        await pilot.press("2")
        await wait_for(pilot, lambda: screen_text(app).splitlines()[0].strip().startswith("DEMO ·"), what="GPUs")
        await pilot.press("1")
        app.selected_job = a
        app.action_open_job()
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "JobScreen", what="job")
        await pilot.pause()
        assert screen_text(app).splitlines()[0].strip().startswith("DEMO · tiny profile")


async def test_a_real_model_on_real_gpus_has_no_demo_line(tmp_path):
    fake = FakeClient(tmp_path / "logs", gpu=_RealGpu(), clock=lambda: T0)
    fake.submit({"prompt": "x"}, preset="2b-720p16")
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1 and app.gpus, what="row and GPUs")
        await pilot.pause()
        assert "DEMO" not in screen_text(app)
        assert not app.screen.query_one(DemoBanner).display


def test_demo_text_names_the_cpu_when_there_is_no_gpu():
    tiny = {1: {"spec": {"model_size": "tiny"}}}
    assert demo_text(tiny, "cpu") == "DEMO · tiny profile: random weights, the video is noise · on the CPU"
    assert demo_text({1: {"spec": {"model_size": "2B"}}}, "cpu") == ""
    assert demo_text({}, "demo") == "DEMO · made-up demo GPUs"
