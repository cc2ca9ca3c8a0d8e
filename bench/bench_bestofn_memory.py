"""GPU memory of a best-of-N job, phase by phase, with the real component sizes (random weights).

Runs `engine.modes.bestofn.run` (the engine's own code) on a pipeline holding the DiT (default 14B),
the Wan2.1 VAE and T5-11B's encoder (offloaded to the CPU, as the 14B preset does), and a critic that is
Cosmos-Reason1-7B's architecture (Qwen2.5-VL-7B: 28 layers, hidden 3584, 32-block vision tower) with
random weights. The critic's tokenizer is the small one built in code, so its embedding and LM head
are made smaller than the real 152,064-token ones; the missing bytes are allocated beside the critic
while it runs, so the peaks are those of the real model. Steps and trials are few: memory, not speed.

Prints each phase's peak and what the critic phase would peak at had the generator stayed on the GPU.

    python bench/bench_bestofn_memory.py --model_size 14B --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_e2e import INPUT, PROMPT, random_pipeline, t5_11b_encoder  # noqa: E402
from bench.bench_video2world import gib, random_weights_  # noqa: E402
from bench.save import save_json  # noqa: E402

REAL_VOCAB = 152064
REAL_HIDDEN = 3584


def reason_7b(device):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from engine.models import reason

    tok = reason.tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in reason.SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=REAL_HIDDEN, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=REAL_HIDDEN,
                           fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to_empty(device=device).to(torch.bfloat16).eval()
    random_weights_(model, seed=11)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    # embedding + LM head rows the small tokenizer does not need, in bf16
    missing = 2 * (REAL_VOCAB - len(tok)) * REAL_HIDDEN * 2
    return model, tok, missing


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="14B", choices=["2B", "14B"])
    p.add_argument("--num_generations", type=int, default=2)
    p.add_argument("--num_steps", type=int, default=1)
    p.add_argument("--critic_tokens", type=int, default=32)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device, dtype = torch.device("cuda"), torch.bfloat16

    from engine import events
    from engine.models import reason
    from engine.models.text import tiny_tokenizer
    from engine.modes import bestofn
    from engine.spec import GenerationSpec

    out_dir = Path(tempfile.mkdtemp(prefix="bon_mem_"))
    spec = GenerationSpec(mode="bestofn", model_size=args.model_size, num_steps=args.num_steps,
                          num_generations=args.num_generations, num_critic_trials=1, compile_dit=False,
                          offload_text_encoder=True, disable_guardrail=True, disable_prompt_refiner=True,
                          prompt=PROMPT, input_path=str(INPUT), save_path=str(out_dir))
    # spec.offload_text_encoder: T5 waits on the CPU; compile_dit is off, so no compilation either
    pipe = random_pipeline(spec, t5_11b_encoder(device), tiny_tokenizer(), device, dtype)
    torch.cuda.empty_cache()

    phases: list[dict] = []

    def measured(name, fn):
        def wrapper(*a, **k):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            torch.cuda.synchronize()
            phases.append({"phase": name, "seconds": round(time.perf_counter() - t0, 2),
                           "allocated_before_gib": round(gib(before), 2),
                           "peak_gib": round(gib(torch.cuda.max_memory_allocated()), 2),
                           "allocated_after_gib": round(gib(torch.cuda.memory_allocated()), 2)})
            print(json.dumps(phases[-1]), flush=True)
            # phase by phase: a run cut by its time limit still leaves what it measured
            save_json(args.json, {"model_size": args.model_size, "partial": True, "phases": phases})
            return out
        return wrapper

    pipe.generate = measured("generation (T5 visit, VAE encode, denoise, VAE decode)", pipe.generate)
    pipe.offload_generator = measured("generator to the CPU", pipe.offload_generator)
    pad: list[torch.Tensor] = []

    def critic(spec_, pipe_, ev):
        model, tok, missing = reason_7b(device)
        pad.append(torch.empty(missing, dtype=torch.uint8, device=device))
        judge = reason.ReasonModel(model, tok, device=str(device), emit=ev._emit, critic_max_new_tokens=args.critic_tokens)
        judge.critique_video = measured("critic trial (Reason1-7B, 1 trial)", judge.critique_video)
        return judge

    bestofn._critic = measured("critic load (Reason1-7B)", critic)
    moved = {}
    orig = pipe.offload_generator

    def offload_and_count():
        moved["bytes"] = orig()
        return moved["bytes"]

    pipe.offload_generator = offload_and_count
    bestofn.run(spec, events.Emitter(None), pipeline=pipe)
    pad.clear()

    critic_peak = max(p["peak_gib"] for p in phases if p["phase"].startswith("critic"))
    gen_peak = max(p["peak_gib"] for p in phases if p["phase"].startswith("generation"))
    res = {"gpu": torch.cuda.get_device_name(), "model_size": args.model_size, "phases": phases,
           "generator_gib_moved": gib(moved.get("bytes", 0)), "generation_peak_gib": gen_peak,
           "critic_peak_gib": critic_peak,
           "critic_peak_without_offload_gib": critic_peak + gib(moved.get("bytes", 0))}
    print()
    print("| phase | seconds | allocated before GiB | peak GiB | allocated after GiB |")
    print("|---|---|---|---|---|")
    for ph in phases:
        print(f"| {ph['phase']} | {ph['seconds']} | {ph['allocated_before_gib']} | {ph['peak_gib']} | "
              f"{ph['allocated_after_gib']} |")
    print(f"\npeak: generation {gen_peak:.1f} GiB, critic {critic_peak:.1f} GiB with the generator offloaded "
          f"({res['generator_gib_moved']:.1f} GiB moved); without the offload the critic phase would peak at "
          f"{res['critic_peak_without_offload_gib']:.1f} GiB")
    save_json(args.json, res)


if __name__ == "__main__":
    main()
