"""engine.sampling against diffusers' Cosmos2VideoToWorldPipeline, all fp32 on CPU.

diffusers implements the same denoiser (rectified-flow preconditioning, frame-replace
conditioning, x0-space CFG) but a different solver: first-order Euler over an N-point Karras grid
with no final clean pass, where NVIDIA uses x0-Euler + AB2 over N+1 points and a final x0 call.
So the denoiser call is compared directly, and the whole loop is compared with diffusers' Euler
and grid swapped into our `sample`.
"""

from __future__ import annotations

import pytest
import torch

from engine.sampling import Conditioning, euler_step, make_x0_fn, sample, sigma_schedule
# torchvision (for diffusers' padding-mask resize) cannot sit beside this torch: use the shared stand-in.
from tests.diffusers_compat import patch_diffusers_cosmos
from tests.tolerance import TINY_DIT_DEPTH, TINY_DIT_K, U_FP32, assert_rounding_close

diffusers = pytest.importorskip("diffusers")


TEXT_DIM = 32
T_LAT, H_LAT, W_LAT = 4, 4, 4
PIX = 32  # pixel height/width: 4x4 latents
NUM_FRAMES = 13  # pixel frames -> 4 latent frames


@pytest.fixture(scope="module")
def transformer():
    patch_diffusers_cosmos()
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    model = CosmosTransformer3DModel(
        in_channels=17, out_channels=16, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        mlp_ratio=2.0, text_embed_dim=TEXT_DIM, adaln_lora_dim=4, max_size=(8, 32, 32),
        patch_size=(1, 2, 2), rope_scale=(1.0, 3.0, 3.0), concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    return model.eval().float()


class DiffusersNet(torch.nn.Module):
    """Our DiT call signature on top of diffusers' CosmosTransformer3DModel."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, timesteps, crossattn_emb, condition_mask, fps=None, padding_mask=None):
        b, _, t, h, w = x.shape
        if padding_mask is None:
            padding_mask = x.new_zeros(1, 1, h, w)
        # fps=None: NVIDIA's nets don't modulate RoPE by fps; diffusers would whenever fps is given.
        return self.model(
            hidden_states=x, timestep=timesteps.reshape(b, 1, t, 1, 1), encoder_hidden_states=crossattn_emb,
            condition_mask=condition_mask, padding_mask=padding_mask, fps=None, return_dict=False,
        )[0]


def _embeddings(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 8, TEXT_DIM, generator=g), torch.randn(1, 8, TEXT_DIM, generator=g)


def diffusers_guided_x0(model, x, sigma, cond_latents, n_cond, emb, neg, guidance):
    """The guided x0 diffusers' pipeline forms at one step, restated from the loop body of
    Cosmos2VideoToWorldPipeline.__call__ (diffusers 0.42.1): indicator blends instead of masks,
    the 5-D per-frame timestep, a pixel-size zero padding mask, two separate forwards."""
    b, _, t_lat, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    t = sigma / (sigma + 1)
    ind = torch.zeros(1, 1, t_lat, 1, 1)
    ind[:, :, :n_cond] = 1.0
    mask = ind * torch.ones(b, 1, t_lat, h, w)
    s_c = torch.tensor(1e-4, dtype=torch.float32)
    t_c = s_c / (s_c + 1)
    timestep = ind * t_c + (1 - ind) * t.view(1, 1, 1, 1, 1).expand(b, -1, t_lat, -1, -1)
    net_in = ind * cond_latents + (1 - ind) * (x * (1 - t))
    pad = torch.zeros(1, 1, 8 * h, 8 * w)

    def branch(e):
        f = model(hidden_states=net_in, timestep=timestep, encoder_hidden_states=e, fps=None,
                  condition_mask=mask, padding_mask=pad, return_dict=False)[0]
        x0 = (1 - t) * x + (-t) * f.float()
        return ind * cond_latents + (1 - ind) * x0

    cond, uncond = branch(emb), branch(neg)
    return cond + guidance * (cond - uncond)


@pytest.mark.parametrize("n_cond", [1, 2])
@pytest.mark.parametrize("batch_cfg", [True, False])
def test_guided_denoiser_call_matches_diffusers(transformer, n_cond, batch_cfg):
    g = torch.Generator().manual_seed(10 + n_cond)
    gt = torch.randn(1, 16, T_LAT, H_LAT, W_LAT, generator=g)
    x = 5.0 * torch.randn(1, 16, T_LAT, H_LAT, W_LAT, generator=g)
    emb, neg = _embeddings(n_cond)
    x0_fn = make_x0_fn(DiffusersNet(transformer), emb, neg, 7.0, Conditioning(gt, n_cond), batch_cfg=batch_cfg)
    with torch.no_grad():
        for sigma in (80.0, 3.7, 0.002):
            ours = x0_fn(x * sigma / 5.0, torch.tensor(sigma, dtype=torch.float64))
            ref = diffusers_guided_x0(transformer, x * sigma / 5.0, sigma, gt, n_cond, emb, neg, 7.0)
            if batch_cfg:
                # cond and uncond as one batch of 2 against diffusers' two batch-1 calls: other GEMM
                # blockings, rounding apart. x0 = (1-t)x - tF with guidance gain up to 1 + 2*7 = 15 on
                # the F error, and max|tF| <= max|x| + max|x0|; F's error is bounded like the tiny DiT's
                # (same structure, 2 blocks, narrower) in tests/tolerance.py.
                scale = 15 * (float(x.abs().max()) * sigma / 5.0 + float(ref.abs().max()))
                assert_rounding_close(ours, ref, k=TINY_DIT_K, depth=TINY_DIT_DEPTH, scale=scale)
            else:
                # batch-1 calls as diffusers makes them, the same inputs bit for bit (the preconditioning
                # is elementwise, each op rounded once on any CPU): the same kernels give the same bits
                assert torch.equal(ours, ref)
            # the reference must not be trivially equal to the conditioning: generated frames move
            assert (ours[:, :, n_cond:] - gt[:, :, n_cond:]).abs().max() > 1e-2


@pytest.fixture(scope="module")
def pipeline(transformer):
    from diffusers import AutoencoderKLWan, Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    from tests.diffusers_compat import NoSafetyCheck

    torch.manual_seed(1)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    # No text encoder: prompt embeddings are passed in directly.
    return Cosmos2VideoToWorldPipeline(
        text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=NoSafetyCheck(),
    )


def _run_pipeline(pipe, n_pixel_cond, steps, noise, emb, neg):
    """Run diffusers and return (its latents, the conditioning latent its transformer was fed).

    diffusers encodes the conditioning clip by *sampling* the VAE posterior. Rather than reproduce
    its generator stream, we read what it used: on conditioning frames the transformer's input is
    exactly the clean conditioning latent, so the first call's hidden_states carry it."""
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True
    )
    video = torch.rand(1, n_pixel_cond, 3, PIX, PIX, generator=torch.Generator().manual_seed(5))
    try:
        with torch.no_grad():
            out = pipe(
                video=video, prompt_embeds=emb, negative_prompt_embeds=neg, height=PIX, width=PIX,
                num_frames=NUM_FRAMES, num_inference_steps=steps, guidance_scale=7.0,
                # diffusers scales temporal RoPE positions by 24/fps whenever fps is given;
                # NVIDIA's nets don't modulate by fps at all. fps=24 makes the factor exactly 1.
                fps=24, latents=noise, output_type="latent",
                generator=torch.Generator().manual_seed(0),
            )
    finally:
        hook.remove()
    assert len(seen) == 2 * steps  # cond + uncond per step, the last step included
    return out.frames, seen[0]


@pytest.mark.parametrize("n_pixel_cond,n_latent_cond", [(1, 1), (5, 2)])
def test_sampler_with_euler_reproduces_diffusers_pipeline(pipeline, n_pixel_cond, n_latent_cond):
    steps = 5
    noise = torch.randn(1, 16, T_LAT, H_LAT, W_LAT, generator=torch.Generator().manual_seed(3))
    emb, neg = _embeddings(7)
    theirs, gt = _run_pipeline(pipeline, n_pixel_cond, steps, noise, emb, neg)

    # diffusers' grid is the Karras ramp over `steps` points, i.e. our schedule for steps - 1 steps;
    # its last step (sigma_min -> sigma_min) is a no-op, so our loop stops at sigma_min.
    sigmas = sigma_schedule(steps - 1)
    # both are float64 Karras ramps rounded to float32: at most one fp32 ulp (2u relative) apart
    torch.testing.assert_close(sigmas.float(), pipeline.scheduler.sigmas[:steps], rtol=2 * U_FP32, atol=0)

    # batch-1 CFG calls, as diffusers makes them: then every transformer call sees the same bits on both
    # sides and the comparison is exact on any CPU (a batch of 2 would round differently from two of 1,
    # and worst-case rounding bounds through a 5-step loop are too loose to have teeth).
    x0_fn = make_x0_fn(DiffusersNet(pipeline.transformer), emb, neg, 7.0, Conditioning(gt, n_latent_cond),
                       batch_cfg=False)
    with torch.no_grad():
        ours = sample(x0_fn, noise, sigmas, update=euler_step, final_clean=False)
        ab2 = sample(x0_fn, noise, sigmas, final_clean=False)
    assert torch.equal(ours, theirs)
    # The comparison has teeth: NVIDIA's own solver on the same grid lands somewhere else.
    assert (ab2 - theirs).abs().max() > 1e-2  # measured: about 2.6
