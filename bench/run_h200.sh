#!/usr/bin/env bash
# The device calls of bench/RESULTS.md's end-to-end section, in priority order, each under its own
# limit so a slow one leaves the others their results: bash bench/run_h200.sh A|B OUTDIR
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
