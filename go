#!/usr/bin/env bash
# The two commands of the README:
#   ./go        set up on first run, then open cosmos-tui (with no checkpoints, one tiny-profile demo
#               job is queued the first time)
#   ./go test   set up on first run, then run the whole test suite
# A GPU user who already has a CUDA build of torch in the venv keeps it: we install the CPU build
# (torch==2.13.0) only when `import torch` fails.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${COSMOS_TUI_VENV:-.venv}"
what="${1:-app}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "installing torch (CPU build; bring your own CUDA build for a GPU)..." >&2
    "$PY" -m pip install --disable-pip-version-check "${COSMOS_TUI_TORCH:-torch==2.13.0}"
fi
extras=""
[ "$what" = "test" ] && extras="[test]"
stamp="$VENV/.cosmos-tui-$(cat pyproject.toml | sha1sum | cut -c1-12)-${what}"
if [ ! -f "$stamp" ]; then
    # pip's own progress, not -q: the first set-up takes minutes (natten builds from source) and a
    # silent terminal looks hung
    echo "installing cosmos-tui${extras} into $VENV (first run: a few minutes) ..." >&2
    "$PY" -m pip install --disable-pip-version-check -e ".${extras}"
    touch "$stamp"
fi
# A Hopper GPU user gets the fastest attention kernel measured (flash-attn-4) from this set-up, tried
# once; `auto` falls back to cuDNN when it is absent, so a failed install costs nothing but the message.
fa4_stamp="$VENV/.cosmos-tui-fa4-tried"
if [ "$what" != "test" ] && [ ! -f "$fa4_stamp" ] && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9 else 1)" 2>/dev/null; then
    if ! "$PY" -c "import flash_attn.cute" 2>/dev/null; then
        echo "Hopper GPU: installing flash-attn-4 (the [fa4] extra, fastest dense attention measured) ..." >&2
        "$PY" -m pip install --disable-pip-version-check -e ".[fa4]" \
            || echo "flash-attn-4 did not install; attention uses cuDNN (install it later with: $PY -m pip install -e '.[fa4]')" >&2
    fi
    touch "$fa4_stamp"
fi
case "$what" in
    test)
        shift || true
        # two workers on two cores: one intra-op thread each, or the VAE convolutions thrash
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
        exec "$PY" -m pytest -q -n 2 "$@"
        ;;
    app)
        root="${COSMOS_TUI_CHECKPOINTS:-checkpoints}"
        if ls "$root"/nvidia/Cosmos-Predict2-*-Video2World/model-*.pt >/dev/null 2>&1; then
            exec "$VENV/bin/cosmos-tui"
        fi
        # one demo job is enough: queue it only while the queue has none (in any state), so each
        # launch does not add another
        has_demo='import json, sys; sys.exit(0 if any(j.get("preset") == "tiny-cpu" for j in json.load(sys.stdin)) else 1)'
        if "$VENV/bin/cosmos-tui" ls --json 2>/dev/null | "$PY" -c "$has_demo" 2>/dev/null; then
            echo "no Cosmos-Predict2 checkpoints under $root/: opening the TUI (the tiny-profile demo job is already queued)" >&2
            exec "$VENV/bin/cosmos-tui"
        fi
        echo "no Cosmos-Predict2 checkpoints under $root/: queueing a tiny-profile demo job (seeded random weights, CPU)" >&2
        exec "$VENV/bin/cosmos-tui" demo
        ;;
    *)
        exec "$VENV/bin/cosmos-tui" "$@"
        ;;
esac
