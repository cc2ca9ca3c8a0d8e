"""Preset + overrides (+ a batch entry) -> a stored spec, and the checks a submit must pass.

Everything a user can get wrong is caught here, when the job is queued, not an hour later when it
runs: a missing or unreadable input, 5 conditional frames from an image or a short video, a seed
outside 0..2^32-1, a save_path that would overwrite a file no job wrote.
"""

from __future__ import annotations

import os
import shutil

SEED_MAX = 2**32 - 1
TEXT_FIELDS = ("prompt", "negative_prompt")
PATH_FIELDS = ("input_path", "save_path", "dit_path", "batch_input_json", "checkpoint_dir")


class SubmitError(ValueError):
    """A submit the queue refuses; the message is one sentence naming the field and the fix."""


def clean_text(value: str) -> str:
    """User text that arrived undecodable (argv bytes as surrogate escapes): U+FFFD per bad byte."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape" if _escapes_only(value) else "replace").decode("utf-8", "replace")


def _escapes_only(value: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in value)


def _utf8_or_refuse(field: str, value: str, source: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SubmitError(f"{source}{field}: {value!r} is not valid UTF-8; rename the file (or directory) to a "
                          f"UTF-8 name") from None


def resolve_spec(overrides, preset: str | None, gpu_count: int, source: str = "") -> dict:
    """The spec (as stored) for `overrides` over `preset`; SubmitError if it does not validate."""
    from engine.spec import SpecError, spec_from_dict

    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise SubmitError(f"{source}spec: expected a JSON object of spec fields, got {type(overrides).__name__}")
    overrides = dict(overrides)
    for field in TEXT_FIELDS:
        if isinstance(overrides.get(field), str):
            overrides[field] = clean_text(overrides[field])
    for field in PATH_FIELDS:
        if isinstance(overrides.get(field), str):
            _utf8_or_refuse(field, overrides[field], source)
    base: dict = {}
    if preset:
        try:
            from cosmos_tui.presets import PresetError, load_preset
        except ImportError:
            raise SubmitError("presets are not available in this installation (cosmos_tui.presets is missing)") from None
        try:
            p = load_preset(preset)
        except PresetError as err:
            raise SubmitError(str(err)) from None
        if p.spec is None:
            raise SubmitError(f"preset {preset!r} is invalid: {p.error}")
        base = dict(p.overrides)
    seed = overrides.get("seed", base.get("seed", 0))
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= SEED_MAX:
        raise SubmitError(f"{source}seed: {seed} is outside 0..{SEED_MAX}; give a seed in that range")
    try:
        spec = spec_from_dict({**base, **overrides}, source=source.rstrip(": "))
    except SpecError as err:
        raise SubmitError(str(err)) from None
    # a Slurm job's GPUs are the cluster's (slurm_nodes x slurm_gpus_per_node), not this machine's
    if spec.executor == "local" and spec.num_gpus > gpu_count:
        raise SubmitError(
            f"{source}num_gpus: {spec.num_gpus} GPUs asked for but this machine has {gpu_count}; "
            f"set num_gpus to at most {gpu_count}"
        )
    if spec.executor == "slurm" and shutil.which("sbatch") is None:
        raise SubmitError(f"{source}executor: \"slurm\" needs sbatch, which is not on the daemon's PATH; start the "
                          f"daemon where the Slurm commands work (a login node), or set executor = \"local\"")
    return spec.model_dump(mode="json")


def _under(cwd: str | None, path: str) -> str:
    return os.path.normpath(os.path.join(cwd or "", os.path.expanduser(path)))


def check_inputs(spec: dict, cwd: str | None, source: str = "") -> None:
    """The conditioning input exists, is readable and has the frames the spec asks for; then the prompt is
    one the guardrail takes (a missing file is the first thing to fix)."""
    from engine.spec import empty_prompt_problem

    if spec.get("batch_input_json") or spec.get("skip_generation"):
        return  # the engine reads its inputs from the batch file, or generates nothing
    _check_input_file(spec, cwd, source)
    problem = empty_prompt_problem(spec.get("prompt") or "", bool(spec.get("disable_guardrail")))
    if problem:
        raise SubmitError(f"{source}{problem}")


def _check_input_file(spec: dict, cwd: str | None, source: str) -> None:
    from engine.io import DEMO_INPUT_PATH
    from engine.spec import InputError, input_kind

    given = spec.get("input_path") or ""
    path = _under(cwd, given)
    try:
        kind = input_kind(given)
    except InputError as err:
        raise SubmitError(f"{source}{err}") from None
    frames = spec.get("num_conditional_frames", 1)
    if given == DEMO_INPUT_PATH:  # an image drawn on first use (engine.io.ensure_demo_input): not on disk yet
        _image_frames(frames, kind, given, source)
        return
    if not os.path.isfile(path):
        raise SubmitError(f"{source}input_path: {given!r} does not exist (looked in {os.path.dirname(path)}); "
                          f"give the path of an image or .mp4 video")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise SubmitError(f"{source}input_path: {given!r} cannot be read ({err.strerror}); fix its permissions "
                          f"or give another file") from None
    _image_frames(frames, kind, given, source)
    if frames > 1 and kind == "video":
        from engine.io import probe_video

        try:
            count = probe_video(path)["frames"]
        except InputError as err:
            raise SubmitError(f"{source}{err}") from None
        if count < frames:
            raise SubmitError(f"{source}num_conditional_frames: {frames} frames were asked for but input_path "
                              f"{given!r} has {count}; set num_conditional_frames=1 or give a longer video")


def _image_frames(frames: int, kind: str, given: str, source: str) -> None:
    if frames > 1 and kind == "image":
        raise SubmitError(f"{source}num_conditional_frames: {frames} frames were asked for but input_path "
                          f"{given!r} is an image (1 frame); set num_conditional_frames=1 or give an .mp4")


def check_checkpoints(spec: dict, cwd: str | None, source: str = "") -> None:
    """The checkpoints the job will load are on disk, looked for where its engine will look (the seed's
    layout under $COSMOS_TUI_CHECKPOINTS or ./checkpoints, relative to the directory the job was submitted
    from), and so are the guardrail's required ones unless it is off: a job that would stop at loading
    is refused now, with the command that downloads what is missing. A Slurm job's nodes may see other
    paths (COSMOS_TUI_SLURM_SETUP can set the variable there), so it is not checked here."""
    from pathlib import Path

    from engine import guardrail
    from engine.checkpoints import CheckpointPaths, checkpoints_root
    from engine.spec import spec_from_dict

    if spec.get("executor", "local") != "local":
        return
    gs = spec_from_dict(spec)
    paths = CheckpointPaths.for_spec(gs)
    for what, path in paths.needed(gs):
        where = Path(_under(cwd, str(path)))
        if not where.exists():
            raise SubmitError(f"{source}{paths.error(what, where)}")
    if gs.disable_guardrail or gs.model_size == "tiny" or gs.skip_generation:
        return  # the tiny profile's guardrail is the word list alone
    root = Path(_under(cwd, str(checkpoints_root())))
    missing = guardrail.missing_required(root)
    if missing:
        raise SubmitError(f"{source}{guardrail.missing_message(root, missing)}")


def check_gpu_memory(spec: dict, gpu_totals: list, source: str = "") -> None:
    """Refuse a job whose model weights alone cannot fit the GPUs it could get (engine/footprint.py: a
    floor, so a refusal is certain to be right). `gpu_totals`: bytes per GPU of this machine, None where
    unknown (no NVML: nothing is checked). A Slurm job's GPUs are the cluster's, not these."""
    from engine.footprint import too_small
    from engine.spec import spec_from_dict

    known = _gpu_sizes(gpu_totals)
    if spec.get("executor", "local") != "local" or not known:
        return
    n = max(1, int(spec.get("num_gpus") or 1))
    if n > len(known):
        return  # resolve_spec refused it already
    best = sorted(known, reverse=True)[n - 1]  # each of the job's GPUs holds the weights
    where = "each GPU here" if len(set(known)) == 1 else ("the largest GPU here" if n == 1 else f"the {n} largest GPUs here")
    problem = too_small(spec_from_dict(spec), best, where)
    if problem:
        raise SubmitError(source + problem)


def _gpu_sizes(gpu_totals: list) -> list[int] | None:
    """Bytes per GPU when every size is known; None when one is not (no NVML): nothing can be compared."""
    known = [t for t in gpu_totals if isinstance(t, int) and t > 0]
    return known if len(known) == len(gpu_totals) else None


def gpu_fit(gpu_totals: list):
    """For the scheduler (queue/core.plan's `fits`): on a machine whose GPUs differ in size, whether GPU
    `g` can hold a job's weights (engine/footprint.py's floor, as check_gpu_memory uses). None when they
    are all one size or a size is unknown: submit already refused what the largest cannot hold."""
    known = _gpu_sizes(gpu_totals)
    if known is None or len(set(known)) < 2:
        return None
    needs: dict[int, int] = {}  # job id -> bytes: a spec is validated once per call of plan, not once per GPU

    def need_of(spec: dict) -> int:
        from engine.footprint import floor_bytes, job_weights
        from engine.spec import SpecError, spec_from_dict

        if spec.get("executor", "local") != "local":
            return 0  # the Slurm cluster's GPUs are not these
        try:
            return floor_bytes(job_weights(spec_from_dict(spec)))
        except SpecError:
            return 0  # a stored spec this version refuses: the engine says why, on any GPU

    def fits(job: dict, g: int) -> bool:
        jid = job.get("id")
        need = needs[jid] if jid in needs else need_of(job.get("spec") or {})
        if jid is not None:
            needs[jid] = need
        return need <= known[g]

    return fits


def check_save_path(spec: dict, cwd: str | None, claimed: set[str], source: str = "") -> None:
    """Refuse to overwrite a file that no job of the queue wrote (a job's own path gets a fresh
    name from the store, so a claimed path is never a stranger's file)."""
    path = _under(cwd, spec.get("save_path") or "")
    if spec.get("overwrite") or path in claimed:
        return
    if os.path.isfile(path):
        raise SubmitError(f"{source}save_path: {spec.get('save_path')!r} already exists and no job wrote it; "
                          f"set overwrite=true (--set overwrite=true) to replace it, or give a new save_path")


def batch_entry_problem(entry: dict) -> str | None:
    """A batch file entry (the seed's {input_video, prompt, output_video}, renamed) must name its own
    prompt and input: without them it would run on the preset's demo image and prompt."""
    missing = [k for k, shown in (("prompt", "prompt"), ("input_path", "input_video")) if not entry.get(k)]
    if missing:
        names = " and ".join(shown for k, shown in (("prompt", "prompt"), ("input_path", "input_video")) if k in missing)
        return f"{names}: missing; give each entry its own {names}"
    return None


def resolved_path(cwd: str | None, path: str) -> str:
    """A spec path as the engine will open it: relative to the directory the job was submitted from."""
    return _under(cwd, path)


def edit_spec(spec: dict, changes, gpu_count: int, cwd: str | None, others: set[str]) -> dict:
    """A queued job's spec with `changes` applied, checked like a submit (`others`: the save
    paths of every other job). The preset is not applied again: the stored spec already has it."""
    if not isinstance(changes, dict) or not changes:
        raise SubmitError("set: give at least one field to change, e.g. --set seed=4")
    if "mode" in changes and changes["mode"] != spec.get("mode"):
        raise SubmitError("mode: a job's mode cannot be edited; submit a new job with that mode")
    new = resolve_spec({**spec, **changes}, None, gpu_count)
    check_inputs(new, cwd)
    path = _under(cwd, new.get("save_path") or "")
    if path in others and not new.get("overwrite"):
        raise SubmitError(f"save_path: {new.get('save_path')!r} is another job's output too; give a new save_path "
                          f"(or --set overwrite=true to replace that output)")
    check_save_path(new, cwd, {_under(cwd, spec.get("save_path") or "")})
    return new
