"""Presets: the list, one preset's settings, and the way into the editor and the submit form."""

from __future__ import annotations

import json

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from cosmos_tui.screens.commands import bindings
from cosmos_tui.widgets.banner import ConnectionBanner
from cosmos_tui.widgets.quiet import QuietBackground, QuietStatic


def preset_text(preset) -> str:
    head = [f"{preset.name} ({preset.source})", preset.description or "", str(preset.path), ""]
    if preset.error:
        return "\n".join(head + ["this preset does not load:", preset.error])
    lines = ["set by this preset:"]
    width = max((len(k) for k in preset.overrides), default=0)
    lines += [f"  {k:<{width}} = {json.dumps(v)}" for k, v in preset.overrides.items()] or ["  (nothing: all defaults)"]
    return "\n".join(head + lines)


class PresetsScreen(QuietBackground, Screen):
    BINDINGS = bindings("presets")

    def __init__(self) -> None:
        super().__init__()
        self.presets: list = []

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        with Horizontal():
            yield OptionList(id="preset-list")
            with VerticalScroll(id="preset-view"):
                yield QuietStatic(id="preset-text", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.reload()

    def reload(self, select: str | None = None) -> None:
        from cosmos_tui.presets import list_presets

        self.presets = list_presets()
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([
            Option(f"{p.name}{' (user)' if p.source == 'user' else ''}{'  ! invalid' if p.error else ''}", id=p.name)
            for p in self.presets
        ])
        names = [p.name for p in self.presets]
        if names:
            options.highlighted = names.index(select) if select in names else 0
            self._show(options.highlighted)

    @property
    def selected(self):
        index = self.query_one(OptionList).highlighted
        if index is None or not (0 <= index < len(self.presets)):
            return None
        return self.presets[index]

    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show(event.option_index)

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.edit()

    def _show(self, index: int | None) -> None:
        if index is not None and 0 <= index < len(self.presets):
            self.query_one("#preset-text", Static).update(preset_text(self.presets[index]))

    # -- actions (bound through the app so the palette can reach them too) --

    def edit(self) -> None:
        from cosmos_tui.screens.preset_editor import PresetEditor

        preset = self.selected
        if preset is not None:
            self.app.push_screen(PresetEditor(preset), self._edited)

    def duplicate(self) -> None:
        from cosmos_tui.screens.preset_editor import PresetEditor

        preset = self.selected
        if preset is not None:
            self.app.push_screen(PresetEditor(preset, name=f"{preset.name}-copy"), self._edited)

    def queue_from(self) -> None:
        preset = self.selected
        if preset is not None and preset.error:
            self.notify(f"{preset.name} does not load; fix it first", severity="error")
            return
        self.app.action_submit(preset.name if preset else None)

    def _edited(self, name: str | None) -> None:
        if name:
            self.reload(select=name)
