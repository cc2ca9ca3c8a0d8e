"""torch.compile of the DiT blocks: no recompiles after the first step, none per layer for layers that
share a pattern. Dynamo's `eager` backend runs the same tracing and guards as inductor without generating
code, so this runs on a CPU in seconds; what it checks (guards, graph breaks) is backend-independent."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.models.dit import MiniTrainDIT, dit_config
from engine.pipeline import compile_blocks


def _inputs(B=2, T=4, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 16, T, H, W, generator=g), torch.randn(B, 512, 32, generator=g),
            torch.zeros(B, 1, T, H, W))


@pytest.fixture
def dynamo_reset():
    import torch._dynamo

    torch._dynamo.reset()
    limit = torch._dynamo.config.recompile_limit
    yield torch._dynamo
    torch._dynamo.config.error_on_recompile = False
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.reset()


@pytest.mark.parametrize("natten,fp8_linears", [(False, False), (True, False), (True, True)])
@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@torch.no_grad()
def test_second_step_compiles_nothing(dynamo_reset, natten, fp8_linears):
    from torch._dynamo.utils import counters

    cfg = dit_config("tiny", natten=natten)
    if natten:
        cfg = replace(cfg, natten_impl="sparse")  # our gathered-window path, the GPU default without libnatten
    m = MiniTrainDIT(cfg).random_init_(0).eval()
    if fp8_linears:  # the experimental FP8 GEMMs, converted before compiling as the pipeline does
        from engine.models.fp8 import quantize_dit_

        quantize_dit_(m)
    compile_blocks(m.blocks, backend="eager")
    x, ctx, cond = _inputs()
    counters.clear()
    first = m(x, torch.full((2, 4), 0.5), ctx, cond)
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled: the test would prove nothing"
    # every frame dynamo started it could trace: the sparse window planning stays out of the graph
    # (traced, it failed on generators and recompiled _box_index per window start)
    assert not counters["unimplemented"], list(counters["unimplemented"])[:1]
    assert counters["frames"]["ok"] == counters["frames"]["total"]
    dynamo_reset.config.error_on_recompile = True  # a recompile now raises
    second = m(x * 0.9, torch.full((2, 4), 0.3), ctx, cond)
    assert torch.isfinite(second).all() and not torch.equal(first, second)


@torch.no_grad()
def test_compiled_blocks_compute_what_eager_does(dynamo_reset):
    """The graph break around the sparse path must not change a number: same ops, same order."""
    cfg = replace(dit_config("tiny", natten=True), natten_impl="sparse")
    eager = MiniTrainDIT(cfg).random_init_(0).eval()
    compiled = MiniTrainDIT(cfg).random_init_(0).eval()
    compile_blocks(compiled.blocks, backend="eager")
    x, ctx, cond = _inputs(seed=1)
    t = torch.full((2, 4), 0.4)
    assert torch.equal(compiled(x, t, ctx, cond), eager(x, t, ctx, cond))


@torch.no_grad()
def test_fa4_is_one_opaque_op_in_the_compiled_blocks(dynamo_reset, monkeypatch):
    """flash-attn-4 reaches the compiled blocks as a custom op: no graph break in a dense block, and the op's
    fake (the shapes and strides inductor plans with) agrees with what the kernel returns. flash-attn-4 does
    not run on a CPU, so its kernel is stood in by torch's SDPA, which computes the same function."""
    from torch._dynamo.utils import counters

    from engine.models import attention as A

    def sdpa_kernel(q, k, v):  # what fa4 computes, in its [B, L, N, D] layout
        # fa4's wrapper is host code dynamo cannot trace; so is this stand-in, should dynamo ever reach it
        torch._dynamo.graph_break()
        return A._sdpa(q, k, v)

    monkeypatch.setattr(A, "_fa4_kernel", sdpa_kernel)
    q, k, v = (torch.randn(2, 48, 4, 8) for _ in range(3))
    # fake vs real shapes/strides, schema, and dispatch through dynamo/AOT
    torch.library.opcheck(A.fa4_attention, (q, k[:, :20], v[:, :20]))

    cfg = replace(dit_config("tiny"), attention_backend="fa4")
    eager = MiniTrainDIT(cfg).random_init_(0).eval()
    compiled = MiniTrainDIT(cfg).random_init_(0).eval()
    compile_blocks(compiled.blocks, backend="aot_eager")  # aot_eager: runs the op's fake, as inductor would
    x, ctx, cond = _inputs(seed=2)
    t = torch.full((2, 4), 0.6)
    counters.clear()
    out = compiled(x, t, ctx, cond)
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled: the test would prove nothing"
    assert not counters["graph_break"], dict(counters["graph_break"])
    # aot_eager runs the same ops in the same order (no fusion): the same numbers
    torch.testing.assert_close(out, eager(x, t, ctx, cond), rtol=0, atol=0)
