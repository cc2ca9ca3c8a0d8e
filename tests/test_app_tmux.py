"""The real app under tmux: real daemon, keys sent with `tmux send-keys`, the result read back with
`tmux capture-pane -p`. One test runs the real engine (tiny profile on the CPU); the others drive
the keyboard paths a user hits first (the first-launch typing burst, the preset editor) with the
fake engine behind the daemon.

Isolated: its own COSMOS_TUI_HOME and config (conftest), demo GPUs, images off, and a scratch
working directory for the job's relative input and output paths.
"""

from __future__ import annotations

import os
import shlex
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
]
needs_pipeline = pytest.mark.skipif(not _pipeline_present(), reason="the tiny pipeline (engine.modes.video2world, "
                                    "engine.checkpoints.build_dit) is not there yet")


# A tmux server of this test process's own (-L): the user's tmux sessions, and a `tmux kill-server` typed in
# one of them while the suite runs, stay apart from ours (that kill once emptied a test's screen mid-run).
SOCKET = f"cosmos-tui-test-{os.getpid()}"


@pytest.fixture(scope="module", autouse=True)
def _own_tmux_server():
    yield
    if shutil.which("tmux"):
        subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True)


def _tmux(*args: str, check: bool = True) -> str:
    out = subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True, check=check)
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


def _launch(work: Path, **extra: str) -> str:
    """Open the TUI in a new detached tmux session (120x40) in `work`; returns the session name."""
    session = f"cosmos-tui-test-{os.getpid()}"
    env = {
        "COSMOS_TUI_HOME": os.environ["COSMOS_TUI_HOME"],
        "COSMOS_TUI_CONFIG": os.environ["COSMOS_TUI_CONFIG"],
        "COSMOS_TUI_GPU": "demo",
        "COSMOS_TUI_IMAGES": "none",
        "PYTHONPATH": str(ROOT),
        "TERM": "xterm-256color",
        **extra,
    }
    exports = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    command = f"cd {work} && env {exports} {sys.executable} -c 'from cosmos_tui.app import run_app; run_app()'"
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    return session


def _field(screen: str, label: str) -> str:
    """The text after `label` on the form row that starts with it (tmux shows each field's value)."""
    for line in screen.splitlines():
        stripped = line.strip(" │")
        if stripped.startswith(label + " "):
            return stripped[len(label):].strip(" │")
    raise AssertionError(f"no {label!r} row on the screen:\n{screen}")


def test_keys_typed_at_first_launch_land_in_the_submit_form(cosmos_home, tmp_path):
    """`s`, `hello world`, Tab, `/tmp/x.jpg` typed in one burst as the TUI appears."""
    from conftest import FAKE_ENGINE, stop_daemon

    work = tmp_path / "work"
    work.mkdir()
    session = _launch(work, COSMOS_TUI_ENGINE_CMD=f"{sys.executable} {FAKE_ENGINE}")
    try:
        _wait_screen(session, lambda t: "Submit" in t, 120, "the TUI's first screen")
        # one send-keys: the whole burst reaches the terminal at once, as fast typing does
        _tmux("send-keys", "-t", session, "s", "hello world", "Tab", "/tmp/x.jpg")
        screen = _wait_screen(session, lambda t: "/tmp/x.jpg" in t, 30, "the path typed into the form")
        assert "Queue jobs from a preset" in screen
        assert _field(screen, "prompt") == "hello world"
        assert _field(screen, "input path") == "/tmp/x.jpg"
        _tmux("send-keys", "-t", session, "Escape")
        _wait_screen(session, lambda t: "filter:" in t and "Queue jobs from a preset" not in t, 30, "the queue")
        _tmux("send-keys", "-t", session, "q")
    finally:
        _tmux("kill-session", "-t", session, check=False)
        stop_daemon(cosmos_home)


def test_the_preset_editor_keeps_typed_text_and_asks_before_discarding_it(cosmos_home, tmp_path):
    from conftest import FAKE_ENGINE, stop_daemon

    work = tmp_path / "work"
    work.mkdir()
    session = _launch(work, COSMOS_TUI_ENGINE_CMD=f"{sys.executable} {FAKE_ENGINE}")
    try:
        _wait_screen(session, lambda t: "filter: all" in t, 120, "the TUI connected to its daemon")
        _tmux("send-keys", "-t", session, "3")
        _wait_screen(session, lambda t: "tiny-cpu" in t and "Edit" in t, 30, "the preset list")
        # `e` opens the editor on its first field; the letters after it are text (q must not quit)
        _tmux("send-keys", "-t", session, "e", "quick3")
        screen = _wait_screen(session, lambda t: "editing" in t and "quick3" in t, 30, "quick3 typed in the editor")
        assert "quick3" in _field(screen, "name")
        _tmux("send-keys", "-t", session, "Escape")
        _wait_screen(session, lambda t: "Discard" in t, 30, "the question before dropping the edit")
        _tmux("send-keys", "-t", session, "n")
        screen = _wait_screen(session, lambda t: "Discard" not in t and "editing" in t, 30, "back to the edit")
        assert "quick3" in _field(screen, "name")
        _tmux("send-keys", "-t", session, "Escape")
        _wait_screen(session, lambda t: "Discard" in t, 30, "the question again")
        _tmux("send-keys", "-t", session, "y")
        screen = _wait_screen(session, lambda t: "editing" not in t and "tiny-cpu" in t, 30, "the preset list")
        assert "quick3" not in screen
        _tmux("send-keys", "-t", session, "q")
    finally:
        _tmux("kill-session", "-t", session, check=False)
        stop_daemon(cosmos_home)


@needs_pipeline
def test_submit_a_tiny_job_with_keys_and_see_it_done(cosmos_home, tmp_path):
    from conftest import stop_daemon

    work = tmp_path / "work"
    work.mkdir()
    session = _launch(work)
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
