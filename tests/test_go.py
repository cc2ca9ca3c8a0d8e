"""`./go` with no checkpoints queues the tiny-profile demo job once, not on every launch.

Runs the real script against a stand-in venv: its python is this interpreter, the install stamp
is already there (so nothing is installed), and its `cosmos-tui` records how it was called and
answers `ls --json` with the queue the test gives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _venv(tmp_path: Path, queue: list[dict]) -> tuple[Path, Path]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    tui = venv / "bin" / "cosmos-tui"
    (tmp_path / "queue.json").write_text(json.dumps(queue))
    tui.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n"
                   f"if [ \"$1\" = ls ]; then cat {tmp_path / 'queue.json'}; fi\n")
    for f in (python, tui):
        f.chmod(0o755)
    stamp = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    (venv / f".cosmos-tui-{stamp}-app").touch()
    return venv, calls


def _go(tmp_path: Path, queue: list[dict]) -> list[str]:
    venv, calls = _venv(tmp_path, queue)
    env = {**os.environ, "COSMOS_TUI_VENV": str(venv), "COSMOS_TUI_CHECKPOINTS": str(tmp_path / "none")}
    out = subprocess.run(["bash", str(ROOT / "go")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return calls.read_text().splitlines()


def test_go_queues_the_demo_job_when_the_queue_has_none(tmp_path):
    assert _go(tmp_path, [{"id": 1, "preset": "2b-720p16", "state": "done"}]) == ["ls --json", "demo"]


def test_go_does_not_queue_another_demo_job(tmp_path):
    calls = _go(tmp_path, [{"id": 4, "preset": "tiny-cpu", "state": "done"}])
    assert calls == ["ls --json", ""]  # the TUI, opened with no subcommand
