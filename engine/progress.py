"""Showing engine events (engine/events.py) to a person running the CLI.

`make_renderer()` picks one of two renderers by the stream: on a terminal a rich progress display
(denoising steps, long-video chunks, best-of-N generations, critic trials, seconds per step, peak
memory); otherwise plain text, one line per event, so logs and pipes stay greppable. Both are
callables taking an event dict (use one as the pipeline's `emit`) and context managers (the rich one
must be stopped to restore the cursor).
"""

from __future__ import annotations

import sys
from typing import IO, Any

GIB = 1024**3


def _mem(nbytes: Any) -> str:
    try:
        return f"{float(nbytes) / GIB:.1f} GiB"
    except (TypeError, ValueError):
        return "?"


def _of(n: Any, total: Any) -> str:
    return f"{n}/{total}" if total else f"{n}"


def describe(ev: dict) -> str | None:
    """One line of plain text for an event; None for events not worth a line."""
    kind = ev.get("event")
    if kind == "started":
        spec = ev.get("spec") or {}
        bits = [spec.get("model_size"), f"{spec.get('resolution')}p" if spec.get("resolution") else None,
                f"{spec.get('fps')} fps" if spec.get("fps") else None, spec.get("aspect_ratio")]
        detail = ", ".join(str(b) for b in bits if b)
        return f"started {ev.get('mode') or spec.get('mode') or 'job'}" + (f" ({detail})" if detail else "")
    if kind == "step":
        line = "final pass" if ev.get("final") else f"step {_of(ev.get('step'), ev.get('total'))}"
        if ev.get("seconds") is not None:
            line += f"  {float(ev['seconds']):.2f} s/step"
        if ev.get("chunk") is not None:
            line += f"  chunk {ev['chunk']}"
        if ev.get("generation") is not None:
            line += f"  generation {ev['generation']}"
        return line
    if kind == "phase":
        if ev.get("state") != "end" or not ev.get("ok"):
            return None
        return f"{str(ev.get('phase')).replace('_', ' ')} took {float(ev.get('seconds') or 0):.2f} s"
    if kind == "chunk":
        line = f"chunk {_of(ev.get('chunk'), ev.get('total'))} done"
        if ev.get("frames") is not None:
            line += f", {ev['frames']} frames"
        return line + (f" -> {ev['path']}" if ev.get("path") else "")
    if kind == "generation":
        line = f"generation {_of(ev.get('generation'), ev.get('total'))} done"
        if ev.get("seed") is not None:
            line += f" (seed {ev['seed']})"
        return line + (f" -> {ev['path']}" if ev.get("path") else "")
    if kind == "critic":
        who = ev.get("video") or "video"
        trial = ev.get("trial")
        head = f"critic {who}" + (f" trial {_of(trial, ev.get('total'))}" if trial is not None else "")
        score = ev.get("score")
        return head + (f": score {float(score):.2f}" if score is not None else "")
    if kind == "log":
        level = ev.get("level") or "info"
        return f"{level}: {ev.get('message', '')}" if level != "info" else str(ev.get("message", ""))
    if kind == "memory":
        dev = f" on {ev['device']}" if ev.get("device") else ""
        return f"memory{dev}: peak {_mem(ev.get('peak'))}, reserved {_mem(ev.get('reserved'))}"
    if kind == "output":
        return f"wrote {ev.get('kind') or 'file'}: {ev.get('path')}"
    if kind == "finished":
        secs = ev.get("seconds")
        line = "finished" + (f" in {float(secs):.1f} s" if secs is not None else "")
        outs = ev.get("outputs") or []
        return line + (": " + ", ".join(map(str, outs)) if outs else "")
    if kind == "failed":
        reason = ev.get("reason")
        return "failed" + (f" ({reason})" if reason else "") + f": {ev.get('error', '')}"
    return None


class PlainRenderer:
    """One line per event on a stream (stderr by default: stdout stays free for results)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr

    def __call__(self, ev: dict) -> None:
        line = describe(ev)
        if line is not None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> "PlainRenderer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RichRenderer:
    """Live bars on a terminal: one per kind of progress the job has (steps always; chunks,
    generations and critic trials once the first such event arrives). Log, output and final lines
    print above the bars."""

    def __init__(self, stream: IO[str] | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(file=stream or sys.stderr)
        self.progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.peak: float | None = None
        self.sec_per_step: float | None = None
        self._started = False

    def _task(self, key: str, label: str, total: Any) -> int:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=total or None, info="")
        return self.tasks[key]

    def _info(self) -> str:
        bits = []
        if self.sec_per_step is not None:
            bits.append(f"{self.sec_per_step:.2f} s/step")
        if self.peak is not None:
            bits.append(f"peak {_mem(self.peak)}")
        return "  ".join(bits)

    def __call__(self, ev: dict) -> None:
        if not self._started:
            self.progress.start()
            self._started = True
        kind = ev.get("event")
        if kind == "step":
            tid = self._task("steps", "steps", ev.get("total"))
            if ev.get("seconds") is not None:
                self.sec_per_step = float(ev["seconds"])
            self.progress.update(tid, completed=ev.get("step") or 0, total=ev.get("total") or None, info=self._info())
        elif kind == "chunk":
            tid = self._task("chunks", "chunks", ev.get("total"))
            self.progress.update(tid, completed=ev.get("chunk") or 0, total=ev.get("total") or None)
        elif kind == "generation":
            tid = self._task("generations", "generations", ev.get("total"))
            self.progress.update(tid, completed=ev.get("generation") or 0, total=ev.get("total") or None)
        elif kind == "critic" and ev.get("trial") is not None:
            tid = self._task("critic", "critic trials", ev.get("total"))
            self.progress.update(tid, completed=ev.get("trial") or 0, total=ev.get("total") or None)
        elif kind == "memory":
            if ev.get("peak") is not None:
                self.peak = max(self.peak or 0.0, float(ev["peak"]))
            if "steps" in self.tasks:
                self.progress.update(self.tasks["steps"], info=self._info())
        else:
            line = describe(ev)
            if line is not None:
                style = "red" if kind == "failed" or ev.get("level") == "error" else (
                    "yellow" if ev.get("level") == "warning" else None)
                self.console.print(line, style=style, markup=False, highlight=False)

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False

    def __enter__(self) -> "RichRenderer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_renderer(stream: IO[str] | None = None, tty: bool | None = None) -> PlainRenderer | RichRenderer:
    """Rich bars when `stream` (stderr by default) is a terminal, else plain lines."""
    stream = stream or sys.stderr
    if tty is None:
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
    return RichRenderer(stream) if tty else PlainRenderer(stream)
