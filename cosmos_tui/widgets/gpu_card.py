"""One GPU: memory and utilisation now and over time (against a fixed scale), temperature, power,
the job that owns it, and each process on it with its memory and owning job."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from cosmos_tui.widgets import format as fmt
from cosmos_tui.widgets.history_plot import HistoryPlot
from cosmos_tui.widgets.quiet import QuietStatic

HISTORY = 600  # samples kept per GPU (ten minutes at one per second; the plots show what fits)


def gpu_summary(gpu: dict) -> str:
    used, total = gpu.get("mem_used"), gpu.get("mem_total")
    frac = (used / total) if used is not None and total else None
    pieces = [
        f"mem {fmt.bar(frac, 10)} {fmt.gib(used)}/{fmt.gib(total)}",
        f"util {_num(gpu.get('util'), '%')}",
        f"{_num(gpu.get('temp'), '°C')}",
        f"{_num(gpu.get('power'), 'W')}",
    ]
    return "  ".join(pieces)


def gpu_title(gpu: dict) -> str:
    job = gpu.get("job")
    owner = f"job {job}" if job else ("idle engine" if gpu.get("engine") == "idle" else "free")
    if gpu.get("cpu"):
        return f"CPU slot · no GPU · {owner}"
    return f"GPU {gpu.get('index')} · {gpu.get('name') or '?'} · {owner}"


def process_lines(gpu: dict) -> str:
    """One line per process NVML sees on the GPU: pid, name, memory, and whose it is."""
    procs = gpu.get("processes")
    if procs is None:
        return ""
    if not procs:
        return "no processes"
    lines = []
    for p in sorted(procs, key=lambda p: -(p.get("mem") or 0)):
        if p.get("job") is not None:
            owner = f"job {p['job']} (engine {p['engine']})"
        elif p.get("engine") is not None:
            owner = f"idle engine {p['engine']}"
        elif p.get("visible") is False:
            owner = "not in this PID namespace (container?)"
        else:
            owner = "not a cosmos-tui job"
        lines.append(f"pid {p.get('pid')!s:<8} {fmt.clip(p.get('name') or '?', 14):<14} "
                     f"{fmt.gib(p.get('mem')):>6}  {owner}")
    return "\n".join(lines)


def _num(value, unit: str) -> str:
    if value is None:
        return f"-{unit}"
    return f"{value:.0f}{unit}"


class GpuCard(Vertical):
    DEFAULT_CSS = """
    GpuCard { height: auto; border: round $primary-darken-2; padding: 0 1; margin-bottom: 1; }
    GpuCard .gpu-title { text-style: bold; }
    GpuCard .gpu-plots { height: 2; }
    GpuCard .gpu-mem { margin-right: 2; }
    GpuCard .gpu-note { color: $warning; }
    GpuCard .gpu-procs { color: $text-muted; }
    """

    def __init__(self, index: int, **kwargs) -> None:
        super().__init__(id=f"gpu-{index}", **kwargs)
        self.index = index
        self.gpu: dict = {}
        # A sample can arrive between mount() and the children's composition (the screen finds the card in
        # the DOM at once; seen under load in CI as NoMatches on '.gpu-title'): it waits here for on_mount.
        self._latest: tuple | None = None

    def compose(self) -> ComposeResult:
        yield QuietStatic(classes="gpu-title", markup=False)
        yield QuietStatic(classes="gpu-line", markup=False)
        yield QuietStatic(classes="gpu-note", markup=False)
        with Horizontal(classes="gpu-plots"):
            yield HistoryPlot("mem", classes="gpu-mem")
            yield HistoryPlot("util", classes="gpu-util")
        yield QuietStatic(classes="gpu-procs", markup=False)

    def on_mount(self) -> None:
        if self._latest is not None:
            self._show(*self._latest)

    def update_gpu(self, gpu: dict, history: list[tuple] = (), now: float = 0.0) -> None:
        """`history`: (time, mem_used, util) samples from the app, oldest first. Before the card is mounted
        only the latest sample is kept, and shown on mount."""
        self.gpu = gpu
        if not self.is_mounted:  # textual sets it once on_mount has run
            self._latest = (gpu, list(history), now)
            return
        self._show(gpu, history, now)

    def _show(self, gpu: dict, history, now: float) -> None:
        cpu = bool(gpu.get("cpu"))
        self.query_one(".gpu-title", QuietStatic).update(gpu_title(gpu))
        line = self.query_one(".gpu-line", QuietStatic)
        line.update("" if cpu else gpu_summary(gpu))
        line.display = not cpu
        note = self.query_one(".gpu-note", QuietStatic)
        note.update(gpu.get("note") or "")
        note.display = bool(gpu.get("note"))
        plots = self.query_one(".gpu-plots")
        total = gpu.get("mem_total")
        plots.display = not cpu and bool(total)
        if plots.display:
            gib = 1024**3
            self.query_one(".gpu-mem", HistoryPlot).show(
                [(t, None if m is None else m / gib) for t, m, _ in history], now, total / gib,
                f"{total / gib:.0f}G", "0G")
            self.query_one(".gpu-util", HistoryPlot).show(
                [(t, u) for t, _, u in history], now, 100.0, "100%", "0%")
        procs = self.query_one(".gpu-procs", QuietStatic)
        text = process_lines(gpu)
        procs.update(text)
        procs.display = bool(text)
