"""Speed of one Video2World generation on one GPU: our pipeline vs diffusers, same config, same weights.

Random weights at the real sizes (speed does not depend on weight values). In one process:
  (a) ours: MiniTrainDIT through our sampler's x0 function (CFG as one batch of 2), an AB2 update per step;
  (b) the peer: diffusers' CosmosTransformer3DModel, called as its Cosmos2VideoToWorldPipeline calls it
      (two forwards per step, cond then uncond), PyTorch's default SDPA kernel choice;
then the VAE decode of the same latent (ours; the peer's AutoencoderKLWan with --peer_vae).
A few steps are timed after warm-up and extrapolated to the full run: `num_steps` steps plus the final
clean x0 pass = (num_steps + 1) denoiser calls = 2 * (num_steps + 1) DiT forwards. T5, refiner and
guardrail are not included (they run once per job and are offloaded before the DiT runs).

Prints a table last and writes every number to --json.

    python bench/bench_video2world.py --model_size 2B --resolution 720 --fps 16 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.save import save_json  # noqa: E402
from engine import resolutions  # noqa: E402
from engine.models.dit import MiniTrainDIT, dit_config  # noqa: E402

H100_BF16_TFLOPS = 790.0  # the FLOP-floor rate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="2B", choices=["2B", "14B", "tiny"])
    p.add_argument("--resolution", default="720", choices=["480", "720"])
    p.add_argument("--aspect_ratio", default="16:9")
    p.add_argument("--fps", type=int, default=16, choices=[10, 16])
    p.add_argument("--num_steps", type=int, default=35, help="steps the extrapolation assumes (default 35)")
    p.add_argument("--timed_steps", type=int, default=3, help="denoising steps actually timed after warm-up")
    p.add_argument("--attention_backend", default="auto", help="ours: auto|cudnn|flash|efficient|math|natten-impl")
    p.add_argument("--natten", action="store_true", help="ours: the -natten per-layer sparse patterns")
    p.add_argument("--natten_impl", default=None, help="ours: NATTEN implementation (see engine/models/attention.py)")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile each DiT block")
    p.add_argument("--cuda_graphs", action="store_true", help="ours: compile with CUDA graphs (reduce-overhead), "
                   "what --use_cuda_graphs selects")
    p.add_argument("--two_forward_cfg", action="store_true", help="ours: cond/uncond as two forwards, not a batch of 2")
    p.add_argument("--peer", default="diffusers", choices=["diffusers", "none"])
    p.add_argument("--peer_steps", type=int, default=None, help="steps timed for the peer (default --timed_steps)")
    p.add_argument("--peer_backend", default="default", help="peer SDPA kernel: default|cudnn|flash|efficient")
    p.add_argument("--vae", action="store_true", help="also time our VAE decode (and encode) at this size")
    p.add_argument("--peer_vae", action="store_true", help="also time diffusers' AutoencoderKLWan decode")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one of our forwards")
    p.add_argument("--json", default=None, help="write all numbers here")
    p.add_argument("--label", default="", help="free text stored in the JSON")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# FLOPs


def forward_flops(cfg, T: int, Hp: int, Wp: int, densities: list[float] | None = None) -> float:
    """Matmul FLOPs of one DiT forward for one sample (2 per MAC; norms/elementwise ignored):
    per block 28*N*d^2 (q,k,v,o + cross q,o + MLP) + 4*rho*N^2*d (self-attn core) + 4*N*512*d (cross core)
    + the cross-attention k/v projections of the 512 text tokens."""
    n, d = T * Hp * Wp, cfg.model_channels
    total = 0.0
    for i in range(cfg.num_blocks):
        rho = 1.0 if densities is None else densities[i]
        total += 28 * n * d * d + 4 * rho * n * n * d + 4 * n * 512 * d + 4 * 512 * cfg.crossattn_emb_channels * d
    return total


def natten_densities(cfg, grid) -> list[float]:
    from engine.models.attention import adapt_natten_params

    out = []
    for params in (cfg.natten_parameters or (None,) * cfg.num_blocks):
        if params is None:
            out.append(1.0)
            continue
        window, _stride, _dilation = adapt_natten_params(params, grid)
        out.append(math.prod(window) / math.prod(grid))
    return out


# ---------------------------------------------------------------------------------------------
# timing helpers


def cuda_time(fn, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return times


def free():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def gib(b: float) -> float:
    return b / 2**30


@torch.no_grad()
def random_weights_(module: torch.nn.Module, seed: int = 0) -> None:
    """Fast seeded random weights on the GPU (speed doesn't depend on values, but zeros would lie)."""
    params = list(module.parameters())
    g = torch.Generator(device=params[0].device if params else "cuda").manual_seed(seed)
    for p in params:
        if p.ndim >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=g)
        else:
            p.normal_(1.0, 0.1, generator=g)


# ---------------------------------------------------------------------------------------------
# the two sides


def build_ours(args, device, dtype):
    cfg = dit_config(args.model_size, natten=args.natten)
    overrides = {"attention_backend": args.attention_backend}
    if args.natten_impl:
        overrides["natten_impl"] = args.natten_impl
    cfg = dataclasses.replace(cfg, **overrides)
    with torch.device("meta"):
        net = MiniTrainDIT(cfg)
    net = net.to_empty(device=device).to(dtype)
    random_weights_(net)
    return net.eval(), cfg


def build_peer(our_net, cfg, device, dtype):
    from diffusers import CosmosTransformer3DModel

    from engine.models.diffusers_names import dit_state_dict_to_diffusers

    rope_scale = (cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio)
    with torch.device("meta"):
        peer = CosmosTransformer3DModel(
            in_channels=cfg.latent_channels + 1, out_channels=cfg.out_channels, num_attention_heads=cfg.num_heads,
            attention_head_dim=cfg.head_dim, num_layers=cfg.num_blocks, mlp_ratio=cfg.mlp_ratio,
            text_embed_dim=cfg.crossattn_emb_channels, adaln_lora_dim=cfg.adaln_lora_dim,
            max_size=(cfg.max_frames, cfg.max_img_h, cfg.max_img_w), patch_size=(1, 2, 2), rope_scale=rope_scale,
            concat_padding_mask=True, extra_pos_embed_type=None,
        )
    sd = dit_state_dict_to_diffusers({k: v for k, v in our_net.state_dict().items()})
    peer.load_state_dict(sd, strict=True, assign=True)
    return peer.to(device, dtype).eval()


def peer_sdpa_context(backend: str):
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return contextlib.nullcontext() if backend == "default" else sdpa_kernel([table[backend]])


def main(argv=None):
    args = parse_args(argv)
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    device, dtype = torch.device("cuda"), torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    w, h = resolutions.frame_size(args.resolution, args.aspect_ratio, args.model_size)
    frames = resolutions.num_frames(args.fps)
    T = resolutions.latent_frames(frames)
    H, W = h // 8, w // 8
    grid = (T, H // 2, W // 2)
    forwards = 2 * (args.num_steps + 1)
    res = {"label": args.label, "args": vars(args), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "size": [w, h], "frames": frames, "latent": [16, T, H, W], "tokens": math.prod(grid), "forwards": forwards}
    print(f"# {args.model_size} {w}x{h} {frames} frames -> latent {T}x{H}x{W}, {math.prod(grid)} tokens, "
          f"{forwards} forwards; GPU {res['gpu']}, torch {torch.__version__}", flush=True)

    free()
    net, cfg = build_ours(args, device, dtype)
    dens = natten_densities(cfg, grid) if args.natten else None
    flops = forward_flops(cfg, *grid, densities=dens)
    res["flops_per_forward"] = flops
    res["flop_floor_s"] = forwards * flops / (H100_BF16_TFLOPS * 1e12)

    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, 16, T, H, W, device=device, generator=g)
    ctx = torch.randn(1, 512, cfg.crossattn_emb_channels, device=device, generator=g).to(dtype)
    nctx = torch.randn(1, 512, cfg.crossattn_emb_channels, device=device, generator=g).to(dtype)
    mask = torch.zeros(1, 1, T, H, W, device=device)
    mask[:, :, :1] = 1

    # (b) the peer first, so its weights are gone before ours run at batch 2
    if args.peer == "diffusers":
        peer = build_peer(net, cfg, device, dtype)
        pad = torch.zeros(1, 1, h, w, device=device, dtype=dtype)
        tstep = torch.full((1, 1, T, 1, 1), 0.5, device=device, dtype=dtype)

        def peer_step():
            with torch.no_grad(), peer_sdpa_context(args.peer_backend):
                for e in (ctx, nctx):
                    peer(hidden_states=x.to(dtype), timestep=tstep, encoder_hidden_states=e, fps=None,
                         condition_mask=mask.to(dtype), padding_mask=pad, return_dict=False)

        torch.cuda.reset_peak_memory_stats()
        t = cuda_time(peer_step, 1, args.peer_steps or args.timed_steps)
        res["peer"] = {"step_s": statistics.median(t), "steps_s": t, "peak_gib": gib(torch.cuda.max_memory_allocated())}
        res["peer"]["denoise_s"] = res["peer"]["step_s"] * (args.num_steps + 1)
        print(f"peer  diffusers: {res['peer']['step_s']:.3f} s/step (2 forwards), peak {res['peer']['peak_gib']:.1f} GiB",
              flush=True)
        del peer
        free()

    # (a) ours, through the real sampler code path
    from engine import sampling

    if args.compile or args.cuda_graphs:
        from engine.pipeline import compile_dit  # the pipeline's own compile path, not a copy

        t0 = time.perf_counter()
        net = compile_dit(net, mode="reduce-overhead" if args.cuda_graphs else None)
        res["compile_setup_s"] = time.perf_counter() - t0
    conditioning = sampling.Conditioning(gt=torch.randn(1, 16, T, H, W, device=device, generator=g), num_frames=1)
    x0_fn = sampling.make_x0_fn(net, ctx, nctx, 7.0, conditioning, batch_cfg=not args.two_forward_cfg)
    sig = sampling.sigma_schedule(args.num_steps)
    state = {"x": x * 80.0, "x0_prev": None, "i": 1}

    def our_step():
        i = state["i"]
        with torch.inference_mode():
            x0 = x0_fn(state["x"], sig[i])
            prev = state["x0_prev"] if state["x0_prev"] is not None else x0
            state["x"] = sampling.ab2_step(state["x"], x0, prev, sig[i - 1], sig[i], sig[i + 1])
            state["x0_prev"] = x0

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    our_step()  # warm-up (and compilation)
    torch.cuda.synchronize()
    res["first_step_s"] = time.perf_counter() - t0
    from torch._dynamo.utils import counters

    frames_before = counters["frames"]["total"]
    t = cuda_time(our_step, 1, args.timed_steps)
    res["ours"] = {"step_s": statistics.median(t), "steps_s": t, "peak_gib": gib(torch.cuda.max_memory_allocated())}
    # frames dynamo (re)compiled after the first step: 0 when nothing recompiles across steps
    res["ours"]["frames_compiled_after_warmup"] = counters["frames"]["total"] - frames_before
    res["ours"]["graph_breaks"] = sum(counters["graph_break"].values())
    print(f"dynamo: {res['ours']['frames_compiled_after_warmup']} frames compiled after warm-up, "
          f"{res['ours']['graph_breaks']} graph breaks in the first step", flush=True)
    res["ours"]["denoise_s"] = res["ours"]["step_s"] * (args.num_steps + 1)
    print(f"ours          : {res['ours']['step_s']:.3f} s/step (CFG {'2 forwards' if args.two_forward_cfg else 'batch 2'}),"
          f" peak {res['ours']['peak_gib']:.1f} GiB; first step {res['first_step_s']:.1f} s", flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            our_step()
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70)
        print(table)
        res["profile"] = table

    latent = state["x"].to(dtype)
    del net, x0_fn, conditioning, state
    free()

    if args.vae or args.peer_vae:
        res.update(time_vae(args, latent, device, dtype, w, h, frames))

    for side in ("ours", "peer"):
        if side in res:
            r = res[side]
            decode = res.get(f"{side}_vae_decode_s", res.get("ours_vae_decode_s", 0.0))
            r["e2e_s"] = r["denoise_s"] + decode
            r["floor_share"] = res["flop_floor_s"] / r["denoise_s"]
    write_and_print(args, res)
    return res


def time_vae(args, latent, device, dtype, w, h, frames) -> dict:
    from engine.models.vae import WanVAE, vae_config

    out = {}
    vae = WanVAE(vae_config("wan2.1")).to(device, dtype).eval()
    random_weights_(vae, seed=3)
    with torch.inference_mode():
        torch.cuda.reset_peak_memory_stats()
        t = cuda_time(lambda: vae.decode(latent), 0, 1)
        out["ours_vae_decode_s"] = t[0]
        out["ours_vae_decode_peak_gib"] = gib(torch.cuda.max_memory_allocated())
        clip = torch.rand(1, 3, frames, h, w, device=device, dtype=dtype) * 2 - 1
        torch.cuda.reset_peak_memory_stats()
        t = cuda_time(lambda: vae.encode(clip), 0, 1)
        out["ours_vae_encode_s"] = t[0]
        out["ours_vae_encode_peak_gib"] = gib(torch.cuda.max_memory_allocated())
    print(f"ours VAE: decode {out['ours_vae_decode_s']:.2f} s (peak {out['ours_vae_decode_peak_gib']:.1f} GiB), "
          f"encode {out['ours_vae_encode_s']:.2f} s", flush=True)
    if args.peer_vae:
        from diffusers import AutoencoderKLWan

        peer = AutoencoderKLWan().to(device, dtype).eval()
        random_weights_(peer, seed=3)
        with torch.inference_mode():
            torch.cuda.reset_peak_memory_stats()
            t = cuda_time(lambda: peer.decode(latent, return_dict=False), 0, 1)
        out["peer_vae_decode_s"] = t[0]
        out["peer_vae_decode_peak_gib"] = gib(torch.cuda.max_memory_allocated())
        print(f"peer VAE: decode {t[0]:.2f} s (peak {out['peer_vae_decode_peak_gib']:.1f} GiB)", flush=True)
    del vae
    free()
    return out


def write_and_print(args, res) -> None:
    save_json(args.json, res)
    rows = []
    for side, name in (("ours", "ours"), ("peer", "diffusers")):
        if side not in res:
            continue
        r = res[side]
        rows.append((name, f"{r['step_s']:.3f}", f"{r['denoise_s']:.1f}", f"{r['e2e_s']:.1f}", f"{r['peak_gib']:.1f}",
                     f"{100 * r['floor_share']:.0f}%"))
    print()
    print(f"| {args.model_size} {args.resolution}p {args.fps}fps{' natten' if args.natten else ''} "
          f"| s/step (CFG) | denoise s ({args.num_steps}+1 steps) | + VAE decode s | peak GiB | FLOP floor share |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if "ours" in res and "peer" in res:
        print(f"\nours vs diffusers: {res['peer']['e2e_s'] / res['ours']['e2e_s']:.2f}x faster end to end "
              f"(FLOP floor {res['flop_floor_s']:.0f} s)")


if __name__ == "__main__":
    main()
