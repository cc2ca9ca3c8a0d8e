"""Self-attention kernels at the real token grid, one layer at a time: which kernel and layout is fastest,
and what each NATTEN layer pattern costs through our sparse path (engine/models/sparse_attention.py).

    python bench/bench_attention.py --model_size 2B --fps 16 --json out.json

Prints a table last (ms per call, effective TFLOP/s counted on the attended keys only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models.attention import adapt_natten_params, attention, natten_table  # noqa: E402
from engine.models.sparse_attention import neighborhood_attention  # noqa: E402
from bench.bench_video2world import cuda_time  # noqa: E402


def timed(fn, reps: int = 5) -> float:
    """Median milliseconds of `reps` CUDA-event-timed calls after one warm-up."""
    return 1000.0 * statistics.median(cuda_time(fn, 1, reps))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="2B", choices=["2B", "14B"])
    p.add_argument("--fps", type=int, default=16, choices=[10, 16])
    p.add_argument("--batch", type=int, default=2, help="2 = CFG as one batch")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dev, dt = torch.device("cuda"), torch.bfloat16
    T = 24 if args.fps == 16 else 16
    H, W, N, D = 44, 80, 16 if args.model_size == "2B" else 40, 128
    L = T * H * W
    rows, res = [], {"grid": [T, H, W], "heads": N, "batch": args.batch, "gpu": torch.cuda.get_device_name()}
    g = torch.Generator(device="cuda").manual_seed(0)

    def qkv(b):
        return [torch.randn(b, L, N, D, device=dev, dtype=dt, generator=g) for _ in range(3)]

    dense_flops = lambda b: 4.0 * b * L * L * N * D  # noqa: E731
    for b in sorted({1, args.batch}):
        q, k, v = qkv(b)
        for backend in ("cudnn", "flash", "efficient", "fa4"):
            try:
                ms = timed(lambda: attention(q, k, v, backend))
            except Exception as e:  # a kernel that refuses the shape, or fa4 not installed
                rows.append((f"dense {backend} B={b} [B,L,N,D] view", "n/a", str(e)[:60].replace("|", "/")))
                continue
            rows.append((f"dense {backend} B={b} [B,L,N,D] view", f"{ms:.1f}", f"{dense_flops(b) / ms / 1e9:.0f}"))
            res[f"dense_{backend}_b{b}_ms"] = ms
        qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            ms = timed(lambda: F.scaled_dot_product_attention(qh, kh, vh))
        rows.append((f"dense cudnn B={b} [B,N,L,D] contiguous", f"{ms:.1f}", f"{dense_flops(b) / ms / 1e9:.0f}"))
        res[f"dense_cudnn_b{b}_bhsd_ms"] = ms
        del q, k, v, qh, kh, vh
        torch.cuda.empty_cache()

    q, k, v = qkv(args.batch)
    q6, k6, v6 = (x.view(args.batch, T, H, W, N, D) for x in (q, k, v))
    seen = {}
    table = natten_table(args.model_size)
    for layer, params in enumerate(table):
        if params is None:
            continue
        win, stride, dil = adapt_natten_params(params, (T, H, W))
        key = (win, stride, dil)
        if key in seen:
            seen[key]["layers"].append(layer)
            continue
        ms = timed(lambda: neighborhood_attention(q6, k6, v6, win, stride, dil), reps=3)
        density = math.prod(win) / L
        fl = dense_flops(args.batch) * density
        seen[key] = {"layers": [layer], "ms": ms, "density": density, "tflops": fl / ms / 1e9}
    total = 0.0
    for (win, stride, dil), r in seen.items():
        rows.append((f"sparse win{win[1:]} s{stride[1:]} d{dil[1:]} x{len(r['layers'])} layers",
                     f"{r['ms']:.1f}", f"{r['tflops']:.0f} ({100 * r['density']:.1f}% dense)"))
        total += r["ms"] * len(r["layers"])
    res["sparse_patterns"] = [{"window": k[0], "stride": k[1], "dilation": k[2], **v} for k, v in seen.items()]
    dense_layer = res.get(f"dense_cudnn_b{args.batch}_ms", float("nan"))
    res["sparse_all_layers_ms"] = total
    res["dense_all_layers_ms"] = dense_layer * len(table)
    rows.append((f"all {len(table)} layers: sparse vs dense cudnn", f"{total:.0f} vs {dense_layer * len(table):.0f}",
                 f"{dense_layer * len(table) / total:.2f}x"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    print(f"\n| {args.model_size} {T}x{H}x{W} tokens={L} heads={N} batch={args.batch} | ms | TFLOP/s |")
    print("|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
