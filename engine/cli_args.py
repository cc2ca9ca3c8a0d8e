"""The command line shared by `python -m engine.video2world`, `engine.video2world_lvg` and
`engine.video2world_bestofn`.

The flags are built from GenerationSpec's fields, so names, types, choices and defaults cannot
drift from the job spec (the seed's flags and defaults, plus our --num_steps, --attention_backend
and --checkpoint_dir). Every entry point accepts every field; flags that a mode ignores say so in
their help. Only a few defaults differ by mode, as in the seed (best-of-N's --save_path is a
directory).

What a user can get wrong is reported as one line on stderr naming the field, with exit status 2:
argparse errors (unknown flag, bad choice), spec validation, and input checks (missing file, an
image where 5 frames are needed, an unknown extension). A batch file (--batch_input_json) is a JSON
list of {"input_video", "prompt", "output_video"} plus, per entry, any spec field to override (seed,
guidance, ...); unknown keys are ignored with a warning, as the reference ignores them. A bad entry is
reported by index and skipped, the others still run, and the exit status is 2 at the end. Generation itself is `engine.modes.run_job`,
imported only when a job is about to run. Torch-free: the CLI answers --help and input mistakes at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from engine.resolutions import ASPECT_RATIOS
from engine.spec import GenerationSpec, InputError, SpecError, not_utf8, offered_choices, shorten, spec_from_dict

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

MODE_PROG = {
    "video2world": "python -m engine.video2world",
    "lvg": "python -m engine.video2world_lvg",
    "bestofn": "python -m engine.video2world_bestofn",
}

MODE_DESCRIPTION = {
    "video2world": "Cosmos-Predict2 Video2World: a video that continues an image or a clip, following a prompt.",
    "lvg": "Cosmos-Predict2 long video: chunk after chunk, each conditioned on the last frames of the one before.",
    "bestofn": "Cosmos-Predict2 best-of-N: N generations with seeds seed..seed+N-1, then a Cosmos-Reason1 critic "
               "scores each video for artifacts.",
}

# Defaults that differ from GenerationSpec's for one mode (the seed's own per-script defaults).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "video2world": {},
    "lvg": {},
    "bestofn": {"save_path": "output/best-of-n"},
}

# (group title, fields in order). Every GenerationSpec field but `mode` appears exactly once;
# tests/test_cli_args.py checks it, so a new field can't be forgotten here.
GROUPS: list[tuple[str, list[str]]] = [
    ("model", ["model_size", "resolution", "fps", "dit_path", "load_ema", "natten"]),
    ("inputs", ["prompt", "input_path", "negative_prompt", "aspect_ratio", "num_conditional_frames", "batch_input_json"]),
    ("sampling", ["guidance", "seed", "num_steps"]),
    ("output", ["save_path", "overwrite"]),
    ("runtime", ["num_gpus", "disable_guardrail", "offload_guardrail", "disable_prompt_refiner",
                 "offload_prompt_refiner", "offload_text_encoder", "downcast_text_encoder", "benchmark",
                 "use_cuda_graphs", "compile_dit", "attention_backend", "fast_threshold",
                 "fp8_linears"]),
    ("long video", ["num_chunks"]),
    ("best-of-N", ["num_generations", "num_critic_trials", "skip_generation", "checkpoint_dir"]),
    ("cluster (the queue only; these scripts always run here)",
     ["executor", "slurm_partition", "slurm_account", "slurm_nodes", "slurm_gpus_per_node", "slurm_time_limit"]),
]

HELP: dict[str, str] = {
    "overwrite": "replace a file at --save_path that no queued job wrote (else a named path is refused, a preset's renamed)",
    "model_size": "model: 2B or 14B checkpoints, or tiny (toy sizes, seeded random weights, runs on a CPU, no download)",
    "resolution": "output resolution class; the pixel size follows from it and --aspect_ratio",
    "fps": "16 fps models make 93-frame clips, 10 fps models 61 frames",
    "dit_path": "custom DiT checkpoint (.pt or .safetensors); empty means the standard checkpoint for the model",
    "load_ema": "load the EMA weights (net_ema.*) of the DiT checkpoint instead of net.*",
    "natten": "sparse (neighbourhood) attention variant of the model; 720p 16:9 only",
    "prompt": "text describing the video to generate",
    "input_path": "conditioning input: an image (.png .jpg .jpeg .webp) or an .mp4 video",
    "negative_prompt": "what to steer away from (the unconditional branch of classifier-free guidance)",
    "aspect_ratio": "aspect ratio of the output",
    "num_conditional_frames": "frames of the input to continue from: 1 (image or the last frame of a video) "
                              "or 5 (the last 5 frames of a video)",
    "batch_input_json": "JSON list of {\"input_video\", \"prompt\", \"output_video\"} to run one after the other; "
                        "overrides --input_path, --prompt and --save_path. An entry may also set spec fields for "
                        "itself (seed, guidance, negative_prompt, num_conditional_frames, num_steps, ...); "
                        "unknown keys are ignored with a warning naming them",
    "guidance": "classifier-free guidance weight",
    "seed": "noise seed (long video adds the chunk index, best-of-N the generation index)",
    "num_steps": "denoising steps (the reference always takes 35)",
    "save_path": "output .mp4 (.mp4 is appended to a name without it); a .txt (prompts) and a .json "
                 "(spec, seed, timings, guardrail checks) are written beside it",
    "num_gpus": "GPUs for context parallelism (launch with torchrun --nproc_per_node N)",
    "disable_guardrail": "skip the text and video safety checks (without this flag a real model needs the "
                         "Llama Guard 3 and Cosmos-Guardrail1 checkpoints; the tiny profile checks the blocklist only)",
    "offload_guardrail": "keep the guardrail models on the CPU between uses",
    "disable_prompt_refiner": "skip Cosmos-Reason1 prompt rewriting",
    "offload_prompt_refiner": "keep the prompt refiner on the CPU between uses",
    "offload_text_encoder": "keep the T5 text encoder on the CPU between uses",
    "downcast_text_encoder": "run the T5 text encoder in bf16",
    "benchmark": "run each generation 4 times and report the mean time of the last 3",
    "use_cuda_graphs": "capture the DiT blocks in CUDA graphs (torch.compile reduce-overhead mode)",
    "compile_dit": "torch.compile the DiT blocks on CUDA (default on; the first job pays 20-60 s of compilation)",
    "attention_backend": "attention kernel: auto picks the fastest available. cudnn_fp8 (cuDNN's FP8 attention) is "
                         "disabled: its video drifted far from the exact one on an H100 (bench/RESULTS.md)",
    "fast_threshold": "EXPERIMENTAL fast mode, off (0) by default: skip the DiT after its first block on steps "
                      "whose first-block change is below this (e.g. 0.1; larger skips more). Faster, and the video "
                      "differs from the exact one; bench/RESULTS.md reports speed and drift",
    "fp8_linears": "EXPERIMENTAL, off by default: run the DiT's large linear layers as FP8 GEMMs (needs an Ada, "
                   "Hopper or newer GPU; the tiny profile also runs it on CPU). The video differs from the exact "
                   "one; 2B on an H100: 9% faster steps, 6% drift (bench/RESULTS.md)",
    "num_chunks": "long video only: number of chunks (93 frames each, overlapping by the conditional frames)",
    "num_generations": "best-of-N only: number of videos to generate",
    "num_critic_trials": "best-of-N only: critic answers sampled per video",
    "skip_generation": "best-of-N only: generate nothing, score the .mp4 files already in --save_path",
    "checkpoint_dir": "best-of-N only: Cosmos-Reason1 checkpoint directory for the critic (empty: the standard one)",
    "executor": "where the queue runs the job: local (this machine's GPUs) or slurm (sbatch on a cluster)",
    "slurm_partition": "Slurm partition for executor slurm (empty: the cluster's default)",
    "slurm_account": "Slurm account for executor slurm (empty: your default account)",
    "slurm_nodes": "nodes for executor slurm; num_gpus must equal nodes x GPUs per node",
    "slurm_gpus_per_node": "GPUs per node for executor slurm (0 only for the tiny profile, on CPUs)",
    "slurm_time_limit": "Slurm time limit for executor slurm: minutes, H:MM:SS or D-HH:MM:SS",
}

# Help that reads differently for one mode.
MODE_HELP: dict[str, dict[str, str]] = {
    "lvg": {"save_path": "output .mp4 of the whole long video; a .txt (prompts, refined prompt per chunk) and "
                         "a .json (spec, seed, timings) are written beside it"},
    "bestofn": {"save_path": "output DIRECTORY: one <input>_seed<seed>.mp4 per generation, the critic's "
                             "reports beside them"},
}

# Choices for fields whose type is a plain str validated by the spec.
EXTRA_CHOICES = {"aspect_ratio": ASPECT_RATIOS}

# Flags that belong to another script in the seed get a note in their help, so a user sees at a
# glance what a mode ignores.
MODE_ONLY = {"num_chunks": "lvg", "num_generations": "bestofn", "num_critic_trials": "bestofn",
             "skip_generation": "bestofn", "checkpoint_dir": "bestofn"}

EPILOG = {
    "video2world": """examples:
  python -m engine.video2world --input_path assets/demo_input.png --prompt "A robot arm picks up a red cube."
  python -m engine.video2world --model_size 14B --resolution 480 --fps 10 --input_path clip.mp4 \\
      --num_conditional_frames 5 --prompt "..." --save_path output/clip_continued.mp4
  python -m engine.video2world --model_size tiny --num_steps 4 --disable_guardrail --disable_prompt_refiner \\
      --input_path assets/demo_input.png --prompt "demo"      (CPU, seconds, no download)
  python -m engine.video2world --batch_input_json jobs.json   (list of {input_video, prompt, output_video})
""",
    "lvg": """examples:
  python -m engine.video2world_lvg --input_path clip.mp4 --num_conditional_frames 5 --num_chunks 6 \\
      --prompt "A car drives along a coastal road." --save_path output/long.mp4
  python -m engine.video2world_lvg --model_size tiny --num_steps 4 --num_chunks 3 --disable_guardrail \\
      --disable_prompt_refiner --input_path assets/demo_input.png --prompt "demo"
""",
    "bestofn": """examples:
  python -m engine.video2world_bestofn --input_path assets/demo_input.png --prompt "..." \\
      --num_generations 4 --num_critic_trials 5 --save_path output/best-of-n
  python -m engine.video2world_bestofn --skip_generation --save_path output/best-of-n   (score existing videos)
""",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (the field and what to do), exit 2."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        message = message.replace("argument ", "", 1) if message.startswith("argument ") else message
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _literal_choices(annotation: Any) -> tuple | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return None


def _base_type(annotation: Any) -> Any:
    """`Optional[str]` -> str; other annotations unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return annotation


def _fmt_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        if not value:
            return '""'
        return shorten(value)
    return str(value)


def spec_defaults(mode: str) -> dict[str, Any]:
    """Every field's default for one entry point: GenerationSpec's, then the mode's own."""
    out = {name: f.get_default(call_default_factory=True) for name, f in GenerationSpec.model_fields.items()}
    out.update(MODE_DEFAULTS[mode], mode=mode)
    return out


def build_parser(mode: str = "video2world") -> argparse.ArgumentParser:
    if mode not in MODE_PROG:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODE_PROG)}")
    defaults = spec_defaults(mode)
    parser = _Parser(
        prog=MODE_PROG[mode],
        description=MODE_DESCRIPTION[mode],
        epilog=EPILOG[mode],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fields = GenerationSpec.model_fields
    for title, names in GROUPS:
        group = parser.add_argument_group(title)
        for name in names:
            info = fields[name]
            default = defaults[name]
            help_text = MODE_HELP.get(mode, {}).get(name, HELP[name])
            if name in MODE_ONLY and MODE_ONLY[name] != mode:
                help_text += f" (ignored by {MODE_PROG[mode].split()[-1]})"
            choices = EXTRA_CHOICES.get(name) or _literal_choices(info.annotation)
            kwargs: dict[str, Any] = {"dest": name, "default": default}
            if info.annotation is bool:
                kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
                kwargs["help"] = help_text
            else:
                if choices is not None:
                    kwargs["choices"] = choices
                    kwargs["type"] = type(choices[0])
                    kwargs["metavar"] = "{" + ",".join(map(str, offered_choices(name, choices))) + "}"
                else:
                    kwargs["type"] = _base_type(info.annotation)
                    kwargs["metavar"] = name.upper()
                kwargs["help"] = f"{help_text} (default: {_fmt_default(default)})"
            # argparse %-formats help strings: a measured "9%" (or a default holding one) must reach it as "9%%"
            kwargs["help"] = kwargs["help"].replace("%", "%%")
            group.add_argument(f"--{name}", **kwargs)
    return parser


# ---------------------------------------------------------------------------------------------
# batch files


class BatchError(ValueError):
    """The batch file as a whole is unusable (missing, not JSON, not a list)."""


def load_batch(path: str) -> list:
    """The entries of a batch JSON file; BatchError (one sentence naming batch_input_json) otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BatchError(f"batch_input_json: {path!r} does not exist; give the path of a JSON file") from None
    except OSError as err:
        raise BatchError(f"batch_input_json: {path!r} could not be read ({err.strerror})") from None
    except UnicodeDecodeError as err:  # JSON is UTF-8; a Latin-1 file would otherwise end in a traceback
        raise BatchError(f"batch_input_json: {path!r} {not_utf8(err)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BatchError(f"batch_input_json: {path!r} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, list):
        raise BatchError(
            f"batch_input_json: {path!r} holds a JSON {type(data).__name__}, not a list; "
            'write a list of {"input_video": ..., "prompt": ..., "output_video": ...}'
        )
    return data


# The seed's entry keys and the spec fields they fill.
BATCH_KEYS = {"input_video": "input_path", "prompt": "prompt", "output_video": "save_path"}
# Spec fields an entry may not set: they are about the whole run, not one entry of it.
BATCH_RUN_FIELDS = frozenset({"mode", "batch_input_json", "num_gpus", "skip_generation"})


def batch_entry_spec(base: GenerationSpec, idx: int, entry: Any,
                     warn: Callable[[str], None] | None = None) -> GenerationSpec:
    """The spec of batch entry `idx`: the command line's spec with this entry's input, prompt and
    output, and any spec field the entry sets (seed, guidance, negative_prompt, ...). Keys that are
    neither are ignored, as the reference ignores them, with one `warn` line naming each. Raises
    InputError whose message starts with 'entry <idx>: <field>: '."""
    where = f"entry {idx}"
    if not isinstance(entry, dict):
        raise InputError(f"{where}: is a JSON {type(entry).__name__}, not an object with input_video and prompt")
    fields = GenerationSpec.model_fields
    overrides: dict[str, Any] = {}
    for key in entry:
        if key in BATCH_KEYS:
            continue
        if key in BATCH_RUN_FIELDS:
            raise InputError(f"{where}: {key}: applies to the whole run, not one entry; give it on the "
                             f"command line (--{key}) and remove it from the entry")
        if key in BATCH_KEYS.values():
            if warn is not None:
                seed_name = next(k for k, v in BATCH_KEYS.items() if v == key)
                warn(f"{where}: {key}: ignored; in a batch entry this is called {seed_name}")
        elif key in fields:
            overrides[key] = entry[key]
        elif warn is not None:
            warn(f"{where}: {key}: unknown key, ignored (entries take input_video, prompt, output_video "
                 f"and spec fields such as seed, guidance, negative_prompt)")
    for key in ("input_video", "prompt"):
        if key not in entry or entry[key] in (None, ""):
            raise InputError(f"{where}: {key}: missing; every entry needs a non-empty \"{key}\"")
        if not isinstance(entry[key], str):
            raise InputError(f"{where}: {key}: must be a string")
    if base.mode == "bestofn":
        out_default = str(Path(base.save_path) / f"entry_{idx}")
    else:
        out_default = f"output_{idx}.mp4"
    output = entry.get("output_video") or out_default
    if not isinstance(output, str):
        raise InputError(f"{where}: output_video: must be a string")
    data = {**base.model_dump(), **overrides, "input_path": entry["input_video"], "prompt": entry["prompt"],
            "save_path": output, "batch_input_json": None}
    try:
        # validated again as a whole: an override is checked like its flag (and combinations with the rest)
        spec = spec_from_dict(data, source=where)
    except SpecError as err:
        raise InputError(str(err).splitlines()[0]) from None
    try:
        spec.check_input()
    except InputError as err:
        msg = str(err)
        if msg.startswith("input_path:"):
            msg = "input_video:" + msg[len("input_path:"):]
        raise InputError(f"{where}: {msg}") from None
    return spec


# ---------------------------------------------------------------------------------------------
# running


def _fail(prog: str, message: str) -> None:
    for line in message.splitlines() or [message]:
        print(f"{prog}: {line}", file=sys.stderr, flush=True)


def _load_run_job() -> tuple[Callable | None, str]:
    """(run_job, "") or (None, why not)."""
    try:
        from engine.modes import run_job  # lazy: pulls in torch and the models
    except ImportError as err:
        missing_name = getattr(err, "name", None) in (None, "engine.modes")
        return None, "engine.modes.run_job is missing" if missing_name else f"{err}"
    return run_job, ""


def _prepare_input(spec: GenerationSpec) -> None:
    """The tiny preset's demo image is drawn on first use rather than shipped."""
    from engine.io import DEMO_INPUT_PATH, ensure_demo_input

    if spec.input_path == DEMO_INPUT_PATH and not os.path.exists(spec.input_path):
        ensure_demo_input(spec.input_path)


def parse_spec(mode: str, argv: Sequence[str] | None = None) -> GenerationSpec:
    """Parse the command line into a validated spec; SpecError (one line per problem) otherwise.
    argparse mistakes exit 2 from inside argparse."""
    args = build_parser(mode).parse_args(argv)
    return spec_from_dict({**vars(args), "mode": mode})


def main(mode: str, argv: Sequence[str] | None = None, emit: Callable[[dict], None] | None = None) -> int:
    """Run one entry point; returns the exit status (0 ok, 1 generation failed, 2 user mistake)."""
    prog = MODE_PROG[mode]
    try:
        spec = parse_spec(mode, argv)
    except SpecError as err:
        _fail(prog, str(err))
        return EXIT_USAGE

    jobs: list[tuple[str, GenerationSpec]] = []
    bad = False
    if spec.batch_input_json:
        try:
            entries = load_batch(spec.batch_input_json)
        except BatchError as err:
            _fail(prog, str(err))
            return EXIT_USAGE
        for idx, entry in enumerate(entries):
            try:
                jobs.append((f"entry {idx}", batch_entry_spec(
                    spec, idx, entry, warn=lambda m: _fail(prog, f"{spec.batch_input_json}: warning: {m}"))))
            except InputError as err:
                _fail(prog, f"{spec.batch_input_json}: {err}")
                bad = True
        if not entries:
            _fail(prog, f"batch_input_json: {spec.batch_input_json!r} is an empty list; nothing to do")
            return EXIT_USAGE
    elif spec.mode == "bestofn" and spec.skip_generation:
        jobs.append(("", spec))  # scores existing videos in save_path: there is no input to check
    else:
        try:
            _prepare_input(spec)
            spec.check_input()
        except InputError as err:
            _fail(prog, str(err))
            return EXIT_USAGE
        jobs.append(("", spec))

    if not jobs:
        return EXIT_USAGE
    run_job, why = _load_run_job()
    if run_job is None:
        _fail(prog, f"the pipeline is not available in this build ({why})")
        return EXIT_FAILED

    from engine.progress import make_renderer

    crashed = False
    renderer = make_renderer() if emit is None else None
    sink = emit or renderer
    try:
        for label, job_spec in jobs:
            prefix = f"{label}: " if label else ""
            try:
                outputs = run_job(job_spec, sink)
            except InputError as err:
                _fail(prog, f"{prefix}{err}")
                bad = True
            except KeyboardInterrupt:
                _fail(prog, f"{prefix}interrupted")
                return 130
            except Exception as err:  # a crash in one batch entry must not lose the others
                if os.environ.get("COSMOS_DEBUG"):
                    traceback.print_exc()
                _fail(prog, f"{prefix}failed: {type(err).__name__}: {err}")
                crashed = True
            else:
                for path in outputs or []:
                    print(path, flush=True)  # stdout carries only result paths, for scripts
    finally:
        if renderer is not None:
            renderer.close()
    if bad:
        return EXIT_USAGE
    return EXIT_FAILED if crashed else EXIT_OK


def leave_process_group() -> None:
    """End of a process that may be a torchrun rank: leave the process group before the interpreter tears
    down. Left to interpreter exit, gloo's background threads can abort the process (SIGABRT, "terminate
    called without an active exception") after the job finished: torchrun then reports the run failed
    and a Slurm job ends FAILED. Only engine.parallel creates a group, so when it was never imported there
    is nothing to leave (and this stays torch-free)."""
    parallel = sys.modules.get("engine.parallel")
    if parallel is not None:
        parallel.shutdown()


def entry_point(mode: str) -> typing.NoReturn:
    try:
        code = main(mode)
    finally:
        leave_process_group()
    sys.exit(code)
