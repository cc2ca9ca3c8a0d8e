"""GPUs: one card per device, updated in place from the app's GPU samples."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from cosmos_tui.widgets.banner import ConnectionBanner, DemoBanner
from cosmos_tui.widgets.gpu_card import GpuCard
from cosmos_tui.widgets.history_plot import SECONDS_PER_CELL
from cosmos_tui.widgets.quiet import QuietBackground, QuietStatic


def gpu_status(gpus: list[dict], source: str | None, backend: str | None) -> str:
    """The line over the cards: what is being read, from where, and (with no GPU) why not."""
    if not gpus:
        return f"no GPUs ({source or '?'})"
    where = "via the daemon" if source == "daemon" else "read here (no daemon)"
    kind = backend if source == "daemon" else source
    if all(g.get("cpu") for g in gpus):
        note = next((g.get("note") for g in gpus if g.get("note")), "no GPU")
        return f"no GPU, jobs run on the CPU one at a time · {note}"
    if kind == "demo":
        what = f"{len(gpus)} demo GPU(s), made-up numbers"
    else:
        what = f"{len(gpus)} GPU(s) · {'NVML' if kind == 'nvml' else kind or '?'}"
    return f"{what} · {where} · plots: {SECONDS_PER_CELL:g} s/cell"


class GpuScreen(QuietBackground, Screen):
    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield DemoBanner()
        yield QuietStatic(id="gpu-status", markup=False)
        yield VerticalScroll(id="gpu-cards")
        yield Footer()

    def on_mount(self) -> None:
        self.app.gpus_changed.subscribe(self, self._gpus_changed)
        self._gpus_changed(self.app.gpus)

    def _gpus_changed(self, gpus: list[dict]) -> None:
        box = self.query_one("#gpu-cards", VerticalScroll)
        cards = {c.index: c for c in box.query(GpuCard)}
        for g in gpus:
            card = cards.get(g["index"])
            if card is None:
                card = GpuCard(g["index"])
                box.mount(card)
            self._fill(card, g)  # a card not mounted yet keeps the sample for its on_mount
        backend = (self.app.queue_info or {}).get("gpu_backend")
        self.query_one("#gpu-status", QuietStatic).update(gpu_status(gpus, self.app.gpu_source, backend))

    def _fill(self, card: GpuCard, gpu: dict) -> None:
        card.update_gpu(gpu, list(self.app.gpu_history.get(gpu["index"], [])), self.app.gpu_sampled_at)
