"""The bench scripts run, end to end, at toy sizes on the CPU, with the flags bench/run_h200.sh gives them.

Device time is scarce (30 minutes a session, a machine that may not come): a script that breaks on an
argument or an import must break here, not in the device call. What is checked is the shape of each
script's JSON and that its own checks passed (nonzero exit otherwise); no time is compared, since CPU
timings of toy models say nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, script: str, *args: str) -> dict:
    out = tmp_path / "out.json"
    # the scripts' scratch videos go under tmp_path, not the machine's /tmp
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def seconds(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x >= 0


def test_bench_e2e_natten_with_fast_mode_reports_every_phase_and_the_drift(tmp_path):
    r = run_bench(tmp_path, "bench_e2e.py", "--model_size", "tiny", "--num_steps", "2", "--natten", "--fast", "0.1",
                  "--fp8", "--repeat", "2", "--peer", "none")
    assert r["args"]["natten"] and r["frames"] > 1
    for side in ("ours", "ours_warm", "fast", "fp8", "fp8_fast"):
        for k in ("text_encode_s", "vae_encode_s", "denoise_s", "vae_decode_s", "write_s", "total_s"):
            assert seconds(r[side][k]), (side, k, r[side][k])
    assert len(r["ours"]["step_seconds"]) == 3  # 2 steps + the final clean pass
    assert isinstance(r["fast"]["skipped_calls"], int) and r["fast"]["drift"]
    # the FP8 engine ran FP8 GEMMs: its video is not the exact one
    for side in ("fp8", "fp8_fast"):
        assert 0 < r[side]["drift"]["video_rel_l2"] < math.inf, (side, r[side]["drift"])


def test_bench_e2e_beside_diffusers_extrapolates_the_peer_from_its_steps(tmp_path):
    r = run_bench(tmp_path, "bench_e2e.py", "--model_size", "tiny", "--num_steps", "3", "--ours_steps", "2",
                  "--peer_steps", "2")
    assert r["peer"]["extrapolated"] and len(r["peer"]["step_seconds"]) == 1  # the first interval is not a step
    assert r["ours"]["extrapolated"] and seconds(r["speedup_warm"]) and r["speedup_warm"] > 0


def test_bench_e2e_refuses_a_peer_step_count_it_cannot_time_before_running_anything(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--model_size", "tiny",
                           "--peer_steps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--peer_steps: 1; give 2..35" in proc.stderr


@pytest.mark.parametrize("script,args,ways", [
    ("bench_park.py", ("--model_size", "tiny", "--smoke_cpu"), {".to(cpu) and back (before)", "HostParking (engine)"}),
    ("bench_t5_offload.py", ("--tiny", "--device", "cpu"), {"visit (engine)", ".to(gpu) and back (before)"}),
])
def test_bench_offload_scripts_time_both_ways(tmp_path, script, args, ways):
    r = run_bench(tmp_path, script, *args)
    assert {row["way"] for row in r["rows"]} == ways
    assert all(seconds(row["seconds"]) for row in r["rows"])


def test_bench_vae_times_the_decode_with_and_without_the_streamed_mp4(tmp_path):
    r = run_bench(tmp_path, "bench_vae.py", "--tiny", "--device", "cpu", "--reps", "1", "--mp4", "--frames", "9")
    layout = {row["what"] for row in r["rows"] if row["variant"] == "pipeline layout, wall clock"}
    assert layout == {"decode, then mp4", "decode with the mp4 streamed"}
    assert all(seconds(row["seconds"]) for row in r["rows"])
    # the short form for a device call: the same two rows and nothing else
    only = run_bench(tmp_path, "bench_vae.py", "--tiny", "--device", "cpu", "--reps", "1", "--mp4_only", "--frames", "9")
    assert [row["what"] for row in only["rows"]] == ["decode, then mp4", "decode with the mp4 streamed"]


def test_bench_fp8_times_every_converted_layer_shape_and_reports_its_error(tmp_path):
    r = run_bench(tmp_path, "bench_fp8.py", "--model_size", "tiny", "--reps", "2")
    assert [row["per_block"] for row in r["rows"]] == [6, 1, 1]  # the 8 FP8_LINEARS of a block
    for row in r["rows"]:
        for k in ("bf16", "fp8_gemm", "fp8_layer"):
            assert seconds(row[f"{k}_ms"]), (row["layer"], k)
        # fp32 on the CPU: ~sqrt(K)·2^-24 ~ 1e-6 normwise. FP8: each operand rounded within 2^-4 relative (3
        # mantissa bits), errors of random sign on random data: ~2^-4·sqrt(2/3) ~ 0.05 normwise; 0.1 leaves 2x
        assert row["bf16_rel_err"] < 1e-5 < row["fp8_layer_rel_err"] < 0.1, row
    assert isinstance(r["projected_saving_per_step_s"], float)


def test_bench_fp8_attention_reports_every_layer_with_the_format_emulation(tmp_path):
    r = run_bench(tmp_path, "bench_fp8_attention.py", "--model_size", "tiny", "--sample", "64")
    assert [row["layer"] for row in r["layers"]] == list(range(len(r["layers"]))) and r["layers"]
    for row in r["layers"]:
        assert "bf16 with head size 128" in row["fp8_problem"]  # fp32 tiny on the CPU: the kernel's rows say why not
        # the same fp32 attention summed in another order: ~1e-7 normwise
        assert row["auto_rel"] < 1e-5, row
        # e4m3 keeps 3 mantissa bits: Q, K, P and V each rounded within 2^-4 relative. The output's relative error
        # is largest when attention averages i.i.d. Gaussian values (small output, every V's rounding left):
        # 5.3% there (GPU kernel and this emulation alike, bench/RESULTS.md); 0.1 leaves 2x. Never 0: rounding
        # random data to 3 bits moves it by far more than 1e-4.
        assert 1e-4 < row["emulated_rel"] < 0.1, row
        assert row["logit_absmax"] >= row["logit_std"] > 0


def test_bench_attention_runs_its_rows_and_says_why_the_cudnn_kernels_are_skipped(tmp_path):
    r = run_bench(tmp_path, "bench_attention.py", "--device", "cpu", "--tiny", "--cudnn", "--skip_flex", "--reps", "1")
    assert "NVIDIA GPUs only" in r["cudnn_skipped"]
    assert len(r["sparse_patterns"]) == 5 and all(seconds(p["ms"]) for p in r["sparse_patterns"])
    assert seconds(r["sparse_all_layers_ms"])
