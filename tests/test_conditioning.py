"""The pipeline encodes only the pixel frames its conditioned latent frames come from (tiny profile, fp32).

Before, `Video2WorldPipeline.conditioning` pushed the reference's whole clip (the image or the last 1/5
video frames, then black or repeated filler up to the clip length) through the VAE encoder and used only
its first `n_lat` latent frames. Here the old way is rebuilt in `whole_clip_conditioning` and compared
with the pipeline's: the conditioned latent frames, and the generated video.
"""

from __future__ import annotations

import pytest
import torch

from engine import io, resolutions, sampling
from engine.pipeline import get_pipeline
from tests.tiny import small_video, tiny_spec
from tests.tolerance import GAIN, U_FP32, rounding_bound

pytestmark = pytest.mark.slow

# Bound on the conditioned latents of the two encodes. Both run the same layers on the same pixel values
# (the encoder is causal: the filler frames after the conditioning frames feed later latent frames only);
# what may differ is the shape of the second chunk (4 frames instead of 16), so a convolution kernel may
# sum its products in another order. The tiny VAE (base width 8, engine/models/vae.py): the longest
# accumulation is a 3x3x3 conv over 32 channels, K = 864; the chain is conv1, 3 stages of 2 residual
# blocks (norm, conv, norm, conv: 24), 3 spatial + 2 temporal resampling convs, the middle's 2 residual
# blocks (8) and attention (norm, qkv, q.k, softmax, p.v, proj: 6), the head (norm, conv) and the quant
# conv: 47 stages, rounded up to 50. On this CPU the two are bitwise equal; the bound is what another BLAS
# or thread count may show.
VAE_K, VAE_DEPTH = 864, 50
LATENT_TOL = rounding_bound(VAE_K, VAE_DEPTH)  # max element over the latent's scale (λ = 6)
# The video from two conditionings that differ by that rounding: the gt difference enters the sampler
# state through the DiT's three calls (2 steps and the final clean pass, each normalised network passing a
# relative input error on with a gain of order 1, GAIN allowed per network) and then the decoder (the same
# again), so normwise (λ = 1 instead of 6) at most GAIN**4 times the latents' normwise bound. A real fault
# (a conditioning frame left out, the wrong frames) moves the video by tens of percent.
VIDEO_TOL = GAIN**4 * (LATENT_TOL / 6.0)


def whole_clip_conditioning(pipe, input_path, frames, num_conditional_frames, aspect_ratio="16:9"):
    """What the pipeline did before: encode the reference's full clip, keep all of its latent frames."""
    w, h = resolutions.frame_size(pipe.build.resolution, aspect_ratio, "tiny")
    n_frames = resolutions.num_frames(pipe.build.fps, "tiny")
    if frames is None:
        clip = io.to_signed_unit(io.load_conditioning_clip(input_path, num_conditional_frames, w, h, n_frames))
    else:
        frames = frames[:, -num_conditional_frames:]
        clip = torch.cat([frames, frames[:, -1:].expand(-1, n_frames - frames.shape[1], -1, -1)], dim=1)
    with torch.inference_mode():
        gt = pipe.vae.encode(clip.unsqueeze(0)).float()
    return sampling.Conditioning(gt=gt, num_frames=resolutions.conditional_latent_frames(num_conditional_frames))


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def job(tmp_path, n: int):
    if n == 1:
        return tiny_spec(tmp_path, num_steps=2)
    return tiny_spec(tmp_path, num_steps=2, input_path=small_video(tmp_path), num_conditional_frames=5)


def in_memory_frames(n: int) -> torch.Tensor:
    """A long-video tail: n frames [3, n, H, W] in [-1, 1] at the tiny 16:9 size, smooth and distinct."""
    w, h = resolutions.frame_size("720", "16:9", "tiny")
    t = torch.arange(n, dtype=torch.float32).view(1, n, 1, 1)
    y = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    x = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    c = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1)
    return torch.sin(3 * x + 2 * y + 0.7 * t + c) * 0.9


@pytest.mark.parametrize("n", [1, 5])
def test_conditioned_latents_equal_those_of_a_whole_clip_encode(tmp_path, n):
    spec = job(tmp_path, n)
    pipe = get_pipeline(spec)
    ours = pipe.conditioning(spec.input_path, None, n)
    old = whole_clip_conditioning(pipe, spec.input_path, None, n)
    n_lat = old.num_frames
    assert ours.num_frames == n_lat == (1 if n == 1 else 2)
    assert ours.gt.shape == old.gt.shape  # the noise is drawn in this shape
    assert rel_max(ours.gt[:, :, :n_lat], old.gt[:, :, :n_lat]) <= LATENT_TOL
    assert not ours.gt[:, :, n_lat:].any()  # the documented filler: zeros, never read
    if n_lat == 2:
        # latent frame 1 is from pixel frames 1..4, not a copy of frame 0's latent (an encode of too few
        # frames would broadcast frame 0's latent over it)
        assert rel_max(old.gt[:, :, 1], old.gt[:, :, 0]) > 0.1


@pytest.mark.parametrize("n", [1, 5])
def test_in_memory_frames_condition_like_the_whole_repeated_clip(tmp_path, n):
    """Long video's path: the previous chunk's last frames, then repeats of the last one."""
    pipe = get_pipeline(tiny_spec(tmp_path))
    frames = in_memory_frames(7)  # more than n: the last n are taken
    ours = pipe.conditioning(None, frames, n)
    old = whole_clip_conditioning(pipe, None, frames, n)
    n_lat = old.num_frames
    assert ours.gt.shape == old.gt.shape
    assert rel_max(ours.gt[:, :, :n_lat], old.gt[:, :, :n_lat]) <= LATENT_TOL
    assert not ours.gt[:, :, n_lat:].any()


def test_the_last_conditioning_frame_reaches_the_conditioned_latent(tmp_path):
    """Frame 4 of 5 feeds latent frame 1: change it and the conditioning changes (an encode that stopped
    short of it would not see the change)."""
    pipe = get_pipeline(tiny_spec(tmp_path))
    frames = in_memory_frames(5)
    a = pipe.conditioning(None, frames, 5).gt
    frames[:, 4] = -frames[:, 4]
    b = pipe.conditioning(None, frames, 5).gt
    assert torch.equal(a[:, :, 0], b[:, :, 0])  # causal: latent frame 0 is pixel frame 0's alone
    assert rel_max(b[:, :, 1], a[:, :, 1]) > 0.1


def test_the_unconditioned_latent_frames_are_never_read(tmp_path, monkeypatch):
    """The same conditioned frames with the whole-clip encode's other frames, or zeros: the same video
    bit for bit (the sampler picks gt only under the mask, the rest of the arithmetic is the same)."""
    spec = job(tmp_path, 5)
    pipe = get_pipeline(spec)
    old = whole_clip_conditioning(pipe, spec.input_path, None, 5)
    zeroed = old.gt.clone()
    zeroed[:, :, old.num_frames:] = 0
    assert zeroed.ne(old.gt).any()  # the whole-clip encode's filler latents are not zeros
    videos = []
    for gt in (old.gt, zeroed):
        monkeypatch.setattr(pipe, "conditioning",
                            lambda *a, gt=gt, **k: sampling.Conditioning(gt=gt.clone(), num_frames=old.num_frames))
        videos.append(pipe.generate(spec, seed=0).video)
    assert torch.equal(videos[0], videos[1])


@pytest.mark.parametrize("n", [1, 5])
def test_generate_makes_the_video_the_whole_clip_encode_made(tmp_path, monkeypatch, n):
    spec = job(tmp_path, n)
    pipe = get_pipeline(spec)
    ours = pipe.generate(spec, seed=0)
    monkeypatch.setattr(pipe, "conditioning", lambda path, frames, k, ar="16:9":
                        whole_clip_conditioning(pipe, path, frames, k, ar))
    old = pipe.generate(spec, seed=0)
    assert ours.video.shape == old.video.shape
    assert rel_l2(ours.video, old.video) <= VIDEO_TOL
    assert rel_l2(ours.latent, old.latent) <= VIDEO_TOL
