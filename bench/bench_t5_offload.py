"""An offloaded T5-11B encoder (fp32, 19.6 GB, on the CPU between prompts) encoding one new prompt on the GPU:
the engine's visit (`engine.memory.visiting`: weights copied over, the CPU copy left in place) against the
earlier way, `.to(gpu)` and `.to(cpu)` again, in the same process on the same weights.

    python bench/bench_t5_offload.py --json out.json
    python bench/bench_t5_offload.py --tiny --device cpu      # smoke run of this script

Prints a table last (seconds per new prompt, median of --reps; the first, warm-up call is not counted).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_e2e import t5_11b_encoder  # noqa: E402
from bench.save import save_json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny T5 (smoke run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from engine import memory
    from engine.models.text import TextEncoder, tiny_tokenizer

    device = torch.device(args.device)
    model = t5_11b_encoder(device, args.tiny).to("cpu")
    enc = TextEncoder(model, tiny_tokenizer(), name="t5-random")
    n_bytes = sum(b for b in memory.module_bytes(model).values())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def visit(i):
        return enc.encode([f"prompt {i}"], run_on=device)

    def there_and_back(i):
        enc.model.to(device)
        try:
            return enc.encode([f"prompt {i}"])
        finally:
            enc.model.to("cpu")

    rows, counter = [], [0]
    for name, fn in (("visit (engine)", visit), (".to(gpu) and back (before)", there_and_back)):
        times = []
        for rep in range(args.reps + 1):
            counter[0] += 1  # a new prompt each time: no cache hit
            sync()
            t0 = time.perf_counter()
            fn(counter[0])
            sync()
            if rep:
                times.append(time.perf_counter() - t0)
        rows.append({"way": name, "seconds": round(statistics.median(times), 3)})
        print(json.dumps(rows[-1]), flush=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n# T5 encoder {n_bytes / 1e9:.1f} GB offloaded, one new prompt; {gpu}, torch {torch.__version__}")
    print("| way | s per new prompt |\n|---|---|")
    for r in rows:
        print(f"| {r['way']} | {r['seconds']:.3f} |")
    save_json(args.json, {"gpu": gpu, "bytes": n_bytes, "rows": rows})


if __name__ == "__main__":
    main()
