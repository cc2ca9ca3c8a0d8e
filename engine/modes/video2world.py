"""One prompt + one image/video -> one video, with the seed's sidecars and `--benchmark`."""

from __future__ import annotations

import time
from pathlib import Path

from engine import events
from engine.spec import GenerationSpec

BENCHMARK_RUNS = 4  # the reference runs 4 times and averages the last 3


def run(spec: GenerationSpec, ev: events.Emitter, pipeline=None, cancel=None) -> list[str]:
    from engine import parallel
    from engine.modes import pipeline_for

    spec.check_input()
    pipe = pipeline_for(spec, ev, pipeline)
    runs = BENCHMARK_RUNS if spec.benchmark else 1
    times = []
    result = None
    for r in range(runs):
        t0 = time.perf_counter()
        # only the run that makes the file streams it, so --benchmark's timed runs stay generation alone
        result, stream = generate_into(pipe, spec, Path(spec.save_path), stream_ok=not spec.benchmark,
                                       input_path=spec.input_path, seed=spec.seed, cancel=cancel,
                                       step_fields={"run": r + 1, "runs": runs} if spec.benchmark else None)
        times.append(time.perf_counter() - t0)
        if spec.benchmark:
            ev.log(f"benchmark run {r + 1}/{runs}: {times[-1]:.2f}s" + (" (warm-up)" if r == 0 else ""))
    if not parallel.is_main():
        return []  # rank 0 writes the files
    timings = dict(result.timings)
    if spec.benchmark:
        timed = times[1:]
        timings["benchmark_mean_s"] = sum(timed) / len(timed)
        timings["benchmark_runs_s"] = timed
        ev.log(f"benchmark: mean of {len(timed)} timed runs {timings['benchmark_mean_s']:.2f}s")
    return write_result(spec, result, Path(spec.save_path), ev, timings, stream=stream,
                        phase_fields={"run": runs, "runs": runs} if spec.benchmark else None)


def generate_into(pipe, spec: GenerationSpec, path: Path, stream_ok: bool = True, **generate_kw):
    """`pipe.generate(spec, **generate_kw)` whose video is bound for `path`: encoded while it decodes where
    open_stream allows (and `stream_ok`). Returns (result, stream or None), for write_result."""
    stream = open_stream(spec, path) if stream_ok else None
    try:
        return pipe.generate(spec, video_stream=stream, **generate_kw), stream
    except BaseException:
        if stream is not None:
            stream.abort()
        raise


def open_stream(spec: GenerationSpec, path: Path):
    """A VideoStream for `path` when the job's video may be written while it decodes (guardrail off, this
    rank writes), else None: the video is then written whole after the guardrail's check."""
    from engine import io, parallel

    if not spec.disable_guardrail or not parallel.is_main():
        return None
    return io.VideoStream(path, spec.fps)


def write_result(spec: GenerationSpec, result, path: Path, ev: events.Emitter, timings: dict | None = None,
                 extra: dict | None = None, refined: list | None = None, phase_fields: dict | None = None,
                 stream=None) -> list[str]:
    """The mp4, the prompt .txt and the spec/seed/timings .json, each announced as an `output` event.
    `refined`: long video's refined prompt per chunk, one .txt section each, instead of result's one.
    `phase_fields`: which chunk / generation this write belongs to, for its `writing` phase event.
    `stream`: the VideoStream that took result's frames as they decoded; closing it finishes the mp4."""
    from engine import io
    from engine.phases import key_fields, phase

    path.parent.mkdir(parents=True, exist_ok=True)
    fps = spec.fps
    with phase(ev, "writing", key_fields(spec), frames=int(result.video.shape[1]), **(phase_fields or {})):
        if stream is not None:
            try:
                stream.close()
            except BaseException:
                stream.abort()
                raise
        else:
            io.write_video(path, result.video, fps)
        txt = io.write_prompt_sidecar(path, result.prompt, result.negative_prompt,
                                     refined if refined is not None else result.refined_prompt)
        js = io.write_job_record(path, spec, result.seed, timings or result.timings,
                                 refined_prompt=result.refined_prompt,
                                 **{"guardrail_checks": list(getattr(result, "guardrail_checks", [])), **(extra or {})})
    outputs = [str(path), str(txt), str(js)]
    for p, kind in zip(outputs, ("video", "prompt", "spec")):
        ev("output", path=p, kind=kind)
    return outputs
