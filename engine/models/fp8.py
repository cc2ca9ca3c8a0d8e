"""Experimental FP8 linears for the DiT: weights stored in float8_e4m3fn, activations quantized per token.

Why: at 720p the 2B's linear layers are ~0.68 PFLOP per CFG step, about half of a NATTEN step (bench/
RESULTS.md), and they already run at ~700 TFLOP/s in bf16; Hopper's FP8 tensor cores have twice the bf16
rate. The result changes (e4m3 keeps 3 mantissa bits: up to 2^-4 relative rounding per element), so this is
opt-in (GenerationSpec.fp8_linears) and labelled experimental, like the step cache.

Scheme (what torch._scaled_mm's "rowwise" mode takes):
  - weight W [N, K]: one fp32 scale per output feature, s_w[n] = max_k |W[n, k]| / 448, W8 = W / s_w in e4m3
    (448 is e4m3's largest finite value), made once when the model is converted;
  - activation x [M, K]: one scale per row (token), made on every call the same way;
  - y = (x8 @ W8^T) * s_x[m] * s_w[n], accumulated in fp32 and written in the input's dtype.
Per-row/per-channel scales follow outliers in single tokens or features, which one scale per tensor would let
flush every other value to zero.

Only the big token-by-feature GEMMs are converted (the attention projections and the MLP; see FP8_LINEARS):
the adaLN modulation, the embedders, the final layer and cross-attention's k/v (512 T5 tokens) are a few
percent of the FLOPs and the most sensitive to rounding, so they stay in the model's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# A row of zeros gets this scale instead of 0 (which would make 0/0); any positive value gives q = 0.
_MIN_SCALE = 1e-12

# Linear layers converted in each block, by their name inside the block (the released checkpoints' names).
FP8_LINEARS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj",
    "cross_attn.q_proj", "cross_attn.output_proj",
    "mlp.layer1", "mlp.layer2",
)

# _scaled_mm needs both GEMM dimensions it reads from the weight (K and N) to be multiples of 16.
_ALIGN = 16


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t [M, K] -> (t8 [M, K] e4m3, scale [M, 1] fp32) with t ~= t8 * scale, one scale per row."""
    tf = t.float()
    scale = (tf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=_MIN_SCALE)
    # the clamp only catches fp32 rounding of |t|/scale a hair above 448, which e4m3 has no value for (it
    # would become NaN: e4m3fn has no infinity)
    return (tf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """A bias-free linear layer computing x @ W^T with W in e4m3 (per-output-feature scales) and x quantized
    per row on each call. Made from an nn.Linear by `from_linear`; inference only."""

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        self.register_buffer("weight", weight_fp8)  # [N, K] e4m3, row-major: its .t() is the column-major B
        self.register_buffer("weight_scale", weight_scale)  # [1, N] fp32

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Fp8Linear":
        if linear.bias is not None:
            raise ValueError("Fp8Linear has no bias; the DiT's linears are bias-free")
        with torch.no_grad():
            w8, s = quantize_rows(linear.weight)
        return cls(w8, s.reshape(1, -1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x8, sx = quantize_rows(x.reshape(-1, self.in_features))
        y = torch._scaled_mm(x8, self.weight.t(), scale_a=sx, scale_b=self.weight_scale, out_dtype=x.dtype)
        return y.reshape(*lead, self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        """W8 * s_w in fp32: the weight this layer really multiplies by (tests, drift reports)."""
        return self.weight.float() * self.weight_scale.reshape(-1, 1)

    def _apply(self, fn, recurse=True):
        # `dit.to(dtype)` casts every floating tensor, float8 included: the weight would silently become a
        # bf16 copy of itself (and its scales would lose bits). Devices move; dtypes stay.
        for name in ("weight", "weight_scale"):
            t = self._buffers[name]
            self._buffers[name] = t.to(fn(t[:0]).device)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=float8_e4m3fn"


def convertible(linear: nn.Module) -> bool:
    return (isinstance(linear, nn.Linear) and linear.bias is None
            and linear.in_features % _ALIGN == 0 and linear.out_features % _ALIGN == 0)


def quantize_dit_(dit: nn.Module) -> int:
    """Replace FP8_LINEARS in every block of a MiniTrainDIT with Fp8Linear, in place; returns how many.
    The model keeps its other weights (and dtype); the bf16 weights of the converted layers are freed."""
    n = 0
    for block in dit.blocks:
        for name in FP8_LINEARS:
            parent_name, _, attr = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            linear = getattr(parent, attr)
            if isinstance(linear, Fp8Linear):
                continue
            if not convertible(linear):
                raise ValueError(f"fp8_linears: {name} is {linear!r}; FP8 GEMMs need bias-free layers whose sizes "
                                 f"are multiples of {_ALIGN}; set fp8_linears = false")
            setattr(parent, attr, Fp8Linear.from_linear(linear))
            n += 1
    return n


def check_device(device: torch.device, dtype: torch.dtype) -> None:
    """Raise ValueError naming the field when this device cannot run the FP8 GEMMs; runs one tiny GEMM so
    a torch build or driver without them fails here, at loading, not in the first step.

    Raises:
        ValueError: a CUDA GPU older than compute capability 8.9 (FP8 tensor cores came with Ada/Hopper),
            or a torch whose _scaled_mm refuses per-row scales on this device and dtype (on CUDA the
            output must be bf16).
    """
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError(f"fp8_linears: {torch.cuda.get_device_name(device)} is sm_{major}{minor}; FP8 GEMMs need "
                             f"sm_89 or newer (Ada, Hopper, Blackwell); set fp8_linears = false")
    a = torch.ones(_ALIGN, _ALIGN, device=device, dtype=dtype)
    try:
        Fp8Linear.from_linear(_linear_like(a))(a)
    except (RuntimeError, NotImplementedError) as e:
        raise ValueError(f"fp8_linears: this torch ({torch.__version__}) cannot run per-row-scaled FP8 GEMMs on "
                         f"{device} in {dtype}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                         f"set fp8_linears = false") from e


def _linear_like(w: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin
