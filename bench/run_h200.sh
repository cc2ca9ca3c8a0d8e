#!/usr/bin/env bash
# The device calls of bench/RESULTS.md's end-to-end section, in priority order, each under its own
# limit so a slow one leaves the others their results: bash bench/run_h200.sh A|B|...|H OUTDIR
set -uo pipefail
part="$1"; out="$2"; mkdir -p "$out"
export PYTHONUNBUFFERED=1
run() {  # limit name args...
    local limit="$1" name="$2"; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s)"
    timeout "$limit" python3 "$@" --json "$out/$name.json" 2>&1 | grep -v "should be kept in float32" | tee "$out/$name.log"
}
case "$part" in
    A)
        run 340 h200_e2e_2b_dense bench/bench_e2e.py --model_size 2B --fps 16
        run 230 h200_e2e_2b_natten_fast bench/bench_e2e.py --model_size 2B --fps 16 --natten --fast 0.1 --peer none
        ;;
    B)
        run 300 h200_e2e_14b_dense bench/bench_e2e.py --model_size 14B --fps 16 --ours_steps 3 --peer_steps 2
        run 200 h200_bestofn_memory_14b bench/bench_bestofn_memory.py --model_size 14B
        ;;
esac
# the second call of 2026-12-03: what the first left undone
[ "$part" = C ] && run 420 h200_e2e_2b_dense bench/bench_e2e.py --model_size 2B --fps 16
# a short form of C when little device time is left: ours extrapolated from 6 steps like the peer's
[ "$part" = D ] && run 300 h200_e2e_2b_dense_short bench/bench_e2e.py --model_size 2B --fps 16 --ours_steps 6 --peer_steps 3

# 2026-12-03 session, second half. E: kernels and the VAE alone (no diffusers or ffmpeg needed): flex vs gather
# decides the NATTEN implementation the later parts run (written to /tmp, which a warm machine keeps).
if [ "$part" = E ]; then
    run 140 h200_attention_flex bench/bench_attention.py --model_size 2B --fps 16 --skip_dense
    cp "$out/h200_attention_flex.json" /tmp/ 2>/dev/null
    run 110 h200_2b_natten_flex bench/bench_video2world.py --model_size 2B --natten --natten_impl flex --compile --peer none --timed_steps 3
    run 70 h200_vae bench/bench_vae.py --reps 1
fi
impl=$(python3 -c "import json; r = json.load(open('/tmp/h200_attention_flex.json')); print('flex' if r.get('flex_all_layers_ms', 1e99) < r['sparse_all_layers_ms'] else 'sparse')" 2>/dev/null || echo sparse)
# F: 14B end to end as its preset runs it (T5 offloaded), best-of-N's memory, 14B NATTEN end to end
if [ "$part" = F ]; then
    echo "NATTEN implementation for this part: $impl"
    run 210 h200_e2e_14b_dense bench/bench_e2e.py --model_size 14B --fps 16 --offload_text_encoder --ours_steps 3 --peer none
    run 220 h200_bestofn_memory_14b bench/bench_bestofn_memory.py --model_size 14B
    run 160 h200_e2e_14b_natten bench/bench_e2e.py --model_size 14B --fps 16 --natten --natten_impl "$impl" --offload_text_encoder --ours_steps 3 --peer none
fi
# G: 2B end to end with the default kernels of this install (fa4 when it imports), dense beside diffusers, NATTEN exact+fast
if [ "$part" = G ]; then
    echo "NATTEN implementation for this part: $impl"
    run 230 h200_e2e_2b_natten_v2 bench/bench_e2e.py --model_size 2B --fps 16 --natten --natten_impl "$impl" --fast 0.1 --peer none
    run 220 h200_e2e_2b_dense_fa4 bench/bench_e2e.py --model_size 2B --fps 16 --ours_steps 6 --peer_steps 3
    run 100 h200_attention_fa4 bench/bench_attention.py --model_size 2B --fps 16 --reps 3
fi
# H: 10 fps end to end, short form
[ "$part" = H ] && run 200 h200_e2e_2b_10fps bench/bench_e2e.py --model_size 2B --fps 10 --ours_steps 6 --peer_steps 3
# I: parking the generator for best-of-N's critic, .to(cpu)/.to(gpu) against HostParking's reused page-locked buffer
if [ "$part" = I ]; then
    run 240 h200_park_14b bench/bench_park.py --model_size 14B
    run 120 h200_park_2b bench/bench_park.py --model_size 2B
fi
# J (2026-12-03, third session; not yet run): what changed after part G/F ran, end to end. The default NATTEN
# implementation is now auto (flex with fa4's kernel where it applies), an offloaded T5 visits the GPU as a copy,
# the VAE decodes channels-last, and with the guardrail off the mp4 is encoded during the decode. Needs fa4
# (.dev1 then .dev2, bench/DEVICE.md). The VAE row first: the stream's own gain, cheaply.
if [ "$part" = J ]; then
    # --mp4_only: the full sweep with --mp4 did not finish in 75 s on an H100 (2026-12-07)
    run 90 h200_vae_mp4 bench/bench_vae.py --reps 2 --mp4_only
    run 200 h200_e2e_2b_natten_v3 bench/bench_e2e.py --model_size 2B --fps 16 --natten --fast 0.1 --peer none
    run 170 h200_e2e_14b_natten_v2 bench/bench_e2e.py --model_size 14B --fps 16 --natten --offload_text_encoder --ours_steps 3 --peer none
fi
# K (written 2026-12-07; ran on an H100 in its fourth session, bench/RESULTS.md): the cold first step. With NATTEN through flex + flash-attn-4 it took 48.1 s on
# an H100 (15.8 s on the gather path): fa4 JIT-compiles its kernels in every new process. fa4 can keep them on disk
# (FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1, read when flash_attn.cute is first imported). Three processes of 3 steps:
# k1 fills both caches, k2 reads both, k3 has inductor's cache warm but fa4's off, so k2 vs k3 is fa4's disk cache
# alone. Since 2026-12-07 (third session) the engine turns the cache on unless the variable is set
# (engine/models/attention.py fa4_disk_cache_default); K sets it explicitly in each process, so it measures
# what that default saves, or costs.
if [ "$part" = K ]; then
    for name in k1 k2 k3; do
        [ "$name" = k3 ] && on=0 || on=1
        FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=$on FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4_cache \
            run 150 "h200_cold_${name}" bench/bench_e2e.py --model_size 2B --fps 16 --natten --ours_steps 3 --peer none
    done
    du -sh /tmp/fa4_cache | tee "$out/h200_cold_fa4_cache_size.txt"
fi
# L (written 2026-12-07, third session; its FP8 rows ran as part Q on an H100, the 14B park not yet): torch alone, the .dev1 call. The experimental FP8 linears
# (engine/models/fp8.py) layer by layer, bf16 against FP8 at the 2B's and 14B's token counts with the projected
# saving per step; then part I's 14B park (best-of-N on an 80 GB card), never run.
if [ "$part" = L ]; then
    run 80 h200_fp8_gemms_2b bench/bench_fp8.py --model_size 2B
    run 90 h200_fp8_gemms_14b bench/bench_fp8.py --model_size 14B
    run 240 h200_park_14b bench/bench_park.py --model_size 14B
fi
# M: the .dev2 call (fa4: the default NATTEN path on Hopper). 2B NATTEN end to end: the exact job twice on one
# engine (the second is the warm job, every phase measured), the step cache, FP8 on a second engine with the same
# weights, and both (the moonshot row), each with its drift against the exact video on the same seed.
[ "$part" = M ] && run 560 h200_e2e_2b_natten_fp8 bench/bench_e2e.py --model_size 2B --fps 16 --natten --fast 0.1 --fp8 --repeat 2 --peer none
# N (written 2026-12-07, third session; ran with --skip_flex on an H100 in the fourth): cuDNN frontend's block-sparse attention (engine/models/cudnn_bsa.py,
# carried in .dev2 as cudnn_fe.tar.xz), bf16 and Sage FP8, per NATTEN pattern beside the gather path and flex FLASH,
# and FP8 dense attention beside fa4, each with its error against the gather path / auto. Needs /tmp/site from .dev1+.dev2.
[ "$part" = N ] && run 240 h200_attention_cudnn bench/bench_attention.py --model_size 2B --fps 16 --cudnn
# O: only if N shows the FP8 kernel right and fast: the 2B NATTEN and 2B dense jobs end to end with attention_backend
# cudnn_fp8 (+ FP8 linears), drift on the same seed against the exact run in the same process
if [ "$part" = O ]; then
    run 300 h200_e2e_2b_natten_cudnn_fp8 bench/bench_e2e.py --model_size 2B --fps 16 --natten --fp8 --fp8_attention --peer none
    run 280 h200_e2e_2b_dense_cudnn_fp8 bench/bench_e2e.py --model_size 2B --fps 16 --ours_steps 6 --fp8 --fp8_attention --peer none
fi
# P: N and the FP8-linears job in one call, for a session short of device time: the cuDNN kernels without the flex
# rows (flex FLASH is in the H200 table of 2026-12-03: 1005 ms for the 28 layers), then 2B NATTEN exact + --fp8.
if [ "$part" = P ]; then
    run 200 h200_attention_cudnn bench/bench_attention.py --model_size 2B --fps 16 --cudnn --skip_flex
    run 360 h200_e2e_2b_natten_fp8 bench/bench_e2e.py --model_size 2B --fps 16 --natten --fp8 --peer none
fi
# Q (2026-12-07, fourth session): part L without the 14B park, for the first call of a short session (torch alone;
# the call extracts .dev1 beside it for the calls after)
if [ "$part" = Q ]; then
    run 80 h200_fp8_gemms_2b bench/bench_fp8.py --model_size 2B
    run 90 h200_fp8_gemms_14b bench/bench_fp8.py --model_size 14B
fi
# R (2026-12-08): the .dev2 call of a short session. First cuDNN's bf16 block-sparse kernel against auto (flex +
# fa4) end to end on one card (6 steps each, the per-step time decides auto's NATTEN choice), then why cuDNN's FP8
# attention wrecked the 2B dense video (per layer on the DiT's own activations, eager and compiled).
if [ "$part" = R ]; then
    run 150 h200_e2e_2b_natten_cudnn bench/bench_e2e.py --model_size 2B --fps 16 --natten --natten_impl cudnn --ours_steps 6 --peer none
    run 150 h200_e2e_2b_natten_auto bench/bench_e2e.py --model_size 2B --fps 16 --natten --natten_impl auto --ours_steps 6 --peer none
    run 230 h200_fp8_attention_layers bench/bench_fp8_attention.py --model_size 2B --compile
fi
