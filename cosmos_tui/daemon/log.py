"""The daemon's own log lines (stderr, i.e. daemon.log when detached) and job-log text of events."""

from __future__ import annotations

import json
import os
import sys
import time

from cosmos_tui.phase_timing import describe as describe_phase


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [daemon {os.getpid()}] {message}", file=sys.stderr, flush=True)


def describe(ev: dict) -> str:
    """One job-log line for an engine event."""
    kind = ev.get("event")
    if kind == "log":
        return f"{(ev.get('level') or 'info').upper()} {ev.get('message')}"
    if kind == "step":
        extra = "".join(f" {k} {ev[k]}" for k in ("chunk", "generation") if ev.get(k) is not None)
        extra += " (final pass)" if ev.get("final") else ""
        secs = ev.get("seconds")
        return f"step {ev.get('step')}/{ev.get('total')}{extra}" + (f" ({secs:.2f} s)" if isinstance(secs, (int, float)) else "")
    if kind == "phase":
        return describe_phase(ev)
    if kind == "failed":
        return f"FAILED ({ev.get('reason')}): {ev.get('error')}"
    rest = {k: v for k, v in ev.items() if k not in ("event", "job", "t", "spec")}
    return f"{kind} {json.dumps(rest, default=str)}"
