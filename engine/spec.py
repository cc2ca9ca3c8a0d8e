"""The job spec: the seed's command-line flags as data.

One pydantic model serves the three `python -m engine....` entry points, presets (TOML), the queue
(JSON in SQLite) and the engine server. Unknown keys are rejected by name; every error a user can
cause names the field and the fix. Torch-free on purpose: the TUI and the daemon validate specs too.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, fields as dataclass_fields
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from engine.resolutions import ASPECT_RATIOS

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_EXTENSIONS = (".mp4",)

# Our wording of the reference's default negative prompt: the same list of defects, so the
# unconditional branch steers away from the same things. Pass --negative_prompt to use another text.
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit "
    "areas, underexposed and overexposed scenes, poor color balance, washed out colors, choppy "
    "sequences, jerky movements, low frame rate, artifacting, color banding, unnatural transitions, "
    "outdated special effects, fake elements, unconvincing visuals, poorly edited content, jump cuts, "
    "visual noise, and flickering. Overall, the video is of poor quality."
)

Mode = Literal["video2world", "lvg", "bestofn"]

# Set to 1 by bench/bench_e2e.py --fp8_attention: lets a spec ask for the disabled "cudnn_fp8" attention.
UNSAFE_FP8_ATTENTION_ENV = "COSMOS_TUI_UNSAFE_FP8_ATTENTION"
# Choices a field's type still names (an old preset with one gets the validator's reason, not "unknown value")
# but that menus and --help no longer offer.
DISABLED_CHOICES = {"attention_backend": ("cudnn_fp8",)}


def offered_choices(name: str, choices) -> tuple:
    """`choices` of field `name` less its DISABLED_CHOICES: what a menu or --help lists."""
    return tuple(c for c in choices if c not in DISABLED_CHOICES.get(name, ()))


SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# sbatch --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
SLURM_TIME_RE = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2})$")


def slurm_minutes(limit: str) -> int:
    """A Slurm time limit in whole minutes, rounded up as Slurm does (its resolution is a minute)."""
    days, _, rest = limit.rpartition("-") if "-" in limit else ("0", "", limit)
    parts = [int(x) for x in rest.split(":")]
    if "-" in limit:  # D-H, D-H:M, D-H:M:S
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 1:  # M
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:  # M:S
        h, m, s = 0, parts[0], parts[1]
    else:
        h, m, s = parts
    seconds = ((int(days) * 24 + h) * 60 + m) * 60 + s
    return -(-seconds // 60)


class GenerationSpec(BaseModel):
    """Everything a generation job needs. Field names equal the seed's flags."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    mode: Mode = "video2world"
    # model
    model_size: Literal["2B", "14B", "tiny"] = "2B"
    resolution: Literal["480", "720"] = "720"
    fps: Literal[10, 16] = 16
    dit_path: str = ""
    load_ema: bool = False
    natten: bool = False
    # inputs
    prompt: str = ""
    input_path: str = "assets/video2world/input0.jpg"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    aspect_ratio: str = "16:9"
    num_conditional_frames: Literal[1, 5] = 1
    batch_input_json: Optional[str] = None
    # sampling
    guidance: float = 7.0
    seed: int = 0
    num_steps: int = Field(35, ge=1, le=1000)
    # outputs
    save_path: str = "output/generated_video.mp4"
    # replace a file at save_path that no job of the queue wrote (the queue otherwise refuses a save_path the
    # user named, and gives a preset's one a fresh -job<id> name)
    overwrite: bool = False
    # runtime
    num_gpus: int = Field(1, ge=1, le=64)
    disable_guardrail: bool = False
    offload_guardrail: bool = False
    disable_prompt_refiner: bool = False
    offload_prompt_refiner: bool = False
    offload_text_encoder: bool = False
    downcast_text_encoder: bool = False
    benchmark: bool = False
    use_cuda_graphs: bool = False
    # torch.compile the DiT blocks on CUDA: 1.17x per step on H100 at 720p (bench/RESULTS.md); the first
    # job of a warm engine pays the compilation (20-60 s). Ignored on CPU.
    compile_dit: bool = True
    # "cudnn_fp8": cuDNN's Sage FP8 attention for self-attention (engine/models/cudnn_bsa.py), refused unless
    # UNSAFE_FP8_ATTENTION_ENV is set: see _fp8_attention
    attention_backend: Literal["auto", "sdpa", "cudnn", "flash", "math", "fa4", "natten", "cudnn_fp8"] = "auto"
    # experimental fast mode (engine/step_cache.py): skip the DiT after its first block on denoiser calls
    # whose first-block residual moved less than this; 0 = the exact path. Changes the result.
    fast_threshold: float = Field(0.0, ge=0.0, le=1.0)
    # experimental (engine/models/fp8.py): the DiT blocks' large linear layers as FP8 GEMMs (e4m3, per-token
    # and per-feature scales), for GPUs with FP8 tensor cores (sm_89+); changes the result. Off by default.
    fp8_linears: bool = False
    # long video
    num_chunks: int = Field(6, ge=1, le=1000)
    # best-of-N
    num_generations: int = Field(2, ge=1, le=1000)
    num_critic_trials: int = Field(5, ge=1, le=100)
    skip_generation: bool = False
    checkpoint_dir: str = ""
    # where the job runs: "local" (an engine on this machine's GPUs) or "slurm" (a batch job on a
    # cluster, cosmos_tui/executors/slurm.py); the slurm_* fields are read only for "slurm"
    executor: Literal["local", "slurm"] = "local"
    slurm_partition: str = ""  # empty: the cluster's default partition
    slurm_account: str = ""  # empty: the user's default account
    slurm_nodes: int = Field(1, ge=1, le=1024)
    # 0 only for the tiny profile, which runs on CPUs
    slurm_gpus_per_node: int = Field(1, ge=0, le=64)
    slurm_time_limit: str = "4:00:00"

    @field_validator("input_path", "save_path", "dit_path", "batch_input_json", "checkpoint_dir", mode="before")
    @classmethod
    def _home(cls, v):
        # "~/clips/out.mp4" from a preset or a quoted --set reaches us unexpanded; open() would make a
        # directory named "~" in the working directory, while the queue's submit checks looked in $HOME
        return os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v

    @field_validator("save_path")
    @classmethod
    def _video_suffix(cls, v: str, info: ValidationInfo) -> str:
        # The reference appends .mp4 to a save_path without it; ffmpeg picks the container from the
        # name, so a bare "out/clip" would otherwise die with a broken pipe. Best-of-N's save_path is
        # a directory and keeps its name. (`mode` is declared first, so it is in info.data.)
        if info.data.get("mode", "video2world") != "bestofn" and v and not v.lower().endswith(".mp4"):
            return v + ".mp4"
        return v

    @field_validator("aspect_ratio")
    @classmethod
    def _aspect(cls, v: str) -> str:
        if v not in ASPECT_RATIOS:
            raise ValueError(f"{v!r} is not a known aspect ratio; use one of {', '.join(ASPECT_RATIOS)}")
        return v

    @field_validator("attention_backend")
    @classmethod
    def _fp8_attention(cls, v: str) -> str:
        # Measured on an H100 (2026-12-07, bench/RESULTS.md): 10% off the 2B dense step, and the 6-step video
        # came out unrelated to the exact one (latent drift 0.88, PSNR 0.4 dB) while the kernel alone matched
        # the FP8 format's error on test inputs. Until bench/bench_fp8_attention.py finds why, a user cannot
        # ask for it; a benchmark can, to find out.
        if v == "cudnn_fp8" and os.environ.get(UNSAFE_FP8_ATTENTION_ENV) != "1":
            raise ValueError("cudnn_fp8 is disabled: on an H100 its video drifted far from the exact one "
                             "(bench/RESULTS.md, 2026-12-07) for 10% less step time, and the cause is not found yet; "
                             f"use auto ({UNSAFE_FP8_ATTENTION_ENV}=1 lets a benchmark run it anyway)")
        return v

    @field_validator("guidance")
    @classmethod
    def _guidance(cls, v: float) -> float:
        if not (0.0 <= v <= 100.0):
            raise ValueError(f"{v} is out of range; guidance is a weight between 0 and 100 (default 7)")
        return v

    @field_validator("slurm_partition", "slurm_account")
    @classmethod
    def _slurm_name(cls, v: str, info: ValidationInfo) -> str:
        # written into the sbatch script as a directive: a name, never shell or option text
        if v and not SLURM_NAME_RE.match(v):
            what = "partition" if info.field_name == "slurm_partition" else "account"
            raise ValueError(f"{v!r} is not a Slurm {what} name; use the name `sinfo`/`sacctmgr` shows "
                             f"(letters, digits, '.', '_', '-'), or leave it empty for the default")
        return v

    @field_validator("slurm_time_limit")
    @classmethod
    def _slurm_time(cls, v: str) -> str:
        v = v.strip()
        if not SLURM_TIME_RE.match(v) or slurm_minutes(v) == 0:
            raise ValueError(f"{v!r} is not a Slurm time limit; write minutes (90), H:MM:SS (1:30:00) or "
                             f"D-HH:MM:SS (1-12:00:00), more than zero")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> "GenerationSpec":
        if self.natten and self.model_size != "tiny":
            if self.resolution != "720" or self.aspect_ratio != "16:9":
                raise ValueError(
                    "natten: the sparse-attention checkpoints exist for 720p 16:9 only; "
                    "set resolution = \"720\" and aspect_ratio = \"16:9\", or natten = false"
                )
        if self.mode == "lvg" and self.fps != 16:
            raise ValueError("fps: long video (lvg) runs at 16 fps only; set fps = 16")
        if self.mode == "lvg" and self.resolution != "720" and self.model_size != "tiny":
            raise ValueError("resolution: long video (lvg) runs at 720p only; set resolution = \"720\"")
        if self.fast_threshold > 0 and self.use_cuda_graphs:
            # the cache decides per call in Python; a graph captured over the whole forward can't branch
            raise ValueError("fast_threshold: the step cache does not work with use_cuda_graphs; "
                             "set fast_threshold = 0 or use_cuda_graphs = false")
        if self.fast_threshold > 0 and self.num_gpus > 1:
            # each rank holds a slice of the tokens, so ranks could decide differently and hang
            raise ValueError("fast_threshold: the step cache runs on one GPU only; set num_gpus = 1 or fast_threshold = 0")
        if self.executor == "slurm":
            if self.slurm_gpus_per_node == 0 and self.model_size != "tiny":
                raise ValueError("slurm_gpus_per_node: 0 GPUs runs only the tiny profile (on CPUs); set "
                                 "slurm_gpus_per_node to 1 or more, or model_size = \"tiny\"")
            ranks = self.slurm_nodes * max(self.slurm_gpus_per_node, 1)
            if self.num_gpus != ranks:
                raise ValueError(f"num_gpus: a Slurm job of {self.slurm_nodes} node(s) x "
                                 f"{max(self.slurm_gpus_per_node, 1)} engine rank(s) runs {ranks} rank(s); set "
                                 f"num_gpus = {ranks}, or change slurm_nodes / slurm_gpus_per_node")
        return self

    # -- checks that touch the file system: run when the job starts, not when it is queued --

    def input_kind(self, path: str | None = None) -> str:
        """'image' or 'video' by extension; raises a one-sentence error naming input_path."""
        return input_kind(path or self.input_path)

    def check_input(self, path: str | None = None) -> None:
        """Validate one job's inputs: the conditioning input against this spec (existence, type, frame
        count rule), then a prompt the guardrail will take (empty_prompt_problem)."""
        p = path or self.input_path
        kind = self.input_kind(p)
        if kind == "image" and self.num_conditional_frames != 1:
            raise InputError(
                f"num_conditional_frames: {self.num_conditional_frames} frames were asked for but "
                f"input_path {p!r} is an image (1 frame); use --num_conditional_frames 1 or give an .mp4"
            )
        if not os.path.isfile(p):
            raise InputError(f"input_path: {p!r} does not exist; give the path of an image or .mp4 video")
        problem = empty_prompt_problem(self.prompt, self.disable_guardrail)
        if problem:
            raise InputError(problem)

    def output_path(self) -> Path:
        return Path(self.save_path)


def not_utf8(err: UnicodeDecodeError) -> str:
    """The end of a sentence for a user's file that does not decode: which byte, where, and the fix."""
    return f"is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); save it as UTF-8"


def blank_for_guardrail(text: str) -> bool:
    """True when the guardrail's blocklist finds no text in `text`: it reads ASCII alone, so a prompt with no
    ASCII letter, digit or mark (blank, or in another script only) is empty to it and refused."""
    return not any(ord(c) < 128 and not c.isspace() for c in text or "")


def empty_prompt_problem(prompt: str, disable_guardrail: bool) -> str | None:
    """The guardrail's empty-prompt refusal, said before the job loads anything (at submit, or when a seed
    script starts) rather than after minutes of loading; None when the prompt passes or the guardrail is off."""
    if disable_guardrail or not blank_for_guardrail(prompt):
        return None
    what = "empty" if not (prompt or "").strip() else "not English text (the guardrail and T5 read ASCII)"
    return (f"prompt: {what}; the guardrail refuses a prompt with no English text; write what the video should "
            f"show (--prompt \"...\" or --set prompt=\"...\"), or turn the guardrail off (disable_guardrail)")


@dataclass(frozen=True)
class BuildConfig:
    """What is fixed when the pipeline's components are built: two jobs with equal BuildConfigs can share
    one warm pipeline; any difference means building again. Everything else in a GenerationSpec
    (prompt, input, seed, steps, guidance, aspect ratio, outputs, which checks run) is the job's own and
    is passed to each generation instead of being stored on the pipeline.

    Field names equal GenerationSpec's, so the checkpoint builders read either. The daemon's "can this
    warm engine take this job" test is `build_key(spec_a) == build_key(spec_b)`.
    """

    model_size: str = "2B"
    resolution: str = "720"
    fps: int = 16
    natten: bool = False
    # checkpoint paths
    dit_path: str = ""
    load_ema: bool = False
    checkpoint_dir: str = ""
    # where components live and in which precision
    num_gpus: int = 1
    offload_guardrail: bool = False
    offload_prompt_refiner: bool = False
    offload_text_encoder: bool = False
    downcast_text_encoder: bool = False
    # kernels
    attention_backend: str = "auto"
    use_cuda_graphs: bool = False
    compile_dit: bool = True
    fp8_linears: bool = False

    @classmethod
    def from_spec(cls, spec: "GenerationSpec | dict") -> "BuildConfig":
        """From a GenerationSpec, or a spec dict (missing keys take GenerationSpec's defaults)."""
        if isinstance(spec, dict):
            spec = GenerationSpec.model_validate({k: v for k, v in spec.items() if k in GenerationSpec.model_fields})
        return cls(**{f.name: getattr(spec, f.name) for f in dataclass_fields(cls)})

    def key(self) -> tuple:
        return tuple(asdict(self).items())


BUILD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclass_fields(BuildConfig))


def build_key(spec: "GenerationSpec | dict | BuildConfig") -> tuple:
    """The hashable key of a spec's build-time fields (BuildConfig): equal keys, same warm pipeline."""
    return (spec if isinstance(spec, BuildConfig) else BuildConfig.from_spec(spec)).key()


class InputError(ValueError):
    """A mistake in a job's inputs the user can fix; the message is one sentence naming the field."""


def input_kind(path: str) -> str:
    """'image' or 'video' by extension; raises a one-sentence InputError naming input_path."""
    p = str(path).lower()
    if p.endswith(IMAGE_EXTENSIONS):
        return "image"
    if p.endswith(VIDEO_EXTENSIONS):
        return "video"
    raise InputError(
        f"input_path: {str(path)!r} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) "
        f"nor a video ({', '.join(VIDEO_EXTENSIONS)}); give a file of one of those types"
    )


def format_validation_error(err: ValidationError, source: str = "") -> str:
    """One line per problem: 'field: message'. `source` (a preset or file name) prefixes each."""
    lines = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "spec"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            known = ", ".join(sorted(GenerationSpec.model_fields))
            close = difflib.get_close_matches(field, GenerationSpec.model_fields, n=1)
            msg = (f"unknown key; did you mean {close[0]}? " if close else "unknown key; ") + f"known keys are: {known}"
        elif e["type"] in ("bool_parsing", "bool_type"):
            msg = f"{_given(e.get('input'))} is not a yes/no value; write true or false"
        elif e["type"] in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"):
            # pydantic's text alone ("Input should be a valid integer") does not say what was given
            msg = f"{_given(e.get('input'))}: {msg[:1].lower()}{msg[1:]}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        prefix = f"{source}: " if source else ""
        lines.append(f"{prefix}{field}: {msg}")
    return "\n".join(lines)


def shorten(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, "..." marking the cut (help defaults, values in error lines)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _given(value) -> str:
    """A user's value for an error line: repr (quotes, escapes: never raw control bytes), shortened."""
    return shorten(repr(value))


def spec_from_dict(data: dict, source: str = "") -> GenerationSpec:
    """Build a spec or raise SpecError whose message is `format_validation_error`'s text."""
    try:
        return GenerationSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


class SpecError(ValueError):
    """A spec that does not validate; the message names each bad field."""
