"""The Wan2.1 VAE at 720p, alone: encode of the conditioning clip and decode of the denoised latent, with
cuDNN's autotuner off (torch's default) and on, and in channels-last-3d memory order.

    python bench/bench_vae.py --json out.json            # GPU, real sizes, random bf16 weights
    python bench/bench_vae.py --tiny --device cpu         # smoke run of this script

Why these variants: the VAE is a stack of causal 3-D convolutions run chunk by chunk (StreamState), so a
handful of conv shapes repeat on every chunk and every job of a resolution; an autotuned algorithm is
paid for once per shape and engine. Prints a table last (median seconds of CUDA-event-timed reps after a
warm-up, peak GiB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_attention import timed  # noqa: E402  (milliseconds: CUDA events, or wall clock off CUDA)
from bench.bench_video2world import free, gib, random_weights_  # noqa: E402
from bench.save import save_json  # noqa: E402
from engine.models.vae import WanVAE, vae_config  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny VAE and a 64x64 clip (smoke run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--frames", type=int, default=93)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--mp4", action="store_true",
                   help="also time decode + mp4 as the pipeline runs them: the mp4 written after the decode, "
                        "and encoded while it decodes (engine.io.VideoStream), alternating, wall clock")
    p.add_argument("--mp4_only", action="store_true",
                   help="only the --mp4 rows, in the pipeline's layout (a short device call: the layout sweep "
                        "before them takes over a minute at 720p)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h, w = (64, 64) if args.tiny else (704, 1280)
    vae = WanVAE(vae_config("tiny" if args.tiny else "wan2.1")).to(device, dtype).eval()
    if device.type == "cuda":
        random_weights_(vae, seed=3)
    else:
        vae.random_init_(3)
    g = torch.Generator(device=device).manual_seed(0)
    clip = torch.rand(1, 3, args.frames, h, w, generator=g, device=device, dtype=dtype) * 2 - 1
    latent_t = vae.latent_frames(args.frames)
    latent = torch.randn(1, vae.config.z_dim, latent_t, h // 8, w // 8, generator=g, device=device, dtype=dtype)

    rows = []
    for variant in () if args.mp4_only else VARIANTS:
        use_layout(vae, variant)
        for what, fn in (
            (f"encode {args.frames} frames", lambda: vae.encode(clip)),
            ("encode 1 frame", lambda: vae.encode(clip[:, :, :1])),
            ("encode 5 frames", lambda: vae.encode(clip[:, :, :5])),
            (f"decode {latent_t} latent frames", lambda: vae.decode(latent)),
        ):
            if device.type == "cuda":
                free()
            with torch.inference_mode():
                s = timed(fn, device, args.reps) / 1000.0
            peak = gib(torch.cuda.max_memory_allocated()) if device.type == "cuda" else float("nan")
            rows.append({"variant": variant, "what": what, "seconds": round(s, 4), "peak_gib": round(peak, 2)})
            print(json.dumps(rows[-1]), flush=True)
    if args.mp4 or args.mp4_only:
        use_layout(vae, PIPELINE_LAYOUT)
        rows += decode_and_write(vae, latent, device, args.reps)
    torch.backends.cudnn.benchmark = False

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n# Wan2.1 VAE {w}x{h}, {args.frames} frames, {dtype}, {gpu}, torch {torch.__version__}")
    print("| variant | what | s | peak GiB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['what']} | {r['seconds']:.3f} | {r['peak_gib']} |")
    save_json(args.json, {"gpu": gpu, "torch": torch.__version__, "rows": rows})


VARIANTS = ("default", "cudnn.benchmark", "benchmark + channels_last_3d")
PIPELINE_LAYOUT = VARIANTS[-1]  # what the pipeline decodes with (WanVAE.decoder_channels_last_, cudnn.benchmark on)


def use_layout(vae, variant: str) -> None:
    torch.backends.cudnn.benchmark = variant != "default"
    fmt = torch.channels_last_3d if "channels_last" in variant else torch.contiguous_format
    with torch.no_grad():  # only the 5-D conv weights have a 3-D channels-last order
        for prm in vae.parameters():
            if prm.ndim == 5:
                prm.data = prm.data.contiguous(memory_format=fmt)


def decode_and_write(vae, latent, device, reps: int) -> list[dict]:
    """Wall-clock seconds of decode + host copy + mp4 (16 fps), the two ways, alternated so that neither
    gets a warmer machine; the first pair is a warm-up (ffmpeg's start, cuDNN's autotuning)."""
    import statistics
    import tempfile
    import time

    from engine import io

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def after(path):
        video = vae.decode(latent).float()[0].cpu()
        io.write_video(path, video, 16)

    def streamed(path):
        with io.VideoStream(path, 16) as stream:
            video = vae.decode(latent, on_frames=lambda c: stream.feed(c[0].float())).float()[0].cpu()
            stream.close()
        return video

    times: dict[str, list[float]] = {"decode, then mp4": [], "decode with the mp4 streamed": []}
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        for rep in range(reps + 1):
            for name, fn in zip(times, (after, streamed)):
                sync()
                t0 = time.perf_counter()
                fn(Path(d) / f"{rep}.mp4")
                sync()
                if rep:
                    times[name].append(time.perf_counter() - t0)
    rows = []
    for name, ts in times.items():
        rows.append({"variant": "pipeline layout, wall clock", "what": name,
                     "seconds": round(statistics.median(ts), 4), "peak_gib": float("nan")})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
