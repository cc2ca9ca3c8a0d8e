"""Progress events: the one channel from the engine to whoever watches it.

Events are flat JSON objects, one per line, with `event` (a kind below), `job` (the job id or null)
and `t` (unix seconds). The pipeline calls an `emit(event_dict)` callback; the engine server writes
them to stdout as JSON lines; the daemon stores them; the TUI renders them. Nobody parses log text.

Kinds and their fields (all optional unless marked):
  started     mode, spec (dict), warm (the process already holds this job's pipeline: no loading)
  step        step (1-based), total, seconds (this step), chunk, generation  [step, total required]
              total = the steps the job asked for (num_steps); the sampler's last, clean network
              evaluation comes as one more event with final=true and step = total
  phase       phase, state ("start"|"end"), start, end, seconds, ok, key, ...  -- engine/phases.py
  chunk       chunk (1-based), total, frames, path            -- a long-video chunk finished
  generation  generation (1-based), total, seed, path         -- a best-of-N candidate finished
  critic      video, trial, total, score, answers             -- a critic verdict (trial None = whole video)
  log         level ("debug"|"info"|"warning"|"error"), message  [message required]
  memory      allocated, reserved, peak (bytes), device
  output      path, kind ("video"|"prompt"|"spec"|"report"|"ranking"|"state")
  finished    outputs (list of paths), seconds
  failed      error (one sentence), reason ("invalid"|"oom"|"guardrail"|"crash"|"cancelled")  [error required]
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

KINDS = ("started", "step", "phase", "chunk", "generation", "critic", "log", "memory", "output", "finished", "failed")
FAIL_REASONS = ("invalid", "oom", "guardrail", "crash", "cancelled")

Emit = Callable[[dict], None]


def make(event: str, job: str | int | None = None, /, **fields: Any) -> dict:
    # positional-only, so an event may carry a field named `kind` or `job`-less fields freely
    if event not in KINDS:
        raise ValueError(f"unknown event kind {event!r}; known: {', '.join(KINDS)}")
    return {"event": event, "job": job, "t": time.time(), **fields}


def dumps(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


def loads(line: str) -> dict:
    ev = json.loads(line)
    if not isinstance(ev, dict) or ev.get("event") not in KINDS:
        raise ValueError(f"not an engine event: {line[:120]!r}")
    return ev


def log_to(emit, message: str, level: str = "info") -> None:
    """Send a log line to `emit`, which may be a plain callback, an Emitter, or None."""
    if emit is None:
        return
    if isinstance(emit, Emitter):
        emit.log(message, level=level)
    else:
        emit(make("log", None, level=level, message=message))


def null_emit(event: dict) -> None:
    """Default sink for library callers that don't watch progress."""


class Emitter:
    """Binds a job id to an emit callback so pipeline code writes `ev.step(i, n, seconds=s)`."""

    def __init__(self, emit: Emit | None = None, job: str | int | None = None):
        self._emit = emit or null_emit
        self.job = job

    def __call__(self, event: str, /, **fields: Any) -> None:
        self._emit(make(event, self.job, **fields))

    def log(self, message: str, level: str = "info") -> None:
        self("log", level=level, message=message)

    def send(self, event: dict) -> None:
        """Forward a ready-made event, filling in this emitter's job id where it has none."""
        self._emit(event if event.get("job") is not None else {**event, "job": self.job})
