"""Redraw budget: bytes the app writes to the terminal while nothing (or one job) changes.

Over SSH every byte a screen repaints is paid for all day, so a static screen must cost next to
nothing: ≤ 2 kB per 10 polls (10 s at the default 1 s intervals) when nothing changes, ≤ 20 kB
with one job stepping. The app runs headless; `_display` is where Textual turns a compositor
update into terminal bytes, so the test renders each update the same way and counts the bytes.
The polls are driven by the test (intervals 0), ten of them, plus a short real pause so widget
timers (spinners, blinking cursors, refresh intervals) get a chance to show up.
"""

from __future__ import annotations

import os

import pytest
from textual._compositor import CompositorUpdate

from cosmos_tui.app import CosmosApp
from test_app import _write_video, wait_for
from test_app_snapshots import T0, frozen_gpus, utc, world  # noqa: F401  (fixtures)

POLLS = 10
STATIC_BUDGET = 2_000
RUNNING_BUDGET = 20_000


class Meter:
    def __init__(self) -> None:
        self.bytes = 0
        self.updates = 0


@pytest.fixture
def meter(monkeypatch):
    m = Meter()
    original = CosmosApp._display

    def counting(self, screen, renderable):
        if isinstance(renderable, CompositorUpdate):
            m.bytes += len(renderable.render_segments(self.console).encode("utf-8"))
            m.updates += 1
        return original(self, screen, renderable)

    monkeypatch.setattr(CosmosApp, "_display", counting)
    return m


async def _poll(pilot) -> None:
    app = pilot.app
    before = (app.polls, app.gpu_polls)
    app.refresh_jobs()
    app.poll_gpus()
    await wait_for(pilot, lambda: app.polls > before[0] and app.gpu_polls > before[1], what="a poll")
    await pilot.pause()


async def _measure(pilot, meter, between=None) -> int:
    for _ in range(3):  # settle: first fetches, lazy mounts, images
        await _poll(pilot)
    await pilot.pause(0.3)
    meter.bytes = 0
    for _ in range(POLLS):
        if between is not None:
            between()
        await _poll(pilot)
        await pilot.pause(0.05)
    return meter.bytes


def _app(fake):
    return CosmosApp(client=fake, poll_interval=0, gpu_interval=0, clock=lambda: T0 + 42, image_mode="halfcell")


async def _open(pilot, what: str, world) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.polls >= 1 and len(app.gpus) == 2, what="data")
    if what.startswith("gpus"):
        await pilot.press("2")
        await wait_for(pilot, lambda: len(app.screen.query("GpuCard")) == 2, what="cards")
    elif what.startswith("job-"):
        app.selected_job = world.done
        app.action_open_job()
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "JobScreen", what="job screen")
        await pilot.press({"job-progress": "a", "job-log": "l", "job-spec": "i", "job-frames": "o"}[what])
    elif what == "critic":
        app.selected_job = world.best
        app.action_critic()
        await wait_for(pilot, lambda: getattr(app.screen, "report", None) is not None, what="report")


SCREENS = ["queue", "gpus", "gpus-processes", "job-progress", "job-log", "job-spec", "job-frames", "critic"]


@pytest.mark.parametrize("what", SCREENS)
async def test_a_static_screen_stays_within_the_redraw_budget(world, meter, what):
    world.fake.cancel(world.running)  # nothing moves
    video = world.tmp / "done.mp4"
    _write_video(video)
    world.fake.set_outputs(world.done, [{"path": str(video), "kind": "video"}])
    if what == "gpus-processes":  # a process on each GPU: its line must not repaint every poll
        world.fake.gpu.processes = {0: [{"pid": os.getpid(), "mem": 2 * 1024**3}], 1: [{"pid": 1, "mem": None}]}
    app = _app(world.fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open(pilot, what, world)
        written = await _measure(pilot, meter)
        assert written <= STATIC_BUDGET, f"{what}: {written} bytes in {POLLS} polls with nothing changing"


async def test_a_queue_with_one_running_job_redraws_only_that_row(world, meter):
    world.fake.step(world.running, 0.5, total=100)
    app = _app(world.fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open(pilot, "queue", world)
        written = await _measure(pilot, meter, between=lambda: world.fake.step(world.running, 0.5))
        assert written <= RUNNING_BUDGET, f"{written} bytes in {POLLS} polls with one job stepping"
