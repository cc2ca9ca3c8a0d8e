"""Screens where the user types: keys typed while one opens land in its first field, in order.

A terminal delivers a burst of keys faster than a screen mounts. Textual routes each key to
whatever has focus when the app reads it, so the keys typed right after `s` went to a screen with
nothing focused (lost, or to the app's single-letter bindings), and a Tab in the burst moved focus
only after the following keys had already been handed to the old field. The app therefore holds
keys while a form screen mounts (`held_keys`), the screen focuses its first field synchronously
and hands them back, and Tab between fields of a form moves focus at once (CosmosApp.route_key).
"""

from __future__ import annotations

from textual import events


class FormScreen:
    """Mixin for a Screen whose keys are text. Single-letter app keys are off on it
    (CosmosApp.check_action)."""

    FIRST_FIELD = "Input"
    takes_text = True

    def _hold_keys(self) -> None:
        self.held_keys: list[events.Key] | None = []

    async def release_keys(self) -> None:
        """Focus the first field now (not via call_later) and replay the keys held meanwhile."""
        widget = self.query(self.FIRST_FIELD).first()
        self.set_focus(widget)
        while self.held_keys:
            event = self.held_keys.pop(0)
            await self.app.route_key(event)
        self.held_keys = None

    def on_unmount(self) -> None:
        # the app's letter keys were off while this was up; the footers should show them again
        self.app.call_later(self.app.refresh_bindings)
