"""The DiT's converted linear layers (engine/models/fp8.py FP8_LINEARS) at a real job's token count, bf16 against FP8.

For each distinct layer shape of the 2B/14B block (q/k/v/out of self-attention and q/out of cross-attention
are D x D, the MLP D x 4D and 4D x D), with CFG's batch of 2 at 720p (2 x 84,480 tokens at 16 fps):
  - bf16: F.linear, what the exact path runs (cuBLAS);
  - fp8 GEMM: torch._scaled_mm on an already quantized activation, per-row and per-feature scales;
  - fp8 GEMM, fast accum: the same with use_fast_accum (Hopper's FP8 accumulator without the periodic fp32
    promotion: faster, less exact; the engine does not use it);
  - fp8 layer: Fp8Linear compiled (the activation's per-token quantization + the GEMM), what the engine runs
    where the quantization is not fused into the producer.
Each with its error against a float64 product of the same operands (first 2048 rows), and the projected saving
per CFG step (layers x blocks x (bf16 - fp8 layer)). Fresh random inputs per shape (never zeros).

    python bench/bench_fp8.py --model_size 2B --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_attention import timed  # noqa: E402  (median ms after one warm-up call, CUDA events on the GPU)
from bench.save import save_json  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="2B", choices=["2B", "14B", "tiny"],
                   help="tiny: a CPU smoke run at toy sizes (checks the script, times nothing real)")
    p.add_argument("--fps", type=int, default=16, choices=[10, 16])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "non-finite output"
    return float((out.double() - ref).norm() / ref.norm())


def shapes(cfg) -> list[tuple[str, int, int, int]]:
    """(name, K, N, layers of this shape per block) for FP8_LINEARS."""
    D, H = cfg.model_channels, int(cfg.model_channels * cfg.mlp_ratio)
    return [("q/k/v/out, cross q/out", D, D, 6), ("mlp.layer1", D, H, 1), ("mlp.layer2", H, D, 1)]


def main(argv=None):
    args = parse_args(argv)
    tiny = args.model_size == "tiny"
    assert tiny or torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --model_size tiny, a CPU smoke run)"
    from engine import resolutions
    from engine.models import fp8
    from engine.models.dit import dit_config

    cuda = not tiny
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    cfg = dit_config(args.model_size)
    w_px, h_px = resolutions.frame_size("720", "16:9", args.model_size)
    frames = resolutions.num_frames(args.fps, args.model_size)
    tokens = resolutions.latent_frames(frames) * (h_px // 16) * (w_px // 16)  # 8x VAE, then 2x2 patches
    M = 2 * tokens  # CFG: the conditional and unconditional halves in one batch
    fp8.check_device(device, dtype)
    res = {"args": vars(args), "gpu": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "tokens": M, "rows": []}
    print(f"# {args.model_size} at 720p {args.fps} fps: GEMMs of {M} rows (2 x {tokens} tokens); {res['gpu']}, "
          f"torch {torch.__version__}", flush=True)
    g = torch.Generator(device=device).manual_seed(0)
    saving_ms = 0.0
    for name, K, N, per_block in shapes(cfg):
        x = torch.randn(M, K, device=device, dtype=dtype, generator=g)
        lin = torch.nn.Linear(K, N, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.normal_(0.0, K ** -0.5, generator=g)
        layer = fp8.Fp8Linear.from_linear(lin)
        x8, sx = fp8.quantize_rows(x)
        w8t, sw = layer.weight.t(), layer.weight_scale
        compiled = torch.compile(layer, dynamic=False) if cuda else layer
        runs = {
            "bf16": lambda: F.linear(x, lin.weight),
            "fp8_gemm": lambda: torch._scaled_mm(x8, w8t, scale_a=sx, scale_b=sw, out_dtype=dtype),
            "fp8_gemm_fast_accum": lambda: torch._scaled_mm(x8, w8t, scale_a=sx, scale_b=sw, out_dtype=dtype,
                                                            use_fast_accum=True),
            "fp8_layer": lambda: compiled(x),
        }
        ref = x[:2048].double() @ lin.weight.double().T
        row = {"layer": name, "K": K, "N": N, "per_block": per_block, "tflop": 2 * M * K * N / 1e12}
        with torch.no_grad():
            for key, fn in runs.items():
                try:
                    row[f"{key}_ms"] = timed(fn, device, args.reps)
                    row[f"{key}_rel_err"] = rel_err(fn()[:2048], ref)
                except (RuntimeError, NotImplementedError) as e:  # fast accum is CUDA-only
                    row[f"{key}_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        saving_ms += per_block * cfg.num_blocks * (row["bf16_ms"] - row["fp8_layer_ms"])
        res["rows"].append(row)
        print("row", json.dumps(row), flush=True)
        del x, x8, lin, layer, compiled
    res["projected_saving_per_step_s"] = saving_ms / 1e3

    print()
    print("| layer (K x N) | per block | bf16 ms (TFLOP/s) | fp8 GEMM ms (TFLOP/s) | fast accum ms | fp8 layer ms "
          "(TFLOP/s) | rel. err bf16 / fp8 |")
    print("|---|---|---|---|---|---|---|")

    def cell(r, k):
        if f"{k}_ms" not in r:
            return "-"
        return f"{r[f'{k}_ms']:.2f} ({r['tflop'] / r[f'{k}_ms'] * 1e3:.0f})"

    for r in res["rows"]:
        fast = f"{r['fp8_gemm_fast_accum_ms']:.2f}" if "fp8_gemm_fast_accum_ms" in r else "-"
        print(f"| {r['layer']} ({r['K']} x {r['N']}) | {r['per_block']} | {cell(r, 'bf16')} | {cell(r, 'fp8_gemm')} | "
              f"{fast} | {cell(r, 'fp8_layer')} | {r['bf16_rel_err']:.1e} / {r['fp8_layer_rel_err']:.1e} |")
    print(f"\nprojected saving per CFG step ({cfg.num_blocks} blocks): {res['projected_saving_per_step_s']:.3f} s")
    save_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
