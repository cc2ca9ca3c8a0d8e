"""NATTEN patterns, and dense attention in FP8, through cuDNN frontend's block-sparse attention kernels.

nvidia-cudnn-frontend (>= 1.32, optional: the `[cudnn]` extra) ships CuTe DSL kernels for non-causal
block-sparse attention on Hopper (SM90): bf16 (`block_sparse_attention_forward`) and a Sage-style FP8 one
(`block_sparse_attention_fp8_forward`, which quantizes bf16 Q/K/V to e4m3 block by block itself). Both take
the pattern as, for every block of 128 queries, the list of key blocks it attends to.

Why here: in flex_natten's tile order every pattern of the 2B/14B tables at 720p is a union of whole
128-token blocks, and every query block sees the same number of key blocks (12, 36, 54, 150 and 294 for the
five 2B patterns at 720p16): exactly the fixed-count, full-block case these kernels take, SM90 FP8 included.
flex + flash-attn-4 ran those layers at ~540 TFLOP/s against ~660 for dense attention (bench/RESULTS.md); a
kernel built for lists of full blocks may close part of that, and FP8 is the one lever left for the dense
models' attention (the bf16 kernels are at their floor there). Dense attention is the pattern "every key
block", so the FP8 kernel serves it too. Measured on an H100 (bench/RESULTS.md, 2026-12-07): bf16 matches the
gather path to bf16 rounding on every 2B pattern, 973 ms for the 28 NATTEN layers (gather path 1343; not yet
timed against flex + fa4 on one card); FP8 gains nothing there and 1.10x on dense attention, and its 2B dense
video came out wrong end to end (cause not found), so specs cannot ask for attention_backend "cudnn_fp8"
(engine/spec.py). natten_impl "auto" takes the bf16 kernel where flex + flash-attn-4 does not apply and the
pattern fits (attention.py); "cudnn" / "cudnn_fp8" ask for it by name.

Layout: q, k, v [B, T, H, W, N, D] for the sparse calls (as flex_natten), [B, L, N, D] for dense.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from engine.models.flex_natten import BLOCK, _tables

_HEAD_DIM = 128  # the FP8 kernel's only head size (both released models have 128: 2048/16, 5120/40)
_UNUSABLE: dict = {}  # device index -> why the kernels cannot run there ("" = they can)


def unusable(device: torch.device) -> str:
    """Why cuDNN's block-sparse kernels cannot run on `device` ("" when they can): not CUDA, not Hopper,
    or nvidia-cudnn-frontend (with its CuTe DSL dependencies) missing or too old."""
    if device.type != "cuda":
        return "cuDNN block-sparse attention runs on NVIDIA GPUs only"
    if device.index not in _UNUSABLE:
        major, minor = torch.cuda.get_device_capability(device)
        if major != 9:
            why = f"cuDNN block-sparse attention is used on Hopper (sm_90) only; this GPU is sm_{major}{minor}"
        else:
            try:
                from cudnn.block_sparse_attention import (block_sparse_attention_forward,  # noqa: F401
                                                          block_sparse_attention_fp8_forward)
                why = ""
            except Exception as e:  # not installed, too old (no BSA), or its CUDA/CuTe libraries do not load
                why = (f"nvidia-cudnn-frontend>=1.32 with block-sparse attention is not usable "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); install the [cudnn] extra")
        _UNUSABLE[device.index] = why
    return _UNUSABLE[device.index]


def fp8_input_problem(t: torch.Tensor) -> str:
    """Why the FP8 kernel cannot read `t` ("" when it can): it takes bf16 with head size 128 only."""
    if t.dtype != torch.bfloat16 or t.shape[-1] != _HEAD_DIM:
        return f"cuDNN FP8 attention takes bf16 with head size {_HEAD_DIM}; got {t.dtype}, {t.shape[-1]}"
    return ""


def bf16_input_problem(t: torch.Tensor) -> str:
    """Why the bf16 kernel is not used for `t` ("" when it is): bf16 (the engine's GPU dtype), and the head sizes
    its SM90 forward takes."""
    if t.dtype != torch.bfloat16 or t.shape[-1] not in (64, 96, 128):
        return (f"cuDNN block-sparse attention is used for bf16 with head size 64, 96 or 128; "
                f"got {t.dtype}, {t.shape[-1]}")
    return ""


def neighborhood_problem(q6, window: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                         fp8: bool = False) -> str:
    """Why `bsa_neighborhood_attention` does not take this [B, T, H, W, N, D] layer ("" when it does): the
    device, the inputs, or the pattern on this grid."""
    return (unusable(q6.device) or (fp8_input_problem(q6) if fp8 else bf16_input_problem(q6))
            or plan_problem(tuple(q6.shape[1:4]), window, stride, dilation))


@dataclass(frozen=True)
class BsaPlan:
    """A pattern's tile-order permutation and its key-block lists, on one device."""

    perm: torch.Tensor  # [L] int64: tile-order position -> flat (t h w) token index
    inverse: torch.Tensor  # [L] int64
    index: torch.Tensor  # [1, 1, L/128, count] int32: the key blocks of each query block, ascending
    count: int  # key blocks per query block (the same for all: a fixed block_sparse_num)


def plan_problem(grid: Sequence[int], window: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int]) -> str:
    """Why the pattern does not fit these kernels on this grid ("" when it does): they take whole 128-token
    blocks and, in FP8 on SM90, one key-block count for every query block."""
    L = math.prod(grid)
    if L % BLOCK:
        return f"{L} tokens are not whole blocks of {BLOCK}"
    tab = _tables(tuple(grid), tuple(window), tuple(stride), tuple(dilation))
    if tab.partial_blocks:
        return f"{tab.partial_blocks} query/key block pairs are partly visible (the pattern is not block-aligned)"
    full_num = tab.blocks[2]
    if int(full_num.min()) != int(full_num.max()):
        return f"query blocks see {int(full_num.min())} to {int(full_num.max())} key blocks, not one count"
    return ""


@functools.lru_cache(maxsize=64)
def _plan(X: tuple, window: tuple, stride: tuple, dilation: tuple, device: torch.device) -> BsaPlan:
    problem = plan_problem(X, window, stride, dilation)
    if problem:
        raise ValueError(f"NATTEN window {window} stride {stride} dilation {dilation} on grid {X}: {problem}; "
                         f"use natten_impl auto")
    tab = _tables(X, window, stride, dilation)
    count = int(tab.blocks[2].max())
    index = tab.blocks[3][..., :count].contiguous()  # full blocks first, ascending (flex_natten._ordered)
    return BsaPlan(tab.perm.to(device), tab.inverse.to(device), index.to(device), count)


@functools.lru_cache(maxsize=8)
def _every_block(L: int, device: torch.device) -> torch.Tensor:
    """[1, 1, L/128, L/128] int32: each query block sees every key block (dense attention)."""
    n = L // BLOCK
    return torch.arange(n, dtype=torch.int32, device=device).expand(1, 1, n, n).contiguous()


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, count: int, fp8: bool) -> torch.Tensor:
    """q, k, v [B, L, N, D] (L in the order `index` speaks of) -> [B, L, N, D]."""
    from cudnn.block_sparse_attention import block_sparse_attention_forward, block_sparse_attention_fp8_forward

    B, L, N, D = q.shape
    # the kernels want the lists per (batch, head); one pattern for all, materialised (a stride-0 view is
    # not what their metadata checks promise to accept)
    idx = index.expand(B, N, *index.shape[2:]).contiguous()
    if fp8:
        problem = fp8_input_problem(q)
        if problem:
            raise ValueError(problem)
        qh, kh, vh = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # the FP8 kernel reads BHSD only
        out = block_sparse_attention_fp8_forward(qh, kh, vh, idx, block_sparse_num=count, sparse_block_size=BLOCK)
        return out["o_tensor"].transpose(1, 2)
    out = block_sparse_attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), idx, block_sparse_num=count,
                                         sparse_block_size=BLOCK, layout="bshd")
    return out["o_tensor"]


# Out of the compiled blocks, as the other NATTEN paths: plan lookup is host code keyed by Python tuples.
@torch.compiler.disable
def bsa_neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: Sequence[int],
                               stride: Sequence[int] = (1, 1, 1), dilation: Sequence[int] = (1, 1, 1),
                               fp8: bool = False) -> torch.Tensor:
    """natten.na3d(q, k, v, window, stride, dilation) (non-causal) on [B, T, H, W, N, D] through cuDNN's
    block-sparse kernel (fp8: its Sage FP8 one). Raises ValueError for a pattern `plan_problem` refuses."""
    B, T, H, W, N, D = q.shape
    plan = _plan((T, H, W), tuple(window), tuple(stride), tuple(dilation), q.device)
    L = T * H * W
    qt, kt, vt = (x.reshape(B, L, N, D).index_select(1, plan.perm) for x in (q, k, v))
    out = _run(qt, kt, vt, plan.index, plan.count, fp8)
    return out.index_select(1, plan.inverse).reshape(B, T, H, W, N, D)


@torch.compiler.disable
def fp8_dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax(q k^T / sqrt(D)) v on [B, L, N, D] through the FP8 kernel with every key block visible.
    Raises ValueError when L is not whole blocks of 128."""
    B, L, N, D = q.shape
    if L % BLOCK:
        raise ValueError(f"cuDNN FP8 attention needs whole blocks of {BLOCK} tokens; got {L}")
    return _run(q, k, v, _every_block(L, q.device), L // BLOCK, fp8=True)
