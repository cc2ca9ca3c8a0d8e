"""A job's spec as a user reads it: the fields that matter for its mode, the ones set for this job
(different from GenerationSpec's defaults) first, the defaults after, and the fields the mode does
not use named in one line instead of listed.

Which fields a mode uses: long video (lvg) chains `num_chunks` chunks, each conditioned on the last
frames of the one before, so `num_conditional_frames` matters even with an image input; best-of-N
generates `num_generations` videos and asks the critic `num_critic_trials` times about each;
plain video2world from an image conditions on that one frame (num_conditional_frames is 1).
"""

from __future__ import annotations

import json

from engine.spec import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, GenerationSpec

MODE_ONLY = {
    "num_chunks": {"lvg"},
    "num_generations": {"bestofn"},
    "num_critic_trials": {"bestofn"},
    "skip_generation": {"bestofn"},
}
MODE_TITLE = {"video2world": "video2world", "lvg": "long video (lvg)", "bestofn": "best-of-N"}


def input_kind(path: object) -> str | None:
    p = str(path or "").lower()
    if p.endswith(IMAGE_EXTENSIONS):
        return "image"
    if p.endswith(VIDEO_EXTENSIONS):
        return "video"
    return None


def relevant(field: str, spec: dict) -> bool:
    mode = spec.get("mode") or "video2world"
    if field in MODE_ONLY:
        return mode in MODE_ONLY[field]
    if field == "num_conditional_frames":
        return mode == "lvg" or input_kind(spec.get("input_path")) != "image"
    return True


def _default(field: str):
    info = GenerationSpec.model_fields.get(field)
    if info is None:
        return _NO_DEFAULT
    return info.get_default(call_default_factory=True)


_NO_DEFAULT = object()


LONG_DEFAULT = 40  # a default longer than this (the negative prompt) is shown as its start


def _shown(value, default: bool = False) -> str:
    # user text as data: JSON escapes quotes and C0 controls; the rest of the unprintables too
    text = json.dumps(value, ensure_ascii=False)
    text = "".join(c if c.isprintable() else "?" for c in text)
    if default and isinstance(value, str) and len(text) > LONG_DEFAULT:
        text = f"{text[:LONG_DEFAULT - 1]}…\" (built-in, {len(value)} chars)"
    return text


def spec_text(spec: dict) -> str:
    if not spec:
        return "(no spec)"
    mode = spec.get("mode") or "video2world"
    kind = input_kind(spec.get("input_path"))
    # mode is the heading; an unset batch file is how a batch was split, not a setting of this job
    fields = [k for k in spec if k != "mode" and not (k == "batch_input_json" and not spec[k])]
    used = [k for k in fields if relevant(k, spec)]
    unused = [k for k in fields if not relevant(k, spec)]
    changed = [k for k in used if spec[k] != _default(k)]
    defaults = [k for k in used if k not in changed]
    width = max((len(k) for k in used), default=0)
    what = MODE_TITLE.get(mode, mode) + (f" from {'an' if kind == 'image' else 'a'} {kind}" if kind else "")
    lines = [f"{what} · {len(changed)} set for this job, {len(defaults)} at their defaults"]
    if changed:
        lines += ["", "set for this job"] + [f"  {k:<{width}} = {_shown(spec[k])}" for k in changed]
    if defaults:
        lines += ["", "defaults"] + [f"  {k:<{width}} = {_shown(spec[k], default=True)}" for k in defaults]
    if unused:
        lines += ["", f"not used by {MODE_TITLE.get(mode, mode)}" + (f" from an {kind}" if kind == "image" else "")
                  + ": " + ", ".join(unused)]
    return "\n".join(lines)
