"""Plain-text formatting of job fields for cells and labels (no Textual, easy to unit test).

Everything here is text, not colour, so the queue reads the same with NO_COLOR and over a
monochrome SSH session.
"""

from __future__ import annotations

import time
from typing import Callable

from cosmos_tui.gpu import slot_names

MODE_SHORT = {"video2world": "v2w", "lvg": "long", "bestofn": "best-N"}
BAR_CELLS = 8
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float | None, cells: int = BAR_CELLS) -> str:
    """A text progress bar with eighth-cell resolution; empty cells are dots, readable uncoloured."""
    if fraction is None:
        return "·" * cells
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * cells * 8)
    full, part = divmod(eighths, 8)
    out = "█" * full + (_EIGHTHS[part] if part else "")
    return out + "·" * (cells - len(out))


def progress_fraction(job: dict) -> float | None:
    """Overall progress over chunks/generations, from the step counters the daemon keeps."""
    state = job.get("state")
    if state == "done":
        return 1.0
    step, total = job.get("step"), job.get("total_steps")
    if not total or step is None:
        return 0.0 if state == "running" else None
    units, unit = 1, 1
    for u, n in (("chunk", "num_chunks"), ("generation", "num_generations")):
        if job.get(n) and job.get(n) > 1:
            units, unit = job[n], max(1, job.get(u) or 1)
            break
    return min(1.0, ((unit - 1) * total + step) / (units * total))


def progress_cell(job: dict) -> str:
    frac = progress_fraction(job)
    if frac is None:
        return bar(None) + "     "
    return f"{bar(frac)} {int(frac * 100):>3d}%"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}"


def elapsed(job: dict, clock: Callable[[], float] = time.time) -> float | None:
    started = job.get("started")
    if not started:
        return None
    end = job.get("finished") or (clock() if job.get("state") == "running" else None)
    return (end - started) if end else None


def eta(job: dict) -> str:
    """Until the job is done (a queued job's wait included); "+": at least that, some phase of its model
    was never measured (the daemon's phase-aware ETA, cosmos_tui/queue/eta.py)."""
    if job.get("state") not in ("running", "queued") or job.get("eta_s") is None:
        return "-"
    return duration(job["eta_s"]) + ("+" if job.get("eta_partial") else "")


def gib(n: float | None, digits: int = 1) -> str:
    if n is None:
        return "-"
    return f"{n / 1024**3:.{digits}f}G"


def gpus_cell(job: dict, backend: str | None = None) -> str:
    """The job's slots; `backend` is the daemon's GPU backend kind (queue()'s `gpu_backend`)."""
    gpus = job.get("gpus") or []
    if gpus:
        return slot_names(gpus, backend)
    wanted = job.get("gpus_wanted") or (job.get("spec") or {}).get("num_gpus")
    return f"({wanted})" if wanted and job.get("state") == "queued" else "-"


def clip(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def units_line(job: dict) -> str:
    """'step 3/35 · chunk 2/6 · generation 1/4' with only the parts the job has."""
    parts = []
    if job.get("total_steps"):
        parts.append(f"step {job.get('step') or 0}/{job['total_steps']}")
    if (job.get("num_chunks") or 0) > 1 or job.get("mode") == "lvg":
        parts.append(f"chunk {job.get('chunk') or 0}/{job.get('num_chunks') or '?'}")
    if (job.get("num_generations") or 0) > 1 or job.get("mode") == "bestofn":
        parts.append(f"generation {job.get('generation') or 0}/{job.get('num_generations') or '?'}")
    return " · ".join(parts) or "not started"
