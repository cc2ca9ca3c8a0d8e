"""Text snapshots of the main screens at 120x40 and 80x24 (fake client, demo GPU backend).

The snapshots are plain text (tests/fake_client.screen_text: what a user reads), stored by syrupy
in tests/__snapshots__/test_app_snapshots.ambr; text diffs review far better than SVG. After an
intended change to a screen, regenerate them and read the diff:

    python -m pytest tests/test_app_snapshots.py --snapshot-update

Everything time-dependent is frozen: the app's clock, the fake daemon's clock, the demo GPUs'
clock; temporary paths (of fixed length, so wrapping is stable) are replaced by placeholders.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from textual.widgets import OptionList

from cosmos_tui.app import CosmosApp
from fake_client import FakeClient, screen_text
from test_app import _critic_files, wait_for

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
SIZES = [(120, 40), (80, 24)]


@pytest.fixture
def frozen_gpus(monkeypatch):
    import cosmos_tui.gpu as gpu

    monkeypatch.setattr(gpu, "time", types.SimpleNamespace(time=lambda: T0))


@pytest.fixture
def utc(monkeypatch):
    """Job logs stamp lines with the local time of the fake's clock: the same in every time zone."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def world(cosmos_home, frozen_gpus, utc):
    """A queue with one job of each kind of state, a running job with steps, a best-of-N result.
    Files go under the per-test home, whose path has a fixed length (pytest's tmp_path varies with
    xdist), so text wraps the same way in every run."""
    tmp_path = cosmos_home / "w"
    tmp_path.mkdir()
    fake = FakeClient(tmp_path / "logs", clock=lambda: T0)
    done = fake.submit({"prompt": "a lighthouse at dusk, waves breaking"}, preset="tiny-cpu")
    fake.start(done, gpus=(0,))
    for _ in range(4):
        fake.step(done, 0.25, memory=512 * 1024**2)
    fake.finish(done, outputs=["output/tiny.mp4"])
    ranking, _ = _critic_files(tmp_path)
    best = fake.submit({"mode": "bestofn", "prompt": "a kite"}, preset="tiny-cpu")
    fake.start(best, gpus=(1,))
    fake.finish(best, outputs=[str(ranking)], kinds=["ranking"])
    failed = fake.submit({"prompt": "too big"}, preset="2b-720p16")
    fake.start(failed)
    fake.fail(failed, "CUDA out of memory: 2.0 GiB more were needed; try 480p or offloading", "oom")
    fake.resume()  # an OOM pauses the queue (as the daemon does); the user resumed it
    running = fake.submit({"prompt": "a fox runs through tall grass in the morning light"}, preset="tiny-cpu")
    fake.start(running, gpus=(0,))
    fake.step(running, 0.5, memory=2 * 1024**3)
    fake.step(running, 0.7, memory=3 * 1024**3)
    for p in ("a cat", "a dog"):
        fake.submit({"prompt": p}, preset="tiny-cpu")
    fake.pause("paused by the user")
    return types.SimpleNamespace(fake=fake, tmp=tmp_path, running=running, best=best, done=done)


def normalise(text: str, tmp: Path) -> str:
    # the job logs live in the per-test cosmos-tui home, tmp's parent
    return text.replace(str(tmp), "<tmp>").replace(str(tmp.parent), "<home>").replace(str(ROOT), "<repo>")


def make_app(fake):
    return CosmosApp(client=fake, poll_interval=0, gpu_interval=0, clock=lambda: T0 + 42, image_mode="none")


async def _ready(pilot):
    app = pilot.app
    await wait_for(pilot, lambda: app.polls >= 1 and len(app.gpus) == 2, what="data")
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_queue(world, snapshot, size):
    app = make_app(world.fake)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot)
        assert normalise(screen_text(app), world.tmp) == snapshot


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_job_detail(world, snapshot, size):
    app = make_app(world.fake)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot)
        app.selected_job = world.running
        app.action_open_job()
        await wait_for(pilot, lambda: len(getattr(app.screen, "step_seconds", [])) == 2, what="events")
        await pilot.pause()
        progress = normalise(screen_text(app), world.tmp)
        await pilot.press("l")
        await wait_for(pilot, lambda: len(app.screen.query_one("LogView").lines) >= 4, what="log")
        await pilot.pause()
        log = normalise(screen_text(app), world.tmp)
        await pilot.press("i")
        await pilot.pause()
        spec = normalise(screen_text(app), world.tmp)
        assert {"progress": progress, "log": log, "spec": spec} == snapshot


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_gpus(world, snapshot, size):
    app = make_app(world.fake)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot)
        await pilot.press("2")
        await wait_for(pilot, lambda: len(app.screen.query("GpuCard")) == 2, what="cards")
        await pilot.pause()
        assert normalise(screen_text(app), world.tmp) == snapshot


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_presets_and_editor(world, snapshot, size):
    app = make_app(world.fake)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot)
        await pilot.press("3")
        names = [p.name for p in app.screen.presets]
        app.screen.query_one(OptionList).highlighted = names.index("tiny-cpu")
        await pilot.pause()
        listing = normalise(screen_text(app), world.tmp)
        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetEditor", what="editor")
        app.screen.query_one("#in-model_size").focus()  # a Select: no blinking text cursor
        app.screen.query_one("#in-guidance").value = "250"
        await pilot.pause()
        # on a loaded machine the footer's bindings can be drawn a frame after the form (its ~40 rows
        # take a while to mount): the snapshot is of the screen once both are there
        await wait_for(pilot, lambda: "Save" in screen_text(app), what="the editor's footer")
        editor = normalise(screen_text(app), world.tmp)
        assert {"list": listing, "editor": editor} == snapshot


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_critic(world, snapshot, size):
    app = make_app(world.fake)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot)
        app.selected_job = world.best
        app.action_critic()
        await wait_for(pilot, lambda: getattr(app.screen, "report", None) is not None, what="report")
        await pilot.pause()
        assert normalise(screen_text(app), world.tmp) == snapshot


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_submit_and_help(world, snapshot, size):
    app = make_app(world.fake)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot)
        await pilot.press("s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "SubmitScreen", what="form")
        app.screen.query_one("#submit-preset").focus()
        await pilot.pause()
        submit = normalise(screen_text(app), world.tmp)
        await pilot.press("escape")
        await pilot.pause()  # the queue's footer shows its letter keys again once the form is gone
        await pilot.press("question_mark")
        await pilot.pause()
        help_ = normalise(screen_text(app), world.tmp)
        assert {"submit": submit, "help": help_} == snapshot
