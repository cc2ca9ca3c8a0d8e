"""The engine's phases and the phase-aware ETA in the TUI: the queue row (phase word, ETA with "+" for a
lower bound), the queue header (whole queue's ETA), the job screen (phase line, time per phase).

Driven end to end through the fake daemon (tests/fake_client.py, the real daemon on a real store):
phase events go in through FakeClient.emit as the engine would send them, the daemon learns their
durations and computes the ETAs. Every duration is a multiple of 1/4 s and the fake's clock stands
still, so the expected ETAs are exact."""

from __future__ import annotations

import types

import pytest
from textual.widgets import Static

from cosmos_tui.gpu import DemoBackend
from cosmos_tui.widgets import phase_text
from fake_client import FakeClient, screen_text
from test_app import T0, cell, make_app, refreshed, table, wait_for

PLAIN = {"disable_guardrail": True, "disable_prompt_refiner": True}
# one chunk / generation of a 35-step job, as the engine reports it: (phase, seconds, end fields)
CHUNK = (("text_encode", 0.25, {}), ("vae_encode", 1.0, {}), ("denoise", 72.0, {"units": 36, "cold": False}),
         ("vae_decode", 3.0, {}), ("writing", 0.75, {}))
GEN35 = 0.25 + 1.0 + 72.0 + 3.0 + 0.75  # 77 s
GEN4 = 0.25 + 1.0 + 5 * 2.0 + 3.0 + 0.75  # a 4-step v2w job at the same 2 s per evaluation: 15 s


@pytest.fixture
def fake(tmp_path):
    return FakeClient(tmp_path / "logs", gpu=DemoBackend(1), clock=lambda: T0)


def phase(fake, jid: int, name: str, seconds: float | None = None, **fields) -> None:
    """A phase's start event and, with `seconds`, its end, as engine/phases.py sends them."""
    fake.emit(jid, "phase", phase=name, state="start", start=T0, key={}, **fields)
    if seconds is not None:
        fake.emit(jid, "phase", phase=name, state="end", start=T0, end=T0 + seconds, seconds=seconds, ok=True,
                  key={}, **fields)


def long_video_in_chunk_two(fake) -> int:
    """A 6-chunk long video that finished chunk 1 and has sampled 12 of chunk 2's 35 steps."""
    jid = fake.submit({"mode": "lvg", "prompt": "a long road", "num_chunks": 6, "num_steps": 35, **PLAIN},
                      preset="tiny-cpu")
    fake.start(jid)
    unit = {"chunk": 1, "num_chunks": 6}
    for name, secs, extra in CHUNK:
        phase(fake, jid, name, secs, **unit, **({"steps": 35, **extra} if name == "denoise" else {}))
    unit = {"chunk": 2, "num_chunks": 6}
    phase(fake, jid, "text_encode", 0.25, **unit)
    phase(fake, jid, "vae_encode", 1.0, **unit)
    phase(fake, jid, "denoise", steps=35, **unit)
    for _ in range(12):
        fake.step(jid, 2.0, chunk=2, total=35)
    return jid


def header(app) -> str:
    return str(app.screen.query_one("#queue-status", Static).render())


async def test_queue_row_shows_the_phase_and_eta_and_the_header_the_queues_eta(fake):
    long = long_video_in_chunk_two(fake)
    nxt = fake.submit({"prompt": "next", **PLAIN}, preset="tiny-cpu")  # 4 steps, the same model
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="rows")
        # 24 evaluations of chunk 2 left (12 steps, 23 more and the final pass), its decode and write,
        # then 4 chunks: 48 + 3.75 + 4 * 77 = 359.75 s
        assert app.jobs[long]["eta_s"] == 359.8 and cell(app, long, "eta") == "6m00"
        assert cell(app, long, "progress").endswith(" 12/35  ")
        # the queued job follows on the one GPU, warm: its wait and its own 15 s
        assert app.jobs[nxt]["eta_s"] == 374.8 and cell(app, nxt, "eta") == "6m15"
        assert "ETA 6m15 ·" in header(app)
        # chunk 2 decodes: the row follows the phase
        fake.emit(long, "phase", phase="denoise", state="end", start=T0, end=T0 + 72.0, seconds=72.0, ok=True,
                  units=36, cold=False, key={}, chunk=2, num_chunks=6)
        phase(fake, long, "vae_decode", chunk=2, num_chunks=6)
        await refreshed(pilot)
        assert cell(app, long, "progress").endswith(" decode ")
        assert app.jobs[long]["eta_s"] == round(3.0 + 0.75 + 4 * GEN35, 1) and cell(app, long, "eta") == "5m12"
        # a best-of-N of the same model queued too: its critic was never measured, so "at least"
        best = fake.submit({"mode": "bestofn", "prompt": "a kite", "num_generations": 2, "num_critic_trials": 1,
                            **PLAIN}, preset="tiny-cpu")
        await refreshed(pilot)
        assert app.jobs[best]["eta_partial"] is True and cell(app, best, "eta").endswith("+")
        assert "+ ·" in header(app)


async def test_job_screen_shows_the_phase_line_and_time_per_phase(fake):
    jid = fake.submit({"mode": "bestofn", "prompt": "a kite", "num_generations": 4, "num_critic_trials": 5,
                       **PLAIN}, preset="tiny-cpu")
    fake.start(jid)
    phase(fake, jid, "loading", 40.0, component="pipeline")
    for g in (1, 2, 3, 4):
        phase(fake, jid, "denoise", 10.0, generation=g, num_generations=4, units=5, cold=False)
    phase(fake, jid, "loading", 10.0, component="critic")
    for v in (1, 2):
        phase(fake, jid, "critic", 25.0, video=v, videos=4, trials=5, units=5)
    phase(fake, jid, "critic", video=3, videos=4, trials=5, units=5)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        assert cell(app, jid, "progress").endswith(" critic ")
        table(app).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: getattr(app.screen, "job_id", None) == jid, what="job screen")
        screen = app.screen
        progress = str(screen.query_one("#job-progress", Static).render())
        # videos 3 and 4 left, 5 trials of 5 s each
        assert "phase: critic · video 3/4, 5 trials" in progress and "ETA 50s" in progress
        # the bar is by time, as the queue row's: 30 s elapsed of 30 + 50 (the critic's trials are not steps)
        assert " 37%" in progress
        await wait_for(pilot, lambda: screen.query_one("#job-phases", Static).display, what="phase summary")
        summary = str(screen.query_one("#job-phases", Static).render())
        assert summary == "phases: loading 50s (×2) · denoise 40s (×4) · critic 50s (×2)"


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
async def test_snapshot_queue_with_phases(fake, snapshot, size, monkeypatch):
    import cosmos_tui.gpu as gpu

    monkeypatch.setattr(gpu, "time", types.SimpleNamespace(time=lambda: T0))
    long_video_in_chunk_two(fake)
    fake.submit({"prompt": "next in line", **PLAIN}, preset="tiny-cpu")
    fake.submit({"mode": "bestofn", "prompt": "a kite over the dunes", "num_generations": 2, **PLAIN},
                preset="tiny-cpu")
    app = make_app(fake)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 3, what="rows")
        await pilot.pause()
        assert screen_text(app) == snapshot


async def test_the_seconds_per_step_label_counts_the_final_pass_apart(fake):
    # a 4-step job makes 5 timed denoiser calls; the label must not call them "5 steps"
    jid = fake.submit({"prompt": "a kite", "num_steps": 4, **PLAIN}, preset="tiny-cpu")
    fake.start(jid)
    for i in range(1, 5):
        fake.emit(jid, "step", step=i, total=4, seconds=0.5)
    fake.emit(jid, "step", step=4, total=4, seconds=0.5, final=True)
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        table(app).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: "(4 steps + 1 final pass)" in screen_text(app), what="the step label")
        assert "5 steps" not in screen_text(app)
