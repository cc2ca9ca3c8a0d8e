"""Phase events: what the engine is doing now, and how long each part of a job took.

A job is a sequence of phases (PHASES below). Each phase sends two `phase` events through the job's
emitter: `state: "start"` when it begins and `state: "end"` when it is over, the end one with the
duration. The queue's ETA (cosmos_tui/queue/eta.py) learns from the end events how long each phase
takes for a build (`key`), so the schema is a contract: docs/CONTRACTS.md, "Phase events".

Every phase event carries `key`, the build-time fields (engine.spec.BuildConfig) of the model that
ran it: phase durations are only comparable between equal builds.

`loading` has a `component`: "pipeline" (building the DiT, VAE and T5), "generator" (moving them back
from the CPU, where best-of-N parked them for its critic) or "critic" (building best-of-N's critic).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from typing import Any, Iterator

from engine import events

PHASES = ("loading", "text_encode", "refine", "guardrail", "vae_encode", "denoise", "vae_decode", "critic",
          "writing")


def key_fields(build: Any) -> dict:
    """The build-time fields of a BuildConfig, GenerationSpec or spec dict, as plain JSON values."""
    from engine.spec import BuildConfig

    cfg = build if isinstance(build, BuildConfig) else BuildConfig.from_spec(build)
    return asdict(cfg)


@contextlib.contextmanager
def phase(ev: events.Emitter | None, name: str, key: dict, **fields: Any) -> Iterator[dict]:
    """Report the block as phase `name`. Yields a dict: fields put there go out on the end event
    (e.g. `units`, how many steps or trials the phase ran). A phase left by an exception (a cancel,
    a guardrail refusal, an OOM) still ends, with `ok: false`, so nobody learns its duration."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
    if ev is None:
        yield {}
        return
    start = time.time()
    t0 = time.perf_counter()
    ev("phase", phase=name, state="start", start=start, key=key, **fields)
    extra: dict = {}
    ok = False
    try:
        yield extra
        ok = True
    finally:
        seconds = time.perf_counter() - t0
        ev("phase", phase=name, state="end", start=start, end=start + seconds, seconds=round(seconds, 6),
           ok=ok, key=key, **fields, **extra)
