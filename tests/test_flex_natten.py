"""FlexAttention neighborhood attention (engine/models/flex_natten.py) against natten.na3d, and its block
mask against the window definition (tests/test_natten.py's reference).

On the CPU flex_attention runs eager, and eager evaluates the mask function on every pair and ignores the
block structure; the GPU kernel does the opposite for full blocks (never calls the mask there). So the
numeric tests check the permutation and the mask function, and the block tests check, separately, that the
blocks the kernel would skip or take whole are exactly those the window definition says."""

import math
import sys

import pytest
import torch

from engine.models.attention import adapt_natten_params, natten_attention, natten_table
from engine.models.flex_natten import BLOCK, _plan, flex_neighborhood_attention, is_block_aligned
from tests.test_natten import CASES, axis_visible, qkv, reference_na, rel
from tests.tolerance import rms_rounding_bound

natten = pytest.importorskip("natten")

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile"),
    pytest.mark.filterwarnings("ignore:.*return_lse is deprecated"),
]

# Cosmos' aligned patterns (window, stride in H, W; T full) at the smallest grids that keep them aligned
# and sparse: each axis one stride longer than the window (two window positions), T = 4 so a 4x8 tile holds
# 128 tokens. local_l (28x56) needs 8192 tokens, whose eager [L, L] scores are too slow here; its
# alignment is checked at 720p below. global_w keeps its dilation 5 on W with a 16-column sub-grid.
ALIGNED = {
    "local_s": ((4, 16, 32), (4, 12, 24), (1, 4, 8), (1, 1, 1)),
    "local_m": ((4, 24, 48), (4, 20, 40), (1, 4, 8), (1, 1, 1)),
    "global_w": ((2, 16, 80), (2, 12, 16), (1, 4, 1), (1, 1, 5)),
    "global_hw": ((4, 8, 32), (4, 2, 16), (1, 1, 1), (1, 4, 2)),
}

# Our path and natten.na3d sum the same softmax-weighted values in other orders: three accumulating stages
# (q.k over D = 8, softmax sum and p.v over the visible keys: at most 4*20*40 = 3200 for local_m; natten's
# and flex's eager paths run the masked sum over all L keys, the masked ones adding exact zeros).
# tests/tolerance.py with K = 3200: 1e-4. A wrong window moves whole keys in or out (relative change
# ~1/window, >= 1e-3 here), and mutating the window start by one was checked to fail every case.
TOL = rms_rounding_bound(3200, 3)


def _natten(q, k, v, window, stride, dilation):
    return natten.na3d(q, k, v, kernel_size=window, stride=stride, dilation=dilation, is_causal=False)


@pytest.mark.parametrize("name", sorted(ALIGNED))
@torch.no_grad()
def test_aligned_cosmos_patterns_equal_na3d(name):
    grid, window, stride, dilation = ALIGNED[name]
    assert is_block_aligned(grid, window, stride, dilation)
    q, k, v = qkv((1, *grid, 1, 8), seed=len(name))
    ref = _natten(q, k, v, window, stride, dilation)
    dense = reference_na(q, k, v, grid, (1, 1, 1), (1, 1, 1))
    assert rel(dense, ref) > 0.05  # really sparse, so agreeing means something
    assert rel(flex_neighborhood_attention(q, k, v, window, stride, dilation), ref) < TOL


@pytest.mark.parametrize("grid,window,stride,dilation", CASES)
@torch.no_grad()
def test_unaligned_patterns_equal_na3d(grid, window, stride, dilation):
    """Odd windows, strides that do not divide the extent, uneven dilation: partial blocks, mask decides."""
    assert not is_block_aligned(grid, window, stride, dilation)
    q, k, v = qkv((2, *grid, 2, 8), seed=sum(grid) + sum(window))
    ref = _natten(q, k, v, window, stride, dilation)
    assert rel(flex_neighborhood_attention(q, k, v, window, stride, dilation), ref) < TOL


def _expanded(plan, L: int) -> torch.Tensor:
    """[L, L] bool in tile order: what the GPU kernel attends: full blocks whole, partial blocks through the
    mask function, nothing else."""
    bm = plan.block_mask
    nb = -(-L // BLOCK)
    pos = torch.arange(nb * BLOCK)
    elementwise = bm.mask_mod(0, 0, pos[:, None], pos[None, :])  # past L: padded tables, all False
    out = torch.zeros(nb * BLOCK, nb * BLOCK, dtype=torch.bool)
    for num, idx, full in ((bm.kv_num_blocks, bm.kv_indices, False), (bm.full_kv_num_blocks, bm.full_kv_indices, True)):
        for qb in range(nb):
            for kb in idx[0, 0, qb, : num[0, 0, qb]].tolist():
                rows, cols = slice(qb * BLOCK, (qb + 1) * BLOCK), slice(kb * BLOCK, (kb + 1) * BLOCK)
                assert not out[rows, cols].any(), "a block listed twice"
                out[rows, cols] = True if full else elementwise[rows, cols]
    assert not elementwise[L:].any() and not elementwise[:, L:].any()
    return out[:L, :L]


@pytest.mark.parametrize("grid,window,stride,dilation", list(ALIGNED.values()) + CASES)
def test_block_mask_is_the_window_definition(grid, window, stride, dilation):
    T, H, W = grid
    mt, mh, mw = (axis_visible(n, w, s, d) for n, w, s, d in zip(grid, window, stride, dilation))
    ref = (mt[:, None, None, :, None, None] & mh[None, :, None, None, :, None] & mw[None, None, :, None, None, :])
    ref = ref.reshape(T * H * W, T * H * W)
    plan = _plan(tuple(grid), window, stride, dilation, torch.device("cpu"))
    assert torch.equal(plan.perm[plan.inverse], torch.arange(T * H * W))
    assert torch.equal(_expanded(plan, T * H * W), ref[plan.perm][:, plan.perm])


def _table_patterns():
    grids = {"720p16": (24, 44, 80), "720p10": (16, 44, 80), "480p16": (24, 27, 48), "480p10": (16, 27, 48)}
    out = {}
    for size in ("2B", "14B"):
        for gname, grid in grids.items():
            for params in natten_table(size):
                if params is not None:
                    out.setdefault((gname, grid, adapt_natten_params(params, grid)), []).append(size)
    return sorted(out)


@pytest.mark.parametrize("gname,grid,pattern", _table_patterns())
def test_which_table_patterns_are_block_aligned(gname, grid, pattern):
    """Every 2B/14B pattern at 720p (16 and 10 fps) is block-aligned, none at 480p; and the full blocks
    count exactly the attended pairs, L x window volume (nothing dropped, nothing extra)."""
    window, stride, dilation = pattern
    plan = _plan(grid, window, stride, dilation, torch.device("cpu"))
    aligned = plan.partial_blocks == 0
    assert aligned == gname.startswith("720p")
    if aligned:
        assert plan.full_blocks * BLOCK * BLOCK == math.prod(grid) * math.prod(window)


@torch.no_grad()
def test_natten_attention_flex_impl():
    """natten_attention(impl="flex") on [B, L, N, D]: the Cosmos local_s pattern adapted to a small grid."""
    params = natten_table("2B")[3]
    grid = (2, 11, 20)
    window, stride, dilation = adapt_natten_params(params, grid)
    B, N, D = 2, 2, 8
    q, k, v = (x.reshape(B, -1, N, D) for x in qkv((B, *grid, N, D), seed=5))
    ref = natten_attention(q, k, v, grid, params, impl="natten")
    assert rel(natten_attention(q, k, v, grid, params, impl="flex"), ref) < TOL


@torch.no_grad()
def test_one_compiled_flex_graph_serves_every_pattern_of_a_grid():
    """The guards of the compiled flex call name no pattern: two aligned and one unaligned pattern at one
    grid run through one dynamo graph (backend "eager": same tracing and guards as inductor, no codegen)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    counters.clear()
    try:
        fn = torch.compile(flex_attention, backend="eager", dynamic=False)
        grid, L = (4, 16, 32), 4 * 16 * 32
        q, k, v = (x.reshape(1, L, 2, 8).transpose(1, 2) for x in qkv((1, *grid, 2, 8), seed=9))
        patterns = [((4, 12, 24), (1, 4, 8), (1, 1, 1)), ((4, 8, 16), (1, 4, 8), (1, 1, 1)),
                    ((4, 5, 7), (1, 2, 3), (1, 1, 1))]
        fn(q, k, v, block_mask=_plan(grid, *patterns[0], q.device).block_mask)
        assert counters["stats"]["unique_graphs"] == 1, "flex was not traced: the test would prove nothing"
        torch._dynamo.config.error_on_recompile = True  # a recompile now raises
        for p in patterns[1:]:
            fn(q, k, v, block_mask=_plan(grid, *p, q.device).block_mask)
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()


@torch.no_grad()
def test_compiled_blocks_reuse_one_compiled_flex(monkeypatch):
    """Under compile_blocks the block breaks its graph at the flex path (torch.compiler.disable) and the
    compiled flex callable inside runs as its own frame: one cache entry for the whole net, nothing
    recompiled on the next step. `_flex_call` is swapped for a backend-"eager" compile, which the CPU
    runs without a C++ build; dynamo's tracing and guards are the same as on CUDA."""
    from dataclasses import replace

    import torch._dynamo
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch.nn.attention.flex_attention import flex_attention

    from engine.models import flex_natten
    from engine.models.dit import MiniTrainDIT, dit_config
    from engine.pipeline import compile_blocks
    from tests.test_compile import _inputs

    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, backend="eager", dynamic=False)
    monkeypatch.setattr(flex_natten, "_flex_call", lambda device: compiled)
    try:
        cfg = replace(dit_config("tiny", natten=True), natten_impl="flex")
        m = MiniTrainDIT(cfg).random_init_(0).eval()
        eager = m(*_inputs()[:1], torch.full((2, 4), 0.5), *_inputs()[1:])
        compile_blocks(m.blocks, backend="eager")
        x, ctx, cond = _inputs()
        first = m(x, torch.full((2, 4), 0.5), ctx, cond)
        assert len(_debug_get_cache_entry_list(flex_attention.__code__)) == 1
        torch._dynamo.config.error_on_recompile = True  # a recompile now raises
        m(x * 0.9, torch.full((2, 4), 0.3), ctx, cond)
        assert len(_debug_get_cache_entry_list(flex_attention.__code__)) == 1
        # same ops in the same order, compiled or not (the eager backend generates no code)
        assert torch.equal(first, eager)
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()


# -- natten_impl="auto": flex through flash-attn-4 where it suits, else the gather path -----------------------
# The GPU kernels cannot run here, so the choice and the fallback are checked with the CUDA-only predicate
# (`_flash_suits`) or the kernel call replaced; what runs on the GPU then is the same flex call these tests
# check numerically above.

from types import SimpleNamespace  # noqa: E402

from engine.models import attention as attention_mod  # noqa: E402
from engine.models import flex_natten  # noqa: E402
from engine.models.sparse_attention import neighborhood_attention  # noqa: E402

LOCAL_S_PARAMS = {"window_size": (-1, 12, 24), "stride": (1, 4, 8), "dilation": 1}


def _local_s_inputs():
    grid = ALIGNED["local_s"][0]
    q, k, v = qkv((1, *grid, 1, 8), seed=3)
    return grid, [x.reshape(1, math.prod(grid), 1, 8) for x in (q, k, v)], (q, k, v)


@torch.no_grad()
def test_auto_runs_flex_with_the_flash_kernel_where_it_suits(monkeypatch):
    grid, (q, k, v), (q6, k6, v6) = _local_s_inputs()
    calls = []
    eager = flex_natten.flex_neighborhood_attention

    def recorder(*args, kernel_options=None):
        calls.append(kernel_options)
        return eager(*args)  # the eager flex result stands in for the GPU kernel's

    monkeypatch.setattr(attention_mod, "_FLASH_FAILED", [])
    monkeypatch.setattr(attention_mod, "_flash_suits", lambda *a: True)
    monkeypatch.setattr(flex_natten, "flex_neighborhood_attention", recorder)
    out = natten_attention(q, k, v, grid, LOCAL_S_PARAMS, impl="auto")
    assert calls == [{"BACKEND": "FLASH"}]
    assert torch.equal(out, eager(q6, k6, v6, (4, 12, 24), (1, 4, 8), (1, 1, 1)).reshape(out.shape))


@torch.no_grad()
def test_auto_falls_back_to_the_gather_path_once_flash_fails(monkeypatch):
    grid, (q, k, v), (q6, k6, v6) = _local_s_inputs()
    calls = []

    def broken(*args, kernel_options=None):
        calls.append(kernel_options)
        raise RuntimeError("this torch cannot lower flex to FLASH")

    monkeypatch.setattr(attention_mod, "_FLASH_FAILED", [])
    # the real predicate's memory of a failure, without its CUDA/fa4 conditions
    monkeypatch.setattr(attention_mod, "_flash_suits", lambda *a: not attention_mod._FLASH_FAILED)
    monkeypatch.setattr(flex_natten, "flex_neighborhood_attention", broken)
    gather = neighborhood_attention(q6, k6, v6, (4, 12, 24), (1, 4, 8), (1, 1, 1)).reshape(q.shape)
    with pytest.warns(RuntimeWarning, match="cannot lower flex to FLASH"):
        first = natten_attention(q, k, v, grid, LOCAL_S_PARAMS, impl="auto")
    second = natten_attention(q, k, v, grid, LOCAL_S_PARAMS, impl="auto")
    assert torch.equal(first, gather) and torch.equal(second, gather)
    assert len(calls) == 1  # not retried on every layer


def test_flash_suits_only_block_aligned_patterns_on_fa4(monkeypatch):
    monkeypatch.setattr(attention_mod, "_FLASH_FAILED", [])
    monkeypatch.setattr(attention_mod, "_fa4_preferred", lambda device: True)
    grid, window, stride, dilation = ALIGNED["local_s"]
    on_gpu = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), shape=(1, *grid, 1, 8))
    suits = attention_mod._flash_suits
    assert suits(on_gpu, window, stride, dilation, "auto")
    assert suits(on_gpu, window, stride, dilation, "fa4")
    assert suits(on_gpu, window, stride, dilation, "natten")  # attention_backend "natten": auto for dense layers
    assert not suits(on_gpu, window, stride, dilation, "cudnn")  # a forced dense kernel is respected
    unaligned = CASES[1]  # stride 3 on W does not divide the window starts into whole tiles
    assert not is_block_aligned(*unaligned)
    ragged = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), shape=(1, *unaligned[0], 1, 8))
    assert not suits(ragged, *unaligned[1:], "auto")
    on_cpu = SimpleNamespace(is_cuda=False, device=torch.device("cpu"), shape=on_gpu.shape)
    assert not suits(on_cpu, window, stride, dilation, "auto")
    monkeypatch.setattr(attention_mod, "_fa4_preferred", lambda device: False)
    assert not suits(on_gpu, window, stride, dilation, "auto")  # no flash-attn-4: the gather path
    monkeypatch.setattr(attention_mod, "_fa4_preferred", lambda device: True)
    monkeypatch.setattr(attention_mod, "_FLASH_FAILED", ["it failed before"])
    assert not suits(on_gpu, window, stride, dilation, "auto")


@torch.no_grad()
def test_auto_on_the_cpu_is_the_gather_path_bit_for_bit():
    grid, (q, k, v), (q6, k6, v6) = _local_s_inputs()
    gather = neighborhood_attention(q6, k6, v6, (4, 12, 24), (1, 4, 8), (1, 1, 1)).reshape(q.shape)
    assert torch.equal(natten_attention(q, k, v, grid, LOCAL_S_PARAMS, impl="auto"), gather)


def test_flex_flash_off_cuda_says_what_it_needs():
    grid, (q, k, v), _ = _local_s_inputs()
    with pytest.raises(RuntimeError, match="flash-attn-4 only; use auto"):
        natten_attention(q, k, v, grid, LOCAL_S_PARAMS, impl="flex_flash")


@pytest.mark.parametrize("user_value,expected", [(None, "1"), ("0", "0")])
def test_fa4_disk_cache_is_on_before_fa4_is_first_imported_unless_the_user_chose(tmp_path, monkeypatch,
                                                                                    user_value, expected):
    # a stand-in flash_attn.cute that records the variable as fa4's cache_utils reads it: at import time
    pkg = tmp_path / "flash_attn"
    (pkg / "cute").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cute" / "__init__.py").write_text(
        f"import os\nSEEN = os.environ.get({attention_mod.FA4_CACHE_ENV!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    if user_value is None:
        monkeypatch.delenv(attention_mod.FA4_CACHE_ENV, raising=False)
    else:
        monkeypatch.setenv(attention_mod.FA4_CACHE_ENV, user_value)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(attention_mod, "_FA4_OK", {})
    assert attention_mod._fa4_preferred(torch.device("cuda", 0))
    assert sys.modules["flash_attn.cute"].SEEN == expected
    for name in ("flash_attn", "flash_attn.cute"):  # the stand-in must not outlive the test
        sys.modules.pop(name, None)
