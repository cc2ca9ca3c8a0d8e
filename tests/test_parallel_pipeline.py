"""The seed's multi-GPU command line, on CPU: `torchrun --nproc_per_node 2 -m engine.video2world ...
--num_gpus 2` (gloo) writes the same video as one process, and only rank 0 writes."""

from __future__ import annotations

import socket
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from engine import io, resolutions

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process(mode: str, argv: list[str]) -> int:
    """The single-process reference, run in this process (the same cli_args.main a `python -m` run calls;
    a second interpreter would cost ~8 s of imports). Only the torchrun side needs its own processes."""
    from engine.cli_args import main

    return main(mode, argv, emit=lambda ev: None)


def _args(tmp_path, save: str, num_gpus: int, mode_args=()) -> list[str]:
    img = io.ensure_demo_input(tmp_path / "in.png")
    return ["--model_size", "tiny", "--num_steps", "1", "--disable_guardrail", "--disable_prompt_refiner",
            "--prompt", "a robot arm picks up a red cup", "--input_path", str(img), "--save_path", save,
            "--num_gpus", str(num_gpus), *mode_args]


def test_torchrun_two_ranks_writes_the_single_process_video(tmp_path):
    single = str(tmp_path / "one.mp4")
    assert _one_process("video2world", _args(tmp_path, single, 1)) == 0
    multi = str(tmp_path / "two.mp4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "engine.video2world", *_args(tmp_path, multi, 2)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                             "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = iio.imread(single).astype(int), iio.imread(multi).astype(int)
    assert a.shape == b.shape == (resolutions.num_frames(16, "tiny"), 64, 112, 3)
    # Two ranks change only the order of fp32 reductions (attention over gathered sequence shards), so the
    # latents are rounding apart (tests/tolerance.py: < 1e-3 relative for the tiny DiT); through the VAE
    # that is well under one 8-bit step (1/127.5 of the [-1, 1] range), and rounding to uint8 can then put
    # a pixel at most one step away.
    assert np.abs(a - b).max() <= 1
    assert sorted(p.name for p in tmp_path.glob("two*")) == ["two.json", "two.mp4", "two.txt"]


def test_num_gpus_without_torchrun_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "engine.video2world", *_args(tmp_path, str(tmp_path / "x.mp4"), 2)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "num_gpus" in line and "torchrun" in line


def test_torchrun_long_video_matches_one_process(tmp_path):
    """lvg under two ranks: chunk k>0 is conditioned on frames only rank 0 decoded (handed over in memory)."""
    lvg = ["--num_chunks", "2"]
    one = str(tmp_path / "one.mp4")
    assert _one_process("lvg", _args(tmp_path, one, 1, lvg)) == 0
    two = str(tmp_path / "two.mp4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "engine.video2world_lvg", *_args(tmp_path, two, 2, lvg)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = iio.imread(one).astype(int), iio.imread(two).astype(int)
    assert a.shape == b.shape == (resolutions.lvg_total_frames(2, 1, model_size="tiny"), 64, 112, 3)
    # as above per chunk, and chunk 2 starts from chunk 1's (rounding-apart) frames: two sub-step
    # differences in a chain, at most two 8-bit steps after quantisation
    assert np.abs(a - b).max() <= 2
