"""Plain text for the engine's phases (engine/phases.py) in the queue row, the job screen and the queue
header: what a job is doing now, the time each phase took, and the phase-aware ETA. No Textual here.

A `+` after an ETA means "at least": some phase of that model was never measured yet.
"""

from __future__ import annotations

from typing import Iterable

from cosmos_tui.widgets import format as fmt

LABELS = {"loading": "loading", "text_encode": "text encode", "refine": "refine", "guardrail": "guardrail",
          "vae_encode": "VAE encode", "denoise": "denoise", "vae_decode": "VAE decode", "critic": "critic",
          "writing": "writing"}
# at most 7 cells: the queue row's progress cell is a 5-cell bar, a space and this
SHORT = {"loading": "loading", "text_encode": "text", "refine": "refine", "guardrail": "guard",
         "vae_encode": "encode", "vae_decode": "decode", "critic": "critic", "writing": "write"}
ROW_BAR = 5


def label(name) -> str:
    return LABELS.get(name, str(name or "?"))


def eta_text(seconds, partial: bool = False) -> str:
    return "-" if seconds is None else fmt.duration(seconds) + ("+" if partial else "")


def phase_line(job: dict) -> str:
    """'denoise', 'critic · video 3/4, 5 trials', 'guardrail (video) · done', 'VAE decode · run 2/4': what
    the job does now. Steps, chunks and generations are on the line above it (format.units_line)."""
    ph = job.get("phase") or {}
    if job.get("state") != "running" or not ph.get("phase"):
        return ""
    name = ph["phase"]
    head = label(name)
    what = ph.get("target") if name == "guardrail" else (ph.get("component") if name == "loading" else None)
    if what:
        head += f" ({str(what).replace('_', ' ')})"
    parts = [head]
    if name == "critic" and ph.get("video") is not None:
        parts.append(f"video {ph['video']}/{ph.get('videos') or '?'}, {ph.get('trials') or '?'} trials")
    if ph.get("run") is not None:  # benchmark runs: no counter of their own elsewhere
        parts.append(f"run {ph['run']}/{ph.get('runs') or '?'}")
    if ph.get("state") == "end":
        parts.append("done")
    return " · ".join(parts)


def row_phase(job: dict) -> str | None:
    """The short phase word for a queue row; None when the job reports no phase."""
    ph = job.get("phase") or {}
    name = ph.get("phase")
    if job.get("state") != "running" or not name:
        return None
    if name == "denoise" and job.get("total_steps"):
        return f"{job.get('step') or 0}/{job['total_steps']}"[:7]
    return SHORT.get(name, str(name))[:7]


def fraction(job: dict, elapsed: float | None) -> float | None:
    """How far a running job is, by time: done / (done + left), when the ETA is a full estimate (a
    best-of-N job's critic or a long video's last write count, not only its denoise steps). Only for a
    job that reports phases: an ETA without them may count the steps alone."""
    left = job.get("eta_s")
    if (job.get("state") != "running" or not job.get("phase") or left is None or job.get("eta_partial")
            or elapsed is None):
        return None
    total = elapsed + left
    return elapsed / total if total > 0 else None


def overall(job: dict, elapsed: float | None) -> float | None:
    """The job's progress for its bars: by time when the ETA is complete, else by steps/chunks/generations."""
    frac = fraction(job, elapsed)
    return fmt.progress_fraction(job) if frac is None else frac


def row_progress(job: dict, elapsed: float | None) -> str | None:
    """'██▍·· 12/35' for a running job with a phase, else None (the plain progress cell then)."""
    word = row_phase(job)
    if word is None:
        return None
    return f"{fmt.bar(overall(job, elapsed), ROW_BAR)} {word:<7}"


def summary(events: Iterable[dict]) -> str:
    """Time per phase so far, in the order they first ran: 'loading 40s · denoise 1m12 (×6) · ...'."""
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for ev in events:
        if ev.get("event") == "phase" and ev.get("state") == "end" and isinstance(ev.get("seconds"), (int, float)):
            name = ev.get("phase")
            total[name] = total.get(name, 0.0) + float(ev["seconds"])
            count[name] = count.get(name, 0) + 1
    parts = []
    for name, secs in total.items():
        shown = f"{secs:.1f}s" if secs < 10 else fmt.duration(secs)
        parts.append(f"{label(name)} {shown}" + (f" (×{count[name]})" if count[name] > 1 else ""))
    return ("phases: " + " · ".join(parts)) if parts else ""


def queue_eta(queue: dict) -> str:
    """' · ETA 1h02' for the queue header: until every running and queued job is done."""
    if queue.get("eta_s") is None:
        return ""
    return f" · ETA {eta_text(queue['eta_s'], bool(queue.get('eta_partial')))}"
