"""Long video: chunk k is conditioned on the last `num_conditional_frames` frames of chunk k-1.

Differences from the reference, on purpose:
- the conditioning frames pass between chunks in memory at full precision (the reference writes
  them to a lossy JPEG / mp4 and reads them back); only the prompt refiner, which reads files, gets
  them as a file (`refine_input_<k>.png` / `.mp4` in the state directory);
- after every chunk the partial video and a state directory are saved, so an interrupted job
  resumes from the last finished chunk instead of starting over.

State directory `<save_path>.lvg/`: `state.json` (spec fingerprint, chunks done), `chunk_<k>.npy`
(the chunk's new uint8 frames, [3,T,H,W]) and `tail.pt` (the last n frames of the latest chunk, float32,
the next chunk's conditioning). It is removed once the full video is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from engine import events
from engine.spec import GenerationSpec

# fields that change the generated frames; a resume with different values would splice two videos
_FINGERPRINT_FIELDS = ("model_size", "resolution", "fps", "natten", "dit_path", "load_ema", "prompt",
                       "input_path", "negative_prompt", "aspect_ratio", "num_conditional_frames", "guidance",
                       "seed", "num_steps", "disable_prompt_refiner", "num_chunks")


def fingerprint(spec: GenerationSpec) -> str:
    data = {k: getattr(spec, k) for k in _FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def state_dir(spec: GenerationSpec) -> Path:
    p = Path(spec.save_path)
    return p.with_name(p.name + ".lvg")


def load_state(spec: GenerationSpec) -> dict:
    d = state_dir(spec)
    f = d / "state.json"
    if not f.exists():
        return {"fingerprint": fingerprint(spec), "chunks_done": 0, "refined_prompts": []}
    state = json.loads(f.read_text())
    if state.get("fingerprint") != fingerprint(spec):
        raise_input(f"save_path: {d} holds a long video made with different settings; "
                    f"delete that folder or choose another --save_path")
    return state


def raise_input(msg: str):
    from engine.spec import InputError

    raise InputError(msg)


def _save_state(d: Path, state: dict) -> None:
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(d / "state.json")


def run(spec: GenerationSpec, ev: events.Emitter, pipeline=None, cancel=None) -> list[str]:
    import numpy as np
    import torch

    from engine import io, parallel
    from engine.modes import pipeline_for
    from engine.modes.video2world import write_result

    spec.check_input()
    n = spec.num_conditional_frames
    main = parallel.is_main()
    state = parallel.share_from_main(lambda: load_state(spec))  # rank 0 owns the state directory
    done = state["chunks_done"]
    d = state_dir(spec)
    if main:
        d.mkdir(parents=True, exist_ok=True)
    if done:
        ev.log(f"resuming long video at chunk {done + 1}/{spec.num_chunks}")
    # Frames so far (uint8) and the next chunk's conditioning (float) stay in memory; the state directory
    # is read back only when resuming.
    full = _assemble(d, done) if (main and done) else None
    tail = torch.load(d / "tail.pt") if (main and done) else None
    pipe = pipeline_for(spec, ev, pipeline)
    out = Path(spec.save_path)
    result = None
    for k in range(done, spec.num_chunks):
        if k > 0:
            tail = parallel.broadcast_object(tail if main else None)
        result = pipe.generate(
            spec, spec.input_path if k == 0 else None, seed=spec.seed + k, frames=tail,
            refine_input=_refine_input(spec, d, k, tail) if main else None, cancel=cancel,
            step_fields={"chunk": k + 1, "num_chunks": spec.num_chunks},
        )
        if not main:
            continue
        new = io.to_uint8(result.video if k == 0 else result.video[:, n:])
        tail = result.video[:, -n:].clone()
        np.save(d / f"chunk_{k}.npy", new.numpy())
        torch.save(tail, d / "tail.pt")
        state["chunks_done"] = k + 1
        state["refined_prompts"].append(result.refined_prompt)
        _save_state(d, state)
        full = new if full is None else torch.cat([full, new], dim=1)
        if k + 1 < spec.num_chunks:
            # the partial video; the finished one is written once below, with its sidecars
            from engine.phases import key_fields, phase

            with phase(ev, "writing", key_fields(spec), frames=int(full.shape[1]), partial=True,
                       chunk=k + 1, num_chunks=spec.num_chunks):
                io.write_video(out, full, spec.fps)
            ev("chunk", chunk=k + 1, total=spec.num_chunks, frames=int(full.shape[1]), path=str(out))
    if not main:
        return []
    if result is None:  # every chunk was already done: rebuild the outputs from the saved state
        from engine.pipeline import GenerationResult

        result = GenerationResult(video=full, prompt=spec.prompt, refined_prompt=None,
                                  negative_prompt=spec.negative_prompt, seed=spec.seed)
    else:
        result.video = full
    # one refined prompt per chunk (None where the refiner was off or kept the original), in chunk order
    refined = list(state["refined_prompts"])
    result.refined_prompt = None
    outputs = write_result(spec, result, out, ev, refined=refined,
                           extra={"chunks": spec.num_chunks, "refined_prompts": refined, "frames": int(full.shape[1])},
                           phase_fields={"chunk": spec.num_chunks, "num_chunks": spec.num_chunks})
    if done < spec.num_chunks:
        ev("chunk", chunk=spec.num_chunks, total=spec.num_chunks, frames=int(full.shape[1]), path=str(out))
    shutil.rmtree(d, ignore_errors=True)
    return outputs


def _refine_input(spec: GenerationSpec, d: Path, k: int, tail) -> str | None:
    """What the refiner looks at for chunk k: the input for chunk 0, then the frames that chunk k is
    conditioned on (the last n of chunk k-1), as the reference refines each chunk against its own
    start. Those frames live in memory, so they are written (losslessly for one frame) into the state
    directory: the refiner reads files."""
    from engine import io

    if spec.disable_prompt_refiner:
        return None
    if k == 0:
        return spec.input_path
    if tail.shape[1] == 1:
        return str(io.write_image(d / f"refine_input_{k}.png", tail[:, 0]))
    return str(io.write_video(d / f"refine_input_{k}.mp4", tail, spec.fps))


def _assemble(d: Path, chunks: int):
    import numpy as np
    import torch

    return torch.from_numpy(np.concatenate([np.load(d / f"chunk_{k}.npy") for k in range(chunks)], axis=1))
