"""The GPU memory a job's model weights take at the fullest moment of a job: a floor under its peak.

A job whose weights alone do not fit its GPU fails every time, after minutes of loading; the queue
refuses it at submit instead, naming the settings that would make it fit. Activations come on top,
so this is a lower bound: passing it does not promise the job fits, failing it proves it cannot.

Which weights are on the GPU together follows the pipeline (engine/pipeline.py, guardrail.py,
models/reason.py): the DiT and the VAE always; T5, the prompt refiner and the guardrail's models stay
resident unless offloaded; an offloaded model visits the GPU while the DiT is there (T5 to encode the
prompt, the refiner to refine it, Llama Guard before and SigLIP / RetinaFace after generation), one at a
time. Best-of-N's critic loads after the generator is parked, so it never adds to this moment.

Torch-free: the daemon checks submits with it. Parameter counts are the real architectures' (the
DiTs and the VAE as cosmos_predict2.md §4 states them; tests/test_footprint.py rebuilds every entry on
the meta device from its published hyper-parameters and compares).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

PARAMS = {
    "dit-2B": 1_956_413_440,
    "dit-14B": 14_265_285_632,
    "vae": 126_892_531,  # Wan2.1
    "t5": 4_864_791_552,  # T5-11B, encoder only
    "reason": 8_292_166_656,  # Cosmos-Reason1-7B (Qwen2.5-VL-7B architecture)
    "llama_guard": 8_030_261_248,  # Llama Guard 3 8B
    "siglip": 877_960_498,  # google/siglip-so400m-patch14-384, both towers (SiglipModel)
    "retinaface": 27_293_600,  # ResNet-50 RetinaFace
}

# what each setting costs a user, to pick the cheapest set that fits: a move makes a job slower and leaves
# the video as it is; T5 in bf16 changes the prompt embedding slightly; no refiner changes the prompt
FIXES = {"offload_prompt_refiner": 1, "offload_guardrail": 1, "offload_text_encoder": 1,
         "downcast_text_encoder": 3, "disable_prompt_refiner": 10}


@dataclass(frozen=True)
class Weights:
    what: str
    nbytes: int
    resident: bool  # on the GPU for the whole job; False: visits it, one such model at a time


def job_weights(spec) -> list[Weights]:
    """The models a job (a GenerationSpec) puts on its GPU; [] for the tiny profile,
    whose toy models run anywhere."""
    if spec.model_size not in ("2B", "14B"):
        return []
    out = [Weights(f"DiT {spec.model_size} (bf16)", 2 * PARAMS[f"dit-{spec.model_size}"], True),
           Weights("Wan2.1 VAE (bf16)", 2 * PARAMS["vae"], True)]
    t5_bytes = (2 if spec.downcast_text_encoder else 4) * PARAMS["t5"]
    out.append(Weights(f"T5-11B encoder ({'bf16' if spec.downcast_text_encoder else 'fp32'})", t5_bytes,
                       not spec.offload_text_encoder))
    if not spec.disable_prompt_refiner:
        out.append(Weights("Cosmos-Reason1-7B refiner (bf16)", 2 * PARAMS["reason"], not spec.offload_prompt_refiner))
    if not spec.disable_guardrail:
        resident = not spec.offload_guardrail
        out += [Weights("Llama Guard 3 8B (bf16)", 2 * PARAMS["llama_guard"], resident),
                Weights("SigLIP video safety filter (fp32)", 4 * PARAMS["siglip"], resident),
                Weights("RetinaFace (fp32)", 4 * PARAMS["retinaface"], resident)]
    return out


def floor_bytes(weights: list[Weights]) -> int:
    """Bytes on the GPU at the fullest moment: everything resident plus the largest visitor."""
    return sum(w.nbytes for w in weights if w.resident) + max((w.nbytes for w in weights if not w.resident), default=0)


def too_small(spec, gpu_bytes: int, where: str = "the GPU") -> str | None:
    """None when the job's weights fit `gpu_bytes`; else one sentence naming what they take and the cheapest
    settings that would make them fit (cheapest_fit), or that none does."""
    weights = job_weights(spec)
    need = floor_bytes(weights)
    if need <= gpu_bytes:
        return None
    biggest = sorted(weights, key=lambda w: -w.nbytes)[:3]
    parts = ", ".join(f"{w.what} {w.nbytes / GIB:.1f}" for w in biggest)
    head = (f"model_size: this {spec.model_size} job needs at least {need / GIB:.1f} GiB of GPU memory for its "
            f"weights alone ({parts} GiB, before any activation), more than {where}'s {gpu_bytes / GIB:.1f} GiB; ")
    fixes = cheapest_fit(spec, gpu_bytes)
    if fixes:
        sets = " ".join(f"--set {k}=true" for k in fixes)
        return head + f"set {', '.join(fixes)} ({sets}) or use a GPU with more memory"
    if spec.model_size == "14B":
        return head + "no offload, downcast or refiner setting makes it fit; use model_size=2B or a GPU with more memory"
    return head + "no offload, downcast or refiner setting makes it fit; use a GPU with more memory"


# what a job needs above its weights: a 2B 720p 16 fps job peaked 9.6 GiB above its weights on the H200
# (bench/RESULTS.md: 31.6 GiB with T5 fp32 resident); larger grids and the 14B need more
ACTIVATION_HEADROOM = 10 * GIB


def tight(spec, gpu_bytes: int, where: str = "the GPU") -> str | None:
    """A warning (None when there is room) for a job whose weights fit but leave less than
    ACTIVATION_HEADROOM for everything else: it will most likely run out of memory mid-job."""
    need = floor_bytes(job_weights(spec))
    if need > gpu_bytes or gpu_bytes - need >= ACTIVATION_HEADROOM:
        return None
    head = (f"the model weights of this {spec.model_size} job take {need / GIB:.1f} of {where}'s "
            f"{gpu_bytes / GIB:.1f} GiB, leaving {(gpu_bytes - need) / GIB:.1f} GiB for activations (a 2B 720p job "
            f"needs about {ACTIVATION_HEADROOM / GIB:.0f} GiB); it will probably run out of GPU memory")
    fixes = cheapest_fit(spec, gpu_bytes - ACTIVATION_HEADROOM)
    return head + (f"; set {', '.join(fixes)} to leave room" if fixes else "")


def cheapest_fit(spec, gpu_bytes: int) -> tuple[str, ...]:
    """The settings of FIXES, not set yet, whose weights fit `gpu_bytes` at the least cost (then the fewest,
    then FIXES' order); () when none does. Five settings: every subset is tried."""
    free = [f for f in FIXES if not getattr(spec, f)]
    best: tuple | None = None
    for mask in range(1, 2 ** len(free)):
        chosen = tuple(f for i, f in enumerate(free) if mask >> i & 1)
        if floor_bytes(job_weights(spec.model_copy(update=dict.fromkeys(chosen, True)))) > gpu_bytes:
            continue
        rank = (sum(FIXES[f] for f in chosen), len(chosen), [free.index(f) for f in chosen])
        if best is None or rank < best[0]:
            best = (rank, chosen)
    return best[1] if best else ()
