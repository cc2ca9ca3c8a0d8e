"""The critic browser: Enter opens a candidate, unparsed trials show what the critic wrote (as
data), no winner is starred on a tie of unparsed results, `y` copies a report path (OSC 52)."""

from __future__ import annotations

import json

from textual.widgets import DataTable, Static

from test_app import _critic_files, fake, make_app, table, wait_for  # noqa: F401  (fixture)

RAW = "I cannot tell. [bold]maybe[/bold] \x1b[31mred\x1b[0m <answer>unsure"


def _unparsed_files(tmp_path, html_name: str = "gen{i}.html"):
    """Two candidates whose trials all failed to parse: both score 0.0 (a tie)."""
    out = tmp_path / "bestofn"
    out.mkdir()
    ranking = []
    for i in range(2):
        video = out / f"gen{i}.mp4"
        trials = [{"text": f"{RAW} {i}.{k}", "answer": None, "overview": "", "components": [],
                   "detail": "failed", "parsed": False} for k in range(3)]
        j = out / f"gen{i}_score000.json"
        j.write_text(json.dumps({"video": str(video), "score": 0.0, "trials": trials,
                                 "counts": {"anomaly": 0, "no_anomaly": 0, "parsed": 0, "trials": 3}}))
        ranking.append({"rank": i + 1, "video": str(video), "score": 0.0, "score_pct": "000", "json": str(j),
                        "html": str(out / html_name.format(i=i))})
    r = out / "ranking.json"
    r.write_text(json.dumps({"winner": ranking[0]["video"], "ranking": ranking}))
    return r


async def _open_critic(pilot, fake, ranking):
    app = pilot.app
    await wait_for(pilot, lambda: table(app).row_count >= 1, what="row")
    app.selected_job = max(j["id"] for j in fake.jobs())
    app.action_critic()
    await wait_for(pilot, lambda: getattr(app.screen, "report", None) is not None, what="critic report")
    await pilot.pause()


def _job(fake, ranking):
    a = fake.submit({"mode": "bestofn"}, preset="tiny-cpu")
    fake.start(a)
    fake.finish(a, outputs=[str(ranking)], kinds=["ranking"])
    return a


async def test_enter_opens_a_candidate_with_its_paths_frames_and_trials(fake, tmp_path):
    ranking, videos = _critic_files(tmp_path)
    _job(fake, ranking)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_critic(pilot, fake, ranking)
        app.screen.query_one("#critic-table", DataTable).focus()
        await pilot.press("down", "enter")  # the second candidate: gen2
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "CandidateScreen", what="the candidate")
        head = str(app.screen.query_one("#candidate-head", Static).render())
        assert "candidate #2" in head and "gen2.mp4" in head and "0.60" in head
        paths = str(app.screen.query_one("#candidate-paths", Static).render())
        assert f"video  {videos[2]}  (not on disk)" in paths and "gen2_score060.html" in paths
        assert "overview 2.0" in str(app.screen.query_one("#candidate-trials", Static).render())
        assert app.screen.query_one("#candidate-frames").path is None  # no such file: nothing to read
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "CriticScreen", what="back")


async def test_unparsed_trials_show_the_raw_text_as_data_and_a_tie_has_no_star(fake, tmp_path):
    ranking = _unparsed_files(tmp_path)
    _job(fake, ranking)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_critic(pilot, fake, ranking)
        t = app.screen.query_one("#critic-table", DataTable)
        stars = [str(t.get_row_at(i)[1]) for i in range(t.row_count)]
        assert stars == ["", ""]  # a 0.0 / 0.0 tie of unparsed results has no winner
        head = str(app.screen.query_one("#critic-head", Static).render())
        assert "no winner: no trial answer could be parsed" in head
        trials = str(app.screen.query_one("#critic-trials", Static).render())
        assert "the critic wrote (no answer could be parsed)" in trials
        # markup stays literal text and escape characters are not passed to the terminal
        assert "I cannot tell. [bold]maybe[/bold] ?[31mred?[0m <answer>unsure 0.0" in trials
        assert "\x1b" not in trials


async def test_a_parsed_winner_keeps_its_star_among_unparsed_zeros(fake, tmp_path):
    from cosmos_tui.screens.critic import winner_of

    parsed = {"video": "a", "score": 0.0, "trials": [{"answer": "yes"}]}
    unparsed = {"video": "b", "score": 0.0, "trials": [{"answer": None}]}
    assert winner_of({"winner": "a", "candidates": [parsed, unparsed]}) == "a"
    assert winner_of({"winner": "b", "candidates": [unparsed, dict(unparsed, video="c")]}) is None
    assert winner_of({"winner": "b", "candidates": [dict(unparsed, score=0.5), parsed]}) == "b"


async def test_y_copies_only_the_report_path_and_refuses_control_characters(fake, tmp_path):
    ranking, _ = _critic_files(tmp_path)
    _job(fake, ranking)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_critic(pilot, fake, ranking)
        await pilot.press("y")
        assert app.clipboard == str(tmp_path / "bestofn" / "gen1_score100.html")
        app.screen.report["candidates"][0]["html"] = "/tmp/x\x1b]52;c;evil\x07.html"
        await pilot.press("y")
        assert app.clipboard == str(tmp_path / "bestofn" / "gen1_score100.html")  # unchanged
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "CandidateScreen", what="the candidate")
        await pilot.press("Y")
        assert app.clipboard == str(tmp_path / "bestofn" / "gen1.mp4")
