"""A history plot with a fixed, labelled scale (0 to the GPU's total memory, 0 to 100 %).

Textual's Sparkline scales to the data's own min..max, so a GPU at 79.0-79.5 GiB draws as a full
swing; nvitop users read absolute levels, so this one draws against the scale on its left.

Time is bucketed by the app's clock, one cell per SECONDS_PER_CELL, newest on the right: a plot
changes only when a bucket's value changes or a new bucket starts, and a steady GPU's history,
once it fills the width, draws the same text every poll (QuietStatic then writes nothing).
"""

from __future__ import annotations

from typing import Iterable

from cosmos_tui.widgets.quiet import QuietStatic

SECONDS_PER_CELL = 2.0
BLOCKS = " ▁▂▃▄▅▆▇█"


def bucket(samples: Iterable[tuple[float, float | None]], now: float, cells: int,
           seconds_per_cell: float = SECONDS_PER_CELL) -> list[float | None]:
    """`cells` values, oldest first, the last one the bucket holding `now`: the highest sample
    in each bucket (a memory peak must not be averaged away), None where there is no sample."""
    # buckets are fixed in time (not relative to now), so a sample never changes bucket
    out: list[float | None] = [None] * cells
    last = int(now // seconds_per_cell)
    for t, value in samples:
        if value is None:
            continue
        age = last - int(t // seconds_per_cell)
        if 0 <= age < cells:
            i = cells - 1 - age
            out[i] = value if out[i] is None else max(out[i], value)
    return out


def plot_rows(values: list[float | None], top: float, rows: int = 2) -> list[str]:
    """Rows of block characters, top row first; each row adds eight levels."""
    levels = []
    for v in values:
        if v is None or not top or top <= 0:
            levels.append(0)
        else:
            frac = min(1.0, max(0.0, v / top))
            levels.append(max(1, round(frac * rows * 8)) if v > 0 else 0)
    return ["".join(BLOCKS[min(8, max(0, lv - 8 * r))] for lv in levels) for r in reversed(range(rows))]


def plot_text(values: list[float | None], top: float, top_label: str, bottom_label: str,
              name: str, rows: int = 2) -> str:
    """The plot with its scale: `name top┤` on the top row, `0┤` on the bottom one."""
    lines = plot_rows(values, top, rows)
    width = max(len(top_label), len(bottom_label))
    name_w = len(name)
    out = []
    for r, line in enumerate(lines):
        label = top_label if r == 0 else (bottom_label if r == rows - 1 else "")
        head = name if r == 0 else " " * name_w
        out.append(f"{head} {label:>{width}}┤{line}")
    return "\n".join(out)


class HistoryPlot(QuietStatic):
    """One labelled plot, as wide as its widget; redrawn only when its text changes."""

    DEFAULT_CSS = """
    HistoryPlot { height: 2; width: 1fr; }
    """

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(markup=False, **kwargs)
        self.plot_name = name
        self._args: tuple | None = None

    def show(self, samples: list[tuple[float, float | None]], now: float, top: float,
             top_label: str, bottom_label: str) -> None:
        self._args = (samples, now, top, top_label, bottom_label)
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        if self._args is None or not self.size.width:
            return
        samples, now, top, top_label, bottom_label = self._args
        scale_w = len(self.plot_name) + 2 + max(len(top_label), len(bottom_label))
        cells = max(1, self.size.width - scale_w)
        self.update(plot_text(bucket(samples, now, cells), top, top_label, bottom_label, self.plot_name))
