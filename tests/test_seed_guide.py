"""The inference guide's command lines, run as written against the example inputs shipped in assets/
(drawn by assets/make_examples.py), with only `--model_size tiny --num_steps 1` added. Guardrail and
prompt refiner stay as the guide leaves them (on), so this is also the tiny profile's end-to-end
check that both work with no checkpoints.

Each command runs in a temporary folder that links to the checkout's assets/: the guide's relative
paths (assets/..., output/...) mean what they mean in the guide, and the outputs land in tmp_path,
not in the checkout. `python -m examples.X` of the guide is `python -m engine.X` here, called in this
process through the function those modules run (`engine.cli_args.main`), so the commands share one
warm tiny pipeline instead of each paying an interpreter, torch import and model build (a subprocess
per command is what tests/test_seed_commands.py checks). The guide's torchrun (multi-GPU) command is
not run (CPU only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import pytest

from engine import cli_args, resolutions
from tests.test_seed_commands import ROOT

pytestmark = pytest.mark.slow

TINY = ["--model_size", "tiny", "--num_steps", "1"]
PROMPTS = json.loads((Path(ROOT) / "assets" / "prompts.json").read_text())


MODES = {"engine.video2world": "video2world", "engine.video2world_lvg": "lvg",
         "engine.video2world_bestofn": "bestofn"}


@pytest.fixture
def guide_dir(tmp_path, monkeypatch):
    (tmp_path / "assets").symlink_to(Path(ROOT) / "assets", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def guide(cwd, module, *args):
    """`python -m <module> <args> --model_size tiny --num_steps 1`, run in `cwd`; must exit 0."""
    assert Path.cwd() == cwd
    events: list[dict] = []
    code = cli_args.main(MODES[module], [*args, *TINY], emit=events.append)
    failures = [e for e in events if e.get("event") in ("failed", "log") and e.get("level") == "error"]
    assert code == 0, failures or events[-3:]
    return events


def test_examples_are_committed_and_small():
    assets = Path(ROOT) / "assets"
    names = ["video2world/input0.jpg", "video2world/input1.jpg", "video2world/input2.jpg",
             "video2world/input3.mp4", "video2world/batch_example.json", "video2world_lvg/example_input.jpg"]
    for name in names:
        assert (assets / name).is_file(), name
        assert (assets / name).stat().st_size < 200_000, name
    from engine import io

    assert io.probe_video(assets / "video2world/input3.mp4")["frames"] >= 5


def _check_output(out_dir, name):
    assert iio.imread(out_dir / f"{name}.mp4").shape[0] == resolutions.num_frames(16, "tiny")
    text = (out_dir / f"{name}.txt").read_text()
    assert text.startswith("[Prompt]\n")
    return text


def test_single_image(guide_dir):
    guide(guide_dir, "engine.video2world", "--model_size", "2B", "--input_path", "assets/video2world/input0.jpg",
          "--num_conditional_frames", "1", "--prompt", PROMPTS["input0"], "--save_path", "output/video2world_2b.mp4")
    _check_output(guide_dir / "output", "video2world_2b")


def test_five_frame_video(guide_dir):
    guide(guide_dir, "engine.video2world", "--model_size", "2B", "--input_path", "assets/video2world/input3.mp4",
          "--num_conditional_frames", "5", "--prompt", PROMPTS["input3"],
          "--save_path", "output/video2world_2b_5frames.mp4")
    _check_output(guide_dir / "output", "video2world_2b_5frames")


def test_without_prompt_refiner(guide_dir):
    guide(guide_dir, "engine.video2world", "--model_size", "2B", "--input_path", "assets/video2world/input0.jpg",
          "--prompt", "A depot at night.", "--disable_prompt_refiner",
          "--save_path", "output/video2world_2b_without_prompt_refiner.mp4")
    assert "[Refined Prompt]" not in _check_output(guide_dir / "output", "video2world_2b_without_prompt_refiner")


def test_batch_example(guide_dir):
    guide(guide_dir, "engine.video2world", "--model_size", "2B",
          "--batch_input_json", "assets/video2world/batch_example.json")
    batch = json.loads((guide_dir / "assets/video2world/batch_example.json").read_text())
    assert len(batch) == 3
    for entry in batch:
        assert (guide_dir / entry["output_video"]).is_file()


def test_rejection_sampling_then_critic_on_existing_videos(guide_dir):
    # The one flag added beyond the tiny profile: --num_generations 2 after the guide's 5 (the last one
    # wins); each tiny generation costs seconds of VAE work on CPU and five would only repeat the first.
    guide(guide_dir, "engine.video2world_bestofn", "--model_size", "2B", "--input_path",
          "assets/video2world/input0.jpg", "--prompt", PROMPTS["input0"], "--num_generations", "5",
          "--num_critic_trials", "3", "--save_path", "output/rejection_sampling_demo", "--num_generations", "2")
    demo = guide_dir / "output" / "rejection_sampling_demo"
    assert len(list(demo.glob("input0_seed*.mp4"))) == 2 and len(list(demo.glob("*_score*.html"))) == 2
    # the guide's second command scores videos a user already has; these stand in for them
    mine = guide_dir / "output" / "my_existing_videos"
    mine.mkdir()
    for p in sorted(demo.glob("*.mp4"))[:2]:
        shutil.copy(p, mine / p.name)
    guide(guide_dir, "engine.video2world_bestofn", "--skip_generation", "--save_path", "output/my_existing_videos")
    assert len(list(mine.glob("*_score*.json"))) == 2


def test_long_video_example(guide_dir):
    # our guide's long-video command (docs/GUIDE.md), on its shipped example input
    guide(guide_dir, "engine.video2world_lvg", "--model_size", "2B", "--input_path",
          "assets/video2world_lvg/example_input.jpg", "--prompt", PROMPTS["lvg"], "--num_chunks", "2",
          "--save_path", "output/video2world_lvg.mp4")
    assert iio.imread(guide_dir / "output" / "video2world_lvg.mp4").shape[0] == resolutions.lvg_total_frames(2, 1, model_size="tiny")
