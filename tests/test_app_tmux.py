"""The real app under tmux: real daemon, real engine (tiny profile on the CPU), keys sent with
`tmux send-keys`, the result read back with `tmux capture-pane -p`.

Isolated: its own COSMOS_TUI_HOME and config (conftest), demo GPUs, images off, and a scratch
working directory for the job's relative input and output paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pipeline_present() -> bool:
    try:
        from engine import checkpoints
        from engine.modes import video2world
    except Exception:
        return False
    return hasattr(checkpoints, "build_dit") and hasattr(video2world, "run")


pytestmark = [
    pytest.mark.tmux,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
    pytest.mark.skipif(not _pipeline_present(), reason="the tiny pipeline (engine.modes.video2world, "
                       "engine.checkpoints.build_dit) is not there yet"),
]


def _tmux(*args: str, check: bool = True) -> str:
    out = subprocess.run(["tmux", *args], capture_output=True, text=True, check=check)
    return out.stdout


def _wait_screen(session: str, pred, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _tmux("capture-pane", "-p", "-t", session, check=False)
        if pred(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the screen was:\n{text}")


def test_submit_a_tiny_job_with_keys_and_see_it_done(cosmos_home, tmp_path):
    from conftest import stop_daemon

    work = tmp_path / "work"
    work.mkdir()
    session = f"cosmos-tui-test-{os.getpid()}"
    env = {
        "COSMOS_TUI_HOME": os.environ["COSMOS_TUI_HOME"],
        "COSMOS_TUI_CONFIG": os.environ["COSMOS_TUI_CONFIG"],
        "COSMOS_TUI_GPU": "demo",
        "COSMOS_TUI_IMAGES": "none",
        "PYTHONPATH": str(ROOT),
        "TERM": "xterm-256color",
    }
    exports = " ".join(f"{k}={v!s}" for k, v in env.items())
    command = f"cd {work} && env {exports} {sys.executable} -c 'from cosmos_tui.app import run_app; run_app()'"
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    try:
        _wait_screen(session, lambda t: "filter: all" in t, 120, "the TUI connected to its daemon")
        _tmux("send-keys", "-t", session, "s")
        _wait_screen(session, lambda t: "Queue jobs from a preset" in t and "tiny-cpu" in t, 30, "the submit form")
        _tmux("send-keys", "-t", session, "C-s")

        def finished(text: str) -> bool:
            rows = [line for line in text.splitlines() if "tiny-cpu" in line]
            if any(" failed " in r for r in rows):
                raise AssertionError(f"the job failed:\n{text}")
            return any(" done " in r for r in rows)

        screen = _wait_screen(session, finished, 600, "the tiny job to be done")
        row = next(line for line in screen.splitlines() if "tiny-cpu" in line and " done " in line)
        assert "100%" in row
        assert (work / "output" / "tiny.mp4").is_file()
        _tmux("send-keys", "-t", session, "q")
    finally:
        _tmux("kill-session", "-t", session, check=False)
        stop_daemon(cosmos_home)
