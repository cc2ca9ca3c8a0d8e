"""GPUs: one card per device, updated in place from the app's GPU samples."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from cosmos_tui.widgets.banner import ConnectionBanner
from cosmos_tui.widgets.gpu_card import GpuCard
from cosmos_tui.widgets.quiet import QuietBackground, QuietStatic


class GpuScreen(QuietBackground, Screen):
    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
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
                # its children exist only after mounting; fill it on the next refresh
                self.call_after_refresh(self._fill, card, g, list(self.app.gpu_history.get(g["index"], [])))
            else:
                card.update_gpu(g)
        source = self.app.gpu_source or "?"
        self.query_one("#gpu-status", Static).update(
            f"{len(gpus)} GPU(s) · source: {source}" if gpus else f"no GPUs ({source})")

    def _fill(self, card: GpuCard, gpu: dict, history: list) -> None:
        for used in history[:-1]:
            card.mem_history.append(used / 1024**3)
        card.update_gpu(gpu)
