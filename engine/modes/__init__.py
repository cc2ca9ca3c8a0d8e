"""The three ways to run the pipeline: one video (video2world), a long video built chunk by chunk
(lvg), and best-of-N with the critic (bestofn). `run_job` is the single entry point used by the
command-line scripts, the engine server and `cosmos-tui run`."""

from __future__ import annotations

import threading
from typing import Callable

from engine import events
from engine.spec import GenerationSpec


def run_job(spec: GenerationSpec, emit: events.Emit | None = None, pipeline=None,
            cancel: threading.Event | None = None, job=None) -> list[str]:
    """Run one job to completion and return the paths it wrote.

    Raises engine.spec.InputError for mistakes the user can fix, engine.pipeline.GuardrailBlocked
    when a check refuses, engine.pipeline.Cancelled when `cancel` is set.
    """
    from engine import io, parallel
    from engine.modes import bestofn, lvg, video2world

    # under torchrun (--num_gpus N) every rank runs the job; rank 0 alone reports and writes
    parallel.maybe_init_from_env(spec.num_gpus)
    if not parallel.is_main():
        emit = None
    ev = events.Emitter(emit, job)
    if spec.input_path == io.DEMO_INPUT_PATH and not spec.skip_generation:
        io.ensure_demo_input(spec.input_path)  # the tiny preset's input is drawn on first use
    runner: Callable = {"video2world": video2world.run, "lvg": lvg.run, "bestofn": bestofn.run}[spec.mode]
    # warm: this process already holds the job's pipeline, so no loading phase comes (the ETA's first guess)
    ev("started", mode=spec.mode, spec=spec.model_dump(), warm=pipeline is not None or _holds_pipeline(spec))
    return runner(spec, ev, pipeline=pipeline, cancel=cancel)


def _holds_pipeline(spec: GenerationSpec) -> bool:
    import sys

    from engine.spec import build_key

    warm = getattr(sys.modules.get("engine.pipeline"), "_WARM", None)  # never imported: nothing is warm
    return bool(warm) and build_key(spec) in warm


def pipeline_for(spec: GenerationSpec, ev: events.Emitter, pipeline=None):
    """The warm pipeline for this spec's build-time fields (or the one the caller passed, which must have
    been built for them), reporting to `ev`. The job's own fields go to each `generate` call."""
    from engine.pipeline import get_pipeline

    from engine.spec import build_key

    check_fits_gpu(spec, ev)
    if pipeline is not None:
        if pipeline.key != build_key(spec):
            raise ValueError("the pipeline passed in was built for other settings than this job's "
                             "(engine.spec.build_key differs); pass none and one will be built")
        pipeline.set_emit(ev._emit, ev.job)
        return pipeline
    pipe = get_pipeline(spec, emit=ev._emit)
    pipe.set_emit(ev._emit, ev.job)
    return pipe


def check_fits_gpu(spec: GenerationSpec, ev: events.Emitter | None = None) -> None:
    """InputError before any loading when the job's model weights alone exceed this GPU's memory
    (engine/footprint.py): the queue checks at submit where NVML works; the seed scripts and a daemon
    without NVML get the same sentence here instead of an out-of-memory error minutes into loading.
    Weights that fit with little room to spare get a warning in the job's log (the 14B with nothing
    offloaded on an 80 GB card: 78.7 GiB of weights), naming the settings that would leave room."""
    import torch

    if spec.model_size == "tiny" or not torch.cuda.is_available():
        return
    from engine.footprint import tight, too_small
    from engine.spec import InputError

    dev = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(dev).total_memory
    problem = too_small(spec, total, f"GPU {dev}")
    if problem:
        raise InputError(problem)
    warning = tight(spec, total, f"GPU {dev}")
    if warning and ev is not None:
        ev.log(warning, level="warning")
