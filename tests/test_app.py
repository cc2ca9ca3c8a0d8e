"""Pilot tests of the Textual workstation, against an in-memory fake daemon (tests/fake_client.py).

Polling is switched off (intervals 0): a test moves a job, asks for a refresh, and waits for the
messages to land, so nothing depends on timing. `wait_for` polls with a generous timeout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, OptionList, Sparkline, Static

from cosmos_tui import images
from cosmos_tui.app import CosmosApp
from cosmos_tui.messages import (
    ActionDone,
    ActionFailed,
    DaemonConnected,
    DaemonLost,
    JobsRefreshed,
    JobsSubmitted,
    SubmitRequested,
)
from cosmos_tui.widgets.log_view import LogView, read_new_lines
from cosmos_tui.widgets.queue_table import COLUMNS, QueueTable
from fake_client import FakeClient, screen_text

T0 = 1_700_000_000.0


@pytest.fixture
def fake(tmp_path):
    return FakeClient(tmp_path / "logs", clock=lambda: T0)


def make_app(fake, **kw):
    opts = dict(poll_interval=0, gpu_interval=0, reconnect_interval=0.05, clock=lambda: T0 + 30,
                image_mode="none")
    opts.update(kw)
    return CosmosApp(client=fake, **opts)


async def wait_for(pilot, pred, timeout: float = 15.0, what: str = "condition"):
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.02)


async def refreshed(pilot):
    """Ask for a refresh and wait until its answer has been handled."""
    before = pilot.app.polls
    pilot.app.refresh_jobs()
    await wait_for(pilot, lambda: pilot.app.polls > before, what="a jobs refresh")
    await pilot.pause()


def table(app) -> QueueTable:
    return app.screen.query_one(QueueTable)


def cell(app, job: int, column: str) -> str:
    return str(table(app).get_cell(str(job), column))


# -- queue --


async def test_queue_lists_jobs_and_updates_cells_by_key(fake):
    a = fake.submit({"prompt": "a cat walks on a wall"}, preset="tiny-cpu")
    b = fake.submit({"prompt": "a dog"}, preset="tiny-cpu")
    fake.start(a)
    messages = []
    app = make_app(fake)
    async with app.run_test(size=(120, 40), message_hook=messages.append) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="two rows")
        assert any(isinstance(m, JobsRefreshed) for m in messages)
        assert cell(app, a, "state") == "running" and cell(app, b, "state") == "queued"
        assert "a cat walks" in cell(app, a, "prompt")
        row_key_before = table(app).rows[str(a)].key
        updates_before = table(app).cell_updates
        fake.step(a, seconds=0.5, memory=3 * 1024**3)
        await refreshed(pilot)
        assert cell(app, a, "progress") == "██······  25%"  # tiny-cpu has 4 steps
        assert cell(app, a, "peak") == "3.0G"
        # 3 steps left (and the final pass) at 0.5 s; "+": the job reports no phases, so its decode
        # and write were never measured (cosmos_tui/queue/eta.py)
        assert cell(app, a, "eta") == "2s+"
        # the row object survives: a cell update, not a rebuild; only a few cells changed
        assert table(app).rows[str(a)].key is row_key_before
        assert 0 < table(app).cell_updates - updates_before <= 5
        fake.step(a, 0.5)
        fake.step(a, 0.5)
        fake.step(a, 0.5)
        fake.finish(a, outputs=[])
        await refreshed(pilot)
        assert cell(app, a, "state") == "done" and cell(app, a, "progress").endswith("100%")
        assert cell(app, a, "elapsed") == "0s"  # started and finished at the fake clock's T0


async def test_submit_from_preset_with_overrides(fake):
    messages = []
    app = make_app(fake)
    async with app.run_test(size=(120, 40), message_hook=messages.append) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1, what="first refresh")
        await pilot.press("s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "SubmitScreen", what="submit form")
        app.screen.query_one("#submit-prompt", Input).value = "a red kite over the sea"
        app.screen.query_one("#submit-seed", Input).value = "7"
        app.screen.query_one("#submit-count", Input).value = "3"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any(isinstance(m, JobsSubmitted) for m in messages), what="submission")
        req = next(m for m in messages if isinstance(m, SubmitRequested))
        assert req.preset == "tiny-cpu"
        assert [s["seed"] for s in req.specs] == [7, 8, 9]
        assert all(s["prompt"] == "a red kite over the sea" for s in req.specs)
        assert [c[0] for c in fake.calls].count("submit_batch") == 1  # one call: all or none
        await wait_for(pilot, lambda: table(app).row_count == 3, what="three queued rows")
        assert [j["spec"]["seed"] for j in fake.jobs()] == [7, 8, 9]


async def test_submit_form_shows_errors_next_to_the_field(fake):
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "SubmitScreen", what="submit form")
        app.screen.query_one("#submit-seed", Input).value = "abc"
        await pilot.pause()
        err = app.screen.query_one("#submit-err-seed", Static)
        assert err.display and "'abc' is not a whole number" in str(err.render())
        app.screen.query_one("#submit-seed", Input).value = ""
        app.screen.query_one("#submit-input_path", Input).value = "clip.gif"
        app.screen.query_one("#submit-count", Input).value = "0"
        await pilot.pause()
        assert "N must be a whole number" in str(app.screen.query_one("#submit-err-count", Static).render())
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "SubmitScreen"  # not submitted
        assert not any(c[0].startswith("submit") for c in fake.calls)


async def test_a_submit_the_daemon_refuses_keeps_the_form_and_says_why_under_the_field(fake):
    # only the daemon can tell that a file is not on disk: the form used to close with a toast, and the
    # user typed everything again
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1, what="first refresh")
        await pilot.press("s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "SubmitScreen", what="submit form")
        form = app.screen
        form.query_one("#submit-prompt", Input).value = "a kite over a grey sea"
        form.query_one("#submit-input_path", Input).value = "nowhere/kite.png"
        await pilot.press("ctrl+s")
        err = form.query_one("#submit-err-input_path", Static)
        await wait_for(pilot, lambda: err.display and not form.waiting, what="the refusal under input path")
        assert "input_path: 'nowhere/kite.png' does not exist" in str(err.render())
        assert app.screen is form and form.query_one("#submit-prompt", Input).value == "a kite over a grey sea"
        assert not form.query_one("#submit-go").disabled
        assert fake.jobs() == []
        form.query_one("#submit-input_path", Input).value = ""  # the preset's own input
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is not form, what="the form to close once queued")
        assert [j["spec"]["prompt"] for j in fake.jobs()] == ["a kite over a grey sea"]


async def test_cancel_retry_pause_and_move(fake):
    ids = [fake.submit({"prompt": f"job {i}"}, preset="tiny-cpu") for i in range(3)]
    messages = []
    app = make_app(fake)
    async with app.run_test(size=(120, 40), message_hook=messages.append) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 3, what="rows")
        table(app).focus()
        # move the last job to the front, one place at a time
        table(app).select_job(ids[2])
        await pilot.pause()
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: ("move", ids[2], -1) in fake.calls, what="move call")
        # rows stay newest first; the row says the job's new place in the queue
        await wait_for(pilot, lambda: cell(app, ids[2], "progress") == "#2 in queue", what="the new place")
        assert [r.key.value for r in table(app).ordered_rows] == [str(i) for i in reversed(ids)]
        assert table(app).selected_job == ids[2]  # the cursor follows the moved job
        await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: ("move", ids[2], 1) in fake.calls, what="move down")
        # cancel, then retry it
        table(app).select_job(ids[1])
        await pilot.pause()
        await pilot.press("c")
        await wait_for(pilot, lambda: cell(app, ids[1], "state") == "cancelled", what="cancelled")
        await pilot.press("r")
        await wait_for(pilot, lambda: table(app).row_count == 4, what="retry row")
        retry = next(m for m in messages if isinstance(m, ActionDone) and m.action == "retry")
        assert fake.job(retry.result)["attempt_of"] == ids[1]
        # retrying a queued job is refused with the daemon's sentence
        table(app).select_job(ids[0])
        await pilot.pause()
        await pilot.press("r")
        await wait_for(pilot, lambda: any(isinstance(m, ActionFailed) for m in messages), what="refusal")
        assert "only finished" in next(m for m in messages if isinstance(m, ActionFailed)).error
        # pause and resume
        await pilot.press("p")
        await wait_for(pilot, lambda: app.queue_info.get("paused") is True, what="paused")
        assert "PAUSED" in str(app.screen.query_one("#queue-status", Static).render())
        await pilot.press("p")
        await wait_for(pilot, lambda: app.queue_info.get("paused") is False, what="resumed")


async def test_filter_by_state(fake):
    a = fake.submit({}, preset="tiny-cpu")
    b = fake.submit({}, preset="tiny-cpu")
    fake.start(a)
    fake.fail(a, "boom")
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="rows")
        await pilot.press("f")  # queued
        assert table(app).state_filter == "queued"
        assert [r.key.value for r in table(app).ordered_rows] == [str(b)]
        for _ in range(3):  # running, done, failed
            await pilot.press("f")
        assert table(app).state_filter == "failed"
        assert [r.key.value for r in table(app).ordered_rows] == [str(a)]
        assert "filter: failed" in str(app.screen.query_one("#queue-status", Static).render())


# -- job detail --


async def open_only_job(pilot, app, jid):
    """Open the job screen of the queue's one row; returns the screen."""
    await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
    table(app).focus()
    await pilot.press("enter")
    await wait_for(pilot, lambda: getattr(app.screen, "job_id", None) == jid, what="job screen")
    return app.screen


async def test_a_job_without_gpu_memory_samples_draws_no_memory_plot(fake):
    a = fake.submit({"prompt": "on the cpu"}, preset="tiny-cpu")
    fake.start(a)
    fake.step(a, 0.4)  # a CPU job: steps, no memory events
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_only_job(pilot, app, a)
        await wait_for(pilot, lambda: screen.step_seconds == [0.4], what="the step event")
        assert not screen.query_one("#spark-mem", Sparkline).display
        assert "GPU memory" not in screen_text(app)
        assert screen.query_one("#spark-step", Sparkline).display


async def test_job_detail_progress_plots_and_log(fake):
    a = fake.submit({"prompt": "waves"}, preset="tiny-cpu")
    fake.start(a)
    fake.step(a, 0.4, memory=1 * 1024**3)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_only_job(pilot, app, a)
        await wait_for(pilot, lambda: screen.step_seconds == [0.4], what="first step event")
        fake.step(a, 0.6, memory=2 * 1024**3)
        await refreshed(pilot)
        await wait_for(pilot, lambda: screen.step_seconds == [0.4, 0.6], what="second step event")
        assert list(screen.query_one("#spark-step", Sparkline).data) == [0.4, 0.6]
        assert screen.memory_gib == [1.0, 2.0] and screen.query_one("#spark-mem", Sparkline).display
        text = str(screen.query_one("#job-progress", Static).render())
        # the daemon's running mean, 0.7 * 0.4 + 0.3 * 0.6 (the old fake showed the last step's 0.60)
        assert "step 2/4" in text and "0.46 s/step" in text
        # the spec tab shows every field
        assert '"waves"' in str(screen.query_one("#job-spec", Static).render())
        # the log tails the file: new lines appear without reopening
        await pilot.press("l")
        log = screen.query_one(LogView)
        await wait_for(pilot, lambda: any("step 2/4" in line for line in log.lines), what="log lines")
        fake.log(a, "a line written later")
        await wait_for(pilot, lambda: log.lines[-1] == "a line written later", what="tailed line")
        # search
        await pilot.press("slash")
        box = screen.query_one("#log-search", Input)
        assert box.display and box.has_focus
        await pilot.press(*"STEP 1", "enter")
        assert log.match_line is not None and "step 1/4" in log.lines[log.match_line]
        assert not log.follow
        await pilot.press("escape")  # closes the search box, stays on the job
        assert getattr(app.screen, "job_id", None) == a and not box.display
        await pilot.press("escape")
        assert getattr(app.screen, "job_id", None) is None


def test_read_new_lines_is_incremental_and_keeps_partial_lines(tmp_path):
    p = tmp_path / "x.log"
    p.write_text("one\ntwo\nthr")
    lines, off, reset = read_new_lines(str(p), 0)
    assert (lines, reset) == (["one", "two"], False) and off == 8
    with open(p, "a") as f:
        f.write("ee\nfour\n")
    lines, off2, _ = read_new_lines(str(p), off)
    assert lines == ["three", "four"] and off2 == p.stat().st_size
    assert read_new_lines(str(p), off2)[0] == []
    p.write_text("new\n")  # replaced by a shorter file: start over
    lines, _, reset = read_new_lines(str(p), off2)
    assert lines == ["new"] and reset


async def test_play_without_mpv_says_where_the_video_is(fake, tmp_path, monkeypatch):
    video = tmp_path / "out.mp4"
    _write_video(video)
    a = fake.submit({}, preset="tiny-cpu")
    fake.start(a)
    fake.finish(a, outputs=[str(video)])
    monkeypatch.setattr("cosmos_tui.app.shutil.which", lambda name: None)
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        app.selected_job = a
        app.action_open_job()
        await pilot.pause()
        await pilot.press("m")
        await pilot.pause()
        assert any("mpv is not installed" in n.message and str(video) in n.message for n in app._notifications)


# -- GPUs --


async def test_gpu_screen_shows_each_gpu_with_owner(fake):
    a = fake.submit({}, preset="tiny-cpu")
    fake.start(a, gpus=(1,))
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: len(app.screen.query("GpuCard")) == 2, what="two cards")
        await wait_for(pilot, lambda: "GPU 1 · Demo GPU · job 1" in screen_text(app), what="owner")
        text = screen_text(app)
        assert "GPU 0 · Demo GPU · free" in text
        assert "/80.0G" in text and "util" in text and "°C" in text and "W" in text
        app.poll_gpus()
        await wait_for(pilot, lambda: len(app.gpu_history[0]) >= 2, what="history")
        await pilot.press("1")
        assert isinstance(app.screen.query_one(QueueTable), QueueTable)


async def test_gpu_screen_falls_back_to_the_local_backend_without_a_daemon(fake):
    from cosmos_tui.gpu import DemoBackend

    fake.down = True
    app = make_app(fake, gpu_backend=DemoBackend(3))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: len(app.gpus) == 3, what="local GPUs")
        assert app.gpu_source == "demo"


# -- presets --


async def test_preset_editor_validates_inline_and_saves_a_user_preset(fake, cosmos_home):
    app = make_app(fake)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("3")
        options = app.screen.query_one(OptionList)
        names = [p.name for p in app.screen.presets]
        options.highlighted = names.index("tiny-cpu")
        await pilot.pause()
        assert "num_steps" in str(app.screen.query_one("#preset-text", Static).render())
        await pilot.press("e")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetEditor", what="editor")
        ed = app.screen
        ed.query_one("#in-guidance", Input).value = "250"
        ed.query_one("#in-num_steps", Input).value = "many"
        await pilot.pause()
        g = ed.query_one("#err-guidance", Static)
        assert g.display and "out of range" in str(g.render())
        assert "valid integer" in str(ed.query_one("#err-num_steps", Static).render())
        assert not ed.query_one("#err-seed", Static).display
        await pilot.press("ctrl+s")
        assert app.screen is ed  # refused while fields are wrong
        ed.query_one("#in-guidance", Input).value = "5.5"
        ed.query_one("#in-num_steps", Input).value = "3"
        ed.query_one("#in-name", Input).value = "my tiny"
        await pilot.pause()
        assert "letters, digits" in str(ed.query_one("#err-name", Static).render())
        ed.query_one("#in-name", Input).value = "my-tiny"
        await pilot.pause()
        assert ed.errors == {}
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetsScreen", what="back to list")
        from cosmos_tui.presets import load_preset

        saved = load_preset("my-tiny")
        assert saved.source == "user" and saved.spec.guidance == 5.5 and saved.spec.num_steps == 3
        assert saved.spec.model_size == "tiny"
        assert app.screen.selected.name == "my-tiny"


async def test_model_level_errors_go_to_the_field_they_name(fake):
    from cosmos_tui.screens.preset_editor import errors_by_field

    errs = errors_by_field("tiny.toml: spec: fps: long video (lvg) runs at 16 fps only; set fps = 16\n"
                           "guidance: 200.0 is out of range")
    assert errs == {"fps": ["long video (lvg) runs at 16 fps only; set fps = 16"],
                    "guidance": ["200.0 is out of range"]}


async def duplicate_preset(pilot, app, name: str) -> None:
    """From the queue: the presets list, `name` selected, `d`; returns with the editor open."""
    await pilot.press("3")
    names = [p.name for p in app.screen.presets]
    app.screen.query_one(OptionList).highlighted = names.index(name)
    await pilot.pause()
    await pilot.press("d")
    await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetEditor", what="editor")


async def test_duplicate_and_queue_from_a_preset(fake):
    app = make_app(fake)
    async with app.run_test(size=(100, 40)) as pilot:
        await duplicate_preset(pilot, app, "2b-480p10")
        assert app.screen.query_one("#in-name", Input).value == "2b-480p10-copy"
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetsScreen", what="list")
        await pilot.press("s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "SubmitScreen", what="submit form")
        assert app.screen.preset_name == "2b-480p10"


async def test_saving_a_duplicate_over_another_of_the_users_presets_asks_first(fake):
    from cosmos_tui.presets import load_preset, save_user_preset

    save_user_preset("2b-480p10-copy", load_preset("tiny-cpu").spec, "made earlier")
    app = make_app(fake)
    async with app.run_test(size=(100, 40)) as pilot:
        await duplicate_preset(pilot, app, "2b-480p10")
        await wait_for(pilot, lambda: app.screen.pristine is not None, what="the form")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", what="the question")
        assert "Overwrite your preset 2b-480p10-copy?" in screen_text(app)
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetEditor", what="back in the editor")
        assert load_preset("2b-480p10-copy").description == "made earlier"  # kept
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", what="the question")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetsScreen", what="the list")
        assert load_preset("2b-480p10-copy").spec.model_size == "2B"  # the duplicate of 2b-480p10


# -- critic --


def _critic_files(tmp_path) -> tuple[Path, list[Path]]:
    out = tmp_path / "bestofn"
    out.mkdir()
    videos = [out / f"gen{i}.mp4" for i in range(3)]
    scores = [0.4, 1.0, 0.6]
    ranking = []
    for rank, i in enumerate(sorted(range(3), key=lambda i: -scores[i]), 1):
        v = videos[i]
        trials = [{"answer": "no" if k < scores[i] * 5 else "yes", "overview": f"overview {i}.{k}",
                   "components": [{"name": "water", "analysis": f"ripples look right {i}", "anomaly": "no"}]}
                  for k in range(5)]
        j = out / f"{v.stem}_score{int(scores[i] * 100):03d}.json"
        j.write_text(json.dumps({"video": str(v), "score": scores[i], "trials": trials}))
        ranking.append({"rank": rank, "video": str(v), "score": scores[i], "score_pct": "x", "json": str(j),
                        "html": str(j.with_suffix(".html"))})
    r = out / "ranking.json"
    r.write_text(json.dumps({"winner": str(videos[1]), "ranking": ranking}))
    return r, videos


async def test_critic_screen_ranks_candidates_with_reasoning(fake, tmp_path):
    ranking, videos = _critic_files(tmp_path)
    a = fake.submit({"mode": "bestofn", "save_path": str(tmp_path / "bestofn")}, preset="tiny-cpu")
    fake.start(a)
    fake.finish(a, outputs=[str(ranking)], kinds=["ranking"])
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        await pilot.press("v")
        await wait_for(pilot, lambda: getattr(app.screen, "report", None) is not None, what="critic report")
        t = app.screen.query_one("#critic-table", DataTable)
        rows = [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]
        assert [r[4] for r in rows] == ["gen1.mp4", "gen2.mp4", "gen0.mp4"]
        assert rows[0][1] == "★" and rows[1][1] == "" and rows[0][2] == "1.00"
        assert rows[0][3] == "✓✓✓✓✓" and rows[2][3] == "✓✓✗✗✗"
        head = str(app.screen.query_one("#critic-head", Static).render())
        assert "winner gen1.mp4" in head and str(ranking) in head
        trials = str(app.screen.query_one("#critic-trials", Static).render())
        assert "ripples look right 1" in trials and "gen1_score100.html" in trials
        t.move_cursor(row=2)
        await pilot.pause()
        assert "overview 0.4" in str(app.screen.query_one("#critic-trials", Static).render())


async def test_critic_falls_back_to_stored_verdicts(fake):
    a = fake.submit({"mode": "bestofn"}, preset="tiny-cpu")
    fake.start(a)
    fake.emit(a, "critic", video="/x/a.mp4", trial=None, total=2, score=0.5, answers=["no", "yes"])
    fake.emit(a, "critic", video="/x/b.mp4", trial=None, total=2, score=1.0, answers=["no", "no"])
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        app.selected_job = a
        app.action_critic()
        await wait_for(pilot, lambda: getattr(app.screen, "report", None) is not None, what="report")
        assert app.screen.report["winner"] == "/x/b.mp4"
        assert "no ranking.json" in str(app.screen.query_one("#critic-head", Static).render())


# -- connection, palette, help, colour --


async def test_losing_the_daemon_shows_a_banner_and_reconnects(fake):
    messages = []
    app = make_app(fake)
    async with app.run_test(size=(80, 24), message_hook=messages.append) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1, what="first refresh")
        banner = app.screen.query_one("ConnectionBanner")
        assert not banner.has_class("-lost")
        fake.down = True
        app.refresh_jobs()
        await wait_for(pilot, lambda: banner.has_class("-lost"), what="banner")
        assert "reconnecting" in screen_text(app)
        assert any(isinstance(m, DaemonLost) for m in messages)
        connects = sum(isinstance(m, DaemonConnected) for m in messages)
        fake.down = False
        await wait_for(pilot, lambda: sum(isinstance(m, DaemonConnected) for m in messages) > connects,
                       what="reconnect")
        await wait_for(pilot, lambda: not banner.has_class("-lost"), what="banner gone")


async def test_command_palette_offers_every_action(fake):
    from cosmos_tui.screens.commands import COMMANDS, CosmosCommands

    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        provider = CosmosCommands(app.screen)
        found = [hit.text async for hit in provider.discover()]
        assert found == [c.title for c in COMMANDS]
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"GPUs")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "gpus", what="palette ran show_gpus")


async def test_help_screen_lists_keys_from_the_command_table(fake):
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        text = str(app.screen.query_one("#help-text", Static).render())
        lines = text.splitlines()
        assert "  [        Move the selected queued job one place up" in lines
        assert "  s        Queue jobs from a preset with per-job overrides" in lines
        assert any(line.startswith("  ctrl+p ") for line in lines)
        await pilot.press("escape")
        assert app.screen.__class__.__name__ == "QueueScreen"


async def test_footer_shows_keys_and_everything_fits_80x24(fake):
    a = fake.submit({"prompt": "x"}, preset="tiny-cpu")
    fake.start(a)
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        text = screen_text(app)
        last = text.splitlines()[-1]
        assert "s Submit" in last and "c Cancel" in last
        header = next(line for line in text.splitlines() if line.startswith("ID "))
        labels = {label for _, label, _ in COLUMNS}
        assert header.split()[-1] in labels  # the last column is not cut off at 80 columns


def test_no_color_is_honoured(fake, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(fake)
    assert app.no_color


def test_image_mode_from_env(monkeypatch):
    monkeypatch.setenv("COSMOS_TUI_IMAGES", "halfcell")
    assert images.image_mode() == "halfcell"
    assert images.image_mode("tgp") == "kitty"
    monkeypatch.setenv("COSMOS_TUI_IMAGES", "jpeg")
    with pytest.raises(ValueError, match="COSMOS_TUI_IMAGES='jpeg'.*auto, kitty, sixel, halfcell, none"):
        images.image_mode()
    assert images.mpv_video_output("kitty") in ([], ["--vo=kitty"])


# -- frames --


def _write_video(path: Path, frames: int = 9, size=(48, 32)):
    import imageio.v2 as iio
    import numpy as np

    w, h = size
    with iio.get_writer(str(path), fps=8, format="FFMPEG", macro_block_size=16) as writer:
        for i in range(frames):
            frame = np.zeros((h, w, 3), np.uint8)
            frame[..., 0] = int(255 * i / (frames - 1))
            writer.append_data(frame)


def test_contact_sheet_reads_evenly_spaced_frames(tmp_path):
    video = tmp_path / "v.mp4"
    _write_video(video)
    frames = images.read_frames(video, count=3)
    assert len(frames) == 3
    reds = [int(f[..., 0].mean()) for f in frames]
    assert reds[0] < 20 and 110 < reds[1] < 145 and reds[2] > 235  # first, middle, last frame
    sheet = images.contact_sheet(frames, columns=3, thumb_width=40, gap=2)
    assert sheet.size[0] == 3 * 40 + 2 * 2
    assert images.frame_indices(93, 6) == [0, 18, 37, 55, 74, 92]


async def test_job_detail_shows_a_contact_sheet_in_halfcell_mode(fake, tmp_path):
    video = tmp_path / "out.mp4"
    _write_video(video)
    a = fake.submit({}, preset="tiny-cpu")
    fake.start(a)
    fake.finish(a, outputs=[str(video)])
    app = make_app(fake, image_mode="halfcell")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        app.selected_job = a
        app.action_open_job()
        await pilot.pause()
        await pilot.press("o")
        sheet = app.screen.query_one("ContactSheet")
        await wait_for(pilot, lambda: sheet.loaded == str(video), what="frames")
        assert len(sheet.query(".sheet-image")) == 1
        assert os.path.basename(str(video)) in screen_text(app)


# -- keys: nothing typed is lost or misrouted --


def burst(app, keys):
    """Post keys the way a terminal delivers a fast burst: all at once, before any is handled
    (pilot.press waits for each key, which hides ordering bugs)."""
    from textual import events

    chars = {"space": " ", "tab": "\t"}
    for k in keys:
        app.post_message(events.Key(k, chars.get(k, k if len(k) == 1 else None)))


async def test_keys_typed_right_after_opening_the_submit_form_land_in_its_fields(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1, what="first refresh")
        burst(app, ["s", *"hello", "space", *"world", "tab", *"/tmp/x.jpg"])
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "SubmitScreen"
                       and app.screen.query_one("#submit-input_path", Input).value == "/tmp/x.jpg",
                       what="the path in its field")
        assert app.screen.query_one("#submit-prompt", Input).value == "hello world"


async def test_preset_editor_focuses_its_first_field_and_letters_stay_text(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.polls >= 1, what="first refresh")
        burst(app, ["3", "e", *"quick3"])  # q quits and 3 switches screens, unless they are text
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetEditor"
                       and app.screen.query_one("#in-name", Input).value == "quick3", what="quick3 typed")
        assert app.is_running and isinstance(app.focused, Input) and app.focused.id == "in-name"
        assert "editing" in str(app.screen.query_one("#editor-head", Static).render())
        # a Select focused in the editor is not a text field, but the editor is: keys stay off
        app.screen.set_focus(app.screen.query_one("#in-resolution"))
        await pilot.press("q", "2", "1")
        assert app.is_running and app.screen.__class__.__name__ == "PresetEditor"


def test_preset_editor_says_it_is_loading_until_its_fields_are_there():
    from cosmos_tui.presets import list_presets
    from cosmos_tui.screens.preset_editor import PresetEditor

    editor = PresetEditor(next(p for p in list_presets() if p.spec is not None))
    head = next(w for w in editor.compose() if getattr(w, "id", None) == "editor-head")
    assert "loading" in str(head.render())


async def test_escape_with_dirty_edits_asks_before_dropping_them(fake):
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("3", "e")
        await wait_for(pilot, lambda: isinstance(app.focused, Input), what="the editor's first field")
        await pilot.press("escape")  # nothing edited: leaves at once
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetsScreen", what="the list")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.focused, Input), what="the editor's first field")
        await pilot.press(*"x", "escape")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", what="the question")
        assert "Discard" in screen_text(app)
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetEditor", what="back to the edit")
        assert app.screen.query_one("#in-name", Input).value == "x"
        await pilot.press("escape", "y")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "PresetsScreen", what="edits dropped")


# -- queue: order, keys, confirmation, why a job failed; notices when a job ends --


async def test_queue_is_newest_first_with_vi_keys_and_says_why_a_job_failed(fake):
    a = fake.submit({"prompt": "first"}, preset="tiny-cpu")
    b = fake.submit({"prompt": "second"}, preset="tiny-cpu")
    c = fake.submit({"prompt": "third"}, preset="tiny-cpu")
    fake.start(a)
    fake.start(b)
    fake.fail(b, "CUDA out of memory: try 480p", "oom")  # pauses the queue, as the daemon does
    fake.crash_daemon()  # a was running: interrupted
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 3, what="rows")
        assert [r.key.value for r in table(app).ordered_rows] == [str(c), str(b), str(a)]
        assert cell(app, a, "state") == "interrupted"
        assert "interrupted" in screen_text(app)  # not cut at 80 columns
        await pilot.press("j")
        assert app.selected_job == b
        assert f"job {b} failed: CUDA out of memory: try 480p" in screen_text(app)
        await pilot.press("G")
        assert app.selected_job == a
        await pilot.press("g")
        assert app.selected_job == c and "failed:" not in screen_text(app)
        await pilot.press("end")
        assert app.selected_job == a
        await pilot.press("k", "home")
        assert app.selected_job == c


async def test_cancelling_a_running_job_asks_first(fake):
    a = fake.submit({"prompt": "running"}, preset="tiny-cpu")
    fake.start(a)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="the row")
        await pilot.press("c")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", what="the question")
        await pilot.press("n")
        await pilot.pause()
        assert not any(call[0] == "cancel" for call in fake.calls)
        await pilot.press("c")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", what="the question")
        await pilot.press("y")
        await wait_for(pilot, lambda: any(call[0] == "cancel" for call in fake.calls), what="the cancel")


async def test_a_job_that_ends_gives_a_toast_and_a_bell(fake, monkeypatch):
    from cosmos_tui import app as app_module

    a = fake.submit({"prompt": "a [bold]kite[/bold]"}, preset="tiny-cpu")
    fake.start(a)
    app = make_app(fake)
    bells, notes = [], []
    monkeypatch.setattr(app, "bell", lambda: bells.append(1))
    monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append((message, kw)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="the row")
        await refreshed(pilot)
        assert not bells  # nothing ended yet
        fake.fail(a, "boom [red]x[/red]")
        await refreshed(pilot)
        assert bells == [1]
        assert notes[-1][0] == f"job {a} failed: boom [red]x[/red]" and notes[-1][1]["markup"] is False
    assert not app_module.osc9_supported({"TERM": "xterm-kitty", "TMUX": "/tmp/x"})
    assert app_module.osc9_supported({"TERM": "xterm-kitty"})
    assert not app_module.osc9_supported({"TERM": "xterm-256color"})
