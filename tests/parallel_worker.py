"""One rank of the context-parallel tests (tests/test_parallel.py). Started by torchrun or by the test with
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); CPU and gloo only.

    python tests/parallel_worker.py run OUT_DIR    every case of CASES; each rank saves OUT_DIR/rank<r>.pt
    python tests/parallel_worker.py die            rank 1 exits after the first sampler step
    python tests/parallel_worker.py hang           rank 1 stops answering after the first sampler step

The case builders are imported by the test as well, to compute the single-process reference.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from engine import parallel, sampling  # noqa: E402
from engine.models.dit import MiniTrainDIT, dit_config  # noqa: E402

# name -> (config builder, latent frames T); latent 8x8 -> a 4x4 token grid.
# T=3 and T=5 do not divide by 2 or 4 ranks (padding); 3 heads do not divide by 2 or 4, 2 heads not by 4.
CASES = {
    "dense_T4": ("dense", 4),
    "dense_T3": ("dense", 3),
    "heads3_T5": ("heads3", 5),
    "natten_T4": ("natten", 4),
    "natten_T3": ("natten", 3),
}
H = W = 8
STEPS = 3


def build(kind: str) -> MiniTrainDIT:
    if kind == "dense":
        cfg = dit_config("tiny")
    elif kind == "natten":
        cfg = dit_config("tiny", natten=True)  # block 0 strided-local NATTEN, block 1 dense
    elif kind == "heads3":
        cfg = replace(dit_config("tiny"), model_channels=48, num_heads=3)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    return MiniTrainDIT(cfg).random_init_(seed=7).eval()


def inputs(T: int, seed: int = 11) -> dict:
    g = torch.Generator().manual_seed(seed + T)
    B = 2
    cmask = torch.zeros(B, 1, T, H, W)
    cmask[:, :, 0] = 1
    return {
        "x": torch.randn(B, 16, T, H, W, generator=g),
        "timesteps": torch.rand(B, T, generator=g),
        "ctx": torch.randn(B, 6, 32, generator=g),
        "cmask": cmask,
        "padding_mask": torch.zeros(1, 1, 2 * H, 2 * W),
        "gt": torch.randn(1, 16, T, H, W, generator=g),
        "cond": torch.randn(1, 6, 32, generator=g),
        "uncond": torch.randn(1, 6, 32, generator=g),
    }


def forward(net, inp: dict) -> torch.Tensor:
    with torch.inference_mode():  # as the pipeline runs it
        return net(inp["x"], inp["timesteps"], inp["ctx"], inp["cmask"], padding_mask=inp["padding_mask"])


def sample(net, inp: dict, T: int, callback=None) -> torch.Tensor:
    cond = sampling.Conditioning(gt=inp["gt"], num_frames=1)
    x0_fn = sampling.make_x0_fn(net, inp["cond"], inp["uncond"], 3.0, cond, batch_cfg=True)
    noise = sampling.initial_noise((1, 16, T, H, W), seed=5)
    with torch.inference_mode():  # as the pipeline runs it
        return sampling.sample(x0_fn, noise, sampling.sigma_schedule(STEPS), callback=callback)


def run_cases(out_dir: str) -> None:
    st = parallel.maybe_init_from_env(int(os.environ["WORLD_SIZE"]))
    assert st is not None and st.backend == "gloo"
    results = {"rank": st.rank, "world": st.world_size}
    for name, (kind, T) in CASES.items():
        net = parallel.wrap_dit(build(kind))
        assert isinstance(net, parallel.ContextParallel)
        inp = inputs(T)
        results[name] = {"forward": forward(net, inp), "sample": sample(net, inp, T)}
        net.unwrap()
    # helpers the pipeline uses around the sampler
    results["shared"] = parallel.share_from_main(lambda: {"text": "refined", "rank": parallel.rank()})
    try:
        parallel.share_from_main(lambda: 1 / 0)
        results["share_error"] = None
    except (parallel.RemoteFailure, ZeroDivisionError) as exc:
        results["share_error"] = f"{type(exc).__name__}: {exc}"
    results["any_rank"] = parallel.any_rank(parallel.rank() == st.world_size - 1)
    results["none_flag"] = parallel.any_rank(False)
    mine = torch.full((3,), float(parallel.rank()))
    results["broadcast"] = parallel.broadcast_tensor(mine, src=0)
    results["is_main"] = parallel.is_main()
    # the engine server's request hand-over: rank 0 sends, the others wait for it
    got = []
    for req in ({"op": "run", "job": 7, "spec": {"num_gpus": st.world_size}}, None):
        if parallel.is_main():
            parallel.send_request(req)
            got.append(req)
        else:
            got.append(parallel.next_request())
    results["requests"] = got
    torch.save(results, os.path.join(out_dir, f"rank{st.rank}.pt"))
    parallel.barrier()
    parallel.shutdown()


def run_failure(how: str) -> None:
    st = parallel.maybe_init_from_env(int(os.environ["WORLD_SIZE"]))
    net = parallel.wrap_dit(build("dense"))
    T = 4
    inp = inputs(T)

    def on_step(step, total, seconds):
        if st.rank == 1:
            print(f"rank 1 going away ({how}) after step {step}", file=sys.stderr, flush=True)
            if how == "die":
                os._exit(3)
            time.sleep(3600)

    sample(net, inp, T, callback=on_step)
    print("rank finished sampling", file=sys.stderr, flush=True)  # must not happen on rank 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd = sys.argv[1]
    if cmd == "run":
        run_cases(sys.argv[2])
    elif cmd in ("die", "hang"):
        run_failure(cmd)
    else:
        raise SystemExit(f"unknown command {cmd!r}")
