"""Test-only shims that let diffusers serve as a parity oracle in this environment.

diffusers' CosmosTransformer3DModel resizes the padding mask with `torchvision.transforms.functional.resize`
(nearest), and imports torchvision only if it is installed. torchvision cannot be installed beside our
torch build, so the parity tests put a minimal stand-in into the diffusers module's namespace. For tensor
inputs with InterpolationMode.NEAREST torchvision calls torch.nn.functional.interpolate(mode="nearest"), so
this stand-in computes the same thing. Nothing outside tests uses it.
"""

from __future__ import annotations

import enum
import types

import torch
import torch.nn.functional as F


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"


def _resize(x: torch.Tensor, size, interpolation=_InterpolationMode.NEAREST, **_ignored) -> torch.Tensor:
    if interpolation is not _InterpolationMode.NEAREST:
        raise NotImplementedError("the torchvision stand-in only does NEAREST (all diffusers' Cosmos code needs)")
    return F.interpolate(x, size=list(size), mode="nearest")


transforms_standin = types.SimpleNamespace(
    functional=types.SimpleNamespace(resize=_resize),
    InterpolationMode=_InterpolationMode,
)


def patch_diffusers_cosmos() -> None:
    """Give diffusers' transformer_cosmos module a `transforms` if torchvision is missing. Idempotent."""
    import diffusers.models.transformers.transformer_cosmos as tc

    if not hasattr(tc, "transforms"):
        tc.transforms = transforms_standin


class NoSafetyCheck:
    """diffusers' Cosmos pipelines refuse to run without a checker object; this one passes everything
    (the parity tests compare the sampler, and bench/bench_e2e.py runs both sides with the guardrail off)."""

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, frames):
        return frames

    def to(self, *args, **kwargs):
        return self
