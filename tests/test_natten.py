"""NATTEN path: parameter adaptation rule, natten.na3d (flex backend, CPU, fp32) vs a dense masked-attention
reference built from the window definition, and our own sparse path (engine/models/sparse_attention.py)."""

import pytest
import torch
import torch.nn.functional as F

from engine.models.attention import BASE_SIZE_720P, adapt_natten_params, attention, natten_attention, natten_table
from engine.models.sparse_attention import neighborhood_attention
from tests.tolerance import rms_rounding_bound

# natten, our gathered-window path and the masked dense reference sum the same softmax-weighted values in
# other orders: three accumulating stages (q.k, softmax sum, p.v) over at most 4*8*12 = 384 keys
# (the dense reference; masked keys add exact zeros). tests/tolerance.py: 3.5e-5.
TOL = rms_rounding_bound(384, 3)

natten = pytest.importorskip("natten")

# natten's flex backend runs eager (unfused) on CPU and says so on every first call; that is what we want here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile"),
    pytest.mark.filterwarnings("ignore:.*return_lse is deprecated"),
]


# ---------------------------------------------------------------------------------------------- reference


def axis_visible(n: int, w: int, s: int, d: int) -> torch.Tensor:
    """[n, n] bool: may query i see key j along one axis. Written from the definition, loop by loop:
    dilation d splits the axis into d interleaved sub-grids (index mod d) that never see each other;
    inside a sub-grid (coordinate index // d, length m) queries are grouped in stride tiles of s that
    share one window of w keys, centred on the tile's middle query (the right one of two for even s,
    the last one for a clipped tile), shifted to stay inside the sub-grid; an even window reaches one
    further left than right."""
    vis = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        g, qi = i % d, i // d
        m = len(range(g, n, d))
        leader = min((qi // s) * s + s // 2, m - 1)
        left, right = w // 2, w - 1 - w // 2
        centre = min(max(leader, left), m - 1 - right)
        for j in range(g, n, d):
            if centre - left <= j // d <= centre + right:
                vis[i, j] = True
    return vis


def reference_na(q, k, v, window, stride, dilation):
    """Dense attention over [B,T,H,W,N,D] with the neighborhood mask (AND of the three axes)."""
    B, T, H, W, N, D = q.shape
    mt, mh, mw = (axis_visible(n, w, s, d) for n, w, s, d in zip((T, H, W), window, stride, dilation))
    mask = (mt[:, None, None, :, None, None] & mh[None, :, None, None, :, None] & mw[None, None, :, None, None, :])
    mask = mask.reshape(T * H * W, T * H * W)
    flat = [x.reshape(B, T * H * W, N, D).transpose(1, 2) for x in (q, k, v)]
    out = F.scaled_dot_product_attention(*flat, attn_mask=mask)
    return out.transpose(1, 2).reshape(B, T, H, W, N, D)


def qkv(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(3)]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# Tiny grids covering odd/even windows, strides that do and do not divide the extent, dilations that do and
# do not divide it, and combinations; every case is genuinely sparse.
CASES = [
    # grid (T,H,W), window, stride, dilation
    ((3, 7, 9), (2, 3, 5), (1, 1, 1), (1, 1, 1)),
    ((3, 8, 12), (3, 4, 4), (1, 2, 3), (1, 1, 1)),
    ((2, 9, 10), (2, 4, 6), (1, 3, 4), (1, 1, 1)),
    ((3, 7, 10), (2, 2, 3), (1, 1, 1), (1, 2, 3)),
    ((4, 8, 12), (4, 2, 4), (1, 2, 2), (1, 2, 3)),
    ((2, 12, 10), (2, 3, 2), (1, 1, 1), (1, 4, 5)),
]


@pytest.mark.parametrize("grid,window,stride,dilation", CASES)
@torch.no_grad()
def test_natten_and_sparse_path_equal_masked_reference(grid, window, stride, dilation):
    B, N, D = 1, 2, 8
    q, k, v = qkv((B, *grid, N, D), seed=sum(grid) + sum(window))
    ref = reference_na(q, k, v, window, stride, dilation)
    dense = reference_na(q, k, v, grid, (1, 1, 1), (1, 1, 1))
    assert rel(dense, ref) > 0.05  # the pattern really is sparse, so agreeing with it means something

    nat = natten.na3d(q, k, v, kernel_size=window, stride=stride, dilation=dilation, is_causal=False)
    assert rel(nat, ref) < TOL

    ours = neighborhood_attention(q, k, v, window, stride, dilation, backend="math")
    assert rel(ours, ref) < TOL
    # chunking over tiles must not change anything
    tiny_chunks = neighborhood_attention(q, k, v, window, stride, dilation, backend="math", max_gather=1)
    assert rel(tiny_chunks, ref) < TOL


def test_reference_groups_queries_by_stride():
    """GNA: queries in one stride tile share their window exactly; neighbouring tiles do not."""
    vis = axis_visible(12, 4, 4, 1)
    assert torch.equal(vis[4], vis[5]) and torch.equal(vis[4], vis[7])
    assert not torch.equal(vis[3], vis[4])
    assert vis.sum(1).eq(4).all()
    # even window: one more key to the left than to the right of the centre
    assert vis[6].nonzero().flatten().tolist() == [4, 5, 6, 7]  # tile 4..7, leader 6, centre 6
    # dilation: only keys of the same residue class
    vis_d = axis_visible(10, 3, 1, 2)
    assert vis_d[3].nonzero().flatten().tolist() == [1, 3, 5]


@torch.no_grad()
def test_natten_attention_adapts_and_matches_reference():
    """The full natten_attention path on [B, L, N, D]: Cosmos pattern scaled from base (44, 80) to a tiny grid."""
    params = {"window_size": (-1, 12, 24), "stride": (1, 4, 8), "dilation": 1, "base_size": BASE_SIZE_720P}
    grid = (2, 11, 20)
    window, stride, dilation = adapt_natten_params(params, grid)
    assert (window, stride, dilation) == ((2, 3, 6), (1, 1, 2), (1, 1, 1))
    B, N, D = 2, 2, 8
    q, k, v = qkv((B, *grid, N, D), seed=3)
    ref = reference_na(q, k, v, window, stride, dilation).reshape(B, -1, N, D)
    flat = [x.reshape(B, -1, N, D) for x in (q, k, v)]
    assert rel(natten_attention(*flat, grid, params, impl="natten"), ref) < TOL
    assert rel(natten_attention(*flat, grid, params, impl="sparse", dense_backend="math"), ref) < TOL


@torch.no_grad()
def test_single_frame_falls_back_to_dense():
    params = natten_table("2B")[3]
    B, N, D, grid = 1, 2, 8, (1, 8, 10)
    q, k, v = (x.reshape(B, -1, N, D) for x in qkv((B, *grid, N, D), seed=4))
    torch.testing.assert_close(natten_attention(q, k, v, grid, params), attention(q, k, v), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ adaptation rule

PATTERNS_720 = {
    "global_hw": ((-1, 4, 16), 1, (1, 11, 5)),
    "global_w": ((-1, 12, 16), (1, 4, 1), (1, 1, 5)),
    "local_s": ((-1, 12, 24), (1, 4, 8), 1),
    "local_m": ((-1, 20, 40), (1, 4, 8), 1),
    "local_l": ((-1, 28, 56), (1, 4, 8), 1),
}

# cosmos_predict2.md Part 1 §5.2, "what the scaling rule would produce at 480p 16:9 (grid 27x48)"
EXPECTED_480 = {
    "global_hw": ((24, 2, 10), (1, 1, 1), (1, 7, 3)),
    "global_w": ((24, 7, 10), (1, 2, 1), (1, 1, 3)),
    "local_s": ((24, 7, 14), (1, 2, 5), (1, 1, 1)),
    "local_m": ((24, 12, 24), (1, 2, 5), (1, 1, 1)),
    "local_l": ((24, 17, 34), (1, 2, 5), (1, 1, 1)),
}


def _params(name):
    w, s, d = PATTERNS_720[name]
    return {"window_size": w, "stride": s, "dilation": d, "base_size": (-1, 44, 80)}


@pytest.mark.parametrize("name", sorted(PATTERNS_720))
def test_adaptation_480p_table(name):
    assert adapt_natten_params(_params(name), (24, 27, 48)) == EXPECTED_480[name]


@pytest.mark.parametrize("name", sorted(PATTERNS_720))
@pytest.mark.parametrize("T", [24, 16])
def test_adaptation_is_identity_at_720p_except_full_T(name, T):
    w, s, d = PATTERNS_720[name]
    window, stride, dilation = adapt_natten_params(_params(name), (T, 44, 80))
    assert window == (T, w[1], w[2])
    assert stride == ((s,) * 3 if isinstance(s, int) else s)
    assert dilation == ((d,) * 3 if isinstance(d, int) else d)


def test_adaptation_without_base_and_asserts():
    # window entries <= 1 mean the whole axis, also without a base size
    assert adapt_natten_params({"window_size": (1, -1, 3)}, (5, 6, 7)) == ((5, 6, 3), (1, 1, 1), (1, 1, 1))
    with pytest.raises(AssertionError):
        adapt_natten_params({"window_size": (-1, 4, 4), "dilation": (1, 3, 1)}, (2, 8, 8))  # 4*3 > 8
    with pytest.raises(AssertionError):
        adapt_natten_params({"window_size": (-1, 4, 4), "stride": (1, 5, 1)}, (2, 8, 8))  # stride > window


def test_shipped_tables_use_known_patterns():
    known = [
        {"window_size": w, "stride": s, "dilation": d, "base_size": BASE_SIZE_720P} for w, s, d in PATTERNS_720.values()
    ]
    for size, n, dense in (("2B", 28, []), ("14B", 36, [27])):
        table = natten_table(size)
        assert len(table) == n
        assert [i for i, p in enumerate(table) if p is None] == dense
        assert all(p in known for p in table if p is not None)
    # the per-layer assignment of the 2B table
    t2 = natten_table("2B")
    by_layer = {i: next(k for k, kp in zip(PATTERNS_720, known) if kp == p) for i, p in enumerate(t2)}
    assert [i for i, k in by_layer.items() if k == "global_hw"] == [0, 1]
    assert [i for i, k in by_layer.items() if k == "global_w"] == [2, 5, 10]
    assert [i for i, k in by_layer.items() if k == "local_s"] == [3, 4, 6, 7, 8, 9, 27]
    assert [i for i, k in by_layer.items() if k == "local_l"] == [23]
