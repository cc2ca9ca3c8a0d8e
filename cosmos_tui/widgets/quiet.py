"""Widgets that repaint only when what they show changes.

Textual's Static.update always refreshes, with a layout pass that repaints the whole screen; fed
from a 1 s poll, an unchanged status line cost a full screen of bytes every second (over SSH,
all day). `QuietStatic` keeps what it last showed and ignores an update to the same content.
"""

from __future__ import annotations

from textual.widgets import Static

_UNSET = object()


class QuietStatic(Static):
    """A Static whose update() is a no-op when the content is unchanged."""

    def __init__(self, content="", **kwargs) -> None:
        kwargs.setdefault("markup", False)
        super().__init__(content, **kwargs)
        self._shown = content

    def update(self, content="", *, layout: bool = True) -> None:
        if content == self._shown:
            return
        self._shown = content
        super().update(content, layout=layout)


def set_data(sparkline, values: list[float]) -> None:
    """Give a Sparkline new data only if it would draw differently: a flat series draws the same
    at any length, so a steady GPU's history costs nothing."""
    values = list(values)
    old = list(sparkline.data or [])
    if values == old:
        return
    if values and old and min(values) == max(values) == min(old) == max(old):
        return
    sparkline.data = values


class QuietBackground:
    """Mixin for a full Screen: while another full screen covers it, it paints nothing.

    Textual (8.x) lets a screen under another one repaint its dirty regions onto the top screen,
    and once that happened it re-dirties itself on every later wake-up, so a covered queue made
    the critic browser or a job's tabs repaint in full on every poll. A covered screen is not
    seen; it is painted again in full when it comes back (ScreenResume).
    """

    def _on_timer_update(self) -> None:
        from textual.screen import ModalScreen

        top = self.app.screen
        if top is not self and not isinstance(top, ModalScreen) and self in self.app.screen_stack:
            self._update_timer.pause()
            self._repaint_required = False
            self._dirty_widgets.clear()
            self._compositor._dirty_regions.clear()
            return
        super()._on_timer_update()
