"""The engine's phases and the phase-aware ETA in the TUI: the queue row (phase word, ETA with "+" for a
lower bound), the queue header (whole queue's ETA), the job screen (phase line, time per phase).

The fake daemon (tests/fake_client.py) knows nothing of phases; `PhaseFake` lays what the real daemon
adds to its job dicts and queue answer (phase, eta_s, eta_partial) over the fake's own answers, and
phase events go in through FakeClient.emit, as the engine's would."""

from __future__ import annotations

import types

import pytest
from textual.widgets import Static

from cosmos_tui.widgets import phase_text
from fake_client import FakeClient, screen_text
from test_app import T0, cell, make_app, refreshed, table, wait_for


class PhaseFake(FakeClient):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.extra: dict[int, dict] = {}
        self.queue_extra: dict = {}

    def put(self, jid: int, **fields) -> None:
        self.extra.setdefault(jid, {}).update(fields)

    def jobs(self, states=None):
        return [{**j, **self.extra.get(j["id"], {})} for j in super().jobs(states)]

    def job(self, id):
        return {**super().job(id), **self.extra.get(id, {})}

    def queue(self):
        return {**super().queue(), **self.queue_extra}


@pytest.fixture
def fake(tmp_path):
    return PhaseFake(tmp_path / "logs", clock=lambda: T0)


def denoising_long_video(fake) -> int:
    jid = fake.submit({"mode": "lvg", "prompt": "a long road", "num_chunks": 6, "num_steps": 35}, preset="tiny-cpu")
    fake.start(jid)
    for _ in range(12):
        fake.step(jid, 0.5, chunk=2)
    fake.put(jid, eta_s=252.0, eta_partial=False, chunk=2,
             phase={"phase": "denoise", "state": "start", "start": T0, "chunk": 2, "num_chunks": 6, "cold": False})
    return jid


async def test_queue_row_shows_the_phase_and_eta_and_the_header_the_queues_eta(fake):
    long = denoising_long_video(fake)
    queued = fake.submit({"prompt": "next"}, preset="tiny-cpu")
    fake.put(queued, eta_s=3720.0, eta_partial=True)
    fake.queue_extra = {"eta_s": 3720.0, "eta_partial": True}
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="rows")
        assert cell(app, long, "progress").endswith(" 12/35  ")
        assert cell(app, long, "eta") == "4m12"
        # a queued job's ETA counts its wait; "+" says some phase of its model was never measured
        assert cell(app, queued, "eta") == "1h02+"
        header = str(app.screen.query_one("#queue-status", Static).render())
        assert "ETA 1h02+" in header
        # the phase moves on: the row follows
        fake.put(long, eta_s=200.0, phase={"phase": "vae_decode", "state": "start", "start": T0, "chunk": 2,
                                           "num_chunks": 6})
        fake.queue_extra = {"eta_s": 3600.0, "eta_partial": False}
        await refreshed(pilot)
        assert cell(app, long, "progress").endswith(" decode ") and cell(app, long, "eta") == "3m20"
        assert "ETA 1h00 ·" in str(app.screen.query_one("#queue-status", Static).render())
        # nothing left to run: no ETA in the header
        fake.queue_extra = {"eta_s": None}
        await refreshed(pilot)
        assert "ETA" not in str(app.screen.query_one("#queue-status", Static).render())


async def test_job_screen_shows_the_phase_line_and_time_per_phase(fake):
    jid = fake.submit({"mode": "bestofn", "prompt": "a kite", "num_generations": 4}, preset="tiny-cpu")
    fake.start(jid)
    for name, secs in (("loading", 40.0), ("text_encode", 0.25), ("denoise", 70.0), ("denoise", 72.0)):
        fake.emit(jid, "phase", phase=name, state="end", ok=True, seconds=secs, start=T0, end=T0 + secs)
    fake.put(jid, eta_s=95.0, eta_partial=False, phase={"phase": "critic", "state": "start", "start": T0,
                                                        "video": 3, "videos": 4, "trials": 5})
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        table(app).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: getattr(app.screen, "job_id", None) == jid, what="job screen")
        screen = app.screen
        progress = str(screen.query_one("#job-progress", Static).render())
        assert "phase: critic · video 3/4, 5 trials" in progress and "ETA 1m35" in progress
        # the bar is by time, as the queue row's: 30 s elapsed of 30 + 95 (the critic's trials are not steps)
        assert " 24%" in progress
        await wait_for(pilot, lambda: screen.query_one("#job-phases", Static).display, what="phase summary")
        summary = str(screen.query_one("#job-phases", Static).render())
        assert summary == "phases: loading 40s · text encode 0.2s · denoise 2m22 (×2)"


def test_phase_text_pieces():
    job = {"state": "running", "step": 3, "total_steps": 4, "phase": {"phase": "denoise", "state": "start",
                                                                       "generation": 2, "num_generations": 4}}
    assert phase_text.phase_line(job) == "denoise"  # steps and generations: on the units line above it
    assert phase_text.row_phase(job) == "3/4"
    guard = {"state": "running", "phase": {"phase": "guardrail", "target": "refined_prompt", "state": "end",
                                           "chunk": 1, "num_chunks": 3}}
    assert phase_text.phase_line(guard) == "guardrail (refined prompt) · done"
    bench = {"state": "running", "phase": {"phase": "vae_decode", "state": "start", "run": 2, "runs": 4}}
    assert phase_text.phase_line(bench) == "VAE decode · run 2/4"
    assert phase_text.phase_line({"state": "done", "phase": {"phase": "writing"}}) == ""
    assert all(len(w) <= 7 for w in phase_text.SHORT.values())
    # by time once the ETA is a full estimate: 30 s done and 90 s left is a quarter
    ph = {"phase": "critic", "state": "start"}
    assert phase_text.fraction({"state": "running", "eta_s": 90.0, "phase": ph}, 30.0) == 0.25
    assert phase_text.fraction({"state": "running", "eta_s": 90.0, "eta_partial": True, "phase": ph}, 30.0) is None
    assert phase_text.fraction({"state": "running", "eta_s": 90.0}, 30.0) is None  # a steps-only ETA
    assert phase_text.eta_text(None) == "-" and phase_text.eta_text(61, True) == "1m01+"


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_snapshot_queue_with_phases(fake, snapshot, size, cosmos_home, monkeypatch):
    import cosmos_tui.gpu as gpu

    monkeypatch.setattr(gpu, "time", types.SimpleNamespace(time=lambda: T0))
    long = denoising_long_video(fake)
    best = fake.submit({"mode": "bestofn", "prompt": "a kite over the dunes"}, preset="tiny-cpu")
    fake.start(best, gpus=(1,))
    fake.put(best, eta_s=95.0, eta_partial=False, phase={"phase": "critic", "state": "start", "start": T0,
                                                         "video": 3, "videos": 4, "trials": 5})
    queued = fake.submit({"prompt": "next in line"}, preset="tiny-cpu")
    fake.put(queued, eta_s=3720.0, eta_partial=True)
    fake.queue_extra = {"eta_s": 3720.0, "eta_partial": True}
    app = make_app(fake)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 3, what="rows")
        await pilot.pause()
        text = screen_text(app).replace(str(fake.log_dir), "<logs>")
        assert text == snapshot
    assert long and best
