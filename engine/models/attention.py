"""The attention op of the DiT: dense SDPA with a kernel switch, and NATTEN for the `-natten` checkpoints.

Layout everywhere is [B, L, N, D] (tokens before heads), the layout of the reference's attention op and
of NATTEN's heads-last view, so the DiT can hand its projections over without transposes and a
context-parallel wrapper can swap sequence and heads with one all-to-all.

Unlike the reference dispatcher we do not force q/k/v to bf16: attention runs in the dtype it is given
(the pipeline casts the whole net to bf16, so at inference the result is the same; in fp32 tests we get
exact fp32 attention).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DENSE_BACKENDS = ("auto", "sdpa", "cudnn", "flash", "efficient", "math", "fa4", "cudnn_fp8")

_FORCED = {
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}


def _auto_priority(device: torch.device) -> list:
    # On Hopper/Blackwell cuDNN's fused attention is the fastest SDPA kernel (measured 90 ms vs 163 ms for
    # flash at 84k tokens on H100); elsewhere flash first. Math last so odd shapes still run.
    major, _ = torch.cuda.get_device_capability(device)
    if major in (9, 10):
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    else:
        order = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    return order + [SDPBackend.MATH]


def _kernel_context(backend: str, device: torch.device):
    if backend in _FORCED:
        return sdpa_kernel(_FORCED[backend])
    if backend == "auto" and device.type == "cuda":
        return sdpa_kernel(_auto_priority(device), set_priority=True)
    # "sdpa", or "auto" off CUDA: let torch choose.
    return contextlib.nullcontext()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Dense, unmasked, non-causal attention with scale 1/sqrt(D) on [B, L, N, D] tensors.

    backend: "auto" (fastest kernel for the device: flash-attn-4 on Hopper when installed, else cuDNN),
    "sdpa" (torch's own choice), or one forced kernel: "cudnn", "flash", "efficient", "math", "fa4". "natten" is accepted and means dense here: NATTEN needs the
    token grid, which only the self-attention op knows (see `natten_attention`); cross-attention is dense.
    "cudnn_fp8" (benchmarks only: engine/spec.py refuses it in specs): cuDNN's Sage FP8 kernel
    (engine/models/cudnn_bsa.py) for self-attention shapes it takes (bf16, head size 128, as many keys as
    queries, whole blocks of 128), "auto" for the rest (cross-attention's 512 text tokens among them).
    """
    if backend == "natten":
        backend = "auto"
    if backend not in DENSE_BACKENDS:
        raise ValueError(f"attention backend {backend!r} is unknown; use one of {', '.join(DENSE_BACKENDS)}, natten")
    if backend == "cudnn_fp8":
        return _fp8_or_auto(q, k, v)
    if backend == "fa4" or (backend == "auto" and q.is_cuda and _fa4_preferred(q.device)):
        return fa4_attention(q, k, v)
    with _kernel_context(backend, q.device):
        return _sdpa(q, k, v)


def fp8_attention_problem(q: torch.Tensor, k: torch.Tensor) -> str:
    """Why attention_backend "cudnn_fp8" runs these [B, L, N, D] shapes through "auto" ("" when it does not)."""
    from engine.models import cudnn_bsa

    if q.shape[1] != k.shape[1]:
        return "queries and keys differ in length (cross-attention)"
    if q.shape[1] % cudnn_bsa.BLOCK:
        return f"{q.shape[1]} tokens are not whole blocks of {cudnn_bsa.BLOCK}"
    return cudnn_bsa.fp8_input_problem(q) or cudnn_bsa.unusable(q.device)


# One graph break per layer, as for the sparse paths: the kernel's wrapper is host code (metadata checks,
# JIT-compiled CuTe kernels) that dynamo should not trace.
@torch.compiler.disable
def _fp8_or_auto(q, k, v):
    from engine.models import cudnn_bsa

    if fp8_attention_problem(q, k):
        return attention(q, k, v, "auto")
    return cudnn_bsa.fp8_dense_attention(q, k, v)


_FA4_OK: dict = {}


def _fa4_preferred(device: torch.device) -> bool:
    """flash-attn-4, when installed, on Hopper: measured 713 TFLOP/s vs cuDNN's 653 at 84,480 tokens on H100
    (bench/RESULTS.md), and 5.73 vs 6.25 s per 2B CFG step. Not measured elsewhere, so not chosen elsewhere."""
    if device.index not in _FA4_OK:
        ok = torch.cuda.get_device_capability(device)[0] == 9
        if ok:
            try:
                fa4_disk_cache_default()
                import flash_attn.cute  # noqa: F401
            except Exception:  # not installed, or its CUDA libraries don't load
                ok = False
        _FA4_OK[device.index] = ok
    return _FA4_OK[device.index]


FA4_CACHE_ENV = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"


def fa4_disk_cache_default() -> None:
    """Turn on flash-attn-4's on-disk kernel cache unless the user set it either way. It must happen before
    flash_attn.cute is first imported (fa4 reads the variable then), so every import of it here calls this.

    Why: fa4 JIT-compiles its kernels in each new process; with NATTEN through flex + fa4 the first step of a
    fresh engine took 48.1 s on an H100 against 15.8 s on the gather path (bench/RESULTS.md), most likely that
    compilation (not profiled). The cache keeps compiled kernels under /tmp/$USER (or
    FLASH_ATTENTION_CUTE_DSL_CACHE_DIR), keyed by fa4's sources, cutlass and tvm-ffi versions and the GPU
    arch, under file locks; a cache it cannot use makes it warn and compile in memory as before. Measured on
    an H100 (bench/run_h200.sh K): a new engine's first step 36.0 -> 15.8 s; FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=0
    turns it off."""
    os.environ.setdefault(FA4_CACHE_ENV, "1")


def auto_kernel(device: torch.device) -> str:
    """The dense kernel `backend="auto"` runs on `device`, for benchmark tables and logs: "fa4", "cudnn"
    (Hopper/Blackwell without flash-attn-4), "flash" (other CUDA GPUs: first in the priority list), or
    "sdpa" (off CUDA: torch's own choice)."""
    if device.type != "cuda":
        return "sdpa"
    if _fa4_preferred(device):
        return "fa4"
    return "cudnn" if torch.cuda.get_device_capability(device)[0] in (9, 10) else "flash"


def _fa4_kernel(q, k, v):
    """flash-attn-4 (CuTe DSL; optional, `pip install flash-attn-4`): Hopper/Blackwell only, [B, L, N, D] in."""
    if not q.is_cuda:
        raise RuntimeError("attention_backend: fa4 runs on NVIDIA GPUs only; use auto on the CPU")
    try:
        fa4_disk_cache_default()
        from flash_attn.cute import flash_attn_func
    except ImportError as err:
        raise RuntimeError(f"attention_backend: fa4 needs the flash-attn-4 package ({err}); use auto") from None
    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out


# A custom op, so that dynamo sees fa4 as one opaque kernel inside the compiled blocks (cross-attention and
# dense self-attention). Traced as plain Python, fa4's host wrapper (config lookups under lru_cache, pickling,
# DLPack wrappers) broke each block into several graphs and had dynamo compile fragments of fa4's own code
# (the "resume_in__flash_attn_fwd" warnings of bench/results/h100_cold_k1.log) on every new engine.
@torch.library.custom_op("cosmos_tui::fa4_attention", mutates_args=())
def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # contiguous: what the fake below promises inductor, which plans the ops after it on those strides
    return _fa4_kernel(q, k, v).contiguous()


@fa4_attention.register_fake
def _(q, k, v):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------
# NATTEN per-layer parameters of the `-natten` checkpoints. Window/stride/dilation per axis (T, H, W);
# -1 = the whole axis. All were tuned on the 720p 16:9 token grid (T, 44, 80), hence base_size.

BASE_SIZE_720P = (-1, 44, 80)


def _pattern(window, stride=1, dilation=1) -> dict:
    return {"window_size": window, "stride": stride, "dilation": dilation, "base_size": BASE_SIZE_720P}


# 98% sparse, "sparse global": 4x16 window dilated to cover the whole frame.
_GLOBAL_HW = _pattern((-1, 4, 16), 1, (1, 11, 5))
# 95% sparse: rows local, columns sparse-global.
_GLOBAL_W = _pattern((-1, 12, 16), (1, 4, 1), (1, 1, 5))
# Local windows; stride (1,4,8) makes 4x8 query tiles share one window.
_LOCAL_S = _pattern((-1, 12, 24), (1, 4, 8))
_LOCAL_M = _pattern((-1, 20, 40), (1, 4, 8))
_LOCAL_L = _pattern((-1, 28, 56), (1, 4, 8))


def natten_table(model_size: str) -> tuple:
    """Per-block NATTEN parameters (None = dense self-attention) of the released -natten checkpoints."""
    if model_size == "2B":
        groups = {
            "g_hw": (0, 1),
            "g_w": (2, 5, 10),
            "s": (3, 4, 6, 7, 8, 9, 27),
            "m": tuple(range(11, 23)) + (24, 25, 26),
            "l": (23,),
        }
        n = 28
    elif model_size == "14B":
        groups = {
            "g_hw": tuple(range(0, 11)),
            "g_w": (11, 12),
            "s": tuple(range(13, 23)),
            "m": (23, 25, 29, 30, 33, 35),
            "l": (24, 26, 28, 31, 32, 34),
        }
        n = 36  # layer 27 stays dense
    elif model_size == "tiny":
        # Toy pattern for the tiny profile: block 0 strided-local, block 1 dense, so both paths run.
        return ({"window_size": (-1, 4, 4), "stride": (1, 2, 2), "dilation": 1, "base_size": (-1, 8, 8)}, None)
    else:
        raise ValueError(f"no NATTEN table for model size {model_size!r}; use 2B, 14B or tiny")
    by_name = {"g_hw": _GLOBAL_HW, "g_w": _GLOBAL_W, "s": _LOCAL_S, "m": _LOCAL_M, "l": _LOCAL_L}
    return _fill(n, groups, by_name)


def _fill(n: int, groups: dict, by_name: dict) -> tuple:
    table: list = [None] * n
    for name, layers in groups.items():
        for i in layers:
            assert table[i] is None, f"layer {i} listed twice"
            table[i] = dict(by_name[name])
    return tuple(table)


def _triple(v) -> tuple:
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(int(x) for x in v)
    assert len(v) == 3, f"expected an int or 3 values, got {v}"
    return v


def _clamp(v: int, lo: int, hi: int) -> int:
    # hi wins over lo: on an axis shorter than 2 the window is the axis.
    return min(max(v, lo), hi)


def adapt_natten_params(params: dict, grid: Sequence[int]) -> tuple[tuple, tuple, tuple]:
    """The reference's runtime rule: (window, stride, dilation) for the actual token grid (T, H, W).

    Window entries <= 1 mean the full axis. With a base_size the three are rescaled by grid/base per axis
    (base entries <= 0 take the grid's own extent) using Python's round (banker's rounding), then clamped:
    window to [2, X], stride to [1, window], dilation to [1, X // window].
    """
    X = tuple(int(x) for x in grid)
    window = tuple(x if w <= 1 else w for w, x in zip(_triple(params["window_size"]), X))
    stride = _triple(params.get("stride", 1))
    dilation = _triple(params.get("dilation", 1))
    base = params.get("base_size")
    if base is not None:
        base = tuple(x if b <= 0 else b for b, x in zip(base, X))
        scale = tuple(x / b for x, b in zip(X, base))
        window = tuple(_clamp(round(w * s), 2, x) for w, s, x in zip(window, scale, X))
        stride = tuple(_clamp(round(st * s), 1, w) for st, s, w in zip(stride, scale, window))
        dilation = tuple(_clamp(round(d * s), 1, x // w) for d, s, x, w in zip(dilation, scale, X, window))
    for x, w, st, d in zip(X, window, stride, dilation):
        assert x >= w * d, f"NATTEN: grid {X} smaller than window {window} x dilation {dilation}"
        assert w >= st, f"NATTEN: stride {stride} larger than window {window}"
    return window, stride, dilation


# Which implementation runs the sparse pattern: "natten" (natten.na3d), "sparse" (our gather + dense SDPA
# path in sparse_attention.py, equal to na3d to fp32 tolerance), "flex" (one FlexAttention call over tokens
# in tile order, flex_natten.py, Triton's kernel: reads K/V in place), "flex_flash" (the same call through
# flash-attn-4's kernel, BACKEND=FLASH; needs flash_attn.cute and CUDA), or "auto".
# "auto": na3d where libnatten's fused kernels exist (natten.HAS_LIBNATTEN, CUDA). Else, per layer, flex_flash
# where flash-attn-4 is the dense kernel (Hopper) and the pattern is block-aligned on this grid (every
# pattern of the tables at 720p), else "cudnn" where nvidia-cudnn-frontend is usable and the pattern is
# whole blocks of one count (973 ms against the gather path's 1343 for the 2B's 28 layers on one H100,
# 2026-12-07; against flex_flash not yet timed on one card, so it comes second), else "sparse". Measured on
# the H200 for the 28 layers of the 2B at 720p16,
# batch 2 (bench/RESULTS.md): flex_flash 1005 ms, sparse 1292 (fa4 inside), flex 1407; so plain flex is
# never chosen. Without libnatten, na3d falls back to its own flex backend over (t h w) order, which on
# CUDA was measured 4x slower than dense cuDNN and runs out of memory at 720p.
# "cudnn" / "cudnn_fp8": cuDNN frontend's block-sparse kernels, bf16 / Sage FP8 (cudnn_bsa.py; Hopper, block-
# aligned patterns only; bf16 is auto's second choice, above); with
# attention_backend "cudnn_fp8" (benchmarks only, engine/spec.py), "auto" also takes "cudnn_fp8" where it fits.
NATTEN_IMPLS = ("auto", "natten", "sparse", "flex", "flex_flash", "cudnn", "cudnn_fp8")
FLASH = {"BACKEND": "FLASH"}


def _resolve_impl(impl: str, device: torch.device) -> str:
    if impl != "auto":
        return impl
    try:
        import natten
    except ImportError:
        return "auto"
    return "natten" if (device.type == "cuda" and natten.HAS_LIBNATTEN) else "auto"


_FLASH_FAILED: list[str] = []  # why flex_flash failed once in this process; auto then stays on the gather path


def _flash_suits(q6, window, stride, dilation, dense_backend) -> bool:
    """Whether "auto" runs this layer as flex_flash: CUDA, flash-attn-4 usable (the dense kernel auto picks),
    the dense backend not forced to another kernel, no earlier failure, and the pattern block-aligned here
    (an unaligned one has partial blocks, measured only through Triton's flex)."""
    from engine.models.flex_natten import is_block_aligned

    # "natten" as the dense backend means auto for the dense layers (see `attention`)
    return (q6.is_cuda and not _FLASH_FAILED and dense_backend in ("auto", "natten", "fa4") and _fa4_preferred(q6.device)
            and is_block_aligned(tuple(q6.shape[1:4]), window, stride, dilation))


_CUDNN_FAILED: list[str] = []  # why cuDNN's block-sparse kernel failed once in this process


def _cudnn_suits(q6, window, stride, dilation, dense_backend) -> bool:
    """Whether "auto" runs this layer through cuDNN's bf16 block-sparse kernel when flex + fa4 does not: CUDA,
    bf16, nvidia-cudnn-frontend usable on this GPU (Hopper), the dense backend not forced to a kernel, no
    earlier failure, and the pattern whole 128-token blocks of one count per query block on this grid."""
    from engine.models import cudnn_bsa

    return (q6.is_cuda and not _CUDNN_FAILED and dense_backend in ("auto", "natten")
            and not cudnn_bsa.neighborhood_problem(q6, window, stride, dilation))


def _fell_back(failures: list, what: str, e: Exception) -> None:
    failures.append(f"{type(e).__name__}: {e}".splitlines()[0][:200])
    warnings.warn(f"NATTEN through {what} failed ({failures[0]}); not trying it again in this process",
                  RuntimeWarning, stacklevel=3)


# Out of the compiled blocks (as every path is): the alignment checks are cached host-side plan lookups.
@torch.compiler.disable
def _auto_neighborhood_attention(q6, k6, v6, window, stride, dilation, dense_backend):
    from engine.models.flex_natten import flex_neighborhood_attention
    from engine.models.sparse_attention import neighborhood_attention

    if _flash_suits(q6, window, stride, dilation, dense_backend):
        try:
            return flex_neighborhood_attention(q6, k6, v6, window, stride, dilation, kernel_options=FLASH)
        except Exception as e:  # a torch or flash-attn-4 version whose flex FLASH lowering refuses this
            _fell_back(_FLASH_FAILED, "flex + flash-attn-4", e)
    if _cudnn_suits(q6, window, stride, dilation, dense_backend):
        from engine.models import cudnn_bsa

        try:
            return cudnn_bsa.bsa_neighborhood_attention(q6, k6, v6, window, stride, dilation)
        except Exception as e:  # a frontend version or GPU whose kernel refuses these shapes
            _fell_back(_CUDNN_FAILED, "cuDNN's block-sparse kernel", e)
    return neighborhood_attention(q6, k6, v6, window, stride, dilation, backend=dense_backend)


@torch.compiler.disable
def _fp8_neighborhood(q6, k6, v6, window, stride, dilation):
    """attention_backend "cudnn_fp8" on a NATTEN layer: the FP8 block-sparse kernel's result, or None where
    the device, the inputs or the pattern do not fit it."""
    from engine.models import cudnn_bsa

    if cudnn_bsa.neighborhood_problem(q6, window, stride, dilation, fp8=True):
        return None
    return cudnn_bsa.bsa_neighborhood_attention(q6, k6, v6, window, stride, dilation, fp8=True)


def natten_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: Sequence[int],
    params: dict,
    impl: str = "auto",
    dense_backend: str = "auto",
) -> torch.Tensor:
    """Neighborhood self-attention on [B, L, N, D] tensors whose L is the (T, H, W) grid in (t h w) order.

    `grid` is the FULL token grid (under context parallelism: the global T after the all-to-all).
    With T == 1 (an image) this is dense attention, as in the reference.
    """
    T, H, W = (int(x) for x in grid)
    B, L, N, D = q.shape
    assert L == T * H * W, f"sequence length {L} != T*H*W = {T}*{H}*{W}"
    if T == 1:
        return attention(q, k, v, dense_backend)
    window, stride, dilation = adapt_natten_params(params, (T, H, W))
    if window == (T, H, W):
        # Window covers everything: plain dense attention, whatever the stride/dilation say.
        return attention(q, k, v, dense_backend)
    q6, k6, v6 = (t.reshape(B, T, H, W, N, D) for t in (q, k, v))
    if impl == "auto" and dense_backend == "cudnn_fp8":
        # asked-for FP8 first, before "auto" resolves to libnatten's na3d; where it does not fit, the usual
        # choice below, with the dense kernel "auto" (gathered windows are no whole blocks)
        out = _fp8_neighborhood(q6, k6, v6, window, stride, dilation)
        if out is not None:
            return out.reshape(B, L, N, D)
        dense_backend = "auto"
    impl = _resolve_impl(impl, q.device)
    if impl == "auto":
        out = _auto_neighborhood_attention(q6, k6, v6, window, stride, dilation, dense_backend)
    elif impl in ("cudnn", "cudnn_fp8"):
        from engine.models import cudnn_bsa

        why = cudnn_bsa.unusable(q.device)
        if why:
            raise RuntimeError(f"natten_impl {impl}: {why}; use auto")
        out = cudnn_bsa.bsa_neighborhood_attention(q6, k6, v6, window, stride, dilation, fp8=impl == "cudnn_fp8")
    elif impl == "sparse":
        from engine.models.sparse_attention import neighborhood_attention

        out = neighborhood_attention(q6, k6, v6, window, stride, dilation, backend=dense_backend)
    elif impl in ("flex", "flex_flash"):
        from engine.models.flex_natten import flex_neighborhood_attention

        if impl == "flex_flash" and not q.is_cuda:
            raise RuntimeError("natten_impl flex_flash runs on NVIDIA GPUs with flash-attn-4 only; use auto")

        out = flex_neighborhood_attention(q6, k6, v6, window, stride, dilation,
                                          kernel_options=FLASH if impl == "flex_flash" else None)
    elif impl == "natten":
        import natten

        out = natten.na3d(q6, k6, v6, kernel_size=window, stride=stride, dilation=dilation, is_causal=False)
    else:
        raise ValueError(f"NATTEN impl {impl!r} is unknown; use one of {', '.join(NATTEN_IMPLS)}")
    return out.reshape(B, L, N, D)

