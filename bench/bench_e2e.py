"""One whole Video2World job as a user runs it, phase by phase: ours vs diffusers' pipeline, one process.

Ours is `Video2WorldPipeline.generate` (the engine's own code) plus the mp4 write of `engine.modes`;
the peer is diffusers' `Cosmos2VideoToWorldPipeline.__call__` plus `diffusers.utils.export_to_video`.
Both get components of the real sizes with random weights (speed does not depend on the values):
  - T5-11B's encoder at its real size (24 layers, d_model 1024, d_ff 65536, 128 heads; fp32 as the
    reference runs it; one module shared by both sides), with a small tokenizer built in code (no
    tokenizer files here; tokenising is microseconds either way);
  - the DiT (2B or 14B, dense or the -natten patterns for ours), ours and diffusers' with the same
    weights copied by name;
  - the Wan2.1 VAE (ours) and diffusers' AutoencoderKLWan (theirs), each with random weights;
  - the conditioning image is assets/video2world/input0.jpg, resized to the model's frame size.
Guardrail and prompt refiner are off on both sides (the peer gets a pass-through checker object).

Ours runs all `--num_steps` steps by default (`--ours_steps` fewer extrapolates its denoise); the first
step includes torch.compile's compilation, so the table shows the cold job and the warm one (what a
warm engine's next job costs). With `--repeat 2` the warm row is the second job on the same engine,
every phase measured; with one run it is the first run with its first step replaced by the median step,
and its T5/VAE phases are still the first calls' (cuDNN autotuning: ~3-6 s more than warm). The peer runs
`--peer_steps` steps of its own loop and its denoise is extrapolated from its median step.

`--fast T`, `--fp8` and `--fp8_attention` add experimental runs on the same seed (the step cache; FP8
linears and/or cuDNN's FP8 attention on a second engine with the same random weights; the second engine with
the step cache when both kinds are given), each with its drift against the exact video.

    python bench/bench_e2e.py --model_size 2B --fps 16 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_video2world import build_peer, gib, random_weights_  # noqa: E402
from bench.save import save_json  # noqa: E402

INPUT = ROOT / "assets" / "video2world" / "input0.jpg"
PROMPT = ("A robotic arm in a bright workshop lifts a red cup from a wooden table and places it on a shelf, "
          "the camera slowly tracking the motion.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="2B", choices=["2B", "14B", "tiny"],
                   help="tiny: a CPU smoke run of this script at toy sizes (checks the script, times nothing real)")
    p.add_argument("--fps", type=int, default=16, choices=[10, 16])
    p.add_argument("--natten", action="store_true", help="ours: the -natten sparse patterns (720p 16:9)")
    from engine.models.attention import NATTEN_IMPLS

    p.add_argument("--natten_impl", default="auto", choices=NATTEN_IMPLS,
                   help="ours: NATTEN implementation (engine/models/attention.py)")
    p.add_argument("--num_steps", type=int, default=35)
    p.add_argument("--ours_steps", type=int, default=None, help="steps ours really runs (default: all)")
    p.add_argument("--peer", default="diffusers", choices=["diffusers", "none"])
    p.add_argument("--peer_steps", type=int, default=3, help="steps the peer really runs (extrapolated)")
    p.add_argument("--fast", type=float, default=None, metavar="THRESHOLD",
                   help="also run ours in fast mode (step cache at this threshold) on the same seed and "
                        "report its drift against the exact run")
    p.add_argument("--fp8", action="store_true",
                   help="also run ours with fp8_linears (a second engine, same weights) on the same seed and "
                        "report its drift against the exact run")
    p.add_argument("--fp8_attention", action="store_true",
                   help="the second engine (see --fp8) also runs attention_backend cudnn_fp8 (cuDNN's FP8 attention; "
                        "disabled for users since its 2B dense video drifted 0.88 on an H100, run here to examine it)")
    p.add_argument("--repeat", type=int, default=1, choices=[1, 2],
                   help="exact runs on one engine; 2 measures the warm job phase by phase")
    p.add_argument("--offload_text_encoder", action="store_true", help="ours: T5 lives on the CPU")
    p.add_argument("--no_stream", action="store_true",
                   help="ours: write the mp4 after the decode, not during it (the timing before VideoStream)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    # checked here, not after minutes of T5 and the first run: a device call is too scarce to lose
    if args.peer != "none" and not 2 <= args.peer_steps <= args.num_steps:
        p.error(f"--peer_steps: {args.peer_steps}; give 2..{args.num_steps} (--num_steps): the peer's first "
                "interval holds its T5 and VAE encode, so the steps timed are the ones after it")
    if args.ours_steps is not None and not 1 <= args.ours_steps <= args.num_steps:
        p.error(f"--ours_steps: {args.ours_steps}; give 1..{args.num_steps} (--num_steps)")
    return args


def t5_11b_encoder(device, tiny: bool = False):
    """T5-11B's encoder (the reference's text encoder) at its real size, random weights, fp32."""
    from transformers import T5Config, T5EncoderModel

    if tiny:
        from engine.models.text import tiny_text_encoder

        return tiny_text_encoder().model.to(device)
    cfg = T5Config(vocab_size=32128, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128,
                   relative_attention_num_buckets=32, feed_forward_proj="relu", dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.device("meta"):
        model = T5EncoderModel(cfg)
    model = model.to_empty(device=device).eval()
    random_weights_(model, seed=7)
    return model


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return gib(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0


def phase_table(rows: list[tuple[str, dict]]) -> str:
    keys = ["text_encode_s", "vae_encode_s", "denoise_s", "vae_decode_s", "write_s", "total_s"]
    out = ["| side | T5 encode | VAE encode | denoise | VAE decode | mp4 write | total |", "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        out.append(f"| {name} | " + " | ".join(f"{r[k]:.1f}" if k in r else "-" for k in keys) + " |")
    return "\n".join(out)


def random_pipeline(spec, t5, tok, device, dtype, emit=None, natten_impl: str = "auto"):
    """The engine's pipeline for `spec` with random weights at the real sizes instead of checkpoints: the
    DiT (compiled as the spec says), the Wan2.1 VAE (tiny for the smoke run) and the given T5 module."""
    from engine.models.dit import MiniTrainDIT, dit_config
    from engine.models.text import TextEncoder
    from engine.models.vae import WanVAE, vae_config
    from engine.pipeline import Video2WorldPipeline

    pipe = Video2WorldPipeline(spec, device=device, emit=emit)
    pipe.check_kernels()  # as load() does: an experimental kernel that cannot run here is refused, not skipped
    with torch.device("meta"):
        net = MiniTrainDIT(dataclasses.replace(dit_config(spec.model_size, spec.natten),
                                               attention_backend=spec.attention_backend, natten_impl=natten_impl))
    pipe.dit = net.to_empty(device=device).to(dtype).eval()
    random_weights_(pipe.dit)
    pipe.quantize_dit()  # as load() does: nothing unless the spec asks for fp8_linears
    pipe._compile_dit()
    pipe.vae = WanVAE(vae_config("tiny" if spec.model_size == "tiny" else "wan2.1")).to(device, dtype).eval()
    random_weights_(pipe.vae, seed=3)
    pipe.prepare_vae()  # what load() does to a checkpoint's VAE
    pipe.text_encoder = TextEncoder(t5.to("cpu" if spec.offload_text_encoder else device), tok, name="t5-11b-random")
    return pipe


def run_ours(args, t5, tok, device, dtype, out_dir: Path, fast: float | None = None, pipe=None,
             fp8: bool = False, fp8_attention: bool = False, name: str = "ours"):
    from engine import events
    from engine.modes.video2world import open_stream, write_result
    from engine.spec import GenerationSpec

    steps = args.ours_steps or args.num_steps
    spec = GenerationSpec(model_size=args.model_size, fps=args.fps, natten=args.natten, num_steps=steps,
                          disable_guardrail=True, disable_prompt_refiner=True, prompt=PROMPT,
                          input_path=str(INPUT), offload_text_encoder=args.offload_text_encoder,
                          save_path=str(out_dir / f"{name}.mp4"), fp8_linears=fp8,
                          attention_backend="cudnn_fp8" if fp8_attention else "auto",
                          **({"fast_threshold": fast} if fast else {}))
    evs: list[dict] = []
    built = {}
    if pipe is None:
        t0 = time.perf_counter()
        pipe = random_pipeline(spec, t5, tok, device, dtype, emit=evs.append, natten_impl=args.natten_impl)
        built["build_random_s"] = time.perf_counter() - t0
    else:
        pipe.set_emit(evs.append)
        pipe.text_encoder.clear_cache()  # each run pays its T5 encode, as a new prompt would
    sync()
    reset_peak()
    t0 = time.perf_counter()
    # as the mode runs it: with the guardrail off the mp4 is encoded while the VAE decodes, so "write_s"
    # is what is left of it after the decode
    stream = None if args.no_stream else open_stream(spec, Path(spec.save_path))
    result = pipe.generate(spec, spec.input_path, seed=0, video_stream=stream)
    t1 = time.perf_counter()
    write_result(spec, result, Path(spec.save_path), events.Emitter(evs.append), stream=stream)
    r = dict(result.timings)
    r["write_s"] = time.perf_counter() - t1
    r["total_s"] = time.perf_counter() - t0
    r["peak_gib"] = peak_gib()
    r.update(built)
    step_s = [e["seconds"] for e in evs if e.get("event") == "step"]
    r["step_seconds"] = step_s
    median = statistics.median(step_s[1:] or step_s)
    r["median_step_s"] = median
    r["first_step_s"] = step_s[0]
    calls = args.num_steps + 1
    if steps != args.num_steps:  # extrapolate the denoise to the full schedule
        r["denoise_measured_s"] = r["denoise_s"]
        r["denoise_s"] = r["denoise_s"] + (calls - len(step_s)) * median
        r["total_s"] = r["total_s"] + (calls - len(step_s)) * median
        r["extrapolated"] = True
    # a warm engine's next job: compilation is paid once per engine, not per job
    r["warm_total_s"] = r["total_s"] - (step_s[0] - median)
    skipped = [e for e in evs if e.get("event") == "log" and "step cache" in str(e.get("message", ""))]
    if skipped:
        r["cache_log"] = [e["message"] for e in skipped]
    return r, result, pipe


def run_peer(args, t5, tok, our_net_cfg, device, dtype, w, h, frames, out_dir: Path):
    from diffusers import AutoencoderKLWan, Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler
    from diffusers.utils import export_to_video
    from PIL import Image

    from engine.models.dit import MiniTrainDIT
    from tests.diffusers_compat import NoSafetyCheck  # the pass-through checker the parity tests use

    with torch.device("meta"):
        net = MiniTrainDIT(our_net_cfg)
    net = net.to_empty(device=device).to(dtype)
    random_weights_(net)
    transformer = build_peer(net, our_net_cfg, device, dtype)
    del net
    vae = (AutoencoderKLWan(base_dim=8) if args.model_size == "tiny" else AutoencoderKLWan()).to(device, dtype).eval()
    random_weights_(vae, seed=3)
    # diffusers is run as its users load it (torch_dtype=bf16 for the whole pipeline): its pipeline feeds the
    # text encoder's output to the transformer uncast, so an fp32 T5 would not even run
    t5 = t5.to(device) if dtype == torch.float32 else t5_11b_encoder(device).to(dtype)
    pipe = Cosmos2VideoToWorldPipeline(text_encoder=t5, tokenizer=tok, transformer=transformer, vae=vae,
                                       scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
                                       safety_checker=NoSafetyCheck())
    pipe.set_progress_bar_config(disable=True)
    times: dict[str, float] = {}

    def timed(obj, name, key):
        fn = getattr(obj, name)

        def wrapper(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync()
            times[key] = times.get(key, 0.0) + time.perf_counter() - t0
            return out

        setattr(obj, name, wrapper)

    timed(pipe, "encode_prompt", "text_encode_s")
    timed(vae, "encode", "vae_encode_s")
    timed(vae, "decode", "vae_decode_s")
    ticks: list[float] = []

    def on_step(p, i, t, kw):
        sync()
        ticks.append(time.perf_counter())
        return kw

    image = Image.open(INPUT).convert("RGB")
    reset_peak()
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = pipe(image=image, prompt=PROMPT, negative_prompt="blurry, distorted", height=h, width=w,
                   num_frames=frames, num_inference_steps=args.peer_steps, guidance_scale=7.0, fps=args.fps,
                   output_type="np", callback_on_step_end=on_step, generator=torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    export_to_video(out.frames[0], str(out_dir / "diffusers.mp4"), fps=args.fps)
    r = dict(times)
    r["write_s"] = time.perf_counter() - t1
    measured = time.perf_counter() - t0
    starts = [t0] + ticks[:-1]
    steps = [b - a for a, b in zip(starts, ticks)][1:]  # the first interval holds T5 and the VAE encode
    median = statistics.median(steps)
    # diffusers makes one transformer call pair per step and no extra clean pass: num_steps calls
    r["median_step_s"] = median
    r["step_seconds"] = steps
    r["denoise_s"] = median * args.num_steps
    r["total_s"] = measured + (args.num_steps - args.peer_steps) * median
    r["measured_s"] = measured
    r["extrapolated"] = True
    r["peak_gib"] = peak_gib()
    del pipe, transformer, vae
    return r


def drift(exact, fast) -> dict:
    a, b = exact.latent.double(), fast.latent.double()
    va, vb = exact.video.double(), fast.video.double()
    mse = float(((va - vb) ** 2).mean())
    return {"latent_rel_l2": float((a - b).norm() / a.norm()),
            "video_rel_l2": float((va - vb).norm() / va.norm()),
            "video_psnr_db": float(10 * torch.log10(torch.tensor(4.0 / mse))) if mse > 0 else float("inf")}


def main(argv=None):
    args = parse_args(argv)
    tiny = args.model_size == "tiny"
    assert tiny or torch.cuda.is_available(), "this benchmark needs a CUDA GPU (or --model_size tiny, a CPU smoke run)"
    device, dtype = (torch.device("cpu"), torch.float32) if tiny else (torch.device("cuda"), torch.bfloat16)
    from engine import resolutions
    from engine.models.dit import dit_config
    from engine.models.text import tiny_tokenizer

    w, h = resolutions.frame_size("720", "16:9", args.model_size)
    frames = resolutions.num_frames(args.fps, args.model_size)
    tok = tiny_tokenizer()
    t0 = time.perf_counter()
    t5 = t5_11b_encoder(device, tiny)
    from engine.models.attention import auto_kernel

    res = {"args": vars(args), "gpu": torch.cuda.get_device_name() if not tiny else "cpu", "torch": torch.__version__, "size": [w, h],
           "attention_kernel": auto_kernel(device),
           "frames": frames, "t5_params": sum(p.numel() for p in t5.parameters()),
           "t5_build_s": time.perf_counter() - t0}
    print(f"# {args.model_size} {w}x{h} {frames} frames @ {args.fps} fps{' natten' if args.natten else ''}; "
          f"T5 {res['t5_params'] / 1e9:.2f}B params; {res['gpu']}, torch {torch.__version__}; "
          f"dense attention kernel: {res['attention_kernel']}", flush=True)
    out_dir = Path(tempfile.mkdtemp(prefix="bench_e2e_"))

    if args.peer == "diffusers":
        if tiny:  # the CPU smoke run: this venv has no torchvision (the GPU image has it); the tests' stand-in
            from tests.diffusers_compat import patch_diffusers_cosmos

            patch_diffusers_cosmos()
        if args.natten:
            print("(diffusers has no NATTEN: its row is the dense model)", flush=True)
        res["peer"] = run_peer(args, t5, tok, dit_config(args.model_size, False), device, dtype, w, h, frames, out_dir)
        print("peer", json.dumps({k: v for k, v in res["peer"].items() if k != "step_seconds"}), flush=True)
        save_json(args.json, res)
        gc.collect()
        if not tiny:
            torch.cuda.empty_cache()

    def show(key):
        print(key, json.dumps({k: v for k, v in res[key].items() if k != "step_seconds"}), flush=True)
        save_json(args.json, res)

    res["ours"], exact, pipe = run_ours(args, t5, tok, device, dtype, out_dir)
    show("ours")
    if args.repeat == 2:
        res["ours_warm"], _, _ = run_ours(args, t5, tok, device, dtype, out_dir, pipe=pipe, name="ours_warm")
        show("ours_warm")
    if args.fast:
        res["fast"], fast, _ = run_ours(args, t5, tok, device, dtype, out_dir, fast=args.fast, pipe=pipe, name="fast")
        res["fast"]["drift"] = drift(exact, fast)
        show("fast")
    fp8 = dict(fp8=args.fp8, fp8_attention=args.fp8_attention)
    if args.fp8_attention:  # disabled for users (engine/spec.py _fp8_attention); this run is how it gets examined
        from engine.spec import UNSAFE_FP8_ATTENTION_ENV

        os.environ[UNSAFE_FP8_ATTENTION_ENV] = "1"
    what = " ".join(f for f, on in (("--fp8", args.fp8), ("--fp8_attention", args.fp8_attention)) if on)
    if args.fp8 or args.fp8_attention:
        # fp8_linears / attention_backend are build settings: a second engine, built after the first is gone (the 14B twice
        # would not fit beside T5 on an 80 GB card); random_weights_ is seeded, so the weights are the same
        pipe = None
        gc.collect()
        if not tiny:
            torch.cuda.empty_cache()
        res["fp8"], got, pipe = run_ours(args, t5, tok, device, dtype, out_dir, **fp8, name="fp8")
        res["fp8"]["drift"] = drift(exact, got)
        show("fp8")
        if args.fast:
            res["fp8_fast"], got, _ = run_ours(args, t5, tok, device, dtype, out_dir, fast=args.fast, pipe=pipe,
                                               **fp8, name="fp8_fast")
            res["fp8_fast"]["drift"] = drift(exact, got)
            show("fp8_fast")

    def warm(r):  # one run: its first (compiling) step replaced by the median step
        return {**r, "total_s": r["warm_total_s"], "denoise_s": r["denoise_s"] - r["first_step_s"] + r["median_step_s"]}

    rows = [("ours (cold: compile in step 1)", res["ours"])]
    if "ours_warm" in res:
        rows.append(("ours (warm engine: the second job, every phase measured)", res["ours_warm"]))
    else:
        rows.append(("ours (warm engine: first step replaced by the median; T5/VAE phases cold)", warm(res["ours"])))
    if "fast" in res:
        rows.append((f"ours --fast {args.fast} (warm)", {**res["fast"], "total_s": res["fast"]["warm_total_s"]}))
    if "fp8" in res:
        rows.append((f"ours {what} (first step replaced by the median; T5/VAE warm)", warm(res["fp8"])))
    if "fp8_fast" in res:
        rows.append((f"ours {what} --fast {args.fast} (warm)", {**res["fp8_fast"], "total_s": res["fp8_fast"]["warm_total_s"]}))
    if "peer" in res:
        rows.append((f"diffusers ({args.peer_steps} steps run, extrapolated)", res["peer"]))
    print()
    print(phase_table(rows))
    if "peer" in res:
        res["speedup_cold"] = res["peer"]["total_s"] / res["ours"]["total_s"]
        res["speedup_warm"] = res["peer"]["total_s"] / res.get("ours_warm", res["ours"])["warm_total_s"]
        print(f"\nours vs diffusers end to end: {res['speedup_cold']:.2f}x cold, {res['speedup_warm']:.2f}x warm")
    save_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
