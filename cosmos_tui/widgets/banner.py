"""The line that says the daemon is gone (and that the app keeps trying)."""

from __future__ import annotations

from cosmos_tui.widgets.quiet import QuietStatic


class ConnectionBanner(QuietStatic):
    DEFAULT_CSS = """
    ConnectionBanner { dock: top; height: 1; background: $error; color: $text; display: none; }
    ConnectionBanner.-lost { display: block; }
    """

    def __init__(self) -> None:
        super().__init__(markup=False)

    def on_mount(self) -> None:
        app = self.app
        if hasattr(app, "connection_changed"):
            app.connection_changed.subscribe(self, self._changed)
            self._changed(app.connection_error)

    def _changed(self, error: str | None) -> None:
        self.set_class(error is not None, "-lost")
        if error is not None:
            self.update(f"daemon unreachable, reconnecting… ({error})")
