"""Our Wan2.1 VAE against diffusers' AutoencoderKLWan, same random weights mapped by name, fp32.

diffusers clamps decoded video to [-1,1]; ours does not (as the reference tokenizer), so decode
parity compares our output clamped. Encode compares our normalised mu with diffusers'
latent_dist.mean normalised the same way.
"""

from __future__ import annotations

import re

import pytest
import torch

from engine.models.vae import LATENT_MEAN, LATENT_STD, WanVAE, vae_config

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402

from tests.tolerance import rms_rounding_bound  # noqa: E402

# diffusers' Wan VAE and ours run the same convolutions through other code (cache handling, padding,
# attention reshapes): fp32 rounding apart. Tiny VAE: 3x3x3 convolutions over at most 32 channels
# (k = 27*32 = 864); the longest chain (encoder or decoder: ~4 stages of resblocks with two convs and a
# norm each, resampling, the middle attention block, head) is under 40 stages. tests/tolerance.py: 1.4e-4.
TOL = rms_rounding_bound(27 * 32, 40)
RES_SUB = {"0": "norm1", "2": "conv1", "3": "norm2", "6": "conv2"}


def _resnet_tail(rest: str) -> str:
    m = re.fullmatch(r"residual\.(\d)\.(.+)", rest)
    if m:
        return f"{RES_SUB[m.group(1)]}.{m.group(2)}"
    return rest.replace("shortcut.", "conv_shortcut.", 1)


def _middle(prefix: str, rest: str) -> str:
    idx, tail = rest.split(".", 1)
    if idx == "1":
        return f"{prefix}.mid_block.attentions.0.{tail}"
    return f"{prefix}.mid_block.resnets.{int(idx) // 2}.{_resnet_tail(tail)}"


def to_diffusers_key(key: str, num_res_blocks: int) -> str:
    """Original Wan2.1 (= tokenizer.pth = ours) key -> diffusers AutoencoderKLWan key."""
    top = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
    head, _, rest = key.partition(".")
    if head in top:
        return f"{top[head]}.{rest}"
    part, _, rest = rest.partition(".")
    if part == "conv1":
        return f"{head}.conv_in.{rest}"
    if part == "head":
        idx, tail = rest.split(".", 1)
        return f"{head}.{'norm_out' if idx == '0' else 'conv_out'}.{tail}"
    if part == "middle":
        return _middle(head, rest)
    idx, tail = rest.split(".", 1)
    if part == "downsamples":
        return f"encoder.down_blocks.{idx}.{_resnet_tail(tail)}"
    if part == "upsamples":
        per_block = num_res_blocks + 2  # resnets + one upsampler
        block, within = divmod(int(idx), per_block)
        if within == num_res_blocks + 1:
            return f"decoder.up_blocks.{block}.upsamplers.0.{tail}"
        return f"decoder.up_blocks.{block}.resnets.{within}.{_resnet_tail(tail)}"
    raise KeyError(key)


def _pair(seed: int = 0):
    cfg = vae_config("tiny")
    ours = WanVAE(cfg).random_init_(seed).eval()
    ref = AutoencoderKLWan(
        base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks, temperal_downsample=list(cfg.temporal_downsample),
    ).eval()
    mapped = {to_diffusers_key(k, cfg.num_res_blocks): v for k, v in ours.state_dict().items()}
    ref.load_state_dict(mapped, strict=True)
    return ours, ref


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _clip(frames: int, seed: int = 1, h: int = 32, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def pair():
    return _pair()


@pytest.fixture(scope="module")
def ref_results(pair):
    _, ref = pair
    video = _clip(9)
    with torch.no_grad():
        mu = ref.encode(video).latent_dist.mean
        mean = torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1)
        std = torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1)
        z = (mu - mean) / std
        decoded = ref.decode(mu).sample  # diffusers decodes un-normalised latents
    return video, z, decoded


def test_encode_matches_diffusers(pair, ref_results):
    ours, _ = pair
    video, z_ref, _ = ref_results
    z = ours.encode(video, temporal_window=4)
    assert z.shape == (1, 16, 3, 4, 6)
    assert _rel(z, z_ref) < TOL


def test_decode_matches_diffusers_after_clamp(pair, ref_results):
    ours, _ = pair
    _, z_ref, decoded_ref = ref_results
    out = ours.decode(z_ref)
    assert out.shape == decoded_ref.shape == (1, 3, 9, 32, 48)
    inside = (out.abs() < 1).float().mean().item()
    assert inside > 0.5, "most of the output is clamped: the comparison would say little"
    assert _rel(out.clamp(-1, 1), decoded_ref) < TOL


def test_perturbed_weight_is_detected(ref_results):
    """The parity check can fail: one changed weight moves the result far above tolerance."""
    ours, _ = _pair()
    video, z_ref, decoded_ref = ref_results
    with torch.no_grad():
        ours.encoder.downsamples[3].residual[2].weight[0, 0, 1, 1, 1] += 0.5
        ours.decoder.upsamples[4].residual[6].bias[0] += 0.5
    assert _rel(ours.encode(video, temporal_window=4), z_ref) > 100 * TOL
    assert _rel(ours.decode(z_ref).clamp(-1, 1), decoded_ref) > 100 * TOL


def test_temporal_window_4_and_16_agree(pair):
    ours, _ = pair
    video = _clip(21, seed=2, h=16, w=16)
    z4 = ours.encode(video, temporal_window=4)
    z16 = ours.encode(video, temporal_window=16)
    assert z4.shape == (1, 16, 6, 2, 2)
    assert _rel(z16, z4) < TOL


def test_causal_first_latent_ignores_later_frames(pair):
    ours, _ = pair
    video = _clip(9, seed=3, h=16, w=16)
    changed = video.clone()
    changed[:, :, 1:] = _clip(8, seed=4, h=16, w=16)
    a, b = ours.encode(video), ours.encode(changed)
    assert torch.equal(a[:, :, 0], b[:, :, 0])
    assert not torch.allclose(a[:, :, 1:], b[:, :, 1:])
    # and decoding: pixel frame 0 depends on latent frame 0 only
    za, zb = a.clone(), a.clone()
    zb[:, :, 1:] += 1.0
    da, db = ours.decode(za), ours.decode(zb)
    assert torch.equal(da[:, :, 0], db[:, :, 0])
    assert not torch.allclose(da[:, :, 1:], db[:, :, 1:])


def test_full_size_names_and_shapes_match_diffusers():
    cfg = vae_config("wan2.1")
    with torch.device("meta"):
        ours = WanVAE(cfg)
        ref = AutoencoderKLWan()
    ours_sd = {to_diffusers_key(k, cfg.num_res_blocks): tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_sd = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert len(ours_sd) == len(ours.state_dict()), "mapping must be one-to-one"
    assert ours_sd == ref_sd
    assert sum(p.numel() for p in ours.parameters()) == 126_892_531


def test_rejects_bad_frame_count(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="1\\+4k"):
        ours.encode(_clip(8, h=16, w=16))


@torch.no_grad()
def test_decoder_in_channels_last_decodes_the_same_video():
    """The GPU pipeline stores the decoder's conv weights channels-last (a faster cuDNN kernel); the video
    must be the same to fp32 rounding: the same convolutions summed by another kernel (TOL above)."""
    vae = WanVAE(vae_config("tiny")).random_init_(5).eval()
    z = torch.randn(1, vae.config.z_dim, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    plain = vae.decode(z)
    vae.decoder_channels_last_()
    moved = [p for p in vae.decoder.parameters() if p.ndim == 5]
    assert moved and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in moved)
    assert all(p.is_contiguous() for p in vae.encoder.parameters())  # the encoder keeps its layout
    cl = vae.decode(z)
    assert ((cl - plain).norm() / plain.norm()).item() < TOL
