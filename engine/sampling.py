"""The Cosmos-Predict2 sampler: rectified-flow preconditioning, Karras sigmas, 2-step Adams-Bashforth.

Pure functions of tensors: no I/O, no printing; progress goes out through a callback.

The sampler state lives in sigma space, x = x0 + sigma * eps (sigma_data is 1). Each denoiser call
maps sigma to rectified-flow time t = sigma / (1 + sigma) and asks the network for a velocity F, so
that x0 = (1 - t) * x - t * F. This is NVIDIA's RectifiedFlowScaling + RectifiedFlowAB2Scheduler,
not EDM preconditioning, even though the schedule and the step math come from the RES/EDM family.

Precision follows the reference: sigmas and the solver's step math in float64, the state, x0 and
preconditioning in float32, the network's inputs in the network's dtype (bf16 on GPU) and its
output back to float32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from engine.resolutions import latent_frames  # noqa: F401 - the 4x causal VAE's frame rule, one definition

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
# Noise level the conditioning frames are presented at: clean, but not exactly t = 0.
SIGMA_CONDITIONAL = 1e-4

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, float], None]


def sigma_schedule(
    num_steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """Karras "rho" ramp from sigma_max down to sigma_min inclusive: float64, num_steps + 1 entries."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    ramp = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    sigmas = (hi + ramp * (lo - hi)) ** rho
    # Pin the ends: the power of a root is not always the exact number the config names.
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def initial_noise(
    shape: Sequence[int], seed: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Unit-variance float32 noise, the same numbers NVIDIA's scripts draw for `seed`.

    NumPy's RandomState is used (not torch's RNG) so a seed gives the same video on any machine
    and any GPU count. The result is NOT scaled: `sample` multiplies it by sigmas[0] (= sigma_max).
    """
    values = np.random.RandomState(seed).standard_normal(tuple(shape)).astype(np.float32)
    return torch.from_numpy(values).to(device)


@dataclass
class Conditioning:
    """Clean latent frames the video is conditioned on: the first `num_frames` latent frames of `gt`.

    gt: [B,16,T,H,W] normalised latent. Only the conditioned frames are read (every use goes through
        torch.where on the mask); the full length is kept because the noise is drawn in gt's shape. The
        pipeline encodes the conditioned frames alone and leaves the others zero.
    mask: [B,1,T,H,W] float32, 1 on conditioned frames (built from num_frames).
    """

    gt: torch.Tensor
    num_frames: int
    mask: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        b, _, t, h, w = self.gt.shape
        if not 0 <= self.num_frames <= t:
            raise ValueError(f"num_frames {self.num_frames} is outside 0..{t} latent frames")
        self.gt = self.gt.float()
        self.mask = torch.zeros(b, 1, t, h, w, dtype=torch.float32, device=self.gt.device)
        self.mask[:, :, : self.num_frames] = 1.0

    def frame_mask(self) -> torch.Tensor:
        """[B,T] mask of conditioned latent frames (the per-frame timestep selector)."""
        return self.mask[:, 0, :, 0, 0]


def _net_dtype(net) -> torch.dtype:
    params = getattr(net, "parameters", None)
    if params is not None:
        for p in params():
            return p.dtype
    return torch.float32


def make_x0_fn(
    net,
    cond_emb: torch.Tensor,
    uncond_emb: Optional[torch.Tensor],
    guidance: float,
    conditioning: Conditioning,
    batch_cfg: bool = True,
    *,
    fps=None,
    padding_mask: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    sigma_conditional: float = SIGMA_CONDITIONAL,
) -> X0Fn:
    """Build x0_fn(x, sigma) -> guided x0 (float32), NVIDIA's denoiser with classifier-free guidance.

    x0 = cond + guidance * (cond - uncond). Both branches see the same conditioning frames; only
    the text embedding differs (uncond_emb is the negative prompt's). With batch_cfg the two
    branches run as one forward of batch 2B; batch_cfg=False runs two forwards of batch B (less
    peak memory, same result). With uncond_emb None or guidance 0 only the conditional branch runs
    (cond + 0 * (cond - uncond) is cond).

    `net` has the DiT signature net(x, timesteps[B,T], crossattn_emb, condition_mask, fps=,
    padding_mask=); its inputs are cast to `dtype` (default: the dtype of its first parameter).
    fps is passed through untouched (the released nets ignore it).
    """
    if dtype is None:
        dtype = _net_dtype(net)
    gt, mask = conditioning.gt, conditioning.mask
    keep = mask.bool()  # broadcasts over channels
    frame_keep = conditioning.frame_mask().bool()
    sig_c = torch.tensor(sigma_conditional, dtype=torch.float32)
    t_cond = (sig_c / (sig_c + 1)).to(gt.device)
    guided = uncond_emb is not None and guidance != 0

    def forward(x_in, timesteps, emb, cmask):
        out = net(
            x_in.to(dtype),
            timesteps.to(dtype),
            emb.to(dtype),
            cmask.to(dtype),
            fps=fps,
            padding_mask=None if padding_mask is None else padding_mask.to(dtype),
        )
        return out.float()

    def x0_fn(x: torch.Tensor, sigma) -> torch.Tensor:
        x = x.float()
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32)
        t = sigma / (sigma + 1)
        c_in = c_skip = 1 - t
        c_out = -t
        # Conditioned frames enter clean (not scaled by c_in) and at the tiny conditional time.
        x_in = torch.where(keep, gt, x * c_in)
        timesteps = torch.where(frame_keep, t_cond, t.expand(frame_keep.shape))

        if not guided:
            outs = [forward(x_in, timesteps, cond_emb, mask)]
        elif batch_cfg:
            both = forward(
                torch.cat([x_in, x_in]),
                torch.cat([timesteps, timesteps]),
                torch.cat([cond_emb, uncond_emb]),
                torch.cat([mask, mask]),
            )
            outs = list(both.chunk(2))
        else:
            outs = [forward(x_in, timesteps, e, mask) for e in (cond_emb, uncond_emb)]

        x0s = [torch.where(keep, gt, c_skip * x + c_out * f) for f in outs]
        if not guided:
            return x0s[0]
        cond, uncond = x0s
        return cond + guidance * (cond - uncond)

    return x0_fn


# ---- solver updates: each returns the next state (float32) ----


def x0_euler_step(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """NVIDIA's first step ("regularised Euler in x0 form"): move x toward x0 by 1 - sigma_next/sigma."""
    r = torch.as_tensor(sigma_next, dtype=torch.float64) / torch.as_tensor(sigma, dtype=torch.float64)
    return (r * x.double() + (1 - r) * x0.double()).to(x.dtype)


def _phi1(z: torch.Tensor) -> torch.Tensor:
    return torch.expm1(z) / z


def _phi2(z: torch.Tensor) -> torch.Tensor:
    return (_phi1(z) - 1) / z


def ab2_step(
    x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor, sigma_prev, sigma, sigma_next
) -> torch.Tensor:
    """RES second-order Adams-Bashforth step in log-sigma using this x0 and the previous one.

    With h = ln(sigma/sigma_next) and c2 = ln(sigma/sigma_prev)/h (negative: the history lies behind):
    x_next = e^-h x + h (b1 x0 + b2 x0_prev), b2 = phi2(-h)/c2, b1 = phi1(-h) - b2. All in float64.
    """
    s_prev, s, s_next = (torch.as_tensor(v, dtype=torch.float64) for v in (sigma_prev, sigma, sigma_next))
    h = torch.log(s) - torch.log(s_next)
    c2 = (torch.log(s) - torch.log(s_prev)) / h
    if abs(float(h)) < 1e-6 or abs(float(c2 * h)) < 1e-6:
        raise ValueError("ab2_step: consecutive sigmas must differ (got a zero-length step)")
    b2 = torch.nan_to_num(_phi2(-h) / c2, nan=0.0)
    b1 = torch.nan_to_num(_phi1(-h) - b2, nan=0.0)
    out = torch.exp(-h) * x.double() + h * (b1 * x0.double() + b2 * x0_prev.double())
    return out.to(x.dtype)


def euler_step(x: torch.Tensor, x0: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """diffusers' first-order Euler in sigma space (float32): x + (sigma_next - sigma) (x - x0)/sigma.

    Not NVIDIA's sampler; here so tests can reproduce diffusers' Cosmos2VideoToWorldPipeline.
    """
    s = torch.as_tensor(sigma).to(torch.float32)
    s_next = torch.as_tensor(sigma_next).to(torch.float32)
    eps = (x - x0) / s
    return x + (s_next - s) * eps


# ---- the loop ----


def sample(
    x0_fn: X0Fn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Optional[StepCallback] = None,
    *,
    update: Optional[Callable] = None,
    final_clean: bool = True,
) -> torch.Tensor:
    """Denoise unit-variance `noise` along `sigmas` and return the final x0 latent (float32).

    The start state is noise * sigmas[0]. Default update (update=None) is NVIDIA's: step 0
    `x0_euler_step`, later steps `ab2_step` with the previous x0, then (final_clean) one more x0_fn
    call at sigmas[-1] whose x0 is the result: len(sigmas) network evaluations (36 for 35 steps).
    `update=f` uses f(x, x0, sigma, sigma_next) for every step instead (e.g. `euler_step`). With
    final_clean=False the result is the state at sigmas[-1], after len(sigmas) - 1 evaluations.

    callback(step, total, seconds) is called after each evaluation, step 1-based, total = number
    of evaluations as above; seconds is the wall time of that step (CUDA is synchronised first
    so the time is real).
    """
    sigmas = sigmas.to(torch.float64)
    n = len(sigmas) - 1
    total = n + 1 if final_clean else n
    x = noise.float() * sigmas[0].to(torch.float32).to(noise.device)
    x0_prev = None
    tick = time.perf_counter()

    def report(step: int) -> None:
        nonlocal tick
        if callback is None:
            return
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        now = time.perf_counter()
        callback(step, total, now - tick)
        tick = now

    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = x0_fn(x, sigma)
        if update is not None:
            x = update(x, x0, sigma, sigma_next)
        elif x0_prev is None:
            x = x0_euler_step(x, x0, sigma, sigma_next)
        else:
            x = ab2_step(x, x0, x0_prev, sigmas[i - 1], sigma, sigma_next)
        x0_prev = x0
        report(i + 1)

    if not final_clean:
        return x
    x0 = x0_fn(x, sigmas[-1])
    report(n + 1)
    return x0
