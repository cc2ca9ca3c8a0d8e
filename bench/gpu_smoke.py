"""The real pipeline code path on a CUDA GPU: bf16, compiled blocks, sparse NATTEN, VAE encode/decode.

1. tiny profile, dense and NATTEN: Video2WorldPipeline.generate on CUDA; outputs finite, conditioned latent
   frames equal the encoded input, GPU bf16 latent close to the CPU fp32 one (same seeds).
2. real sizes: the 2B DiT and the full Wan2.1 VAE with random weights (a T5 with 1024-wide output stands in
   for T5-11B, whose 11B weights can't be made up quickly), 720p 16:9, 93 frames, a few steps: the time per
   step through the pipeline, VAE times, peak memory.

    python bench/gpu_smoke.py --steps 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.save import save_json  # noqa: E402
from engine import io  # noqa: E402
from engine.pipeline import Video2WorldPipeline  # noqa: E402
from engine.spec import GenerationSpec  # noqa: E402


def tiny_run(tmp: Path, natten: bool, device: str):
    spec = GenerationSpec(model_size="tiny", num_steps=3, natten=natten, disable_guardrail=True,
                          disable_prompt_refiner=True, prompt="a robot arm picks up a red cup",
                          input_path=str(io.ensure_demo_input(tmp / "in.png")))
    evs = []
    pipe = Video2WorldPipeline(spec, device=torch.device(device), emit=evs.append).load()
    res = pipe.generate(spec, spec.input_path, seed=0)
    return res, evs


def real_size(steps: int) -> dict:
    from transformers import T5Config, T5EncoderModel

    from bench.bench_video2world import random_weights_
    from engine.models.dit import MiniTrainDIT, dit_config
    from engine.models.text import TextEncoder, tiny_tokenizer
    from engine.models.vae import WanVAE, vae_config

    dev, dt = torch.device("cuda"), torch.bfloat16
    spec = GenerationSpec(model_size="2B", num_steps=steps, disable_guardrail=True, disable_prompt_refiner=True,
                          prompt="a robot arm picks up a red cup", input_path=str(io.ensure_demo_input("/tmp/in.png")))
    evs = []
    pipe = Video2WorldPipeline(spec, device=dev, emit=evs.append)
    with torch.device("meta"):
        dit = MiniTrainDIT(dit_config("2B"))
    pipe.dit = dit.to_empty(device=dev).to(dt).eval()
    random_weights_(pipe.dit)
    pipe._compile_dit()
    pipe.vae = WanVAE(vae_config("wan2.1")).to(dev, dt).eval()
    random_weights_(pipe.vae, seed=2)
    tok = tiny_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=1024, d_kv=64, d_ff=2048, num_layers=2, num_heads=16,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).to(dev).eval()
    pipe.text_encoder = TextEncoder(t5, tok, name="t5-standin-1024")
    t0 = time.perf_counter()
    res = pipe.generate(spec, spec.input_path, seed=0)
    wall = time.perf_counter() - t0
    steps_s = [e["seconds"] for e in evs if e["event"] == "step"]
    return {"wall_s": wall, "timings": res.timings, "step_seconds": steps_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "video": list(res.video.shape),
            "finite": bool(torch.isfinite(res.video).all())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    tmp = Path("/tmp/smoke")
    tmp.mkdir(exist_ok=True)
    out = {}
    for natten in (False, True):
        gpu, evs = tiny_run(tmp, natten, "cuda")
        cpu, _ = tiny_run(tmp, natten, "cpu")
        rel = float((gpu.latent - cpu.latent).norm() / cpu.latent.norm())
        key = "tiny_natten" if natten else "tiny_dense"
        out[key] = {"finite": bool(torch.isfinite(gpu.video).all()), "latent_rel_err_gpu_bf16_vs_cpu_fp32": rel,
                    "timings": gpu.timings, "events": sorted({e["event"] for e in evs})}
        print(key, json.dumps(out[key]), flush=True)
        assert out[key]["finite"] and rel < 0.1, f"{key}: GPU result is off ({rel})"
    out["real_2b_720p"] = real_size(args.steps)
    print("real_2b_720p", json.dumps(out["real_2b_720p"]), flush=True)
    save_json(args.json, out)


if __name__ == "__main__":
    main()
