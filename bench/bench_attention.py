"""Self-attention kernels at the real token grid, one layer at a time: which kernel and layout is fastest,
and what each NATTEN layer pattern costs through our two sparse paths: the gather path
(engine/models/sparse_attention.py) and one FlexAttention call over tokens in tile order
(engine/models/flex_natten.py; compiled, and with kernel_options BACKEND=FLASH where torch and
flash_attn.cute allow it).

    python bench/bench_attention.py --model_size 2B --fps 16 --json out.json
    python bench/bench_attention.py --skip_dense --json flex.json      # the NATTEN rows only
    python bench/bench_attention.py --skip_dense --grid 24,27,48        # 480p 16:9 (not block-aligned)
    python bench/bench_attention.py --device cpu --tiny                 # smoke run of the code paths
    python bench/bench_attention.py --cudnn --json cudnn.json           # + cuDNN's block-sparse kernels, bf16 and FP8

Prints a table last (ms per call, effective TFLOP/s counted on the attended keys only; for flex, the
largest |out - gather| over the layer's output, both bf16, and ||out - gather|| / ||gather||). A path that cannot run here (a kernel that
refuses the shape, a missing package, a torch without the option) gets a row saying why, not a crash.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.save import save_json  # noqa: E402
from engine.models.attention import adapt_natten_params, attention, natten_table  # noqa: E402
from engine.models.sparse_attention import neighborhood_attention  # noqa: E402
from bench.bench_video2world import cuda_time  # noqa: E402


def timed(fn, device: torch.device, reps: int = 5) -> float:
    """Median milliseconds of `reps` calls after one warm-up: CUDA events on the GPU, wall clock elsewhere."""
    if device.type == "cuda":
        return 1000.0 * statistics.median(cuda_time(fn, 1, reps))
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:90].replace("|", "/")


def flash_unavailable(device: torch.device) -> str | None:
    """Why flex's BACKEND=FLASH cannot run here, or None: the kernel package is checked before the timed
    call so the table says what is missing."""
    if device.type != "cuda":
        return "FLASH backend is CUDA only"
    # Whether this torch knows the option is left to the call: its error lands in the row.
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as e:  # not installed, or its CUDA libraries do not load
        return f"flash_attn.cute does not import ({why(e)})"
    return None


def flex_cache_entries() -> int | None:
    """Compiled graphs dynamo holds for flex_attention: with the guards in flex_natten._flex_call, one per
    (batch, grid, kernel_options), whatever the pattern; more means a pattern-specific guard."""
    try:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
        from torch.nn.attention.flex_attention import flex_attention

        return len(_debug_get_cache_entry_list(flex_attention.__code__))
    except Exception:
        return None


def cudnn_variants(dev: torch.device, res: dict) -> list:
    """cuDNN frontend's block-sparse kernels, bf16 and Sage FP8 (engine/models/cudnn_bsa.py), where they run."""
    from engine.models import cudnn_bsa

    skip = cudnn_bsa.unusable(dev)
    if skip:
        res["cudnn_skipped"] = skip
        print(f"skipped cudnn BSA: {skip}", flush=True)
        return []
    return [("cudnn BSA", lambda *a: cudnn_bsa.bsa_neighborhood_attention(*a, fp8=False)),
            ("cudnn BSA FP8", lambda *a: cudnn_bsa.bsa_neighborhood_attention(*a, fp8=True))]


def bench_sparse(q6, k6, v6, table, dense_flops, reps, rows, res, skip_flex: bool, cudnn: bool = False):
    """Per distinct NATTEN pattern of `table`: gather path, flex (AUTO), flex (FLASH) and with `cudnn` cuDNN's
    block-sparse kernels (bf16, FP8), into rows and res."""
    from engine.models.flex_natten import _plan, flex_neighborhood_attention

    dev = q6.device
    B, T, H, W, N, D = q6.shape
    L = T * H * W

    def flex(opts):
        return lambda *a: flex_neighborhood_attention(*a, kernel_options=opts)

    variants = [] if skip_flex else [("flex", flex(None))]
    flash_skip = None if skip_flex else flash_unavailable(dev)
    if not skip_flex and flash_skip is None:
        variants.append(("flex FLASH", flex({"BACKEND": "FLASH"})))
    elif flash_skip:
        print(f"skipped flex FLASH: {flash_skip}", flush=True)
    if cudnn:
        variants += cudnn_variants(dev, res)
    seen: dict = {}
    for layer, params in enumerate(table):
        if params is None:
            continue
        win, stride, dil = adapt_natten_params(params, (T, H, W))
        key = (win, stride, dil)
        if key in seen:
            seen[key]["layers"].append(layer)
            continue
        density = math.prod(win) / L
        fl = dense_flops(B) * density
        ms = timed(lambda: neighborhood_attention(q6, k6, v6, win, stride, dil), dev, reps=reps)
        r = {"layers": [layer], "density": density, "ms": ms, "tflops": fl / ms / 1e9}
        seen[key] = r
        print(f"gather {key}: {ms:.1f} ms", flush=True)
        if not variants:
            continue
        ref = neighborhood_attention(q6, k6, v6, win, stride, dil).float()
        t0 = time.perf_counter()
        plan = _plan((T, H, W), win, stride, dil, dev)
        r["flex_plan_s"] = time.perf_counter() - t0
        r["flex_partial_blocks"], r["flex_full_blocks"] = plan.partial_blocks, plan.full_blocks
        for name, fn in variants:
            tag = name.replace(" ", "_").lower()
            try:
                t0 = time.perf_counter()
                out = fn(q6, k6, v6, win, stride, dil)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                r[f"{tag}_first_call_s"] = time.perf_counter() - t0  # compile included, the first time
                diff = out.float() - ref
                r[f"{tag}_max_abs_err"], r[f"{tag}_rel_err"] = diff.abs().max().item(), (diff.norm() / ref.norm()).item()
                del out, diff
                fms = timed(lambda: fn(q6, k6, v6, win, stride, dil), dev, reps=reps)
            except Exception as e:  # compile failure, a backend refusing the mask, out of memory
                r[f"{tag}_error"] = why(e)
                print(f"{name} {key}: {why(e)}", flush=True)
                continue
            r[f"{tag}_ms"], r[f"{tag}_tflops"] = fms, fl / fms / 1e9
            print(f"{name} {key}: {fms:.1f} ms, max|out - gather| {r[f'{tag}_max_abs_err']:.2e}, "
                  f"rel {r[f'{tag}_rel_err']:.1e}", flush=True)
        r["ref_max_abs"] = ref.abs().max().item()
        del ref
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    totals = {"gather": 0.0, **{n: 0.0 for n, _ in variants}}
    for (win, stride, dil), r in seen.items():
        n_layers = len(r["layers"])
        label = f"win{win[1:]} s{stride[1:]} d{dil[1:]} x{n_layers} layers"
        rows.append((f"sparse gather {label}", f"{r['ms']:.1f}", f"{r['tflops']:.0f} ({100 * r['density']:.1f}% dense)", ""))
        totals["gather"] += r["ms"] * n_layers
        for name, _ in variants:
            tag = name.replace(" ", "_").lower()
            if f"{tag}_ms" not in r:
                rows.append((f"{name} {label}", "n/a", r.get(f"{tag}_error", "?"), ""))
                totals[name] = float("nan")
                continue
            blocks = f"{r['flex_partial_blocks']} partial / {r['flex_full_blocks']} full blocks"
            rows.append((f"{name} {label}", f"{r[f'{tag}_ms']:.1f}", f"{r[f'{tag}_tflops']:.0f} ({blocks})",
                         f"{r[f'{tag}_max_abs_err']:.1e} (max|out| {r['ref_max_abs']:.2f}), rel {r[f'{tag}_rel_err']:.1e}"))
            totals[name] += r[f"{tag}_ms"] * n_layers
    res["sparse_patterns"] = [{"window": k[0], "stride": k[1], "dilation": k[2], **v} for k, v in seen.items()]
    res["sparse_all_layers_ms"] = totals["gather"]
    for name, _ in variants:
        res[f"{name.replace(' ', '_').lower()}_all_layers_ms"] = totals[name]
    if flash_skip:
        res["flex_flash_skipped"] = flash_skip
    if variants:
        res["flex_compiled_graphs"] = flex_cache_entries()
    return totals


def bench_fp8_dense(q, k, v, b, dense_flops, dev, reps, rows, res):
    """Dense attention through cuDNN's Sage FP8 kernel (every key block), its error against fa4/cuDNN bf16."""
    from engine.models import cudnn_bsa

    label = f"dense cudnn FP8 (BSA, every block) B={b}"
    skip = cudnn_bsa.unusable(dev)
    if skip:
        rows.append((label, "n/a", skip[:90], ""))
        return
    try:
        ref = attention(q, k, v, "auto").float()
        diff = cudnn_bsa.fp8_dense_attention(q, k, v).float() - ref
        err, rel = diff.abs().max().item(), (diff.norm() / ref.norm()).item()
        del diff
        ms = timed(lambda: cudnn_bsa.fp8_dense_attention(q, k, v), dev, reps)
    except Exception as e:
        rows.append((label, "n/a", why(e), ""))
        return
    rows.append((label, f"{ms:.1f}", f"{dense_flops(b) / ms / 1e9:.0f}", f"{err:.1e} vs auto, rel {rel:.1e}"))
    res[f"dense_cudnn_fp8_b{b}_ms"], res[f"dense_cudnn_fp8_b{b}_rel_err"] = ms, rel


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="2B", choices=["2B", "14B"])
    p.add_argument("--fps", type=int, default=16, choices=[10, 16])
    p.add_argument("--batch", type=int, default=2, help="2 = CFG as one batch")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="grid 4x22x40, 2 heads of 64: a CPU smoke run of every path")
    p.add_argument("--grid", default=None, help="token grid T,H,W instead of 720p 16:9 (e.g. 24,27,48 = 480p 16:9)")
    p.add_argument("--skip_dense", action="store_true", help="only the NATTEN pattern rows")
    p.add_argument("--skip_flex", action="store_true", help="NATTEN rows through the gather path only (the old table)")
    p.add_argument("--cudnn", action="store_true", help="also cuDNN frontend's block-sparse kernels (bf16, Sage FP8) for "
                   "the NATTEN rows and the FP8 one for dense attention (Hopper, the [cudnn] extra)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per row (default 5 dense, 3 sparse)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dev, dt = torch.device(args.device), torch.bfloat16
    if args.tiny:
        T, H, W, N, D = 4, 22, 40, 2, 64
    else:
        T = 24 if args.fps == 16 else 16
        H, W, N, D = 44, 80, 16 if args.model_size == "2B" else 40, 128
    if args.grid:
        T, H, W = (int(x) for x in args.grid.split(","))
    L = T * H * W
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    rows, res = [], {"grid": [T, H, W], "heads": N, "head_dim": D, "batch": args.batch, "gpu": name,
                     "torch": torch.__version__}
    g = torch.Generator(device=dev).manual_seed(0)
    # Every distinct pattern (and FLASH) is a compile of the one flex callable only if a guard names the
    # pattern; dynamo's default limit of 8 would then send the rest to eager flex, which materialises
    # the [L, L] scores and runs out of memory. Raised here so such a torch shows up as a graph count.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)

    def qkv(b):
        return [torch.randn(b, L, N, D, device=dev, dtype=dt, generator=g) for _ in range(3)]

    dense_flops = lambda b: 4.0 * b * L * L * N * D  # noqa: E731
    for b in [] if args.skip_dense else sorted({1, args.batch}):
        q, k, v = qkv(b)
        for backend in ("cudnn", "flash", "efficient", "fa4"):
            try:
                ms = timed(lambda: attention(q, k, v, backend), dev, args.reps or 5)
            except Exception as e:  # a kernel that refuses the shape or device, or fa4 not installed
                rows.append((f"dense {backend} B={b} [B,L,N,D] view", "n/a", why(e), ""))
                continue
            rows.append((f"dense {backend} B={b} [B,L,N,D] view", f"{ms:.1f}", f"{dense_flops(b) / ms / 1e9:.0f}", ""))
            res[f"dense_{backend}_b{b}_ms"] = ms
        if args.cudnn:
            bench_fp8_dense(q, k, v, b, dense_flops, dev, args.reps or 5, rows, res)
        qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                ms = timed(lambda: F.scaled_dot_product_attention(qh, kh, vh), dev, args.reps or 5)
            rows.append((f"dense cudnn B={b} [B,N,L,D] contiguous", f"{ms:.1f}", f"{dense_flops(b) / ms / 1e9:.0f}", ""))
            res[f"dense_cudnn_b{b}_bhsd_ms"] = ms
        except Exception as e:
            rows.append((f"dense cudnn B={b} [B,N,L,D] contiguous", "n/a", why(e), ""))
        del q, k, v, qh, kh, vh
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    q, k, v = qkv(args.batch)
    q6, k6, v6 = (x.view(args.batch, T, H, W, N, D) for x in (q, k, v))
    table = natten_table(args.model_size)
    totals = bench_sparse(q6, k6, v6, table, dense_flops, args.reps or 3, rows, res, args.skip_flex, args.cudnn)
    dense_layer = res.get(f"dense_cudnn_b{args.batch}_ms", float("nan"))
    res["dense_all_layers_ms"] = dense_layer * len(table)
    # Layers the table leaves dense (14B's layer 27) cost a dense call on every path; counted in neither
    # sum, as before, so the sums compare the NATTEN layers only.
    for path, total in totals.items():
        rows.append((f"all {len(table)} layers: {path} vs dense cudnn", f"{total:.0f} vs {dense_layer * len(table):.0f}",
                     f"{dense_layer * len(table) / total:.2f}x" if total == total and total > 0 else "n/a", ""))
    if "flex_compiled_graphs" in res:
        rows.append(("flex: compiled graphs of flex_attention", f"{res['flex_compiled_graphs']}", "", ""))
    save_json(args.json, res)
    print(f"\n| {args.model_size} {T}x{H}x{W} tokens={L} heads={N} batch={args.batch} on {name} "
          f"| ms | TFLOP/s | max abs err vs gather |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
