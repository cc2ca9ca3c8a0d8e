"""Helpers for the end-to-end tests on the tiny profile."""

from __future__ import annotations

import numpy as np

from engine import io
from engine.spec import GenerationSpec


def tiny_spec(tmp_path, num_steps: int = 2, input_name: str = "in.png", **kw) -> GenerationSpec:
    """A tiny-profile job with refiner and guardrail off, reading a drawn test image, writing under tmp_path."""
    base = dict(model_size="tiny", num_steps=num_steps, disable_guardrail=True, disable_prompt_refiner=True,
                prompt="a robot arm picks up a red cup",
                input_path=str(io.ensure_demo_input(tmp_path / input_name)),
                save_path=str(tmp_path / "out" / "video.mp4"))
    base.update(kw)
    return GenerationSpec(**base)


def small_video(tmp_path, name: str = "src.mp4", frames: int = 12) -> str:
    """A short random mp4 (48x80) to condition on."""
    clip = (np.random.RandomState(0).rand(3, frames, 48, 80) * 255).astype(np.uint8)
    return str(io.write_video(tmp_path / name, clip, 16))
