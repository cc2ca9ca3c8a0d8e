"""The queue: one DataTable row per job, updated cell by cell by row key.

Rebuilding a table on every poll redraws the whole region, which is slow and flickers over SSH;
here a poll touches only the cells whose text changed, and reorders rows with a sort only when the
daemon's queue order actually changed.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from cosmos_tui.widgets import format as fmt
from cosmos_tui.widgets import phase_text

# (key, label, width); the prompt column takes whatever width the others leave
COLUMNS = (
    ("id", "ID", 4),
    ("mode", "Mode", 6),
    ("preset", "Preset", 10),
    ("prompt", "Prompt", 16),
    ("state", "State", 11),  # "interrupted" whole
    ("progress", "Progress", 13),
    ("eta", "ETA", 5),
    ("gpus", "GPU", 3),
    ("peak", "Peak", 5),
    ("elapsed", "Time", 5),
)

FILTERS = (None, "queued", "running", "done", "failed", "cancelled", "interrupted")


GAP = 1  # one blank cell after each column (cell padding 0, so 80 columns fit every column)
MIN_PROMPT = 8


def row_cells(job: dict, clock: Callable[[], float] = time.time, prompt_width: int = 16) -> dict[str, str]:
    return {
        "id": str(job["id"]),
        "mode": fmt.MODE_SHORT.get(job.get("mode") or "", job.get("mode") or "-"),
        "preset": fmt.clip(job.get("preset") or "-", 10),
        "prompt": fmt.clip(job.get("prompt") or (job.get("spec") or {}).get("prompt"), prompt_width),
        "state": job.get("state") or "?",
        # rows stay in id order, so a queued job's place in the queue is written in its row
        "progress": (f"#{job['place']} in queue" if job.get("state") == "queued" and job.get("place")
                     else phase_text.row_progress(job, fmt.elapsed(job, clock)) or fmt.progress_cell(job)),
        "eta": fmt.eta(job),
        "gpus": fmt.gpus_cell(job),
        "peak": fmt.gib(job.get("peak_mem")),
        "elapsed": fmt.duration(fmt.elapsed(job, clock)),
    }


class QueueTable(DataTable):
    DEFAULT_CSS = """
    QueueTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("home", "scroll_top", "Top", show=False),
        Binding("end", "scroll_bottom", "Bottom", show=False),
    ]

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, cell_padding=0, **kwargs)
        self.clock = clock
        self.prompt_width = 16
        self._jobs: list[dict] = []
        self.state_filter: str | None = None
        self._cells: dict[str, dict[str, str]] = {}
        self._order: list[str] = []
        self.cell_updates = 0  # for tests: how many cells a refresh rewrote

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width + GAP)

    def on_resize(self) -> None:
        others = sum(w + GAP for k, _, w in COLUMNS if k != "prompt")
        # two cells for a vertical scrollbar, so the last column is never cut
        width = max(MIN_PROMPT, self.size.width - others - GAP - 2)
        if width != self.prompt_width:
            self.prompt_width = width
            self.columns["prompt"].width = width + GAP
            self.sync(self._jobs)

    def visible(self, job: dict) -> bool:
        return self.state_filter is None or job.get("state") == self.state_filter

    def sync(self, jobs: Iterable[dict]) -> None:
        """Make the rows match `jobs`, newest (highest id) on top, touching only what changed. One
        order for every state: rows never jump when a job starts or ends."""
        self._jobs = list(jobs)
        wanted = sorted((j for j in self._jobs if self.visible(j)), key=lambda j: -j["id"])
        keys = [str(j["id"]) for j in wanted]
        for stale in [k for k in self._cells if k not in set(keys)]:
            self.remove_row(stale)
            del self._cells[stale]
        changed: list[str] = []
        for job in wanted:
            key = str(job["id"])
            cells = row_cells(job, self.clock, self.prompt_width)
            old = self._cells.get(key)
            if old is None:
                self.add_row(*cells.values(), key=key)
                self.cell_updates += len(cells)
            else:
                for col, text in cells.items():
                    if old.get(col) != text:
                        self._set_cell(key, col, text)
                        self.cell_updates += 1
                        changed.append(key)
            self._cells[key] = cells
        for key in dict.fromkeys(changed):
            self.refresh_row(self.get_row_index(key))
        if keys != self._order_of_rows():
            place = {k: i for i, k in enumerate(keys)}
            self.sort("id", key=lambda job_id: place.get(job_id, len(place)))
        self._order = keys

    def _set_cell(self, key: str, column: str, text: str) -> None:
        # DataTable.update_cell repaints the whole table; with one job running that was every
        # row every second. The new value goes in the same way, and only its row is repainted
        # (sync calls refresh_row); the update count drops the table's cached row renders.
        self._data[RowKey(key)][ColumnKey(column)] = text
        self._update_count += 1

    def _order_of_rows(self) -> list[str]:
        return [row.key.value for row in self.ordered_rows]

    @property
    def selected_job(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return int(key.value) if key and key.value is not None else None

    def select_job(self, job_id: int) -> None:
        try:
            self.move_cursor(row=self.get_row_index(str(job_id)))
        except Exception:
            pass
