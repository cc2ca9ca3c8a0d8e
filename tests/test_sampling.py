"""engine.sampling: schedule, step math by hand, noise, conditioning, CFG batching, the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.sampling import (
    Conditioning,
    ab2_step,
    euler_step,
    initial_noise,
    latent_frames,
    make_x0_fn,
    sample,
    sigma_schedule,
    x0_euler_step,
)
from tests.tolerance import U_FP32, U_FP64, assert_rounding_close

SHAPE = (1, 16, 3, 4, 4)
TEXT_DIM = 8


class ToyNet(torch.nn.Module):
    """A small nonlinear stand-in with the DiT call signature; records what it is given."""

    def __init__(self, seed: int = 0, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Parameter((torch.randn(16, 16, generator=g) / 4).to(dtype))
        self.text = torch.nn.Parameter((torch.randn(TEXT_DIM, 16, generator=g) / 4).to(dtype))
        self.calls = []

    def forward(self, x, timesteps, crossattn_emb, condition_mask, fps=None, padding_mask=None):
        self.calls.append(dict(x=x, timesteps=timesteps, emb=crossattn_emb, mask=condition_mask))
        if x.shape[0] > 1:
            # One sample at a time: a batch of 4 and two batches of 2 then run the very same kernels on
            # each sample, so the sampler's CFG batching can be compared exactly. (A BLAS call on a batch
            # of 4 may block differently from one on 2 and round differently: that is the DiT's concern,
            # bounded in test_dit.py, not the sampler's.)
            return torch.cat([self._one(x[i : i + 1], timesteps[i : i + 1], crossattn_emb[i : i + 1],
                                        condition_mask[i : i + 1] if condition_mask.shape[0] > 1 else condition_mask)
                              for i in range(x.shape[0])])
        return self._one(x, timesteps, crossattn_emb, condition_mask)

    def _one(self, x, timesteps, crossattn_emb, condition_mask):
        h = torch.einsum("bcthw,cd->bdthw", x, self.mix)
        text = (crossattn_emb.mean(1) @ self.text)[:, :, None, None, None]
        return torch.tanh(h + text * timesteps[:, None, :, None, None]) + condition_mask


def _inputs(seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch,) + SHAPE[1:]
    gt = torch.randn(shape, generator=g)
    x = 10 * torch.randn(shape, generator=g)
    emb = torch.randn(batch, 5, TEXT_DIM, generator=g)
    neg = torch.randn(batch, 5, TEXT_DIM, generator=g)
    return gt, x, emb, neg


# ---- schedule ----


def test_sigma_schedule_values():
    n = 4
    s = sigma_schedule(n)
    assert s.dtype == torch.float64 and len(s) == n + 1
    assert s[0].item() == 80.0 and s[-1].item() == 0.002
    hi, lo = 80 ** (1 / 7), 0.002 ** (1 / 7)
    assert s[2].item() == pytest.approx((hi + 0.5 * (lo - hi)) ** 7, rel=1e-12)  # about 1.2766
    assert torch.all(s[1:] < s[:-1])


def test_default_step_count_gives_36_points():
    assert len(sigma_schedule(35)) == 36


# ---- single updates, worked out by hand ----


def test_x0_euler_step_by_hand():
    # r = 1/4: x_next = 0.25 * 2 + 0.75 * 0.5
    out = x0_euler_step(torch.tensor(2.0), torch.tensor(0.5), 4.0, 1.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(0.875, abs=1e-7)


def test_euler_step_by_hand():
    # eps = (2 - 0.5)/4 = 0.375; x_next = 2 + (1 - 4) * 0.375
    assert euler_step(torch.tensor(2.0), torch.tensor(0.5), 4.0, 1.0).item() == pytest.approx(0.875, abs=1e-7)


def test_ab2_step_by_hand():
    # sigmas 8 -> 4 -> 2: h = ln 2, c2 = ln(4/8)/ln 2 = -1, e^-h = 1/2.
    # phi1(-h) = 1/(2 ln2), phi2(-h) = (1 - 1/(2 ln2))/ln2, b2 = -phi2, b1 = phi1 + phi2.
    # x_next = 3/2 + ln2 (b1 * 1 + b2 * 2) = 1 + 1/(2 ln 2).
    x, x0, x0_prev = torch.tensor(3.0), torch.tensor(1.0), torch.tensor(2.0)
    out = ab2_step(x, x0, x0_prev, 8.0, 4.0, 2.0)
    assert out.item() == pytest.approx(1 + 1 / (2 * math.log(2)), abs=1e-6)


def test_ab2_step_with_constant_x0_is_exact_exponential_integrator():
    out = ab2_step(torch.tensor(5.0), torch.tensor(1.5), torch.tensor(1.5), 30.0, 10.0, 3.0)
    assert out.item() == pytest.approx(0.3 * 5 + 0.7 * 1.5, abs=1e-6)


def test_ab2_step_rejects_zero_length_step():
    with pytest.raises(ValueError):
        ab2_step(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), 4.0, 2.0, 2.0)


# ---- noise ----


def test_initial_noise_is_numpy_randomstate():
    noise = initial_noise(SHAPE, seed=1234)
    expected = np.random.RandomState(1234).standard_normal(SHAPE).astype(np.float32)
    assert noise.dtype == torch.float32 and tuple(noise.shape) == SHAPE
    assert torch.equal(noise, torch.from_numpy(expected))
    assert not torch.equal(noise, initial_noise(SHAPE, seed=1235))


def test_sample_starts_at_sigma_max_times_noise():
    seen = []

    def x0_fn(x, sigma):
        seen.append(x.clone())
        return torch.zeros_like(x)

    noise = initial_noise(SHAPE, 0)
    sample(x0_fn, noise, sigma_schedule(2))
    assert torch.equal(seen[0], noise * 80.0)


# ---- the denoiser ----


def test_latent_frames():
    assert [latent_frames(n) for n in (1, 5, 93, 61)] == [1, 2, 24, 16]


@pytest.mark.parametrize("n_cond", [1, 2])
def test_net_inputs_conditioning_and_casts(n_cond):
    gt, x, emb, neg = _inputs()
    net = ToyNet(dtype=torch.float64)
    x0_fn = make_x0_fn(net, emb, neg, 7.0, Conditioning(gt, n_cond))
    x0 = x0_fn(x, torch.tensor(3.0, dtype=torch.float64))
    (call,) = net.calls
    t = 3.0 / 4.0
    assert call["x"].dtype == torch.float64 and x0.dtype == torch.float32
    assert call["x"].shape[0] == 2  # cond and uncond in one forward
    # conditioned frames enter clean, the rest scaled by c_in = 1 - t
    assert torch.equal(call["x"][:, :, :n_cond], gt[:, :, :n_cond].double().expand(2, -1, -1, -1, -1))
    # exact: sigma 3 gives t = 3/4 and c_in = 1/4, and scaling by a power of two rounds in no precision
    assert torch.equal(call["x"][:1, :, n_cond:], (x * (1 - t))[:, :, n_cond:].double())
    expected_t = torch.full((2, SHAPE[2]), t, dtype=torch.float64)
    expected_t[:, :n_cond] = 1e-4 / (1 + 1e-4)
    # the sampler holds the conditional sigma 1e-4 as float32 (as the reference does): one fp32 rounding,
    # then float64 formulas (a few U_FP64) for the same value
    torch.testing.assert_close(call["timesteps"], expected_t, rtol=U_FP32 + 8 * U_FP64, atol=0)
    assert torch.equal(call["mask"][:, 0, :, 0, 0], (expected_t < 1e-3).double())
    assert torch.equal(call["emb"], torch.cat([emb, neg]).double())
    # x0 on conditioned frames is the clean latent, exactly
    assert torch.equal(x0[:, :, :n_cond], gt[:, :, :n_cond])


def test_x0_is_preconditioned_velocity():
    gt, x, emb, _ = _inputs()
    net = ToyNet()
    x0 = make_x0_fn(net, emb, None, 7.0, Conditioning(gt, 1))(x, 0.5)
    t = 0.5 / 1.5
    f = net(torch.where(Conditioning(gt, 1).mask.bool(), gt, x * (1 - t)), net.calls[0]["timesteps"], emb,
            Conditioning(gt, 1).mask)
    # the sampler forms c_skip*x + c_out*f in float64 and rounds once to float32; the expected side
    # rounds each of its 3 fp32 operations: ~4 roundings of terms no larger than max|x|
    assert_rounding_close(x0[:, :, 1:], ((1 - t) * x - t * f)[:, :, 1:], k=1, depth=4, scale=float(x.abs().max()))


def test_guidance_combines_x0_of_both_branches():
    gt, x, emb, neg = _inputs()
    cond = Conditioning(gt, 1)
    net = ToyNet()
    x0_cond = make_x0_fn(net, emb, None, 0.0, cond)(x, 2.0)
    x0_uncond = make_x0_fn(net, neg, None, 0.0, cond)(x, 2.0)
    guided = make_x0_fn(net, emb, neg, 7.0, cond)(x, 2.0)
    # the same three operations in another precision/order on values up to 8*max|x0| (guidance gain 1 + 7)
    assert_rounding_close(guided, x0_cond + 7.0 * (x0_cond - x0_uncond), k=1, depth=3,
                          scale=8 * float(torch.maximum(x0_cond.abs(), x0_uncond.abs()).max()))
    assert (x0_cond - x0_uncond).abs().max() > 1e-3  # the text must matter, or this proves nothing


def test_batched_cfg_equals_two_forwards():
    gt, x, emb, neg = _inputs(seed=3, batch=2)
    cond = Conditioning(gt, 2)
    one, two = ToyNet(), ToyNet()
    a = make_x0_fn(one, emb, neg, 7.0, cond, batch_cfg=True)
    b = make_x0_fn(two, emb, neg, 7.0, cond, batch_cfg=False)
    sigmas = sigma_schedule(4)
    noise = initial_noise(gt.shape, 5)
    # exact: ToyNet runs per sample, and the rest is elementwise (each op rounded once, whatever the batch)
    assert torch.equal(sample(a, noise, sigmas), sample(b, noise, sigmas))
    assert len(one.calls) == 5 and len(two.calls) == 10
    assert one.calls[0]["x"].shape[0] == 4 and two.calls[0]["x"].shape[0] == 2


# ---- the loop ----


@pytest.mark.parametrize("n_cond", [1, 2])
def test_conditioned_frames_equal_clean_latent_in_result(n_cond):
    gt, _, emb, neg = _inputs(seed=1)
    net = ToyNet()
    out = sample(make_x0_fn(net, emb, neg, 7.0, Conditioning(gt, n_cond)), initial_noise(SHAPE, 0), sigma_schedule(3))
    assert torch.equal(out[:, :, :n_cond], gt[:, :, :n_cond])
    # generated frames move O(1) away from the clean latent; 1e-2 is only "not a copy"
    assert not torch.allclose(out[:, :, n_cond:], gt[:, :, n_cond:], atol=1e-2)
    assert len(net.calls) == 4  # 3 steps + the clean pass, cond and uncond batched


@pytest.mark.parametrize("final_clean", [True, False])
def test_callback_counts(final_clean):
    calls = []
    n = 5
    evaluations = []

    def x0_fn(x, sigma):
        evaluations.append(float(sigma))
        return 0.5 * x

    sample(x0_fn, initial_noise(SHAPE, 0), sigma_schedule(n), callback=lambda *a: calls.append(a),
           final_clean=final_clean)
    total = n + 1 if final_clean else n
    assert [c[:2] for c in calls] == [(i, total) for i in range(1, total + 1)]
    assert all(c[2] >= 0 for c in calls)
    assert len(evaluations) == total
    assert evaluations[-1] == pytest.approx(0.002 if final_clean else sigma_schedule(n)[-2].item())


def test_final_clean_pass_returns_x0_at_sigma_min():
    # x0_fn returns a constant: every update lands exactly on the ODE path, the clean pass returns c.
    c = torch.full(SHAPE, 0.25)
    noise = initial_noise(SHAPE, 2)
    sigmas = sigma_schedule(6)
    assert torch.equal(sample(lambda x, s: c, noise, sigmas), c)
    state = sample(lambda x, s: c, noise, sigmas, final_clean=False)
    # each of the 6 steps rounds the float32 state once (u*|x_k|), and the ODE contracts an error made at
    # sigma_k by sigma_min/sigma_k, so each adds at most u*|result|; the expected side rounds 4 times more
    expected = c + 0.002 * (noise * 80 - c) / 80
    torch.testing.assert_close(state, expected, rtol=0, atol=2 * (6 + 4) * U_FP32 * float(expected.abs().max()))


def _gaussian_error(num_steps, update):
    # Data N(0, d^2) has x0(x, s) = d^2 x / (d^2 + s^2) and the exact flow x(s) ~ sqrt(d^2 + s^2).
    d = 0.5
    noise = initial_noise(SHAPE, 0)
    out = sample(lambda x, s: d * d * x / (d * d + float(s) ** 2), noise, sigma_schedule(num_steps),
                 update=update, final_clean=False)
    exact = noise * 80 * math.sqrt(d * d + 0.002**2) / math.sqrt(d * d + 80**2)
    return ((out - exact).abs().max() / exact.abs().max()).item()


def test_ab2_is_second_order_and_euler_first_order():
    ab2 = _gaussian_error(35, None) / _gaussian_error(70, None)
    euler = _gaussian_error(35, euler_step) / _gaussian_error(70, euler_step)
    assert ab2 > 3.5  # error falls ~4x per halving of the step
    assert 1.6 < euler < 2.5  # ~2x
    assert _gaussian_error(35, None) < _gaussian_error(35, euler_step)
