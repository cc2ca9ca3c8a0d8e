"""The seed's inference-guide command lines, run for real as subprocesses with `--model_size tiny`
standing in for the checkpoints: single image, 5-frame video, batch JSON with a bad entry, long video,
best-of-N. Each checks what the guide says gets written and the exit status."""

from __future__ import annotations

import contextlib
import io as io_
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import pytest

from engine import io, resolutions
from engine.cli_args import main
from tests.tiny import small_video

pytestmark = pytest.mark.slow

ROOT = str(Path(__file__).resolve().parent.parent)
COMMON = ["--model_size", "tiny", "--num_steps", "1", "--disable_guardrail", "--disable_prompt_refiner"]


MODES = {"engine.video2world": "video2world", "engine.video2world_lvg": "lvg",
         "engine.video2world_bestofn": "bestofn"}


def run(module: str, *args: str, common: Sequence[str] = COMMON, cwd=None) -> subprocess.CompletedProcess:
    """`python -m module args common`, in this process: `python -m engine.X` is exactly
    `cli_args.main(mode, argv)` plus `sys.exit`, and a new interpreter costs ~8 s of imports (torch,
    transformers) per command on a 2-core box; `run_subprocess` keeps the real `-m` path covered.
    `common` comes last so that it wins over a flag the args repeat (argparse keeps the last value),
    e.g. the guide's --model_size 2B."""
    out, err = io_.StringIO(), io_.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or os.getcwd()):
        code = main(MODES[module], [*args, *common])
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def run_subprocess(module: str, *args: str, common: Sequence[str] = COMMON, cwd=None) -> subprocess.CompletedProcess:
    """The same through a real `python -m`; with `cwd`, the checkout stays importable through PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", module, *args, *common], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def test_single_image_and_five_frame_video(tmp_path):
    img = str(io.ensure_demo_input(tmp_path / "robot.png"))
    r = run("engine.video2world", "--input_path", img, "--prompt", "a robot arm picks up a cup",
            "--save_path", str(tmp_path / "output" / "generated_video.mp4"))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "output").iterdir()} == {"generated_video.mp4", "generated_video.txt",
                                                                  "generated_video.json"}
    r = run("engine.video2world", "--input_path", small_video(tmp_path), "--num_conditional_frames", "5",
            "--prompt", "a car drives on", "--save_path", str(tmp_path / "v5.mp4"))
    assert r.returncode == 0, r.stderr
    assert iio.imread(tmp_path / "v5.mp4").shape[0] == resolutions.num_frames(16, "tiny")


def test_batch_json_runs_the_good_entries_and_names_the_bad_one(tmp_path):
    img = str(io.ensure_demo_input(tmp_path / "in.png"))
    batch = [
        {"input_video": img, "prompt": "first", "output_video": str(tmp_path / "a.mp4")},
        {"input_video": img, "output_video": str(tmp_path / "b.mp4")},  # no prompt
        {"input_video": str(tmp_path / "missing.jpg"), "prompt": "third", "output_video": str(tmp_path / "c.mp4")},
        {"input_video": img, "prompt": "fourth", "output_video": str(tmp_path / "d.mp4")},
    ]
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    r = run("engine.video2world", "--batch_input_json", str(tmp_path / "batch.json"))
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if "entry" in line]
    assert any("entry 1" in e and "prompt" in e for e in errors)
    assert any("entry 2" in e and "input" in e for e in errors)
    assert (tmp_path / "a.mp4").exists() and (tmp_path / "d.mp4").exists()
    assert not (tmp_path / "b.mp4").exists() and not (tmp_path / "c.mp4").exists()


def test_long_video(tmp_path):
    img = str(io.ensure_demo_input(tmp_path / "in.png"))
    out = tmp_path / "lvg.mp4"
    r = run_subprocess("engine.video2world_lvg", "--input_path", img, "--prompt", "a long drive", "--num_chunks", "2",
            "--save_path", str(out))
    assert r.returncode == 0, r.stderr
    assert iio.imread(out).shape[0] == resolutions.lvg_total_frames(2, 1, model_size="tiny")
    assert "[Prompt]\na long drive" in out.with_suffix(".txt").read_text()


def test_best_of_n(tmp_path):
    img = str(io.ensure_demo_input(tmp_path / "robot.png"))
    out = tmp_path / "best-of-n"
    r = run("engine.video2world_bestofn", "--input_path", img, "--prompt", "a robot arm picks up a cup",
            "--num_generations", "2", "--num_critic_trials", "2", "--save_path", str(out))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in out.glob("*.mp4")} == {"robot_seed0.mp4", "robot_seed1.mp4"}
    assert len(list(out.glob("*_score*.html"))) == 2
    assert json.loads((out / "ranking.json").read_text())["winner"].endswith(".mp4")
    r = run("engine.video2world_bestofn", "--skip_generation", "--num_critic_trials", "2", "--save_path", str(out))
    assert r.returncode == 0, r.stderr
