#!/usr/bin/env bash
# Rebuilds the package tarballs a device session carries to the H200 (bench/DEVICE.md says how they are used):
#   .dev1/  cu13_ir.tar.xz  base.tar.xz                (first call)
#   .dev2/  rest.tar.xz  cu13_rt.tar.xz  cudnn_fe.tar.xz  base.tar.xz   (second call, same warm machine)
#   .dev3/  base.tar.xz                                (calls that need neither diffusers nor flash-attn-4)
# The remote image has python 3.12 + torch 2.11/CUDA 13 (with cuda-bindings), torchvision, transformers,
# safetensors and einops, and nothing else this project or its benchmarks import. One call carries at most
# 64 MiB counted in disk blocks, so nvidia-cutlass-dsl's cu13 wheel (~92 MB) is cut in two.
#
#   bash bench/device_carry.sh           # download what is missing, rebuild what changed
#   bash bench/device_carry.sh --force   # rebuild every tarball
# Env: PIP (a pip to download with; any interpreter, the target is given by flags), CARRY_CACHE (wheels and
# built tarballs kept between runs), XZ_THREADS.
set -euo pipefail

force=0
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        *) echo "device_carry.sh: unknown argument '$a' (only --force)" >&2; exit 2 ;;
    esac
done

ROOT=$(git rev-parse --show-toplevel)
PIP=${PIP:-/work/main/.venv/bin/pip}
CACHE=${CARRY_CACHE:-$HOME/.cache/cosmos-tui-carry}
XZ_THREADS=${XZ_THREADS:-2}
LIMIT_KIB=$((63 * 1024))   # 1 MiB under the per-call 64 MiB, for the directory blocks du also counts
# Bump when what goes into a tarball changes without a wheel changing, so stale tarballs get rebuilt.
RECIPE=1

# Versions. pydantic..tomlkit, textual and diffusers follow what the project is tested with (pyproject.toml
# ranges; the dev venv's resolution). flash-attn-4 4.0.0b40 is what bench/RESULTS.md measured; the rest are
# its Requires-Dist (nvidia-cutlass-dsl[cu13]>=4.6.2, apache-tvm-ffi<0.2,>=0.1.11, torch-c-dlpack-ext,
# quack-kernels>=0.5.3) pinned to what the mirror gave on 2026-12-03. nvidia-cutlass-dsl's own dependency on
# the cu12 libs is left out on purpose: with only the cu13 flavour present its loader picks cu13.
# cuda-bindings (cutlass needs it) comes with the remote's torch; protobuf is declared but never imported.
BASE_PINS=(
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing_extensions==4.16.0 importlib_metadata==10.2.0 lazy-importer==0.1.0 zipp==4.1.2
    platformdirs==4.14.9 tomlkit==0.15.3
    textual==8.2.8 rich==15.0.0 markdown-it-py==4.3.0 mdit-py-plugins==0.7.0 mdurl==0.1.2
    pygments==2.21.0 linkify-it-py==2.2.0
)
REST_PINS=(
    diffusers==0.42.1 flash-attn-4==4.0.0b40
    nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1
    apache-tvm-ffi==0.1.15.post2 quack-kernels==0.6.5 torch-c-dlpack-ext==0.1.5
    imageio-ffmpeg==0.7.0
)
CU13_PIN=nvidia-cutlass-dsl-libs-cu13==4.8.1
# cuDNN frontend's CuTe DSL block-sparse attention (bf16 and Sage FP8 on SM90; engine/models/cudnn_bsa.py). Its
# Requires-Dist (nvidia-cutlass-dsl[cu13]>=4.8.0, apache-tvm-ffi>=0.1.11) are the flash-attn-4 pins above; its C++
# headers (include/) are left out, the Python package and its compiled module are what is imported.
CUDNN_FE_PIN=nvidia-cudnn-frontend==1.32.0
# the part of the cu13 wheel that goes in the first call; everything else in it goes in cu13_rt
CU13_IR_PATHS=(
    nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so
    nvidia_cutlass_dsl_libs_cu13-4.8.1.dist-info
)

WHEELS="$CACHE/wheels"; BUILT="$CACHE/built"
mkdir -p "$WHEELS" "$BUILT"
work=$(mktemp -d "${TMPDIR:-/tmp}/device_carry.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- download -------------------------------------------------------------------------------------
# manylinux2014 is listed beside manylinux_2_28 because this pip does not treat one as the other
# (imageio-ffmpeg 0.7.0 and pydantic_core only ship manylinux2014-tagged wheels); pure wheels always match.
download() {
    echo "== downloading (pip skips files already in $WHEELS): $*"
    "$PIP" download --no-deps --pre --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "$@" \
        | grep -E "Saved|already downloaded|Downloading|ERROR" || true
}

# the one wheel file of a name==version pin (wheel names normalise runs of - _ . to _)
wheel_of() {
    local name="${1%%==*}" ver="${1##*==}" norm f found=()
    norm=$(echo "$name" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g')
    for f in "$WHEELS"/*.whl; do
        local b; b=$(basename "$f")
        [ "$(echo "${b%%-*}" | tr 'A-Z' 'a-z')" = "$norm" ] || continue
        local rest="${b#*-}"; [ "${rest%%-*}" = "$ver" ] && found+=("$f")
    done
    if [ "${#found[@]}" -ne 1 ]; then
        echo "device_carry.sh: expected one wheel for $1 in $WHEELS, found ${#found[@]}: ${found[*]:-none}" >&2
        echo "  (download failed? see pip's output above; a mirror without this version needs a new pin)" >&2
        exit 1
    fi
    echo "${found[0]}"
}

download "${BASE_PINS[@]}"
download "${REST_PINS[@]}"
download "$CU13_PIN"
download "$CUDNN_FE_PIN"

base_whl=(); rest_whl=()
for p in "${BASE_PINS[@]}"; do base_whl+=("$(wheel_of "$p")"); done
for p in "${REST_PINS[@]}"; do rest_whl+=("$(wheel_of "$p")"); done
cu13_whl=$(wheel_of "$CU13_PIN")
cudnn_fe_whl=$(wheel_of "$CUDNN_FE_PIN")

# --- build ----------------------------------------------------------------------------------------
# A tarball is rebuilt only when its inputs (wheel bytes, selected paths, RECIPE) changed or --force:
# xz -9e over the 190 MB cutlass IR library takes minutes on two cores.
inputs_hash() { { echo "recipe $RECIPE"; printf '%s\n' "$@"; sha256sum "$@" 2>/dev/null | cut -d' ' -f1; } | sha256sum | cut -d' ' -f1; }

unpack() {  # dir wheel...
    local dir="$1"; shift
    mkdir -p "$dir"
    for w in "$@"; do unzip -qo "$w" -d "$dir"; done
}

pack() {  # name stage_dir key path...   (paths relative to stage_dir)
    local name="$1" dir="$2" key="$3"; shift 3
    local out="$BUILT/$name" stamp="$BUILT/$name.stamp"
    if [ "$force" = 0 ] && [ -f "$out" ] && [ -f "$stamp" ] \
        && [ "$(cat "$stamp")" = "$key $(sha256sum "$out" | cut -d' ' -f1)" ]; then
        echo "== $name: up to date"
        return
    fi
    echo "== $name: packing $(du -sh --apparent-size "$dir" | cut -f1) (xz -9e -T$XZ_THREADS, may take minutes)"
    # fixed order, owner and mtime: the same wheels give the same bytes
    tar -C "$dir" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@946684800 -cf - "$@" \
        | xz -9e -T"$XZ_THREADS" > "$out.tmp"
    mv "$out.tmp" "$out"
    echo "$key $(sha256sum "$out" | cut -d' ' -f1)" > "$stamp"
}

key=$(inputs_hash "${base_whl[@]}")
unpack "$work/base" "${base_whl[@]}"
pack base.tar.xz "$work/base" "$key" .

unpack "$work/rest" "${rest_whl[@]}"
ff=$(ls "$work"/rest/imageio_ffmpeg/binaries/ffmpeg-linux-x86_64-* 2>/dev/null | head -1)
[ -n "$ff" ] || { echo "device_carry.sh: imageio-ffmpeg wheel has no linux ffmpeg binary" >&2; exit 1; }
chmod 755 "$ff"   # the binary must stay executable through the tarball
pack rest.tar.xz "$work/rest" "$(inputs_hash "${rest_whl[@]}")" .

unpack "$work/cu13" "$cu13_whl"
for p in "${CU13_IR_PATHS[@]}"; do
    [ -e "$work/cu13/$p" ] || { echo "device_carry.sh: $p is not in $(basename "$cu13_whl"); update CU13_IR_PATHS" >&2; exit 1; }
done
mapfile -t cu13_rt_paths < <(cd "$work/cu13" && find . -type f | sed 's|^\./||' | sort \
    | grep -v -x -F -f <(printf '%s\n' "${CU13_IR_PATHS[@]}") | grep -v -F "${CU13_IR_PATHS[1]}/")
pack cu13_ir.tar.xz "$work/cu13" "$(inputs_hash "$cu13_whl" "${CU13_IR_PATHS[@]}")" "${CU13_IR_PATHS[@]}"
pack cu13_rt.tar.xz "$work/cu13" "$(inputs_hash "$cu13_whl" "${cu13_rt_paths[@]}")" "${cu13_rt_paths[@]}"

unpack "$work/cudnn_fe" "$cudnn_fe_whl"
mapfile -t cudnn_fe_paths < <(cd "$work/cudnn_fe" && ls -d cudnn nvidia_cudnn_frontend-*.dist-info)
pack cudnn_fe.tar.xz "$work/cudnn_fe" "$(inputs_hash "$cudnn_fe_whl" "${cudnn_fe_paths[@]}")" "${cudnn_fe_paths[@]}"

# --- lay out the carry directories ----------------------------------------------------------------
declare -A PLAN=([.dev1]="cu13_ir.tar.xz base.tar.xz" [.dev2]="rest.tar.xz cu13_rt.tar.xz cudnn_fe.tar.xz base.tar.xz" [.dev3]="base.tar.xz")
fail=0
for d in .dev1 .dev2 .dev3; do
    mkdir -p "$ROOT/$d"
    # a stray file would ride along and count against the limit
    for f in "$ROOT/$d"/* "$ROOT/$d"/.[!.]*; do
        [ -e "$f" ] || continue
        case " ${PLAN[$d]} " in *" $(basename "$f") "*) ;; *) echo "== $d: removing stray $(basename "$f")"; rm -rf "$f" ;; esac
    done
    for t in ${PLAN[$d]}; do
        cmp -s "$BUILT/$t" "$ROOT/$d/$t" || cp "$BUILT/$t" "$ROOT/$d/$t"
    done
    kib=$(du -sk "$ROOT/$d" | cut -f1)
    echo "$d: ${kib} KiB ($(awk "BEGIN{printf \"%.1f\", $kib/1024}") MiB; limit $LIMIT_KIB): ${PLAN[$d]}"
    if [ "$kib" -gt "$LIMIT_KIB" ]; then
        echo "device_carry.sh: $d is ${kib} KiB, over the ${LIMIT_KIB} KiB (63 MiB) a device call may carry" >&2
        fail=1
    fi
done

# --- keep them out of git (run's carry wants ignored paths) ---------------------------------------
exclude="$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"; touch "$exclude"
for d in .dev1 .dev2 .dev3; do
    grep -qx -F "/$d/" "$exclude" || grep -qx -F "$d" "$exclude" || { echo "$d" >> "$exclude"; echo "== added $d to $exclude"; }
done
for d in .dev1 .dev2 .dev3; do
    git -C "$ROOT" check-ignore -q "$d" || { echo "device_carry.sh: $d is not ignored by git" >&2; fail=1; }
done

[ "$fail" = 0 ] || { echo "device_carry.sh: FAILED (see above)" >&2; exit 1; }
echo "done: carry .dev1 then .dev2 on one warm machine (bench/DEVICE.md)"
