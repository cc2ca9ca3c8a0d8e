"""cuDNN block-sparse attention adapter (engine/models/cudnn_bsa.py), on CPU against a stand-in kernel.

The real kernels run on Hopper only (bench/bench_attention.py --cudnn checks them against the gather path
there). What this file pins down is everything of ours around them: the tile-order permutation and the
key-block lists describe exactly the NATTEN pattern, the layouts each kernel reads (BSHD for bf16, contiguous
BHSD for FP8), the index's shape and dtype, which patterns and shapes go to the kernel and which fall back,
and the refusal at loading. The stand-in computes what the kernels' documented contract says: for each block
of 128 queries, softmax attention over the keys of the listed blocks, scale 1/sqrt(D).

Tolerances: the stand-in and the reference are two fp32 paths for the same maths that sum in different orders
(tile order vs (t h w) order, a block mask vs an element mask): tests.tolerance's rms bound with K the keys
seen and depth 2 (scores, then weights x values). The FP8 entry point's outputs are bf16: one more rounding,
2^-9 relative, bounded by 2^-8 max|ref| per element.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from engine.models import attention as attention_mod
from engine.models import cudnn_bsa
from tests.test_natten import reference_na
from tests.tolerance import rms_rounding_bound

GRID, WINDOW, STRIDE, DIL = (4, 16, 16), (4, 12, 8), (1, 4, 8), (1, 1, 1)  # block-aligned: 3 of 8 key blocks each
UNALIGNED = ((4, 16, 16), (4, 5, 8), (1, 1, 8), (1, 1, 1))  # tiles of 32 tokens: partial blocks


class FakeKernels:
    """cudnn.block_sparse_attention as its docstrings specify it, in plain torch; records each call."""

    def __init__(self):
        self.calls: list[dict] = []

    def _attend(self, q, k, v, index, count, n):  # BHSD in, BHSD out
        B, H, S, D = q.shape
        assert index.dtype == torch.int32 and index.is_contiguous()
        assert tuple(index.shape[:3]) == (B, H, S // n) and index.shape[-1] >= count
        blocks = torch.zeros(B, H, S // n, k.shape[2] // n, dtype=torch.bool)
        blocks.scatter_(-1, index[..., :count].long(), True)
        mask = blocks.repeat_interleave(n, -2).repeat_interleave(n, -1)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        return out.to(q.dtype)

    def block_sparse_attention_forward(self, q, k, v, q2k_block_index, block_sparse_num=None, block_sizes=None,
                                       q2k_block_nums=None, *, sparse_block_size=None, layout="bhsd", **kw):
        self.calls.append({"kind": "bf16", "layout": layout, "count": block_sparse_num, "block": sparse_block_size})
        assert block_sizes is None and q2k_block_nums is None and layout in ("bhsd", "bshd")
        assert all(t.stride(-1) == 1 for t in (q, k, v))
        if layout == "bshd":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = self._attend(q, k, v, q2k_block_index, block_sparse_num, sparse_block_size)
        return {"o_tensor": out.transpose(1, 2) if layout == "bshd" else out, "lse_tensor": None}

    def block_sparse_attention_fp8_forward(self, q, k, v, q2k_block_index, block_sparse_num=None, block_sizes=None,
                                           q2k_block_nums=None, *, softmax_scale=None, sparse_block_size=64, **kw):
        self.calls.append({"kind": "fp8", "count": block_sparse_num, "block": sparse_block_size})
        # the real wrapper's checks: rank-4 contiguous BHSD bf16 with D = 128
        assert all(t.is_contiguous() and t.dtype == torch.bfloat16 and t.shape[-1] == 128 for t in (q, k, v))
        assert softmax_scale is None and block_sizes is None and q2k_block_nums is None
        return {"o_tensor": self._attend(q, k, v, q2k_block_index, block_sparse_num, sparse_block_size)}


@pytest.fixture
def kernels(monkeypatch):
    fake = FakeKernels()
    pkg = types.ModuleType("cudnn")
    mod = types.ModuleType("cudnn.block_sparse_attention")
    mod.block_sparse_attention_forward = fake.block_sparse_attention_forward
    mod.block_sparse_attention_fp8_forward = fake.block_sparse_attention_fp8_forward
    pkg.block_sparse_attention = mod
    monkeypatch.setitem(sys.modules, "cudnn", pkg)
    monkeypatch.setitem(sys.modules, "cudnn.block_sparse_attention", mod)
    return fake


def qkv6(B=2, N=2, D=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, *GRID, N, D, generator=g).to(dtype) for _ in range(3)]


def max_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def test_which_patterns_fit_the_kernels():
    assert cudnn_bsa.plan_problem(GRID, WINDOW, STRIDE, DIL) == ""
    assert "partly visible" in cudnn_bsa.plan_problem(*UNALIGNED)
    assert "whole blocks" in cudnn_bsa.plan_problem((3, 7, 9), (2, 3, 5), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="not block-aligned.*use natten_impl auto"):
        cudnn_bsa.bsa_neighborhood_attention(*qkv6(), *UNALIGNED[1:])


def test_every_2b_pattern_at_720p_is_one_fixed_count_of_full_blocks():
    # what makes the SM90 FP8 kernel applicable at all (it takes fixed counts and full blocks only)
    seen = set()
    for params in attention_mod.natten_table("2B"):
        if params is None or str(params) in seen:
            continue
        seen.add(str(params))
        for T in (24, 16):  # 16 and 10 fps
            pattern = attention_mod.adapt_natten_params(params, (T, 44, 80))
            assert cudnn_bsa.plan_problem((T, 44, 80), *pattern) == "", (T, params)
    assert len(seen) == 5


def test_sparse_bf16_entry_equals_the_masked_reference(kernels):
    q, k, v = qkv6()
    out = cudnn_bsa.bsa_neighborhood_attention(q, k, v, WINDOW, STRIDE, DIL)
    ref = reference_na(q, k, v, WINDOW, STRIDE, DIL)
    keys = math.prod(WINDOW)
    assert float((out - ref).norm() / ref.norm()) <= rms_rounding_bound(keys, 2)
    assert kernels.calls == [{"kind": "bf16", "layout": "bshd", "count": 3, "block": 128}]
    # the test can fail: the key blocks of the query block before (a plan off by one block) change the result
    plan = cudnn_bsa._plan(GRID, WINDOW, STRIDE, DIL, torch.device("cpu"))
    shifted = cudnn_bsa.BsaPlan(plan.perm, plan.inverse, plan.index.roll(1, dims=2), plan.count)
    L = math.prod(GRID)
    qt, kt, vt = (x.reshape(2, L, 2, 16).index_select(1, plan.perm) for x in (q, k, v))
    wrong = cudnn_bsa._run(qt, kt, vt, shifted.index, shifted.count, fp8=False).index_select(1, plan.inverse)
    assert float((wrong.reshape(ref.shape) - ref).norm() / ref.norm()) > 100 * rms_rounding_bound(keys, 2)


def test_sparse_fp8_entry_hands_contiguous_bhsd_bf16_and_returns_the_pattern(kernels):
    q, k, v = qkv6(B=1, N=2, D=128, dtype=torch.bfloat16, seed=1)
    out = cudnn_bsa.bsa_neighborhood_attention(q, k, v, WINDOW, STRIDE, DIL, fp8=True)
    ref = reference_na(q.float(), k.float(), v.float(), WINDOW, STRIDE, DIL)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert max_err(out, ref) <= 2.0**-8 * float(ref.abs().max()) + rms_rounding_bound(math.prod(WINDOW), 2)
    assert kernels.calls == [{"kind": "fp8", "count": 3, "block": 128}]


def test_dense_fp8_is_every_key_block(kernels):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 256, 2, 128, generator=g).to(torch.bfloat16) for _ in range(3))
    out = cudnn_bsa.fp8_dense_attention(q, k, v)
    ref = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert max_err(out, ref) <= 2.0**-8 * float(ref.abs().max()) + rms_rounding_bound(256, 2)
    assert kernels.calls == [{"kind": "fp8", "count": 2, "block": 128}]
    with pytest.raises(ValueError, match="whole blocks of 128"):
        cudnn_bsa.fp8_dense_attention(q[:, :200], k[:, :200], v[:, :200])


def test_fp8_backend_takes_self_attention_shapes_only_and_falls_back_for_the_rest(kernels, monkeypatch):
    monkeypatch.setattr(cudnn_bsa, "unusable", lambda device: "")  # as on a Hopper GPU with the package
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 256, 2, 128, generator=g).to(torch.bfloat16) for _ in range(3))
    attention_mod.attention(q, k, v, "cudnn_fp8")
    assert [c["kind"] for c in kernels.calls] == ["fp8"]
    # cross-attention (512 text tokens against 256 queries) and fp32 inputs go to "auto", same numbers as it
    ctx_k, ctx_v = (torch.randn(1, 512, 2, 128, generator=g).to(torch.bfloat16) for _ in range(2))
    assert torch.equal(attention_mod.attention(q, ctx_k, ctx_v, "cudnn_fp8"), attention_mod.attention(q, ctx_k, ctx_v, "auto"))
    qf = q.float()
    assert torch.equal(attention_mod.attention(qf, qf, qf, "cudnn_fp8"), attention_mod.attention(qf, qf, qf, "auto"))
    assert len(kernels.calls) == 1


def test_natten_layers_under_the_fp8_backend(kernels, monkeypatch):
    monkeypatch.setattr(cudnn_bsa, "unusable", lambda device: "")
    params = {"window_size": WINDOW, "stride": STRIDE, "dilation": DIL}
    q, k, v = (t.reshape(1, -1, 2, 128) for t in qkv6(B=1, N=2, D=128, dtype=torch.bfloat16, seed=4))
    attention_mod.natten_attention(q, k, v, GRID, params, dense_backend="cudnn_fp8")
    assert [c["kind"] for c in kernels.calls] == ["fp8"]
    # a pattern the kernel cannot take runs the usual auto path (here: the gather path) with no FP8 call
    unaligned = {"window_size": UNALIGNED[1], "stride": UNALIGNED[2], "dilation": UNALIGNED[3]}
    qf, kf, vf = (t.float() for t in (q, k, v))
    got = attention_mod.natten_attention(qf, kf, vf, GRID, unaligned, dense_backend="cudnn_fp8")
    ref = reference_na(*(t.reshape(1, *GRID, 2, 128) for t in (qf, kf, vf)), *UNALIGNED[1:]).reshape(got.shape)
    assert float((got - ref).norm() / ref.norm()) <= rms_rounding_bound(math.prod(UNALIGNED[1]), 2)
    assert len(kernels.calls) == 1


def test_natten_impl_by_name_needs_a_usable_device():
    params = {"window_size": WINDOW, "stride": STRIDE, "dilation": DIL}
    q, k, v = (t.reshape(2, -1, 2, 16) for t in qkv6())
    with pytest.raises(RuntimeError, match="natten_impl cudnn: cuDNN block-sparse attention runs on NVIDIA GPUs only"):
        attention_mod.natten_attention(q, k, v, GRID, params, impl="cudnn")


def test_a_spec_cannot_ask_for_the_disabled_fp8_attention(monkeypatch):
    """Disabled after its first GPU run (bench/RESULTS.md 2026-12-07): refused when submitted, naming the field,
    the reason and the way back; only a benchmark's environment variable lets it through."""
    from engine.spec import UNSAFE_FP8_ATTENTION_ENV, GenerationSpec, SpecError, spec_from_dict

    monkeypatch.delenv(UNSAFE_FP8_ATTENTION_ENV, raising=False)
    with pytest.raises(SpecError, match=r"attention_backend: .*cudnn_fp8 is disabled.*drifted.*use auto"):
        spec_from_dict({"model_size": "tiny", "attention_backend": "cudnn_fp8"})
    assert GenerationSpec(model_size="tiny", attention_backend="cudnn").attention_backend == "cudnn"
    monkeypatch.setenv(UNSAFE_FP8_ATTENTION_ENV, "1")
    assert GenerationSpec(model_size="tiny", attention_backend="cudnn_fp8").attention_backend == "cudnn_fp8"


def test_menus_and_help_do_not_offer_it_and_the_cli_says_why(monkeypatch, capsys):
    from cosmos_tui.screens.preset_editor import field_kind
    from engine import cli_args
    from engine.spec import UNSAFE_FP8_ATTENTION_ENV

    monkeypatch.delenv(UNSAFE_FP8_ATTENTION_ENV, raising=False)
    kind, choices = field_kind("attention_backend")
    assert kind == "choice" and "cudnn_fp8" not in choices and {"auto", "cudnn", "fa4"} <= set(choices)
    assert "{auto,sdpa,cudnn,flash,math,fa4,natten}" in cli_args.build_parser().format_help()
    assert cli_args.main("video2world", ["--attention_backend", "cudnn_fp8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "attention_backend" in err[0] and "disabled" in err[0] and "use auto" in err[0], err


def test_loading_refuses_the_fp8_backend_where_it_cannot_run(monkeypatch):
    from engine.pipeline import Video2WorldPipeline
    from engine.spec import UNSAFE_FP8_ATTENTION_ENV, GenerationSpec

    monkeypatch.setenv(UNSAFE_FP8_ATTENTION_ENV, "1")
    pipe = Video2WorldPipeline(GenerationSpec(model_size="tiny", attention_backend="cudnn_fp8"), device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"attention_backend: cudnn_fp8 \(experimental\): .*NVIDIA GPUs only; use auto"):
        pipe.load()
    assert pipe.dit is None  # refused before any weights were built


def test_auto_takes_the_bf16_kernel_where_flex_flash_does_not_and_the_pattern_fits(kernels, monkeypatch):
    """natten_impl auto on Hopper without flash-attn-4 (or with its flex lowering failed): cuDNN's block-sparse
    kernel for a pattern of whole blocks, the gather path for the rest; a kernel that fails once is not
    retried, with one warning."""
    monkeypatch.setattr(attention_mod, "_flash_suits", lambda *a: False)
    monkeypatch.setattr(attention_mod, "_CUDNN_FAILED", [])
    # the real predicate's pattern check and failure memory, without its CUDA/bf16/device conditions
    monkeypatch.setattr(attention_mod, "_cudnn_suits", lambda q6, w, s, d, b: not attention_mod._CUDNN_FAILED
                        and not cudnn_bsa.plan_problem(tuple(q6.shape[1:4]), w, s, d))
    q, k, v = (t.reshape(2, -1, 2, 16) for t in qkv6())
    params = {"window_size": WINDOW, "stride": STRIDE, "dilation": DIL}
    out = attention_mod.natten_attention(q, k, v, GRID, params)
    ref = reference_na(*(t.reshape(2, *GRID, 2, 16) for t in (q, k, v)), WINDOW, STRIDE, DIL).reshape(q.shape)
    assert float((out - ref).norm() / ref.norm()) <= rms_rounding_bound(math.prod(WINDOW), 2)
    assert kernels.calls == [{"kind": "bf16", "layout": "bshd", "count": 3, "block": 128}]
    unaligned = {"window_size": UNALIGNED[1], "stride": UNALIGNED[2], "dilation": UNALIGNED[3]}
    attention_mod.natten_attention(q, k, v, GRID, unaligned)
    assert len(kernels.calls) == 1  # partial blocks: the gather path

    def broken(*a, **kw):
        kernels.calls.append({"kind": "broken"})
        raise RuntimeError("this frontend refuses the shapes")

    monkeypatch.setattr(sys.modules["cudnn.block_sparse_attention"], "block_sparse_attention_forward", broken)
    with pytest.warns(RuntimeWarning, match="cuDNN's block-sparse kernel failed .*refuses the shapes"):
        first = attention_mod.natten_attention(q, k, v, GRID, params)
    second = attention_mod.natten_attention(q, k, v, GRID, params)
    assert torch.equal(first, second) and float((first - ref).norm() / ref.norm()) <= rms_rounding_bound(
        math.prod(WINDOW), 2)
    assert len(kernels.calls) == 2  # tried once, then the gather path


def test_cudnn_suits_only_bf16_hopper_patterns_of_whole_blocks(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(attention_mod, "_CUDNN_FAILED", [])
    monkeypatch.setattr(cudnn_bsa, "unusable", lambda device: "")
    suits = attention_mod._cudnn_suits

    def layer(grid=GRID, dtype=torch.bfloat16, cuda=True, D=128):
        return SimpleNamespace(is_cuda=cuda, device=torch.device("cuda", 0), dtype=dtype, shape=(1, *grid, 2, D))

    assert suits(layer(), WINDOW, STRIDE, DIL, "auto") and suits(layer(), WINDOW, STRIDE, DIL, "natten")
    assert not suits(layer(), WINDOW, STRIDE, DIL, "cudnn")  # a forced dense kernel is respected
    assert not suits(layer(dtype=torch.float32), WINDOW, STRIDE, DIL, "auto")
    assert not suits(layer(D=80), WINDOW, STRIDE, DIL, "auto")
    assert not suits(layer(cuda=False), WINDOW, STRIDE, DIL, "auto")
    assert not suits(layer(UNALIGNED[0]), *UNALIGNED[1:], "auto")
    monkeypatch.setattr(cudnn_bsa, "unusable", lambda device: "not Hopper")
    assert not suits(layer(), WINDOW, STRIDE, DIL, "auto")
    monkeypatch.setattr(cudnn_bsa, "unusable", lambda device: "")
    monkeypatch.setattr(attention_mod, "_CUDNN_FAILED", ["it failed before"])
    assert not suits(layer(), WINDOW, STRIDE, DIL, "auto")
