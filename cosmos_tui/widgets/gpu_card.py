"""One GPU: memory used/total with a history sparkline, utilisation, temperature, power, owner."""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from cosmos_tui.widgets import format as fmt
from cosmos_tui.widgets.quiet import QuietStatic, set_data

HISTORY = 120  # samples kept per GPU (two minutes at one per second)


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
    return f"GPU {gpu.get('index')} · {gpu.get('name') or '?'} · {owner}"


def _num(value, unit: str) -> str:
    if value is None:
        return f"-{unit}"
    return f"{value:.0f}{unit}"


class GpuCard(Vertical):
    DEFAULT_CSS = """
    GpuCard { height: auto; border: round $primary-darken-2; padding: 0 1; margin-bottom: 1; }
    GpuCard .gpu-title { text-style: bold; }
    GpuCard Sparkline { height: 2; }
    """

    def __init__(self, index: int, **kwargs) -> None:
        super().__init__(id=f"gpu-{index}", **kwargs)
        self.index = index
        self.mem_history: deque[float] = deque(maxlen=HISTORY)
        self.util_history: deque[float] = deque(maxlen=HISTORY)
        self.gpu: dict = {}

    def compose(self) -> ComposeResult:
        yield QuietStatic(classes="gpu-title", markup=False)
        yield QuietStatic(classes="gpu-line", markup=False)
        yield QuietStatic("memory history", classes="gpu-label")
        yield Sparkline([], classes="gpu-mem")

    def update_gpu(self, gpu: dict) -> None:
        self.gpu = gpu
        if gpu.get("mem_used") is not None:
            self.mem_history.append(gpu["mem_used"] / 1024**3)
        if gpu.get("util") is not None:
            self.util_history.append(float(gpu["util"]))
        self.query_one(".gpu-title", Static).update(gpu_title(gpu))
        self.query_one(".gpu-line", Static).update(gpu_summary(gpu))
        set_data(self.query_one(".gpu-mem", Sparkline), list(self.mem_history))
