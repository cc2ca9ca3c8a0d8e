"""Experimental FP8 linears (engine/models/fp8.py): the quantizer, the GEMM's wiring, the conversion of the
DiT and the spec field, on CPU (torch's _scaled_mm runs there with the same per-row scales as on Hopper).

Error analysis (the bounds below are worst-case, so these tests cannot fail by chance on any BLAS):
- e4m3 rounding of v = x / s: for |v| >= 2^-6 (normal) the error is at most half an ulp, 2^-4 |v| (3
  mantissa bits); below that (subnormal, spacing 2^-9) at most 2^-10 in absolute terms. The fp32 division
  before it adds u = 2^-24 relative, covered by the factor (1 + 2^-10). Dequantized: |x^ - x| <= e(x) =
  max(2^-4 |x|, 2^-10 s) (1 + 2^-10).
- Products of two e4m3 values are exact in fp32 (4 + 4 significant bits); the GEMM sums K of them in some
  order and applies two scales and an output rounding: |y - y_ref| <= gamma(K + 4) sum_k |x^_k| |w^_k| with
  gamma(n) = n u / (1 - n u) (Higham, Accuracy and Stability, 3.1), y_ref the exact product of the dequantized
  operands. A scale on the wrong axis or a missing scale is off by O(1), far above it (checked below).
- Against the exact x W^T: |x^ w^ - x w| <= |x| e(w) + |w| e(x) + e(x) e(w) per term, plus the GEMM's rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import memory
from engine.models import fp8
from engine.models.dit import MiniTrainDIT, dit_config
from engine.spec import BuildConfig, GenerationSpec, build_key

U = 2.0**-24


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def quant_err(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e(t): the largest |dequant(quant(t)) - t| the analysis allows, element by element (float64)."""
    t, scale = t.double(), scale.double()
    return torch.maximum(2.0**-4 * t.abs(), 2.0**-10 * scale) * (1 + 2.0**-10)


def operands(seed=0, M=48, K=256, N=64):
    """Activations with a large-magnitude token, an all-zero token and values spanning 2^-20..2^4 (the
    subnormal range of a row's scale included), and weights with one loud output feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * torch.exp2(torch.randint(-20, 5, (M, K), generator=g).float())
    x[3] *= 1000.0
    x[7] = 0.0
    w = torch.randn(N, K, generator=g) * 0.05
    w[5] *= 30.0
    return x, w


def linear_of(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


def test_row_quantizer_stays_within_e4m3_rounding_of_each_element():
    x, _ = operands()
    x8, s = fp8.quantize_rows(x)
    assert x8.dtype == torch.float8_e4m3fn and s.shape == (x.shape[0], 1) and s.dtype == torch.float32
    back = x8.double() * s.double()
    assert torch.all((back - x.double()).abs() <= quant_err(x, s))
    # each row's largest element lands on e4m3's largest value (the scale uses the whole range) ...
    assert torch.all(x8.float().abs().amax(dim=1)[torch.arange(len(x)) != 7] == fp8.FP8_MAX)
    # ... and a zero row stays zero (no 0/0)
    assert torch.all(x8[7].float() == 0)


def test_fp8_linear_is_the_exact_product_of_its_dequantized_operands():
    x, w = operands(seed=1)
    layer = fp8.Fp8Linear.from_linear(linear_of(w))
    y = layer(x)
    x8, sx = fp8.quantize_rows(x)
    xd = x8.double() * sx.double()
    wd = layer.weight.double() * layer.weight_scale.double().reshape(-1, 1)
    ref = xd @ wd.T
    bound = gamma(x.shape[1] + 4) * (xd.abs() @ wd.abs().T)
    assert y.dtype == x.dtype and y.shape == (x.shape[0], w.shape[0])
    assert torch.all((y.double() - ref).abs() <= bound)
    # the test can fail: the weight's scales shifted by one output feature, or the per-token scale left
    # out, each land far outside the bound
    shifted = xd @ (layer.weight.double() * layer.weight_scale.double().roll(1, dims=1).reshape(-1, 1)).T
    assert torch.any((shifted - ref).abs() > bound)
    unscaled = x8.double() @ wd.T
    assert torch.any((unscaled - ref).abs() > bound)


def test_fp8_linear_error_against_the_exact_product_is_within_the_rounding_analysis():
    x, w = operands(seed=2)
    layer = fp8.Fp8Linear.from_linear(linear_of(w))
    y = layer(x).double()
    exact = x.double() @ w.double().T
    _, sx = fp8.quantize_rows(x)
    ex, ew = quant_err(x, sx), quant_err(w, layer.weight_scale.reshape(-1, 1))
    xd_abs, wd_abs = x.double().abs() + ex, w.double().abs() + ew
    bound = (x.double().abs() @ ew.T + ex @ w.double().abs().T + ex @ ew.T
             + gamma(x.shape[1] + 4) * (xd_abs @ wd_abs.T))
    assert torch.all((y - exact).abs() <= bound)
    # FP8 really rounded: the result is not the fp32 product
    assert not torch.allclose(y, exact, rtol=1e-4, atol=0)


def test_leading_dimensions_and_dtype_pass_through():
    _, w = operands(seed=3)
    layer = fp8.Fp8Linear.from_linear(linear_of(w))
    x = torch.randn(2, 3, 5, w.shape[1])
    y = layer(x)
    assert y.shape == (2, 3, 5, w.shape[0])
    assert torch.equal(y.reshape(-1, w.shape[0]), layer(x.reshape(-1, w.shape[1])))


def test_conversion_takes_the_listed_linears_and_leaves_the_sensitive_ones():
    dit = MiniTrainDIT(dit_config("tiny")).random_init_(0).eval()
    n = fp8.quantize_dit_(dit)
    assert n == len(fp8.FP8_LINEARS) * len(dit.blocks)
    for block in dit.blocks:
        for name in fp8.FP8_LINEARS:
            layer = block.get_submodule(name)
            assert isinstance(layer, fp8.Fp8Linear), name
            assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
        for name in ("cross_attn.k_proj", "cross_attn.v_proj", "adaln_modulation_mlp.1", "adaln_modulation_mlp.2"):
            assert type(block.get_submodule(name)) is nn.Linear, name
    assert type(dit.final_layer.linear) is nn.Linear and type(dit.x_embedder.proj[1]) is nn.Linear
    assert fp8.quantize_dit_(dit) == 0  # converting twice changes nothing


def test_every_converted_layer_is_on_the_forward_path():
    dit = MiniTrainDIT(dit_config("tiny")).random_init_(0).eval()
    fp8.quantize_dit_(dit)
    called = []
    for m in dit.modules():
        if isinstance(m, fp8.Fp8Linear):
            m.register_forward_hook(lambda mod, a, out: called.append(mod))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = dit(torch.randn(1, 16, 2, 8, 8, generator=g), torch.tensor([0.5]), torch.randn(1, 512, 32, generator=g))
    assert torch.isfinite(out).all()
    assert {id(m) for m in called} == {id(m) for m in dit.modules() if isinstance(m, fp8.Fp8Linear)}


def test_dtype_casts_of_the_model_leave_the_fp8_weights_alone():
    dit = MiniTrainDIT(dit_config("tiny")).random_init_(0).eval()
    fp8.quantize_dit_(dit)
    layer = dit.blocks[0].mlp.layer1
    before = layer.weight.clone()
    dit.to(torch.bfloat16)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.weight.view(torch.uint8), before.view(torch.uint8))
    assert dit.blocks[0].cross_attn.k_proj.weight.dtype == torch.bfloat16  # the rest did convert


def test_parking_round_trip_is_bit_exact_for_fp8_buffers():
    dit = MiniTrainDIT(dit_config("tiny")).random_init_(0).eval()
    fp8.quantize_dit_(dit)
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    parking = memory.HostParking(select=lambda t: True, pin=False)
    assert parking.park(dit) > 0
    parking.unpark(dit, torch.device("cpu"))
    after = dit.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype, k
        assert torch.equal(after[k].view(torch.uint8), v.view(torch.uint8)) if v.dtype == torch.float8_e4m3fn \
            else torch.equal(after[k], v), k


@torch.no_grad()
def test_compiled_block_traces_the_fp8_gemm_in_one_graph():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    try:
        dit = MiniTrainDIT(dit_config("tiny")).random_init_(0).eval()
        fp8.quantize_dit_(dit)
        block = dit.blocks[0]
        mlp = torch.compile(block.mlp, backend="eager", fullgraph=True, dynamic=False)
        x = torch.randn(2, 40, 64)
        counters.clear()
        assert torch.equal(mlp(x), block.mlp(x))
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()


def test_a_layer_the_gemm_cannot_take_is_refused_naming_the_field():
    dit = MiniTrainDIT(dit_config("tiny")).random_init_(0).eval()
    dit.blocks[1].mlp.layer2 = nn.Linear(250, 64, bias=False)  # 250: not a multiple of 16
    with pytest.raises(ValueError, match="fp8_linears: mlp.layer2 .*multiples of 16"):
        fp8.quantize_dit_(dit)


def test_device_check_refuses_a_gpu_without_fp8_tensor_cores(monkeypatch):
    fp8.check_device(torch.device("cpu"), torch.float32)  # the tiny profile's device: runs
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"fp8_linears: NVIDIA A100-SXM4-80GB is sm_80.*set fp8_linears = false"):
        fp8.check_device(torch.device("cuda"), torch.bfloat16)


def test_device_check_reports_a_torch_that_cannot_run_the_gemm(monkeypatch):
    def refuse(*a, **k):
        raise RuntimeError("_scaled_mm: rowwise scaling is not supported on this device\nmore detail")

    monkeypatch.setattr(torch, "_scaled_mm", refuse)
    with pytest.raises(ValueError, match=r"fp8_linears: .*rowwise scaling is not supported on this device; set"):
        fp8.check_device(torch.device("cpu"), torch.float32)


def test_the_spec_field_is_part_of_the_build():
    a = GenerationSpec(model_size="tiny")
    b = GenerationSpec(model_size="tiny", fp8_linears=True)
    assert BuildConfig.from_spec(b).fp8_linears and not BuildConfig.from_spec(a).fp8_linears
    assert build_key(a) != build_key(b)  # a warm exact engine is not reused for an FP8 job, nor back


def test_tiny_pipeline_generates_with_fp8_linears(tmp_path):
    from engine.pipeline import Video2WorldPipeline
    from tests.tiny import tiny_spec

    exact_spec = tiny_spec(tmp_path, num_steps=2)
    spec = tiny_spec(tmp_path, num_steps=2, fp8_linears=True)
    logs = []
    pipe = Video2WorldPipeline(spec, device=torch.device("cpu"), emit=logs.append).load()
    assert sum(isinstance(m, fp8.Fp8Linear) for m in pipe.dit.modules()) == 2 * len(fp8.FP8_LINEARS)
    assert any("fp8 linears (experimental)" in str(e.get("message", "")) for e in logs)
    video = pipe.generate(spec, spec.input_path, seed=0).video
    exact = Video2WorldPipeline(exact_spec, device=torch.device("cpu")).load().generate(
        exact_spec, exact_spec.input_path, seed=0).video
    assert video.shape == exact.shape and torch.isfinite(video).all()
    assert not torch.equal(video, exact)  # the FP8 path ran


def test_loading_refuses_fp8_linears_before_building_the_dit(tmp_path, monkeypatch):
    from engine.pipeline import Video2WorldPipeline
    from tests.tiny import tiny_spec

    def refuse(device, dtype):
        raise ValueError("fp8_linears: this GPU has no FP8 tensor cores; set fp8_linears = false")

    monkeypatch.setattr(fp8, "check_device", refuse)
    pipe = Video2WorldPipeline(tiny_spec(tmp_path, fp8_linears=True), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="fp8_linears: this GPU"):
        pipe.load()
    assert pipe.dit is None  # refused before minutes of loading a real checkpoint
