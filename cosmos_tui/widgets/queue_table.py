"""The queue: one DataTable row per job, updated cell by cell by row key.

Rebuilding a table on every poll redraws the whole region, which is slow and flickers over SSH;
here a poll touches only the cells whose text changed, and reorders rows with a sort only when the
daemon's queue order actually changed.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from rich.text import Text
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


GAP = 1  # one blank cell after each column (cell padding 0)
MIN_PROMPT = 8
# The prompt is what tells jobs apart: below this width, columns are given up for it, in this
# order; a column with nothing in it ("-" in every row, such as Peak before any job ran) goes first.
ROOMY_PROMPT = 20
GIVE_UP = ("peak", "elapsed", "gpus", "eta", "mode")
KEEP = ("id", "prompt", "state", "progress")  # never dropped
EMPTY = ("-", "")


def matches(job: dict, text: str) -> bool:
    """The `/` filter: the text in the prompt, preset or state (any case), or the job's id."""
    text = " ".join(text.split()).lower()
    if not text:
        return True
    if text.lstrip("#").isdigit():
        return str(job.get("id")) == text.lstrip("#")
    prompt = job.get("prompt") or (job.get("spec") or {}).get("prompt") or ""
    hay = " ".join(str(x) for x in (prompt, job.get("preset") or "", job.get("state") or "")).lower()
    return text in " ".join(hay.split())


def shown_columns(rows: list[dict[str, str]], width: int) -> list[str]:
    """The columns to show at `width` cells, given the rows' cell texts."""
    shown = [k for k, _, _ in COLUMNS if k in KEEP or any(r.get(k) not in EMPTY for r in rows)]
    if not rows:
        shown = [k for k, _, _ in COLUMNS]

    def prompt_room(cols: list[str]) -> int:
        return width - sum(w + GAP for k, _, w in COLUMNS if k in cols and k != "prompt") - GAP - 2

    for key in GIVE_UP:
        if prompt_room(shown) >= ROOMY_PROMPT:
            break
        if key in shown:
            shown.remove(key)
    return shown


def _plain(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _queued_cell(job: dict) -> str:
    """Why a queued job is where it is: held, waiting for the job it runs after (--after), or its place."""
    place = job.get("place")
    if job.get("held"):
        return "held" + (f" (#{place})" if place else "")
    if job.get("after") and (job.get("wait_reason") or "").startswith("waiting for job"):
        return f"after #{job['after']}"
    return f"#{place} in queue" if place else fmt.progress_cell(job)


def row_cells(job: dict, clock: Callable[[], float] = time.time, prompt_width: int = 16,
              gpu_backend: str | None = None) -> dict[str, str]:
    return {
        "id": str(job["id"]),
        "mode": fmt.MODE_SHORT.get(job.get("mode") or "", job.get("mode") or "-"),
        "preset": _plain(fmt.clip(job.get("preset") or "-", 10)),
        "prompt": _plain(fmt.clip(job.get("prompt") or (job.get("spec") or {}).get("prompt"), prompt_width)),
        "state": job.get("state") or "?",
        # rows stay in id order, so a queued job's place in the queue is written in its row
        "progress": (_queued_cell(job) if job.get("state") == "queued"
                     else phase_text.row_progress(job, fmt.elapsed(job, clock)) or fmt.progress_cell(job)),
        "eta": fmt.eta(job),
        "gpus": fmt.gpus_cell(job, gpu_backend),
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
        self.gpu_backend: str | None = None  # the daemon's (queue()'s gpu_backend): how slots are named
        self.text_filter: str = ""
        self.shown: list[str] = [k for k, _, _ in COLUMNS]
        self._cells: dict[str, dict[str, str]] = {}
        self._order: list[str] = []
        self.cell_updates = 0  # for tests: how many cells a refresh rewrote

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width + GAP)

    def on_resize(self) -> None:
        self.sync(self._jobs)

    def _layout(self, wanted: list[dict]) -> bool:
        """Choose the columns and the prompt's width for these rows; True when that changed."""
        if not self.size.width:
            return False
        rows = [row_cells(j, self.clock, 1, self.gpu_backend) for j in wanted]
        shown = shown_columns(rows, self.size.width)
        others = sum(w + GAP for k, _, w in COLUMNS if k in shown and k != "prompt")
        # two cells for a vertical scrollbar, so the last column is never cut
        width = max(MIN_PROMPT, self.size.width - others - GAP - 2)
        if shown == self.shown and width == self.prompt_width:
            return False
        self.shown, self.prompt_width = shown, width
        for key, _, w in COLUMNS:
            # a column given up keeps its place with no width (DataTable cannot remove one)
            self.columns[ColumnKey(key)].width = (width if key == "prompt" else w) + GAP if key in shown else 0
        return True

    def visible(self, job: dict) -> bool:
        return ((self.state_filter is None or job.get("state") == self.state_filter)
                and matches(job, self.text_filter))

    def sync(self, jobs: Iterable[dict], gpu_backend: str | None = None) -> None:
        """Make the rows match `jobs`, newest (highest id) on top, touching only what changed. One
        order for every state: rows never jump when a job starts or ends. `gpu_backend`: the daemon's
        GPU backend kind, None to keep the last one given."""
        self._jobs = list(jobs)
        if gpu_backend is not None:
            self.gpu_backend = gpu_backend
        wanted = sorted((j for j in self._jobs if self.visible(j)), key=lambda j: -j["id"])
        if self._layout(wanted):
            # columns came or went (rare): the whole table repaints once; the rows stay
            self._require_update_dimensions = True
            self._update_count += 1
            self.refresh()
        keys = [str(j["id"]) for j in wanted]
        for stale in [k for k in self._cells if k not in set(keys)]:
            self.remove_row(stale)
            del self._cells[stale]
        changed: list[str] = []
        for job in wanted:
            key = str(job["id"])
            cells = row_cells(job, self.clock, self.prompt_width, self.gpu_backend)
            old = self._cells.get(key)
            if old is None:
                # Text, not str: DataTable reads a str cell as markup, and prompts are user text
                self.add_row(*(Text(c) for c in cells.values()), key=key)
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
            self.sort("id", key=lambda job_id: place.get(str(job_id), len(place)))
        self._order = keys

    def _set_cell(self, key: str, column: str, text: str) -> None:
        # DataTable.update_cell repaints the whole table; with one job running that was every
        # row every second. The new value goes in the same way, and only its row is repainted
        # (sync calls refresh_row); the update count drops the table's cached row renders.
        self._data[RowKey(key)][ColumnKey(column)] = Text(text)
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
