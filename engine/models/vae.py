"""The Wan2.1 causal 3-D VAE that Cosmos-Predict2 uses as its tokenizer.

Video [B,3,T,H,W] in [-1,1] with T = 1+4k  <->  latent [B,16,1+k,H/8,W/8].
Every temporal convolution is causal (all temporal padding in front), so a clip can be pushed
through in chunks: each causal layer remembers the last `CACHE_T` frames of its input and uses
them as the front context of the next chunk. That is what bounds memory: encode sees the first
frame alone, then `temporal_window` frames at a time; decode sees one latent frame at a time.
The result equals a single pass over the whole clip (up to float rounding).

Parameter names are those of the released `tokenizer.pth` (the original Wan2.1 layout: flat
`encoder.downsamples.{i}` / `decoder.upsamples.{i}` lists, `residual.{0,2,3,6}`, top-level
`conv1`/`conv2` for the quant convs), so that file loads strictly with no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# A kernel-3 causal conv needs the previous 2 frames of its input.
CACHE_T = 2

# Per-channel statistics of the Wan2.1 latent space (hard-coded in the reference tokenizer).
LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclass(frozen=True)
class VAEConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # per encoder stage transition; the decoder uses it reversed
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latent_mean: tuple[float, ...] = LATENT_MEAN
    latent_std: tuple[float, ...] = LATENT_STD

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** len(self.temporal_downsample)


def vae_config(profile: str = "wan2.1") -> VAEConfig:
    """"wan2.1": the released tokenizer (~127M params). "tiny": same structure at base width 8."""
    if profile == "wan2.1":
        return VAEConfig()
    if profile == "tiny":
        return replace(VAEConfig(), base_dim=8)
    raise ValueError(f"vae profile {profile!r} is unknown; use 'wan2.1' or 'tiny'")


class StreamState:
    """What the causal layers remember between the chunks of one encode or decode pass.

    Keyed by layer; dropped as a whole when the pass ends so no activation outlives it.
    """

    def __init__(self) -> None:
        self.frames: dict[nn.Module, torch.Tensor] = {}
        self.started: set[nn.Module] = set()

    def swap(self, layer: nn.Module, x: torch.Tensor, keep: int) -> torch.Tensor | None:
        """Return the frames remembered for `layer` and remember the last `keep` frames seen now."""
        prev = self.frames.get(layer)
        if x.shape[2] >= keep or prev is None:
            tail = x[:, :, -keep:]
        else:
            tail = torch.cat([prev, x], dim=2)[:, :, -keep:]
        # clone: a slice would pin the whole chunk's storage until the next chunk
        self.frames[layer] = tail.clone()
        return prev

    def first_call(self, layer: nn.Module) -> bool:
        if layer in self.started:
            return False
        self.started.add(layer)
        return True


class CausalConv3d(nn.Conv3d):
    """Conv3d whose temporal padding (2*pt frames) is all in front; spatial padding symmetric."""

    def __init__(self, in_ch: int, out_ch: int, kernel, stride=1, padding=0) -> None:
        kernel = _triple(kernel)
        stride = _triple(stride)
        pt, ph, pw = _triple(padding)
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        if self.time_pad == 0:
            return super().forward(x)
        prev = state.swap(self, x, CACHE_T) if state is not None else None
        front = [] if prev is None else [prev]
        missing = self.time_pad - (0 if prev is None else prev.shape[2])
        if missing > 0:
            b, c, _, h, w = x.shape
            front.insert(0, x.new_zeros(b, c, missing, h, w))
        return super().forward(torch.cat(front + [x], dim=2))


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learnt per-channel gain (no bias)."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        # images=True: per-frame 2-D input [N,C,H,W]; else video [B,C,T,H,W]
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # indices 0..6 are part of the checkpoint's key names: norm, act, conv, norm, act, drop, conv
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, state) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame separately."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(y)).reshape(b * t, 3 * c, h * w).transpose(1, 2)
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # each [bt, 1, hw, c]
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        y = self.proj(y).reshape(b, t, c, h, w).transpose(1, 2)
        return x + y


class Upsample2x(nn.Module):
    """Nearest x2 in H and W. Runs in the input dtype: nearest only copies values, so an fp32
    detour (as some implementations take) changes nothing but doubles the largest buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Resample(nn.Module):
    """Spatial x2 down/up (per frame), optionally with a causal x2 in time."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                # produces the two output frames of each input frame as two channel halves
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        if self.mode == "upsample3d" and not state.first_call(self):
            # The first latent frame maps to one pixel frame, so it skips the temporal doubling;
            # the causal time conv then runs over the later frames only, as in the reference.
            b, c, t, h, w = x.shape
            y = self.time_conv(x, state)
            x = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        b, c, t, h, w = x.shape
        y = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        x = y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
        if self.mode == "downsample3d":
            # The first pixel frame stays alone; later frames pair up (stride 2), each chunk
            # taking the previous chunk's last frame as its front context.
            prev = state.frames.get(self)
            state.frames[self] = x[:, :, -1:].clone()
            if prev is not None:
                x = self.time_conv(torch.cat([prev, x], dim=2))
        return x


def _run(layer: nn.Module, x: torch.Tensor, state: StreamState) -> torch.Tensor:
    if isinstance(layer, (CausalConv3d, ResidualBlock, AttentionBlock, Resample)):
        return layer(x, state)
    return layer(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        last = len(cfg.dim_mult) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(cin, cout, cfg.dropout))
                cin = cout
            if i != last:
                layers.append(Resample(cout, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.ModuleList(layers)
        c = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(c, c, cfg.dropout), AttentionBlock(c), ResidualBlock(c, c, cfg.dropout)])
        self.head = nn.Sequential(RMSNorm(c), nn.SiLU(), CausalConv3d(c, cfg.z_dim * 2, 3, padding=1))

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.downsamples, *self.middle, *self.head):
            x = _run(layer, x, state)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        c = dims[0]
        self.middle = nn.ModuleList([ResidualBlock(c, c, cfg.dropout), AttentionBlock(c), ResidualBlock(c, c, cfg.dropout)])
        layers: list[nn.Module] = []
        last = len(mult) - 1
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # every upsampler halves the channels it hands on
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(cin, cout, cfg.dropout))
                cin = cout
            if i != last:
                layers.append(Resample(cout, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.ModuleList(layers)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, state: StreamState) -> torch.Tensor:
        x = self.conv1(x, state)
        for layer in (*self.middle, *self.upsamples, *self.head):
            x = _run(layer, x, state)
        return x


class WanVAE(nn.Module):
    """Wan2.1 VAE. `encode` gives the normalised posterior mean; `decode` inverts it (unclamped).

    Both compute in the weights' dtype (bf16 on GPU) and return the caller's dtype. Not
    re-entrant: one encode/decode at a time per instance (the chunk state is per call, but the
    memory plan assumes one pass in flight).
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VAEConfig()
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)  # -> mu | log_var
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)

    # -- helpers --

    def _stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        # kept out of the state dict (strict loading) and in fp32 whatever the weights' dtype
        mean = torch.tensor(self.config.latent_mean, dtype=torch.float32, device=device)
        std = torch.tensor(self.config.latent_std, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self.config.temporal_factor

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.config.temporal_factor

    # -- public --

    @torch.no_grad()
    def encode(self, video: torch.Tensor, temporal_window: int = 16) -> torch.Tensor:
        """video [B,3,T,H,W] in [-1,1], T = 1+4k, H and W multiples of 8 -> latent [B,16,1+k,H/8,W/8]."""
        cfg = self.config
        tf, sf = cfg.temporal_factor, cfg.spatial_factor
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"encode expects video [B,3,T,H,W]; got shape {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        if (t - 1) % tf or h % sf or w % sf:
            raise ValueError(
                f"encode needs T = 1+{tf}k frames and H, W multiples of {sf}; got T={t}, H={h}, W={w}"
            )
        if temporal_window <= 0 or temporal_window % tf:
            raise ValueError(f"temporal_window must be a positive multiple of {tf}; got {temporal_window}")
        x = video.to(self.dtype)
        state = StreamState()
        outs = [self.encoder(x[:, :, :1], state)]
        for start in range(1, t, temporal_window):
            outs.append(self.encoder(x[:, :, start : start + temporal_window], state))
        del state
        mu = self.conv1(torch.cat(outs, dim=2))[:, : cfg.z_dim]
        mean, std = self._stats(mu.device)
        return ((mu.float() - mean) / std).to(video.dtype)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, on_frames=None) -> torch.Tensor:
        """latent [B,16,t,h,w] (normalised) -> video [B,3,1+4(t-1),8h,8w], roughly [-1,1], not clamped.

        `on_frames(clip)`, if given, sees each latent frame's pixel frames ([B,3,k,8h,8w], 1 then 4 at a
        time) as soon as they are decoded: the mp4 writer starts on them while the rest decode."""
        cfg = self.config
        if latent.ndim != 5 or latent.shape[1] != cfg.z_dim:
            raise ValueError(f"decode expects latent [B,{cfg.z_dim},t,h,w]; got shape {tuple(latent.shape)}")
        b, _, t, h, w = latent.shape
        mean, std = self._stats(latent.device)
        z = self.conv2((latent.float() * std + mean).to(self.dtype))
        out = torch.empty(
            b, 3, self.pixel_frames(t), h * cfg.spatial_factor, w * cfg.spatial_factor,
            dtype=latent.dtype, device=latent.device,
        )
        state = StreamState()
        pos = 0
        for i in range(t):
            frames = self.decoder(z[:, :, i : i + 1], state)
            out[:, :, pos : pos + frames.shape[2]] = frames
            pos += frames.shape[2]
            if on_frames is not None:
                on_frames(frames)
            del frames
        del state
        assert pos == out.shape[2], (pos, out.shape)
        return out

    @torch.no_grad()
    def decoder_channels_last_(self) -> "WanVAE":
        """The decode path's 3-D conv weights (conv2 and the decoder's) in channels-last-3d order, which makes
        cuDNN pick faster kernels for them. Measured on the H200 at 720p with cudnn.benchmark on
        (bench/bench_vae.py): decode 3.868 -> 3.276 s, peak 10.0 -> 9.2 GiB. The encoder stays as it is: in the
        same layout its 1- and 5-frame encodes, all the pipeline runs, got slower (0.043 -> 0.055 s,
        0.149 -> 0.209 s)."""
        for p in (*self.conv2.parameters(), *self.decoder.parameters()):
            if p.ndim == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        return self

    @torch.no_grad()
    def random_init_(self, seed: int) -> "WanVAE":
        """Seeded random weights (tiny profile, tests): conv weights std 1/sqrt(fan_in), small
        non-zero biases, norm gains around 1 — every parameter matters to the output."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in sorted(self.named_parameters()):
            if name.endswith("gamma"):
                val = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif name.endswith("bias"):
                val = 0.05 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p[0].numel()
                val = torch.randn(p.shape, generator=gen) / fan_in**0.5
            p.copy_(val.to(p.dtype))
        return self
