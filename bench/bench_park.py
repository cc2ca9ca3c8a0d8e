"""Parking the generator in host memory for best-of-N's critic: `.to("cpu")` and back (`memory.offload` /
`memory.onload`, the earlier way: pageable memory allocated on every trip) against `memory.HostParking`
(one page-locked buffer per module, allocated at the first park and reused), on a DiT of the real size
with random bf16 weights plus the Wan2.1 VAE (decoder channels-last, as the pipeline runs it).

    python bench/bench_park.py --model_size 14B --json out.json
    python bench/bench_park.py --model_size tiny --smoke_cpu     # runs this script's code only, no timing worth reading

Each way is timed twice, so the first park (which allocates and page-locks the buffer) and a later one
show apart. After each round trip the weights are checked bit for bit and the VAE's strides compared.
Prints a table last (seconds and GB/s per step).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_video2world import random_weights_  # noqa: E402
from bench.save import save_json  # noqa: E402


def build(model_size: str, device, dtype):
    from engine.models.dit import MiniTrainDIT, dit_config
    from engine.models.vae import WanVAE, vae_config

    with torch.device("meta"):
        dit = MiniTrainDIT(dataclasses.replace(dit_config(model_size)))
    dit = dit.to_empty(device=device).to(dtype).eval()
    random_weights_(dit)
    vae = WanVAE(vae_config("tiny" if model_size == "tiny" else "wan2.1")).to(device, dtype).eval()
    random_weights_(vae, seed=3)
    if device.type == "cuda":
        vae.decoder_channels_last_()
    return dit, vae


def fingerprint(modules) -> list:
    """Per tensor: an exact integer sum of its bits, and its strides; equal after a faithful round trip."""
    out = []
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            # per tensor (the largest 14B one: 8x its bytes as int64, ~1.6 GB), position-weighted so that
            # moved bytes show too; exact in int64 (255 * 251 * 1e9 < 2**63)
            bits = t.detach().contiguous().view(-1).view(torch.uint8).to(torch.int64)
            weight = torch.arange(bits.numel(), device=bits.device) % 251 + 1
            out.append((int(bits.sum()), int((bits * weight).sum()), t.stride(), str(t.dtype)))
            del bits, weight
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_size", default="14B", choices=["tiny", "2B", "14B"])
    p.add_argument("--trips", type=int, default=2, help="round trips per way (the first pays allocation)")
    p.add_argument("--smoke_cpu", action="store_true",
                   help="no GPU: 'park' CPU tensors into CPU buffers, to run this script's code only")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke_cpu:
        raise SystemExit("bench_park.py times GPU <-> host copies and needs CUDA, which this torch cannot see "
                         f"(torch {torch.__version__}); run it on a GPU machine, or pass --smoke_cpu to check the "
                         "script itself")
    from engine import memory

    device = torch.device("cpu") if args.smoke_cpu else torch.device("cuda")
    dtype = torch.float32 if args.smoke_cpu else torch.bfloat16

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    dit, vae = build(args.model_size, device, dtype)
    modules = (dit, vae)
    n_bytes = sum(sum(memory.module_bytes(m).values()) for m in modules)
    reference = fingerprint(modules)
    parking = memory.HostParking(log=print, **({"select": lambda t: True} if args.smoke_cpu else {}))

    ways = {
        ".to(cpu) and back (before)": (lambda m: memory.offload(m, empty_cache=False),
                                       lambda m: memory.onload(m, device)),
        "HostParking (engine)": (parking.park, lambda m: parking.unpark(m, device)),
    }
    rows = []
    for way, (park, unpark) in ways.items():
        for trip in range(1, args.trips + 1):
            for step, fn in (("park", park), ("unpark", unpark)):
                sync()
                t0 = time.perf_counter()
                for m in modules:
                    fn(m)
                sync()
                s = time.perf_counter() - t0
                if step == "park":
                    memory.release_cached()  # what the pipeline does next; not timed
                rows.append({"way": way, "step": f"{step} {trip}", "seconds": round(s, 3),
                             "gb_per_s": round(n_bytes / s / 1e9, 2)})
                print(json.dumps(rows[-1]), flush=True)
            if fingerprint(modules) != reference:
                raise SystemExit(f"{way}, trip {trip}: the weights or their strides changed on the round trip")
    pinned = {"dit": parking.pinned(dit), "vae": parking.pinned(vae)}
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke run)"
    print(f"\n# DiT {args.model_size} + Wan2.1 VAE, {n_bytes / 2**30:.1f} GiB; {gpu}, torch {torch.__version__}; "
          f"parking buffers page-locked: {pinned}")
    print("| way | step | s | GB/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['way']} | {r['step']} | {r['seconds']:.3f} | {r['gb_per_s']:.1f} |")
    parking.close()
    save_json(args.json, {"gpu": gpu, "model_size": args.model_size, "bytes": n_bytes, "pinned": pinned,
                           "rows": rows})


if __name__ == "__main__":
    main()
