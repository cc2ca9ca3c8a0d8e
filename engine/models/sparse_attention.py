"""Our own path for NATTEN's strided/dilated 3-D neighborhood attention, built on dense SDPA.

Why it is fast for the Cosmos patterns: with stride s every s-sized query tile shares ONE key window
(generalized neighborhood attention), and the temporal window is always the whole clip. So each query
tile attends to a contiguous K/V box that we gather once and hand to a dense kernel (cuDNN/flash), batched
over tiles, in chunks to bound the gathered memory. Dilation d splits each axis into d interleaved
sub-grids that never see each other; each sub-grid is an undilated problem.

Semantics (per axis, length n, window w, stride s; on a dilated axis everything below is in sub-grid
coordinates): the tile of query i is i // s; its leader is min(tile*s + s//2, n-1); the window centre is
the leader clamped to [w//2, n-1-(w-1-w//2)]; keys centre-w//2 .. centre+(w-1-w//2) are visible (an even
window sees one more on the left). These equal `natten.na3d`'s, which the tests check.

Layout: q, k, v [B, T, H, W, N, D] (NATTEN's heads-last view); result has the same shape.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from engine.models.attention import attention

# Upper bound on gathered K (and V) elements per chunk off CUDA: 2^28 = 512 MiB each in bf16. On CUDA the
# bound follows free memory (see _gather_budget): fewer, larger SDPA launches are what make this path fast.
DEFAULT_MAX_GATHER = 1 << 28


def _gather_budget(device: torch.device, element_size: int) -> int:
    """Elements of K (and as many of V) one chunk may gather: a quarter of free GPU memory between the two,
    capped at 2^31 elements; the CPU default elsewhere."""
    if device.type != "cuda":
        return DEFAULT_MAX_GATHER
    free, _total = torch.cuda.mem_get_info(device)
    return int(max(DEFAULT_MAX_GATHER, min(1 << 31, free // (8 * element_size))))


def _window_starts(n: int, w: int, s: int) -> list[int]:
    """First key index of the window of each query tile along one axis (plain ints: a handful per axis,
    and computing them on the GPU would cost a host sync per layer per forward)."""
    left, right = w // 2, w - 1 - w // 2
    leaders = (min(tile * s + s // 2, n - 1) for tile in range(math.ceil(n / s)))
    return [min(max(c, left), n - 1 - right) - left for c in leaders]


def _axis_groups(n: int, w: int, s: int) -> list[tuple[int, int, int]]:
    """Along one axis: (query start, query length, key window start) per DISTINCT key window.

    Tiles near the edges are clamped onto the same window (e.g. the first three tiles of a 40-wide
    window at stride 8 all see keys 0..39); merging them into one query group means that window is
    gathered once instead of once per tile, which cuts the gathered bytes by ~2.6x at 720p.
    """
    if w >= n:
        return [(0, n, 0)]
    groups: list[list[int]] = []  # [first query, end query, key start]
    for tile, k0 in enumerate(_window_starts(n, w, s)):
        q0, q1 = tile * s, min((tile + 1) * s, n)
        if groups and groups[-1][2] == k0:
            groups[-1][1] = q1
        else:
            groups.append([q0, q1, k0])
    return [(q0, q1 - q0, k0) for q0, q1, k0 in groups]


def _box_index(starts, lengths, dims, device) -> torch.Tensor:
    """Flat (t h w) token indices of boxes: starts [G, 3] (one box per row), lengths 3 ints -> [G, prod]."""
    T, H, W = dims
    st = torch.as_tensor(starts, device=device)
    ar = [torch.arange(n, device=device) for n in lengths]
    it = (st[:, 0, None] + ar[0])[:, :, None, None]
    ih = (st[:, 1, None] + ar[1])[:, None, :, None]
    iw = (st[:, 2, None] + ar[2])[:, None, None, :]
    return ((it * H + ih) * W + iw).reshape(len(starts), -1)


@functools.lru_cache(maxsize=64)
def _plan(X: tuple, window: tuple, stride: tuple, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(query indices [G, Lq], key indices [G, Lk]) per class of same-shaped query boxes. Depends only on the
    grid and the pattern, so it is built once per layer pattern and device, not on every forward."""
    win = tuple(min(w, n) for n, w in zip(X, window))
    per_axis = [_axis_groups(n, w, s) for n, w, s in zip(X, window, stride)]
    classes: dict[tuple, list[tuple]] = {}
    for gt in per_axis[0]:
        for gh in per_axis[1]:
            for gw in per_axis[2]:
                shape = (gt[1], gh[1], gw[1])
                classes.setdefault(shape, []).append(((gt[0], gh[0], gw[0]), (gt[2], gh[2], gw[2])))
    return [(_box_index([m[0] for m in members], shape, X, device), _box_index([m[1] for m in members], win, X, device))
            for shape, members in classes.items()]


def _strided_na(q, k, v, window, stride, backend, max_gather):
    B, T, H, W, N, D = q.shape
    X = (T, H, W)
    flat = [x.reshape(B, T * H * W, N, D) for x in (q, k, v)]
    if all(w >= n for n, w in zip(X, window)):
        # Whole sub-grid visible (e.g. the dilated "sparse global" layers): plain dense attention.
        return attention(*flat, backend).reshape(B, T, H, W, N, D)
    q_flat, k_flat, v_flat = flat
    out = torch.empty_like(q_flat)
    Lk = math.prod(min(w, n) for n, w in zip(X, window))
    chunk = max(1, max_gather // max(1, B * Lk * N * D))
    # Query groups are boxes; groups whose boxes have the same shape are batched together.
    for q_index, kv_index in _plan(X, tuple(window), tuple(stride), q.device):
        for c0 in range(0, q_index.shape[0], chunk):
            qi, ki = q_index[c0 : c0 + chunk], kv_index[c0 : c0 + chunk]
            c, Lq = qi.shape
            qc = q_flat[:, qi].reshape(B * c, Lq, N, D)
            kc = k_flat[:, ki].reshape(B * c, Lk, N, D)
            vc = v_flat[:, ki].reshape(B * c, Lk, N, D)
            out[:, qi] = attention(qc, kc, vc, backend).reshape(B, c, Lq, N, D)
    return out.reshape(B, T, H, W, N, D)


# Kept out of torch.compile: the body is host-side planning (window starts, cached index tensors) around
# gathers and SDPA calls, nothing inductor could fuse. Traced, every window start and chunk size became a
# guard (`len(starts)`, `starts[i][j] == ...`, the batch size of each gathered chunk), so dynamo recompiled
# on every layer until it hit its recompile limit and fell back to eager for the whole block (seen on the
# H200 with the 2B NATTEN patterns). Disabled, the compiled block breaks its graph here once, with the
# same guards on every step.
@torch.compiler.disable
def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int] = (1, 1, 1),
    dilation: Sequence[int] = (1, 1, 1),
    backend: str = "auto",
    max_gather: int | None = None,
) -> torch.Tensor:
    """Same result as natten.na3d(q, k, v, window, stride, dilation) (non-causal), via gathered dense SDPA."""
    B, T, H, W, N, D = q.shape
    if max_gather is None:
        max_gather = _gather_budget(q.device, q.element_size())
    X = (T, H, W)
    window, stride, dilation = tuple(window), tuple(stride), tuple(dilation)
    for n, w, s, d in zip(X, window, stride, dilation):
        assert 1 <= s <= w and w * d <= n, f"bad NA parameters for grid {X}: window {window} stride {stride} dilation {dilation}"
    if dilation == (1, 1, 1):
        return _strided_na(q, k, v, window, stride, backend, max_gather)
    dt, dh, dw = dilation
    if T % dt == 0 and H % dh == 0 and W % dw == 0:
        # Equal-sized sub-grids: fold the dilation groups into the batch and solve them in one go.
        def fold(x):
            x = x.reshape(B, T // dt, dt, H // dh, dh, W // dw, dw, N, D).permute(0, 2, 4, 6, 1, 3, 5, 7, 8)
            return x.reshape(B * dt * dh * dw, T // dt, H // dh, W // dw, N, D)

        o = _strided_na(fold(q), fold(k), fold(v), window, stride, backend, max_gather)
        o = o.reshape(B, dt, dh, dw, T // dt, H // dh, W // dw, N, D).permute(0, 4, 1, 5, 2, 6, 3, 7, 8)
        return o.reshape(B, T, H, W, N, D)
    # Uneven sub-grids (extent not a multiple of the dilation): one sub-grid at a time.
    out = torch.empty_like(q)
    for gt in range(dt):
        for gh in range(dh):
            for gw in range(dw):
                sl = (slice(None), slice(gt, None, dt), slice(gh, None, dh), slice(gw, None, dw))
                out[sl] = _strided_na(q[sl], k[sl], v[sl], window, stride, backend, max_gather)
    return out
