"""NATTEN's strided/dilated 3-D neighborhood attention as ONE FlexAttention call over tokens in tile order.

Why tile order: the gather path (sparse_attention.py) copies every distinct key window out of K/V before
its dense kernel runs. FlexAttention instead reads K/V in place, skipping the 128x128 blocks of the score
matrix a BlockMask marks empty and running the mask function only in blocks it marks partial. In the
usual (t h w) order a 4x8 query tile and its 20x40 window are scattered over thousands of blocks, nearly
all partial. So we first sort the tokens into tile order, (tile, position inside the tile), so that each
stride tile is contiguous: a tile is all of T (the window is always the whole clip) by s_h rows by s_w
columns of one dilation residue class, or the whole (sub-)axis where the window covers it. All queries of
a tile share one key window (that is what the stride means), so a block of queries inside one tile sees a union of whole tiles
whenever the window starts are multiples of the stride.

Block-aligned, i.e. every block full or empty and the mask function never evaluated on the GPU, when each
axis the window does not cover has n % s == 0, w % s == 0 and (s//2 - w//2) % s == 0 (window starts
clamp(s*tile + s//2 - w//2, 0, n - w) are then multiples of s), and a tile holds a multiple of 128
tokens. That holds for every pattern of the 2B and 14B tables at 720p 16:9 (grid T x 44 x 80, T = 24 at
16 fps and 16 at 10 fps): the local ones (stride 4x8, windows 12x24 / 20x40 / 28x56: tiles of 32*T
tokens), the rows-local/columns-sparse-global one (dilation 5 on W leaves 16-column sub-grids the 16-wide
window covers: tiles of 4*16*T) and the sparse-global one (every 4x16 sub-grid fully visible:
block-diagonal). Elsewhere the rescaled patterns mostly are not: at 480p 16:9 (27 x 48) strides 2 and 5
divide neither extent; of the other 720p aspect ratios only 4:3 at 10 fps has its three local patterns
aligned (4x6 tiles of 16 frames = 384 tokens; 576 at 24 frames); the tiny profile's 4-wide window at
stride 2 starts at odd offsets. There the boundary blocks are partial and the mask function decides them
(the interior blocks stay full). One code path serves all, `is_block_aligned` says which case a pattern
is, and tests/test_flex_natten.py checks both against natten.na3d.

Semantics are those of sparse_attention.neighborhood_attention (and natten.na3d, non-causal, scale
1/sqrt(D)); layout q, k, v [B, T, H, W, N, D], result the same.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from engine.models.sparse_attention import _window_starts

BLOCK = 128  # FlexAttention's sparse block (both query and key side): the granularity of the BlockMask


@dataclass(frozen=True)
class FlexPlan:
    """What a (grid, pattern, device) needs, built once: the tile-order permutation and the block mask."""

    perm: torch.Tensor  # [L] int64: tile-order position -> flat (t h w) token index
    inverse: torch.Tensor  # [L] int64: flat token index -> tile-order position
    block_mask: object  # torch.nn.attention.flex_attention.BlockMask over tile-order positions
    partial_blocks: int  # query-block x key-block pairs the kernel must mask element by element
    full_blocks: int


def _axis_layout(n: int, w: int, s: int, d: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per index x of one axis: (sort key of its query tile, key coordinate, window low, window high).

    Dilation d splits the axis into d residue classes (x % d) that never see each other; inside class g
    (sub-grid coordinate u = x // d, length m) the tile of u is u // s and its window is
    [start, start + w) in u. Folding the class into the coordinate as g*n + u (and into the window bounds
    alike) lets one comparison lo <= coord < hi also reject keys of another class, since 0 <= u, lo, hi <= n.
    """
    sort_key, coord, lo, hi = [], [], [], []
    for x in range(n):
        g, u = x % d, x // d
        m = len(range(g, n, d))
        if w >= m:  # window covers the sub-grid: one tile, whole sub-grid visible
            tile, start, width = 0, 0, m
        else:
            tile = u // s
            start, width = _window_starts(m, w, s)[tile], w
        sort_key.append(g * n + tile)
        coord.append(g * n + u)
        lo.append(g * n + start)
        hi.append(g * n + start + width)
    return sort_key, coord, lo, hi


def is_block_aligned(grid: Sequence[int], window: Sequence[int], stride: Sequence[int],
                     dilation: Sequence[int] = (1, 1, 1)) -> bool:
    """True when the pattern's BlockMask in tile order has no partial block (see the module docstring);
    decided from the plan itself, so it cannot drift from what the kernel gets."""
    return _tables(tuple(grid), tuple(window), tuple(stride), tuple(dilation)).partial_blocks == 0


def _ordered(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[Mq, Mk] bool -> (count [1, 1, Mq], indices [1, 1, Mq, Mk]) int32, the selected key blocks first
    in ascending order: BlockMask's compressed layout."""
    num = mask.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None, None].contiguous(), idx[None, None].contiguous()


@dataclass(frozen=True)
class _Tables:
    """A pattern's host-side plan on the CPU, for any device: computed once per (grid, pattern), so asking
    whether it is block-aligned (natten auto, per layer) and building the device's plan share the work."""

    perm: torch.Tensor
    inverse: torch.Tensor
    coord: list  # per axis, [L padded to whole blocks] int32: key coordinates
    lo: list  # per axis, window low per query
    hi: list  # per axis, window high per query
    blocks: tuple  # (kv_num, kv_idx, full_num, full_idx): BlockMask's compressed layout
    partial_blocks: int
    full_blocks: int


@functools.lru_cache(maxsize=64)
def _tables(X: tuple, window: tuple, stride: tuple, dilation: tuple) -> _Tables:
    L = math.prod(X)
    axes = [_axis_layout(n, w, s, d) for n, w, s, d in zip(X, window, stride, dilation)]
    # Per token in (t h w) order, broadcast from the three axes: [L] each.
    grids = torch.meshgrid(*(torch.arange(n) for n in X), indexing="ij")

    def per_token(field: int) -> list[torch.Tensor]:
        return [torch.tensor(ax[field], dtype=torch.int64)[g].reshape(L) for ax, g in zip(axes, grids)]

    tk, coord, lo, hi = (per_token(f) for f in range(4))
    # Tile id of every token, lexicographic over the axes; a stable sort keeps (t h w) order inside a tile.
    tile = (tk[0] * (X[1] * X[1]) + tk[1]) * (X[2] * X[2]) + tk[2]  # sort keys are < n*n per axis
    perm = torch.argsort(tile, stable=True)
    inverse = torch.argsort(perm)
    coord, lo, hi = ([c[perm] for c in f] for f in (coord, lo, hi))
    tile = tile[perm]

    # Block mask, counted per query tile instead of per query: queries of a tile share (lo, hi), so
    # visible pairs of (query block A, key block B) = sum over tiles t of |A ∩ t| * |keys of B that t sees|.
    first = torch.ones(L, dtype=torch.bool)
    first[1:] = tile[1:] != tile[:-1]
    group = torch.cumsum(first.to(torch.int64), 0) - 1  # tile-order position -> tile number
    heads = first.nonzero().flatten()  # first position of each tile
    nq = nk = -(-L // BLOCK)
    sees = torch.zeros(len(heads), nk * BLOCK, dtype=torch.bool)  # columns past L stay False
    sees[:, :L] = True
    for c, l_, h_ in zip(coord, lo, hi):
        sees[:, :L] &= (l_[heads, None] <= c[None, :]) & (c[None, :] < h_[heads, None])
    keys_seen = sees.view(len(heads), nk, BLOCK).sum(-1, dtype=torch.float64)
    overlap = torch.zeros(nq, len(heads), dtype=torch.float64)
    overlap.index_put_((torch.arange(L) // BLOCK, group), torch.ones(L, dtype=torch.float64), accumulate=True)
    # float64 holds these integer counts (<= 128*128 per block) exactly.
    pairs = overlap @ keys_seen
    real = torch.full((nq,), float(BLOCK), dtype=torch.float64)
    real[-1] = L - (nq - 1) * BLOCK
    capacity = real[:, None] * real[None, :]
    full = pairs == capacity
    partial = (pairs > 0) & ~full

    # Padded to whole blocks so a kernel evaluating the mask in the last, ragged block never indexes past
    # the tables: a padded key has coordinate -1 (below every window), a padded query an empty window.
    pad = nk * BLOCK - L
    coord = [torch.nn.functional.pad(c, (0, pad), value=-1) for c in coord]
    lo, hi = ([torch.nn.functional.pad(c, (0, pad), value=0) for c in f] for f in (lo, hi))
    coord, lo, hi = ([c.to(torch.int32) for c in f] for f in (coord, lo, hi))
    return _Tables(perm, inverse, coord, lo, hi, (*_ordered(partial), *_ordered(full)),
                   int(partial.sum()), int(full.sum()))


@functools.lru_cache(maxsize=64)
def _plan(X: tuple, window: tuple, stride: tuple, dilation: tuple, device: torch.device) -> FlexPlan:
    from torch.nn.attention.flex_attention import BlockMask

    tab = _tables(X, window, stride, dilation)
    L = math.prod(X)
    (ct, ch, cw), (lt, lh, lw), (ht, hh, hw) = ([c.to(device) for c in f] for f in (tab.coord, tab.lo, tab.hi))

    # Decides the partial blocks on the GPU and every pair in the eager (CPU) path, which ignores the
    # block structure. The tensors it captures are mask_mod buffers to torch.compile: guarded by shape,
    # dtype and device, not identity, so patterns of one grid share one compiled kernel.
    def mask_mod(b, h, q_idx, kv_idx):
        t, r, c = ct[kv_idx], ch[kv_idx], cw[kv_idx]
        return ((lt[q_idx] <= t) & (t < ht[q_idx]) & (lh[q_idx] <= r) & (r < hh[q_idx])
                & (lw[q_idx] <= c) & (c < hw[q_idx]))

    block_mask = BlockMask.from_kv_blocks(*(b.to(device) for b in tab.blocks), BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                          seq_lengths=(L, L))
    return FlexPlan(tab.perm.to(device), tab.inverse.to(device), block_mask, tab.partial_blocks, tab.full_blocks)


_COMPILED = None


def _flex_call(device: torch.device):
    """flex_attention compiled (the fused Triton kernel) on CUDA, eager elsewhere: on the CPU the eager path
    evaluates the mask on every pair, unfused, which is what the small test grids want (no C++ build).

    One compiled callable for every layer. Its guards (dynamo, dynamic=False; listed with TORCH_LOGS=guards
    on torch 2.13): q/k/v dtype, device, shape and strides and that they do not alias each other or the
    mask's tensors; score_mod and scale None; the BlockMask's type and tensors by shape ([1, 1, L/128] and
    [1, 1, L/128, L/128] int32); its mask_mod by code object (ID_MATCH on __code__, one closure code for
    all plans) and the tensors in its closure by dtype/device/shape, not identity; kernel_options by
    value. None names a pattern, so every layer and pattern at one grid and batch reuses one graph
    (tests/test_flex_natten.py checks it); a new batch size or grid compiles once more.
    """
    global _COMPILED
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


# Out of the block's graph, as the gather path: plan lookup (an lru_cache keyed by Python tuples) is host
# code dynamo would guard on value by value; here the compiled block breaks once and `_flex_call` runs its
# own compiled kernel with the plan's BlockMask as an input.
@torch.compiler.disable
def flex_neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int] = (1, 1, 1),
    dilation: Sequence[int] = (1, 1, 1),
    kernel_options: dict | None = None,
) -> torch.Tensor:
    """Same result as natten.na3d(q, k, v, window, stride, dilation) (non-causal), via one FlexAttention call.

    kernel_options go to flex_attention as they are (e.g. {"BACKEND": "FLASH"} where torch has it)."""
    B, T, H, W, N, D = q.shape
    X = (T, H, W)
    window, stride, dilation = tuple(window), tuple(stride), tuple(dilation)
    for n, w, s, d in zip(X, window, stride, dilation):
        assert 1 <= s <= w and w * d <= n, f"bad NA parameters for grid {X}: window {window} stride {stride} dilation {dilation}"
    plan = _plan(X, window, stride, dilation, q.device)
    L = T * H * W
    # [B, L, N, D] rows permuted into tile order, then viewed heads-first as flex wants ([B, N, L, D]).
    qt, kt, vt = (x.reshape(B, L, N, D).index_select(1, plan.perm).transpose(1, 2) for x in (q, k, v))
    out = _flex_call(q.device)(qt, kt, vt, block_mask=plan.block_mask, kernel_options=kernel_options)
    return out.transpose(1, 2).index_select(1, plan.inverse).reshape(B, T, H, W, N, D)
