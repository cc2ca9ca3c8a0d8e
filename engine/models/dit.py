"""Cosmos-Predict2 Video2World DiT ("MiniTrainDIT"), plain PyTorch.

Parameter names equal the released checkpoints' keys after the `net.` prefix is removed, so a
`model-720p-16fps.pt` state dict loads with no renaming (see `load_dit_weights`).

Shapes: B batch, T/H/W latent frames/height/width, D width, N heads, Dh head dim; the token grid
(T, H/2, W/2) stays 5-D between sub-layers because AdaLN modulation is per latent frame, and is flattened
in (t h w) order only around attention (the order NATTEN's view and the context-parallel T-split need).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models.attention import attention, natten_attention, natten_table


@dataclass(frozen=True)
class DiTConfig:
    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    latent_channels: int = 16  # VAE latent; +1 condition mask, +1 padding mask are concatenated inside
    out_channels: int = 16
    patch_spatial: int = 2
    patch_temporal: int = 1
    crossattn_emb_channels: int = 1024  # T5-11B hidden size
    adaln_lora_dim: int = 256
    # NTK extrapolation ratios of the 3D RoPE, fixed per model size (not per resolution).
    rope_t_extrapolation_ratio: float = 1.0
    rope_h_extrapolation_ratio: float = 3.0
    rope_w_extrapolation_ratio: float = 3.0
    max_frames: int = 128  # latent frames covered by the RoPE table
    max_img_h: int = 240  # latent pixels
    max_img_w: int = 240
    # Dense attention kernel (see attention.attention) and, per block, NATTEN parameters (None = dense).
    attention_backend: str = "auto"
    natten_parameters: Optional[tuple] = None
    natten_impl: str = "auto"  # see attention.NATTEN_IMPLS

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def in_channels(self) -> int:
        return self.latent_channels + 2

    @property
    def patch_features(self) -> int:
        return self.in_channels * self.patch_temporal * self.patch_spatial**2


def dit_config(model_size: str, natten: bool = False) -> DiTConfig:
    """The network of each released Video2World size, plus the `tiny` test profile."""
    if model_size == "2B":
        cfg = DiTConfig()
    elif model_size == "14B":
        cfg = DiTConfig(
            model_channels=5120,
            num_blocks=36,
            num_heads=40,
            rope_t_extrapolation_ratio=0.8333333333333334,
            rope_h_extrapolation_ratio=2.0,
            rope_w_extrapolation_ratio=2.0,
        )
    elif model_size == "tiny":
        cfg = DiTConfig(model_channels=64, num_blocks=2, num_heads=2, adaln_lora_dim=16, crossattn_emb_channels=32)
    else:
        raise ValueError(f"model_size {model_size!r} is unknown; use 2B, 14B or tiny")
    if natten:
        cfg = replace(cfg, natten_parameters=natten_table(model_size))
        assert len(cfg.natten_parameters) == cfg.num_blocks
    return cfg


# --------------------------------------------------------------------------------------------------------
# Small pieces


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 (as Transformer Engine does under bf16)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class Patchify(nn.Module):
    """[B, C, T, H, W] -> [B, T/pt, H/p, W/p, C*pt*p*p], feature order (c, t, h, w): channel slowest."""

    def __init__(self, p: int, pt: int):
        super().__init__()
        self.p, self.pt = p, pt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        p, pt = self.p, self.pt
        assert T % pt == 0 and H % p == 0 and W % p == 0, f"latent {T}x{H}x{W} not divisible by patch ({pt},{p},{p})"
        x = x.reshape(B, C, T // pt, pt, H // p, p, W // p, p)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(B, T // pt, H // p, W // p, C * pt * p * p)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        # Sequential so the Linear is `proj.1`, the checkpoint's name.
        self.proj = nn.Sequential(
            Patchify(cfg.patch_spatial, cfg.patch_temporal),
            nn.Linear(cfg.patch_features, cfg.model_channels, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Timesteps(nn.Module):
    """Sinusoidal features of t in [0, 1] (no x1000), cos half first, computed in fp32."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float().unsqueeze(-1) * freqs
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """The shared AdaLN-LoRA term: Linear(D, D) -> SiLU -> Linear(D, 3D), bias-free."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.activation(self.linear_1(x)))


def _modulation(dim: int, lora: int, n: int) -> nn.Sequential:
    # Index 0 is the parameter-free SiLU so the Linears carry the checkpoint's `.1` / `.2` names.
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, lora, bias=False), nn.Linear(lora, n * dim, bias=False))


# --------------------------------------------------------------------------------------------------------
# 3D RoPE


class VideoRoPE3D:
    """Rotary angles for a (T, H, W) token grid: head dim split [t | h | w] = Dh - 2*2*(Dh//6) | 2*(Dh//6) | 2*(Dh//6),
    NTK-scaled theta per axis, integer positions from 0 (no fps modulation for the released nets).

    Context parallelism: a rank holding frames [t_offset, t_offset + T) of the global clip passes t_offset;
    that equals building the table for the global T and slicing it, since tokens are (t h w)-ordered.
    """

    def __init__(self, cfg: DiTConfig):
        dh = cfg.head_dim
        self.dim_h = self.dim_w = 2 * (dh // 6)
        self.dim_t = dh - 2 * self.dim_h
        self.max_t, self.max_h, self.max_w = (
            cfg.max_frames // cfg.patch_temporal,
            cfg.max_img_h // cfg.patch_spatial,
            cfg.max_img_w // cfg.patch_spatial,
        )
        ratios = (cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio)
        self.thetas = tuple(10000.0 * r ** (d / (d - 2)) for r, d in zip(ratios, (self.dim_t, self.dim_h, self.dim_w)))

    @staticmethod
    def _freqs(theta: float, dim: int, device) -> torch.Tensor:
        return 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32)[: dim // 2] / dim)

    def cos_sin(self, T: int, H: int, W: int, device, t_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        assert t_offset + T <= self.max_t and H <= self.max_h and W <= self.max_w, (
            f"token grid ({t_offset}+{T}, {H}, {W}) exceeds the RoPE table ({self.max_t}, {self.max_h}, {self.max_w})"
        )
        ft = torch.outer(torch.arange(t_offset, t_offset + T, device=device, dtype=torch.float32),
                         self._freqs(self.thetas[0], self.dim_t, device))
        fh = torch.outer(torch.arange(H, device=device, dtype=torch.float32), self._freqs(self.thetas[1], self.dim_h, device))
        fw = torch.outer(torch.arange(W, device=device, dtype=torch.float32), self._freqs(self.thetas[2], self.dim_w, device))
        angles = torch.cat(
            [
                ft[:, None, None, :].expand(T, H, W, -1),
                fh[None, :, None, :].expand(T, H, W, -1),
                fw[None, None, :, :].expand(T, H, W, -1),
            ],
            dim=-1,
        ).reshape(T * H * W, -1)
        # Rotate-half convention: channel j pairs with j + Dh/2, so the half-table is repeated.
        angles = torch.cat([angles, angles], dim=-1)
        return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, N, Dh]; cos/sin [L, Dh] fp32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------------------------
# Attention


class DenseAttentionOp:
    """Self-attention kernel call: (q, k, v [B, L, N, Dh], grid (T, H, W)) -> [B, L, N, Dh].

    Ops are plain callables (no parameters, nothing in the state dict) so a context-parallel wrapper can
    replace `block.self_attn.attn_op` with one that all-to-alls sequence<->heads around the inner op and
    hands it the global grid.
    """

    def __init__(self, backend: str = "auto"):
        self.backend = backend

    def __call__(self, q, k, v, grid):
        return attention(q, k, v, self.backend)


class NattenAttentionOp(DenseAttentionOp):
    def __init__(self, params: dict, backend: str = "auto", impl: str = "auto"):
        super().__init__(backend)
        self.params = params
        self.impl = impl

    def __call__(self, q, k, v, grid):
        return natten_attention(q, k, v, grid, self.params, impl=self.impl, dense_backend=self.backend)


class Attention(nn.Module):
    """Bias-free q/k/v/output projections with per-head q/k RMSNorm (also in cross-attention, where there is no RoPE)."""

    def __init__(self, dim: int, context_dim: Optional[int], num_heads: int, attn_op: DenseAttentionOp):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        kv_in = dim if context_dim is None else context_dim
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_proj = nn.Linear(kv_in, dim, bias=False)
        self.k_norm = RMSNorm(head_dim)
        self.v_proj = nn.Linear(kv_in, dim, bias=False)
        self.output_proj = nn.Linear(dim, dim, bias=False)
        self.attn_op = attn_op

    def forward(self, x, context=None, rope=None, grid=None):
        src = x if context is None else context
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.num_heads, -1)))
        k = self.k_norm(self.k_proj(src).unflatten(-1, (self.num_heads, -1)))
        v = self.v_proj(src).unflatten(-1, (self.num_heads, -1))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = self.attn_op(q, k, v, grid)
        return self.output_proj(out.reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.activation = nn.GELU()
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.layer2(self.activation(self.layer1(x)))


def _per_frame(t: torch.Tensor) -> torch.Tensor:
    # [B, T, D] -> [B, T, 1, 1, D]: one modulation vector per latent frame.
    return t[:, :, None, None, :]


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig, natten_params: Optional[dict] = None):
        super().__init__()
        D, r = cfg.model_channels, cfg.adaln_lora_dim
        if natten_params is None:
            self_op = DenseAttentionOp(cfg.attention_backend)
        else:
            self_op = NattenAttentionOp(natten_params, cfg.attention_backend, cfg.natten_impl)
        self.self_attn = Attention(D, None, cfg.num_heads, self_op)
        self.cross_attn = Attention(D, cfg.crossattn_emb_channels, cfg.num_heads, DenseAttentionOp(cfg.attention_backend))
        self.mlp = MLP(D, int(D * cfg.mlp_ratio))
        self.adaln_modulation_self_attn = _modulation(D, r, 3)
        self.adaln_modulation_cross_attn = _modulation(D, r, 3)
        self.adaln_modulation_mlp = _modulation(D, r, 3)
        self.layer_norm_self_attn = _layer_norm(D)
        self.layer_norm_cross_attn = _layer_norm(D)
        self.layer_norm_mlp = _layer_norm(D)

    def forward(self, x, emb, adaln_lora, context, rope, grid):
        """x [B, T, H, W, D]; emb [B, T, D]; adaln_lora [B, T, 3D]; context [B, S, C]."""
        B, T, H, W, D = x.shape

        def modulate(mod, norm, h):
            shift, scale, gate = (_per_frame(m) for m in (mod(emb) + adaln_lora).chunk(3, dim=-1))
            return norm(h) * (1 + scale) + shift, gate

        h, gate = modulate(self.adaln_modulation_self_attn, self.layer_norm_self_attn, x)
        x = x + gate * self.self_attn(h.reshape(B, T * H * W, D), rope=rope, grid=grid).view(B, T, H, W, D)
        h, gate = modulate(self.adaln_modulation_cross_attn, self.layer_norm_cross_attn, x)
        x = x + gate * self.cross_attn(h.reshape(B, T * H * W, D), context=context).view(B, T, H, W, D)
        h, gate = modulate(self.adaln_modulation_mlp, self.layer_norm_mlp, x)
        return x + gate * self.mlp(h)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.model_channels
        self.layer_norm = _layer_norm(D)
        self.adaln_modulation = _modulation(D, cfg.adaln_lora_dim, 2)
        out = cfg.patch_spatial**2 * cfg.patch_temporal * cfg.out_channels
        self.linear = nn.Linear(D, out, bias=False)

    def forward(self, x, emb, adaln_lora):
        D = x.shape[-1]
        # Only the first 2D of the shared LoRA term (its shift/scale part) is added here.
        shift, scale = (_per_frame(m) for m in (self.adaln_modulation(emb) + adaln_lora[..., : 2 * D]).chunk(2, dim=-1))
        return self.linear(self.layer_norm(x) * (1 + scale) + shift)


# --------------------------------------------------------------------------------------------------------
# The network


class MiniTrainDIT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        cfg = self.config = config
        D = cfg.model_channels
        assert D % cfg.num_heads == 0 and cfg.head_dim % 2 == 0
        natten = cfg.natten_parameters or (None,) * cfg.num_blocks
        assert len(natten) == cfg.num_blocks, f"natten_parameters has {len(natten)} entries for {cfg.num_blocks} blocks"
        self.x_embedder = PatchEmbed(cfg)
        self.t_embedder = nn.Sequential(Timesteps(D), TimestepEmbedding(D))
        self.blocks = nn.ModuleList(Block(cfg, natten[i]) for i in range(cfg.num_blocks))
        self.final_layer = FinalLayer(cfg)
        self.t_embedding_norm = RMSNorm(D)
        self.rope = VideoRoPE3D(cfg)
        # engine/step_cache.py's StepCache while a fast-mode generation runs, else None (exact path)
        self.step_cache = None

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        crossattn_emb: torch.Tensor,
        condition_mask: Optional[torch.Tensor] = None,
        fps=None,
        padding_mask: Optional[torch.Tensor] = None,
        t_offset: int = 0,
    ) -> torch.Tensor:
        """x [B,16,T,H,W]; timesteps [B,T] or [B] (t in [0,1]); crossattn_emb [B,S,C];
        condition_mask [B,1,T,H,W] (None: zeros, as for image batches); padding_mask [B or 1,1,Hpix,Wpix]
        (None: zeros, as at inference). fps is accepted and unused: the released nets have no fps RoPE
        modulation. t_offset: first global latent frame of x (context parallelism). Returns [B,16,T,H,W].
        """
        cfg = self.config
        B, C, T, H, W = x.shape
        assert C == cfg.latent_channels, f"expected {cfg.latent_channels} latent channels, got {C}"
        dtype = x.dtype
        if condition_mask is None:
            condition_mask = x.new_zeros(B, 1, T, H, W)
        if padding_mask is None:
            pad = x.new_zeros(B, 1, T, H, W)
        else:
            # Pixel-resolution mask -> latent resolution, nearest (what torchvision's resize does).
            pad = F.interpolate(padding_mask.to(dtype), size=(H, W), mode="nearest")
            pad = pad[:, :, None].expand(B, 1, T, H, W)
        x = torch.cat([x, condition_mask.to(dtype).expand(B, 1, T, H, W), pad], dim=1)

        x = self.x_embedder(x)  # [B, T', H', W', D]
        Tp, Hp, Wp = x.shape[1:4]

        if timesteps.ndim == 1:
            timesteps = timesteps[:, None]
        assert timesteps.ndim == 2 and timesteps.shape[1] in (1, T), f"timesteps must be [B, T]; got {tuple(timesteps.shape)}"
        timesteps = timesteps.expand(B, Tp)
        sinusoid = self.t_embedder[0](timesteps).to(dtype)
        adaln_lora = self.t_embedder[1](sinusoid)  # [B, T, 3D], shared by every modulator
        emb = self.t_embedding_norm(sinusoid)  # modulators see RMSNorm(raw sinusoid), not the MLP output

        rope = self.rope.cos_sin(Tp, Hp, Wp, x.device, t_offset)
        context = crossattn_emb.to(dtype)
        if self.step_cache is None:
            for block in self.blocks:
                x = block(x, emb, adaln_lora, context, rope, (Tp, Hp, Wp))
        else:
            x = self.step_cache.run(self.blocks, x, emb, adaln_lora, context, rope, (Tp, Hp, Wp))
        x = self.final_layer(x, emb, adaln_lora)
        return self._unpatchify(x)

    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        # The 64 output features read as (ph, pw, pt, C): channel fastest, unlike the patchify order.
        cfg = self.config
        B, T, H, W, _ = x.shape
        p, pt = cfg.patch_spatial, cfg.patch_temporal
        x = x.reshape(B, T, H, W, p, p, pt, cfg.out_channels)
        x = x.permute(0, 7, 1, 6, 2, 4, 3, 5)
        return x.reshape(B, cfg.out_channels, T * pt, H * p, W * p)

    @torch.no_grad()
    def random_init_(self, seed: int) -> "MiniTrainDIT":
        """Seeded weights, identical on every device: Linears N(0, 1/fan_in) truncated at 3 sigma, norm
        weights 1 + N(0, 0.1^2). The AdaLN output layers are NOT zero-initialised (a zero-init net is the
        identity on its residual stream, and tests against it could not fail)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.ndim == 2:
                std = 1.0 / math.sqrt(p.shape[1])
                w = torch.empty(p.shape, dtype=torch.float32)
                nn.init.trunc_normal_(w, std=std, a=-3 * std, b=3 * std, generator=g)
            else:
                w = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(w.to(p.device, p.dtype))
        return self


# Keys a checkpoint may carry that are not parameters of this module: training counters, the reference's
# RoPE buffers (we recompute the table), and Transformer Engine bookkeeping.
def _skipped(key: str) -> bool:
    return key.startswith("accum_") or key.startswith("pos_embedder.") or key.endswith("._extra_state") or key == "_extra_state"


def _list(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_dit_weights(model: MiniTrainDIT, state_dict: dict) -> MiniTrainDIT:
    """Load a state dict whose `net.` prefix is already removed. Only accum_*, pos_embedder.* and
    *._extra_state keys are skipped; any other missing, unexpected or mis-shaped key is an error naming it."""
    sd = {k: v for k, v in state_dict.items() if not _skipped(k)}
    own = dict(model.state_dict())
    missing = own.keys() - sd.keys()
    unexpected = sd.keys() - own.keys()
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    bad = [k for k in own.keys() & sd.keys() if tuple(own[k].shape) != tuple(sd[k].shape)]
    if bad:
        problems.append(
            "shape mismatch: " + _list(f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in bad)
        )
    if problems:
        raise ValueError(
            f"DiT checkpoint does not match the {model.config.num_blocks}-block, {model.config.model_channels}-wide "
            f"network; " + "; ".join(problems)
        )
    # A model built on the meta device has no storage to copy into: take the tensors themselves.
    assign = any(p.is_meta for p in model.parameters())
    model.load_state_dict(sd, strict=True, assign=assign)
    return model
