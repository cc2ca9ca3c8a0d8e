"""Parity of our MiniTrainDIT with diffusers' independent port (CosmosTransformer3DModel), fp32, same weights.

Documented differences are applied explicitly so everything else is compared exactly:
- diffusers modulates temporal RoPE positions by fps; NVIDIA's released nets do not -> call it with fps=None.
- diffusers' q/k RMSNorm eps is 1e-5, NVIDIA's 1e-6 -> set it to 1e-6 on diffusers' norm modules.
- torchvision is not installable here -> tests/diffusers_compat.py supplies the nearest resize.
"""

import pytest
import torch

from engine.models.diffusers_names import dit_key_to_diffusers
from engine.models.dit import MiniTrainDIT, dit_config
from tests.diffusers_compat import patch_diffusers_cosmos
from tests.tolerance import TINY_DIT_DEPTH, TINY_DIT_K, rel_err, rms_rounding_bound

# diffusers and we run the same maths through other code (fused vs split projections, other reshapes and
# attention calls): fp32 rounding apart, bounded by tests/tolerance.py (1.2e-4 for the tiny DiT).
TOL = rms_rounding_bound(TINY_DIT_K, TINY_DIT_DEPTH)

diffusers = pytest.importorskip("diffusers")

# the engine's NVIDIA -> diffusers name table (the same renames diffusers' own conversion script applies)
to_diffusers_key = dit_key_to_diffusers


@pytest.fixture(scope="module")
def pair():
    patch_diffusers_cosmos()
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    ours = MiniTrainDIT(dit_config("tiny")).random_init_(1234).eval()
    cfg = ours.config
    ref = CosmosTransformer3DModel(
        in_channels=cfg.latent_channels + 1,  # diffusers counts the condition mask, adds the padding mask itself
        out_channels=cfg.out_channels,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        num_layers=cfg.num_blocks,
        mlp_ratio=cfg.mlp_ratio,
        text_embed_dim=cfg.crossattn_emb_channels,
        adaln_lora_dim=cfg.adaln_lora_dim,
        max_size=(cfg.max_frames, cfg.max_img_h, cfg.max_img_w),
        patch_size=(cfg.patch_temporal, cfg.patch_spatial, cfg.patch_spatial),
        rope_scale=(cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    ).eval()
    ref.load_state_dict({to_diffusers_key(k): v for k, v in ours.state_dict().items()}, strict=True)
    n_eps = 0
    for name, mod in ref.named_modules():
        if name.endswith(("norm_q", "norm_k")):
            mod.eps = 1e-6
            n_eps += 1
    assert n_eps == 4 * cfg.num_blocks
    return ours, ref


def make_inputs(B=2, T=4, H=8, W=12, n_cond=1, S=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 16, T, H, W, generator=g)
    t = torch.rand(B, T, generator=g) * 0.9 + 0.05
    cond = torch.zeros(B, 1, T, H, W)
    cond[:, :, :n_cond] = 1.0
    t[:, :n_cond] = 1e-4 / (1 + 1e-4)  # conditioned frames carry c_noise(sigma_conditional)
    ctx = torch.randn(B, S, 32, generator=g)
    ctx[:, S - 2 :] = 0.0  # padded text tokens are zeros, as the T5 wrapper leaves them
    # A non-trivial pixel padding mask so the nearest resize and its channel position are exercised.
    pad = (torch.rand(1, 1, 8 * H, 8 * W, generator=g) > 0.5).float()
    return x, t, ctx, cond, pad


def run_ref(ref, x, t, ctx, cond, pad):
    B, _, T = x.shape[:3]
    out = ref(
        hidden_states=x,
        timestep=t.view(B, 1, T, 1, 1),
        encoder_hidden_states=ctx,
        fps=None,
        condition_mask=cond,
        padding_mask=pad,
        return_dict=False,
    )[0]
    return out


@pytest.mark.parametrize("B,n_cond", [(1, 1), (2, 1), (2, 2)])
@torch.no_grad()
def test_matches_diffusers(pair, B, n_cond):
    ours, ref = pair
    x, t, ctx, cond, pad = make_inputs(B=B, n_cond=n_cond, seed=B * 10 + n_cond)
    a = ours(x, t, ctx, cond, fps=16, padding_mask=pad)
    b = run_ref(ref, x, t, ctx, cond, pad)
    assert a.shape == b.shape == x.shape
    assert b.abs().mean() > 0.1  # the oracle is not trivially zero
    assert rel_err(a, b) < TOL


@torch.no_grad()
def test_deliberate_bugs_are_caught(pair, monkeypatch):
    """The comparison is sharp enough to see the classic re-implementation mistakes."""
    import engine.models.dit as dit

    ours, ref = pair
    x, t, ctx, cond, pad = make_inputs(B=2, n_cond=1, seed=7)
    b = run_ref(ref, x, t, ctx, cond, pad)
    assert rel_err(ours(x, t, ctx, cond, padding_mask=pad), b) < TOL

    # 1. unpatchify read in the patchify order (C slowest) instead of (ph, pw, pt, C)
    def wrong_unpatchify(self, y):
        B, T, H, W, _ = y.shape
        y = y.reshape(B, T, H, W, 16, 1, 2, 2).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return y.reshape(B, 16, T, 2 * H, 2 * W)

    with monkeypatch.context() as m:
        m.setattr(dit.MiniTrainDIT, "_unpatchify", wrong_unpatchify)
        assert rel_err(ours(x, t, ctx, cond, padding_mask=pad), b) > 0.1

    # 2. sin before cos in the timestep features
    orig_forward = dit.Timesteps.forward

    def sin_first(self, tt):
        feats = orig_forward(self, tt)
        half = self.dim // 2
        return torch.cat([feats[..., half:], feats[..., :half]], dim=-1)
    with monkeypatch.context() as m:
        m.setattr(dit.Timesteps, "forward", sin_first)
        assert rel_err(ours(x, t, ctx, cond, padding_mask=pad), b) > 0.05

    # 3. interleaved RoPE pairs instead of rotate-half
    def interleaved(q, cos, sin):
        qf = q.float()
        rot = torch.stack([-qf[..., 1::2], qf[..., 0::2]], dim=-1).flatten(-2)
        return (qf * cos[None, :, None] + rot * sin[None, :, None]).to(q.dtype)

    with monkeypatch.context() as m:
        m.setattr(dit, "apply_rope", interleaved)
        assert rel_err(ours(x, t, ctx, cond, padding_mask=pad), b) > 5 * TOL

    # 4. diffusers' fps RoPE modulation (positions x24/16) is a real difference, not noise
    B, _, T = x.shape[:3]
    b16 = ref(hidden_states=x, timestep=t.view(B, 1, T, 1, 1), encoder_hidden_states=ctx, fps=16,
              condition_mask=cond, padding_mask=pad, return_dict=False)[0]
    assert rel_err(ours(x, t, ctx, cond, padding_mask=pad), b16) > 5 * TOL
