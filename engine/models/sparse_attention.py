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

import math
from typing import Sequence

import torch

from engine.models.attention import attention

# Upper bound on gathered K (and V) elements per chunk: 2^28 = 512 MiB each in bf16.
DEFAULT_MAX_GATHER = 1 << 28


def _window_starts(n: int, w: int, s: int, device) -> torch.Tensor:
    """First key index of the window of each query tile along one axis."""
    tiles = torch.arange(math.ceil(n / s), device=device)
    leaders = torch.clamp(tiles * s + s // 2, max=n - 1)
    left, right = w // 2, w - 1 - w // 2
    centres = torch.clamp(leaders, min=left, max=n - 1 - right)
    return centres - left


def _strided_na(q, k, v, window, stride, backend, max_gather):
    B, T, H, W, N, D = q.shape
    X = (T, H, W)
    if all(w >= n for n, w in zip(X, window)):
        # Whole sub-grid visible (e.g. the dilated "sparse global" layers): plain dense attention.
        flat = [x.reshape(B, T * H * W, N, D) for x in (q, k, v)]
        return attention(*flat, backend).reshape(B, T, H, W, N, D)
    # An axis whose window is the whole axis needs no tiling: one tile, one window.
    tile = tuple(n if w >= n else s for n, w, s in zip(X, window, stride))
    win = tuple(min(w, n) for n, w in zip(X, window))
    starts = [
        torch.zeros(1, dtype=torch.long, device=q.device) if w >= n else _window_starts(n, w, s, q.device)
        for n, w, s in zip(X, window, stride)
    ]
    A = tuple(len(st) for st in starts)
    padded = tuple(a * t for a, t in zip(A, tile))
    if padded != X:
        # Partial last tiles: pad queries with zeros; their outputs are dropped below.
        qp = q.new_zeros(B, *padded, N, D)
        qp[:, :T, :H, :W] = q
    else:
        qp = q
    (At, Ah, Aw), (st, sh, sw) = A, tile
    q_tiles = qp.reshape(B, At, st, Ah, sh, Aw, sw, N, D).permute(0, 1, 3, 5, 2, 4, 6, 7, 8)
    q_tiles = q_tiles.reshape(B, At * Ah * Aw, st * sh * sw, N, D)

    # Flat key indices of every tile's window box, [tiles, wt*wh*ww], in (t h w) order.
    ar = [torch.arange(w, device=q.device) for w in win]
    it = (starts[0][:, None] + ar[0])[:, None, None, :, None, None]
    ih = (starts[1][:, None] + ar[1])[None, :, None, None, :, None]
    iw = (starts[2][:, None] + ar[2])[None, None, :, None, None, :]
    kv_index = ((it * H + ih) * W + iw).reshape(At * Ah * Aw, -1)
    Lk = kv_index.shape[1]
    k_flat, v_flat = k.reshape(B, T * H * W, N, D), v.reshape(B, T * H * W, N, D)

    n_tiles = At * Ah * Aw
    chunk = max(1, min(n_tiles, max_gather // max(1, B * Lk * N * D)))
    out = torch.empty_like(q_tiles)
    for c0 in range(0, n_tiles, chunk):
        idx = kv_index[c0 : c0 + chunk]
        c = idx.shape[0]
        kc = k_flat[:, idx].reshape(B * c, Lk, N, D)
        vc = v_flat[:, idx].reshape(B * c, Lk, N, D)
        qc = q_tiles[:, c0 : c0 + c].reshape(B * c, -1, N, D)
        out[:, c0 : c0 + c] = attention(qc, kc, vc, backend).reshape(B, c, -1, N, D)

    out = out.reshape(B, At, Ah, Aw, st, sh, sw, N, D).permute(0, 1, 4, 2, 5, 3, 6, 7, 8)
    out = out.reshape(B, *padded, N, D)
    return out[:, :T, :H, :W] if padded != X else out


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int] = (1, 1, 1),
    dilation: Sequence[int] = (1, 1, 1),
    backend: str = "auto",
    max_gather: int = DEFAULT_MAX_GATHER,
) -> torch.Tensor:
    """Same result as natten.na3d(q, k, v, window, stride, dilation) (non-causal), via gathered dense SDPA."""
    B, T, H, W, N, D = q.shape
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
