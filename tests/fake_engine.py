"""A stand-in engine for daemon tests: the real engine.server protocol loop with a fake run_job.

Run as `python tests/fake_engine.py` (the daemon takes it from COSMOS_TUI_ENGINE_CMD). What a job
does is read from words in its prompt, so tests steer faults without loading any model:

  sleep:S    take about S seconds, a step event every 0.1 s (cancellable, like the real sampler)
  child      also start a child process (`sleep`) in the engine's process group; its pid is in the
             `started` event as child_pid, so a test can check that cancel killed it too
  oom        fail like CUDA out of memory (a RuntimeError the server classifies as reason oom)
  invalid    raise engine.spec.InputError (reason invalid)
  crash      kill the engine process outright mid-job (exit code 3, no terminal event)
  boom       raise an ordinary exception (reason crash, the server survives)
  phases     also send phase events as the real pipeline does (loading on the engine's first job, text
             encode, VAE encode, denoise around the steps, VAE decode, writing), for the ETA
otherwise it runs spec.num_steps quick steps (at most 5) and writes a small file at save_path.
Every job reports a peak memory of 1000 * job id bytes and the engine pid in `started`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import events  # noqa: E402
from engine.phases import key_fields, phase  # noqa: E402
from engine.spec import InputError  # noqa: E402


_LOADED = []  # this engine process has "loaded its model" (the first job with phases pays it)


@contextlib.contextmanager
def _phases(ev, spec, on: bool, steps: int):
    if not on:
        yield
        return
    key = key_fields(spec)
    if not _LOADED:
        with phase(ev, "loading", key, component="pipeline"):
            time.sleep(0.05)
        _LOADED.append(True)
    for name in ("text_encode", "vae_encode"):
        with phase(ev, name, key):
            time.sleep(0.01)
    with phase(ev, "denoise", key, steps=steps) as done:
        yield
        done.update(units=steps, cold=False)
    with phase(ev, "vae_decode", key):
        time.sleep(0.01)


def fake_run_job(spec, emit, pipeline=None, cancel=None):
    ev = events.Emitter(emit)  # job id None: the server fills it in
    words = spec.prompt.split()
    child = None
    if "child" in words:
        child = subprocess.Popen(["sleep", "300"])
    ev("started", mode=spec.mode, spec=spec.model_dump(), engine_pid=os.getpid(),
       child_pid=child.pid if child else None)
    if "crash" in words:
        sys.stderr.write("fake engine: crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    if "oom" in words:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (fake)")
    if "invalid" in words:
        raise InputError("input_path: 'nope.png' does not exist; give the path of an image or .mp4 video")
    if "boom" in words:
        raise ZeroDivisionError("fake engine divided by zero")
    seconds = 0.0
    for w in words:
        if w.startswith("sleep:"):
            seconds = float(w.split(":", 1)[1])
    total = max(1, int(seconds / 0.1)) if seconds else min(spec.num_steps, 5)
    with _phases(ev, spec, "phases" in words, total):
        for i in range(1, total + 1):
            if cancel is not None and cancel.is_set():
                return []
            time.sleep(0.1 if seconds else 0.01)
            ev("step", step=i, total=total, seconds=0.1 if seconds else 0.01)
    ev.log("fake engine finished sampling")
    out = Path(spec.save_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (phase(ev, "writing", key_fields(spec), frames=1) if "phases" in words else contextlib.nullcontext()):
        out.write_text(f"fake video for {spec.prompt!r}\n")
    ev("output", path=str(out.resolve()), kind="video")
    return [str(out.resolve())]


def main() -> int:
    fake = types.ModuleType("engine.modes")
    fake.run_job = fake_run_job
    sys.modules["engine.modes"] = fake
    from engine import server

    real_run_one = server.run_one

    def run_one(request, proto, cancel):
        # the peak-memory report a CUDA run would add, made up so the daemon's bookkeeping is testable
        job = request.get("job")
        proto.write(events.make("memory", job, allocated=0, reserved=0, peak=1000 * int(job or 0), device=0))
        real_run_one(request, proto, cancel)

    server.run_one = run_one
    return server.main()


if __name__ == "__main__":
    sys.exit(main())
