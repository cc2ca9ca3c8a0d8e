"""The queue's `/` find (and a job's `/` log search) under fast typing, the queue's columns at
80x24, and remove / clean / hold / release."""

from __future__ import annotations

from textual.widgets import Input, Static

from cosmos_tui.widgets.queue_table import matches, shown_columns
from fake_client import screen_text
from test_app import cell, fake, make_app, refreshed, table, wait_for  # noqa: F401  (fixture)


def _rows(app) -> list[str]:
    return [r.key.value for r in table(app).ordered_rows]


async def test_slash_finds_jobs_by_prompt_preset_id_or_state_and_letters_stay_text(fake):
    # the failed job first: the fake is the daemon, which starts jobs in queue order
    big = fake.submit({"prompt": "a harbour"}, preset="2b-720p16")
    fake.start(big)
    fake.fail(big, "boom")
    fox = fake.submit({"prompt": "a fox in the snow"}, preset="tiny-cpu")
    cats = fake.submit({"prompt": "two cats [bold]sleeping[/bold]"}, preset="tiny-cpu")
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 3, what="rows")
        await pilot.press("slash", *"cats")  # c cancels and s submits, unless they are text
        await wait_for(pilot, lambda: _rows(app) == [str(cats)], what="only the cats")
        assert app.screen.__class__.__name__ == "QueueScreen" and not any(c[0] == "cancel" for c in fake.calls)
        assert "find: cats" in str(app.screen.query_one("#queue-status", Static).render())
        assert "two cats [bold]sleeping[/bold]" in screen_text(app)  # a prompt is text, not markup
        await pilot.press("enter")  # keep the find, back to the table
        assert app.focused is table(app) and _rows(app) == [str(cats)]
        await pilot.press("slash", *["backspace"] * 4, *"2b-720")
        await wait_for(pilot, lambda: _rows(app) == [str(big)], what="by preset")
        await pilot.press(*["backspace"] * 6, *"FAIL")
        await wait_for(pilot, lambda: _rows(app) == [str(big)], what="by state, any case")
        await pilot.press(*["backspace"] * 4, *f"#{fox}")
        await wait_for(pilot, lambda: _rows(app) == [str(fox)], what="by id")
        await pilot.press("escape")  # clears the find
        await wait_for(pilot, lambda: len(_rows(app)) == 3, what="every job again")
        assert not app.screen.query_one("#queue-find", Input).display
        assert "find:" not in str(app.screen.query_one("#queue-status", Static).render())


def test_matches_is_whole_id_or_text_and_ignores_case_and_spacing():
    job = {"id": 12, "prompt": "A  Red\tKite", "preset": "tiny-cpu", "state": "done"}
    assert matches(job, "red kite") and matches(job, "TINY") and matches(job, "done") and matches(job, "12")
    assert not matches(job, "1") and not matches(job, "blue")
    assert matches({"id": 3, "prompt": None, "spec": {"prompt": "from the spec"}}, "spec")


async def test_at_80x24_the_prompt_keeps_room_and_states_are_whole(fake):
    a = fake.submit({"prompt": "a lighthouse at dusk, waves breaking on the rocks"}, preset="tiny-cpu")
    b = fake.submit({"prompt": "a fox runs through tall grass"}, preset="tiny-cpu")
    fake.start(a)
    fake.crash_daemon()  # a running job comes back interrupted, as only a daemon restart makes it
    fake.resume()
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="rows")
        header = next(line for line in screen_text(app).splitlines() if line.startswith("ID "))
        assert "Peak" not in header  # nobody has a peak yet: the column gives its room to the prompt
        assert table(app).prompt_width >= 20
        assert "a lighthouse at dusk," in screen_text(app) and "interrupted" in screen_text(app)
        fake.start(b)
        fake.step(b, 0.5, memory=2 * 1024**3)
        await refreshed(pilot)
        # a running job fills ETA and Peak; the prompt still keeps 20 cells, state names stay whole
        assert table(app).prompt_width >= 20 and "interrupted" in screen_text(app)
        assert cell(app, b, "state") == "running"


def test_shown_columns_drops_empty_ones_then_gives_up_columns_for_the_prompt():
    empty = {"id": "1", "mode": "v2w", "preset": "p", "prompt": "x", "state": "queued", "progress": "#1 in queue",
             "eta": "-", "gpus": "(1)", "peak": "-", "elapsed": "-"}
    assert shown_columns([empty], 200) == ["id", "mode", "preset", "prompt", "state", "progress", "gpus"]
    full = dict(empty, eta="3s", peak="2.0G", elapsed="10s", gpus="0")
    assert shown_columns([full], 200)[-1] == "elapsed"
    narrow = shown_columns([full], 80)
    assert "peak" not in narrow and "elapsed" not in narrow and {"id", "prompt", "state", "progress"} <= set(narrow)


async def test_remove_clean_hold_and_release(fake):
    done = fake.submit({"prompt": "done one"}, preset="tiny-cpu")
    fake.start(done)
    fake.finish(done)
    failed = fake.submit({"prompt": "failed one"}, preset="tiny-cpu")
    fake.start(failed)
    fake.fail(failed, "boom")
    queued = fake.submit({"prompt": "waiting"}, preset="tiny-cpu")
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 3, what="rows")
        table(app).focus()
        table(app).select_job(queued)
        await pilot.pause()
        await pilot.press("x")  # a queued job is not removed: it says to cancel first
        await pilot.pause()
        assert not any(c[0] == "remove" for c in fake.calls) and app.screen.__class__.__name__ == "QueueScreen"
        await pilot.press("h")
        await wait_for(pilot, lambda: cell(app, queued, "progress") == "held (#1)", what="held")
        assert ("hold", queued) in fake.calls
        await pilot.press("h")
        await wait_for(pilot, lambda: cell(app, queued, "progress") == "#1 in queue", what="released")
        assert ("release", queued) in fake.calls
        table(app).select_job(done)
        await pilot.pause()
        await pilot.press("x")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", what="the question")
        assert "Remove job 1 (done)" in screen_text(app)
        await pilot.press("n")
        await pilot.pause()
        assert not any(c[0] == "remove" for c in fake.calls)
        await pilot.press("x", "y")
        await wait_for(pilot, lambda: table(app).row_count == 2, what="the row gone")
        assert ("remove", [done]) in fake.calls
        await pilot.press("X")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ConfirmScreen", what="the question")
        assert "Remove all 1 finished job(s)" in screen_text(app)
        await pilot.press("y")
        await wait_for(pilot, lambda: _rows(app) == [str(queued)], what="only the queued job left")
        assert ("clean", False) in fake.calls


async def test_a_fast_burst_after_slash_lands_in_the_find_box(fake):
    from test_app import burst

    fake.submit({"prompt": "two cats"}, preset="tiny-cpu")
    fake.submit({"prompt": "a dog"}, preset="tiny-cpu")
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="rows")
        burst(app, ["slash", *"cats"])  # all at once, as a terminal delivers fast typing
        await wait_for(pilot, lambda: app.screen.query_one("#queue-find", Input).value == "cats", what="cats")
        assert app.screen.__class__.__name__ == "QueueScreen"
        assert not any(c[0] == "cancel" for c in fake.calls) and _rows(app) == ["1"]


async def test_a_fast_burst_after_slash_in_a_job_lands_in_the_log_search(fake):
    from test_app import burst

    a = fake.submit({"prompt": "x"}, preset="tiny-cpu")
    fake.start(a)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        app.selected_job = a
        app.action_open_job()
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "JobScreen", what="job screen")
        await pilot.pause()
        burst(app, ["slash", *"crash"])  # c would ask to cancel the running job, r retry
        await wait_for(pilot, lambda: app.screen.query_one("#log-search", Input).value == "crash", what="crash")
        assert app.screen.__class__.__name__ == "JobScreen"


async def test_a_job_that_runs_after_another_says_so_until_that_one_is_done(fake):
    a = fake.submit({"prompt": "first"}, preset="tiny-cpu")
    b = fake.submit({"prompt": "second"}, preset="tiny-cpu", after=a)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="rows")
        await wait_for(pilot, lambda: cell(app, b, "progress") == f"after #{a}", what="the dependency")
        fake.start(a)
        fake.finish(a)
        await refreshed(pilot)
        await wait_for(pilot, lambda: cell(app, b, "progress") == "#1 in queue", what="free to run")


def test_the_status_line_names_what_needs_the_user_first():
    # a narrow terminal cuts the line's end (an ellipsis): failed and interrupted jobs must not be what is cut
    from cosmos_tui.screens.queue import status_text

    jobs = {i: {"state": s} for i, s in enumerate(["done"] * 3 + ["queued", "running", "failed", "interrupted"])}
    line = status_text({}, jobs, None)
    assert line.endswith("1 failed, 1 interrupted, 1 running, 1 queued, 3 done"), line
