"""Shared fixtures.

Every test gets its own cosmos-tui home (COSMOS_TUI_HOME) and config dir, so nothing touches the
user's real queue or presets. The home is a short path under /tmp: a Unix socket path must fit in
107 bytes, and pytest's tmp_path often does not.

`daemon` gives a running daemon on that home with the fake engine (tests/fake_engine.py) and two
demo GPUs, and stops it afterwards; `fake_engine_env` sets up the same environment for tests that
start the daemon themselves. `wait_until(pred, timeout)` polls with a generous timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_ENGINE = Path(__file__).resolve().parent / "fake_engine.py"


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie holds no resources)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_until(pred, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def wait_until():
    return _wait_until


@pytest.fixture(autouse=True)
def cosmos_home(monkeypatch):
    home = Path(tempfile.mkdtemp(prefix="ct-", dir="/tmp"))
    monkeypatch.setenv("COSMOS_TUI_HOME", str(home))
    monkeypatch.setenv("COSMOS_TUI_CONFIG", str(home / "config"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def placeholder_checkpoints(tmp_path_factory) -> Path:
    """Empty files where every released checkpoint of the seed's layout goes: the queue refuses at submit a
    job whose checkpoints are missing, and the daemon tests queue 2B/14B jobs that only the fake engine
    runs. Nothing loads them (a real-size model never runs in the tests)."""
    root = tmp_path_factory.mktemp("checkpoints")
    for size in ("2B", "14B"):
        repo = root / "nvidia" / f"Cosmos-Predict2-{size}-Video2World"
        for res in ("480", "720"):
            for fps in ("10", "16"):
                for natten in ("", "-natten"):
                    f = repo / f"model-{res}p-{fps}fps{natten}.pt"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.touch()
        (repo / "tokenizer").mkdir(exist_ok=True)
        (repo / "tokenizer" / "tokenizer.pth").touch()
    for d in ("google-t5/t5-11b", "nvidia/Cosmos-Reason1-7B", "meta-llama/Llama-Guard-3-8B",
              "nvidia/Cosmos-Guardrail1/video_content_safety_filter"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "nvidia/Cosmos-Guardrail1/video_content_safety_filter/safety_filter.pt").touch()
    return root


@pytest.fixture(autouse=True)
def checkpoints_env(monkeypatch, placeholder_checkpoints):
    monkeypatch.setenv("COSMOS_TUI_CHECKPOINTS", str(placeholder_checkpoints))


def make_default_input(directory: Path) -> Path:
    """The spec's default input_path under `directory`: the queue checks inputs at submit, and
    the fake engine never reads it, so a few bytes do."""
    from engine.spec import GenerationSpec

    path = directory / GenerationSpec.model_fields["input_path"].default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff fake jpeg")
    return path


@pytest.fixture
def fake_engine_env(monkeypatch, cosmos_home):
    monkeypatch.setenv("COSMOS_TUI_ENGINE_CMD", f"{sys.executable} {FAKE_ENGINE}")
    monkeypatch.setenv("COSMOS_TUI_GPU", "demo:2")
    # submits from a directory that has the default input, as a user's project would
    work = cosmos_home / "work"
    make_default_input(work)
    monkeypatch.chdir(work)
    return cosmos_home


def stop_daemon(home: Path) -> None:
    """Stop the daemon of `home` however it is: politely, then by pid."""
    from cosmos_tui.client import Client, DaemonError

    pid_file = home / "run" / "daemon.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        Client(home / "run" / "daemon.sock", timeout=10).shutdown(force=True)
    except (DaemonError, OSError):
        pass
    if pid:
        try:
            _wait_until(lambda: not pid_alive(pid), timeout=20, what="the daemon to exit")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon(fake_engine_env):
    """A running daemon (fake engine, 2 demo GPUs); yields a connected Client."""
    from cosmos_tui.client import Client

    client = Client.connect(autostart=True)
    yield client
    stop_daemon(fake_engine_env)


def pytest_terminal_summary(terminalreporter):
    """Skipped Slurm tests say why even without -rs: a cluster that could not start must not look
    like a pass."""
    reasons = set()
    for rep in terminalreporter.stats.get("skipped", []):
        if "test_slurm" in rep.nodeid and isinstance(rep.longrepr, tuple):
            reasons.add(str(rep.longrepr[2]).removeprefix("Skipped: "))
    for reason in sorted(reasons):
        terminalreporter.write_line(f"Slurm tests skipped: {reason}", yellow=True)
