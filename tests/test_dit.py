"""MiniTrainDIT structure (names/shapes/counts of the released checkpoints), loading rules, tiny forward."""

import pytest
import torch

from engine.models.dit import MiniTrainDIT, dit_config, load_dit_weights
from tests.tolerance import TINY_DIT_DEPTH, TINY_DIT_K, assert_rounding_close, rel_err, rounding_bound


def expected_keys(D: int, blocks: int, ctx: int = 1024, r: int = 256, dh: int = 128) -> dict:
    """The checkpoint key table of the spec (cosmos_predict2.md Part 1 §3), written out independently."""
    keys = {
        "x_embedder.proj.1.weight": (D, 72),
        "t_embedder.1.linear_1.weight": (D, D),
        "t_embedder.1.linear_2.weight": (3 * D, D),
        "final_layer.adaln_modulation.1.weight": (r, D),
        "final_layer.adaln_modulation.2.weight": (2 * D, r),
        "final_layer.linear.weight": (64, D),
        "t_embedding_norm.weight": (D,),
    }
    for i in range(blocks):
        b = f"blocks.{i}."
        for att, kv_in in (("self_attn", D), ("cross_attn", ctx)):
            keys[b + att + ".q_proj.weight"] = (D, D)
            keys[b + att + ".q_norm.weight"] = (dh,)
            keys[b + att + ".k_proj.weight"] = (D, kv_in)
            keys[b + att + ".k_norm.weight"] = (dh,)
            keys[b + att + ".v_proj.weight"] = (D, kv_in)
            keys[b + att + ".output_proj.weight"] = (D, D)
        keys[b + "mlp.layer1.weight"] = (4 * D, D)
        keys[b + "mlp.layer2.weight"] = (D, 4 * D)
        for mod in ("self_attn", "cross_attn", "mlp"):
            keys[b + f"adaln_modulation_{mod}.1.weight"] = (r, D)
            keys[b + f"adaln_modulation_{mod}.2.weight"] = (3 * D, r)
    return keys


@pytest.mark.parametrize(
    "size,D,blocks,n_params,n_tensors",
    [("2B", 2048, 28, 1_956_413_440, 567), ("14B", 5120, 36, 14_265_285_632, 727)],
)
def test_released_sizes_names_shapes_counts(size, D, blocks, n_params, n_tensors):
    with torch.device("meta"):
        model = MiniTrainDIT(dit_config(size))
    sd = model.state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert got == expected_keys(D, blocks)
    assert len(sd) == n_tensors
    assert sum(p.numel() for p in model.parameters()) == n_params
    # no buffers: the RoPE table is recomputed, so nothing but weights is saved
    assert len(list(model.buffers())) == 0


def test_natten_tables_have_one_entry_per_block():
    c2 = dit_config("2B", natten=True)
    c14 = dit_config("14B", natten=True)
    assert len(c2.natten_parameters) == 28 and all(p is not None for p in c2.natten_parameters)
    assert len(c14.natten_parameters) == 36
    assert [i for i, p in enumerate(c14.natten_parameters) if p is None] == [27]
    assert dit_config("2B").natten_parameters is None
    # spot checks against the spec's table
    assert c2.natten_parameters[23]["window_size"] == (-1, 28, 56)
    assert c2.natten_parameters[0]["dilation"] == (1, 11, 5)
    assert c14.natten_parameters[12]["stride"] == (1, 4, 1)
    assert c14.natten_parameters[34]["window_size"] == (-1, 28, 56)


def tiny_model(seed=0, **kw):
    return MiniTrainDIT(dit_config("tiny", **kw)).random_init_(seed).eval()


def test_random_init_is_seeded_and_not_zero():
    a, b, c = tiny_model(3), tiny_model(3), tiny_model(4)
    for (k, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), k
        assert not torch.equal(pa, pc), k
    # AdaLN output layers are not zero-initialised
    assert a.blocks[0].adaln_modulation_mlp[2].weight.abs().mean() > 0.01
    assert a.final_layer.adaln_modulation[2].weight.abs().mean() > 0.01


def _copy(sd):
    return {k: v.clone() for k, v in sd.items()}


def test_load_skips_only_named_extras_and_is_strict_otherwise():
    src = tiny_model(1)
    dst = MiniTrainDIT(dit_config("tiny"))
    sd = _copy(src.state_dict())
    sd["accum_iteration"] = torch.tensor(5)
    sd["pos_embedder.seq"] = torch.arange(128)
    sd["blocks.0.self_attn.q_proj._extra_state"] = torch.tensor([])
    load_dit_weights(dst, sd)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)

    missing = dict(sd)
    del missing["blocks.1.mlp.layer2.weight"]
    with pytest.raises(ValueError, match=r"missing keys: blocks\.1\.mlp\.layer2\.weight"):
        load_dit_weights(dst, missing)

    extra = dict(sd, **{"logvar.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys: logvar\.0\.weight"):
        load_dit_weights(dst, extra)

    wrong = dict(sd)
    wrong["x_embedder.proj.1.weight"] = torch.zeros(64, 68)  # a 17-channel (text2image-like) patch embed
    with pytest.raises(ValueError, match=r"shape mismatch: x_embedder\.proj\.1\.weight"):
        load_dit_weights(dst, wrong)


def test_load_into_meta_model_assigns():
    src = tiny_model(2)
    with torch.device("meta"):
        dst = MiniTrainDIT(dit_config("tiny"))
    load_dit_weights(dst, src.state_dict())
    assert not any(p.is_meta for p in dst.parameters())
    assert torch.equal(dst.final_layer.linear.weight, src.final_layer.linear.weight)


def inputs(B=2, T=3, H=8, W=10, S=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 16, T, H, W, generator=g)
    t = torch.rand(B, T, generator=g)
    t[:, 0] = 1e-4
    ctx = torch.randn(B, S, 32, generator=g)
    cond = torch.zeros(B, 1, T, H, W)
    cond[:, :, 0] = 1
    return x, t, ctx, cond


@torch.no_grad()
def test_tiny_forward_shape_and_dependence_on_inputs():
    m = tiny_model()
    x, t, ctx, cond = inputs()
    y = m(x, t, ctx, cond)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    # every input matters
    # every input matters: a real dependence moves the output by 1e-2..1, far past allclose's 1e-5 rtol
    assert not torch.allclose(m(x, t * 0.5, ctx, cond), y)
    assert not torch.allclose(m(x, t, ctx + 1, cond), y)
    assert not torch.allclose(m(x, t, ctx, torch.zeros_like(cond)), y)
    assert not torch.allclose(m(x, t, ctx, cond, padding_mask=torch.ones(1, 1, 64, 80)), y)
    # fps is unused by the released nets
    assert torch.equal(m(x, t, ctx, cond, fps=10), y)
    # a [B] timestep equals the same value repeated per frame
    t1 = torch.tensor([0.3, 0.7])
    # exact: the model expands a [B] timestep to [B, T] before any arithmetic, so both take one path
    assert torch.equal(m(x, t1, ctx, cond), m(x, t1[:, None].expand(2, 3), ctx, cond))


@torch.no_grad()
def test_batch_of_two_equals_two_single_calls():
    """CFG runs cond/uncond as one batch with different contexts and per-sample timesteps."""
    m = tiny_model(5)
    x, t, ctx, cond = inputs(seed=1)
    pad = torch.zeros(1, 1, 64, 80)
    y = m(x, t, ctx, cond, padding_mask=pad)
    for i in range(2):
        yi = m(x[i : i + 1], t[i : i + 1], ctx[i : i + 1], cond[i : i + 1], padding_mask=pad)
        # batch 2 and batch 1 run other GEMM kernels (blocking, vector width): equal up to rounding
        assert_rounding_close(yi, y[i : i + 1], k=TINY_DIT_K, depth=TINY_DIT_DEPTH)
    # and a batch-1 padding mask broadcasts like an explicit per-sample one
    torch.testing.assert_close(m(x, t, ctx, cond, padding_mask=pad.expand(2, 1, 64, 80)), y, rtol=0, atol=0)
    # padding_mask None means zeros
    torch.testing.assert_close(m(x, t, ctx, cond), y, rtol=0, atol=0)


@torch.no_grad()
def test_rope_offset_equals_slice_of_global_table():
    """Context parallelism: a rank's frames get their global positions."""
    m = tiny_model()
    cos_g, sin_g = m.rope.cos_sin(6, 4, 5, "cpu")
    cos_l, sin_l = m.rope.cos_sin(2, 4, 5, "cpu", t_offset=4)
    L = 2 * 4 * 5
    assert torch.equal(cos_l, cos_g[4 * 20 : 4 * 20 + L]) and torch.equal(sin_l, sin_g[4 * 20 : 4 * 20 + L])
    # head dim 32: t gets 12 channels, h and w 10 each; position (0,0,0) has angle 0
    assert cos_g.shape == (6 * 20, 32) and torch.all(cos_g[0] == 1)


@torch.no_grad()
@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_natten_tiny_runs_and_differs_from_dense_but_not_on_images():
    dense, sparse = tiny_model(6), tiny_model(6, natten=True)
    x, t, ctx, cond = inputs(B=1, T=2, H=16, W=16)
    yd, ys = dense(x, t, ctx, cond), sparse(x, t, ctx, cond)
    # a real difference, not rounding: far above what two code paths could differ by
    assert ys.shape == yd.shape and rel_err(ys, yd) > 100 * rounding_bound(TINY_DIT_K, TINY_DIT_DEPTH)
    # T == 1 falls back to dense self-attention
    x1, t1, ctx1, cond1 = inputs(B=1, T=1, H=16, W=16)
    torch.testing.assert_close(sparse(x1, t1, ctx1, cond1), dense(x1, t1, ctx1, cond1), rtol=0, atol=0)


def test_bf16_forward_runs():
    m = tiny_model().to(torch.bfloat16)
    x, t, ctx, cond = inputs()
    with torch.no_grad():
        y = m(x.bfloat16(), t, ctx, cond)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.filterwarnings("ignore:.*return_lse is deprecated")
@torch.no_grad()
@pytest.mark.parametrize("impl", ["sparse", "flex"])
def test_natten_impls_agree_through_the_network(impl):
    """Our gather path and our flex path (tile order; the tiny profile's unaligned 4x4 window at stride 2
    gives it partial blocks) each give natten.na3d's network output (tiny natten profile)."""
    from dataclasses import replace

    cfg = dit_config("tiny", natten=True)
    ours = MiniTrainDIT(replace(cfg, natten_impl=impl)).random_init_(8).eval()
    theirs = MiniTrainDIT(replace(cfg, natten_impl="natten")).random_init_(8).eval()
    x, t, ctx, cond = inputs(B=2, T=2, H=16, W=16)
    # two attention implementations (gathered windows + SDPA vs natten's flex path): rounding apart
    assert_rounding_close(ours(x, t, ctx, cond), theirs(x, t, ctx, cond), k=TINY_DIT_K, depth=TINY_DIT_DEPTH)


@torch.no_grad()
def test_dense_attention_backends_agree_with_softmax():
    from engine.models.attention import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 10, 3, 8, generator=g) for _ in range(3))
    k = k[:, :7]
    v = v[:, :7]
    w = torch.softmax(torch.einsum("blnd,bsnd->bnls", q, k) / 8**0.5, dim=-1)
    ref = torch.einsum("bnls,bsnd->blnd", w, v)
    for backend in ("auto", "sdpa", "math", "natten"):
        # three accumulations (q.k, softmax sum, p.v) of length <= 8, another order per backend
        assert_rounding_close(attention(q, k, v, backend), ref, k=8, depth=3)
    with pytest.raises(ValueError, match="unknown"):
        attention(q, k, v, "fa9")
