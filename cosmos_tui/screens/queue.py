"""The queue: every job with its live progress, and the keys that act on it."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from cosmos_tui.screens.commands import bindings
from cosmos_tui.widgets import phase_text
from cosmos_tui.widgets.banner import ConnectionBanner, DemoBanner
from cosmos_tui.widgets.queue_table import FILTERS, QueueTable
from cosmos_tui.widgets.quiet import QuietBackground, QuietStatic


def status_text(queue: dict, jobs: dict, state_filter: str | None, text_filter: str = "") -> str:
    counts: dict[str, int] = {}
    for j in jobs.values():
        counts[j.get("state")] = counts.get(j.get("state"), 0) + 1
    if queue.get("paused"):
        head = f"PAUSED: {queue.get('reason') or 'paused'}"
    else:
        head = "running"
    # what needs the user first: a narrow terminal cuts the end of the line
    parts = [f"{counts[s]} {s}" for s in ("failed", "interrupted", "running", "queued", "done") if counts.get(s)]
    shown = f"filter: {state_filter}" if state_filter else "filter: all"
    if text_filter:
        shown += " · find: " + "".join(c if c.isprintable() else "?" for c in text_filter)
    # the filters first: they say why rows are missing, and a narrow terminal cuts the end
    # the queue's ETA next to its state (cosmos_tui/queue/eta.py), then the filters and the counts
    return f"queue {head}{phase_text.queue_eta(queue)} · {shown} · " + (", ".join(parts) or "no jobs")


class QueueScreen(QuietBackground, Screen):
    BINDINGS = bindings("queue")

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield DemoBanner()
        yield QuietStatic(id="queue-status", markup=False)
        yield QueueTable(clock=self.app.clock, id="queue-table")
        yield QuietStatic(id="queue-why", markup=False)
        yield Input(placeholder="find: prompt, preset, id or state (enter: keep, escape: clear)", id="queue-find")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#queue-find", Input).display = False
        self.app.jobs_changed.subscribe(self, self._jobs_changed)
        self._jobs_changed(self.app.jobs)

    def on_screen_resume(self) -> None:
        if getattr(self, "_stale", False):
            self._jobs_changed(self.app.jobs)

    @property
    def table(self) -> QueueTable:
        return self.query_one(QueueTable)

    def _jobs_changed(self, jobs: dict) -> None:
        # under a detail screen the table is not seen, and touching it repaints the screen on top
        if self.app.screen is not self and self.is_mounted and self.table.row_count:
            self._stale = True
            return
        self._stale = False
        table = self.table
        table.sync(jobs.values(), (self.app.queue_info or {}).get("gpu_backend"))
        wanted = self.app.selected_job
        if wanted is not None and wanted != table.selected_job and str(wanted) in table.rows:
            table.select_job(wanted)
        self.query_one("#queue-status", QuietStatic).update(
            status_text(self.app.queue_info, jobs, table.state_filter, table.text_filter))
        self._show_why()

    def _show_why(self) -> None:
        """Under the table: why the selected job failed (or was cancelled / interrupted)."""
        selected = self.table.selected_job
        job = self.app.jobs.get(selected) if selected is not None else None
        why = ""
        if job and job.get("state") in ("failed", "cancelled", "interrupted"):
            reason = job.get("error") or job.get("reason") or "no reason recorded"
            why = f"job {job['id']} {job['state']}: {reason}"
        box = self.query_one("#queue-why", QuietStatic)
        box.update(why)
        box.display = bool(why)

    def cycle_filter(self) -> None:
        table = self.table
        table.state_filter = FILTERS[(FILTERS.index(table.state_filter) + 1) % len(FILTERS)]
        self._jobs_changed(self.app.jobs)

    # -- `/`: find by text --

    def open_find(self) -> None:
        box = self.query_one("#queue-find", Input)
        box.display = True
        # focus now, not after a refresh (Widget.focus is deferred): the keys typed right
        # after `/` in the same burst are the text to find, not queue keys
        self.set_focus(box)

    @on(Input.Changed, "#queue-find")
    def _find_changed(self, event: Input.Changed) -> None:
        self.table.text_filter = event.value
        self._jobs_changed(self.app.jobs)

    @on(Input.Submitted, "#queue-find")
    def _find_kept(self, event: Input.Submitted) -> None:
        box = self.query_one("#queue-find", Input)
        box.display = bool(event.value)  # an empty find closes; a kept one stays in view
        self.table.focus()

    def on_key(self, event) -> None:
        box = self.query_one("#queue-find", Input)
        if event.key == "escape" and box.has_focus:
            box.value = ""  # Changed clears the filter
            box.display = False
            self.table.text_filter = ""
            self._jobs_changed(self.app.jobs)
            self.table.focus()
            event.stop()
            event.prevent_default()

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.app.selected_job = int(event.row_key.value)
        self._show_why()

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.app.selected_job = int(event.row_key.value)
            self.app.action_open_job()
