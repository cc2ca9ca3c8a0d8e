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


def demo_text(jobs: dict, gpu_backend: str | None) -> str:
    """What is not real about this session, in one line; empty when everything is.
    A tiny-profile job runs seeded random weights (its video is noise), a demo GPU backend makes
    its numbers up, and with no GPU the jobs run on the CPU."""
    bits = []
    tiny = [j for j in jobs.values() if (j.get("spec") or {}).get("model_size") == "tiny"]
    if tiny:
        bits.append("tiny profile: random weights, the video is noise")
    if gpu_backend == "demo":
        bits.append("made-up demo GPUs")
    elif gpu_backend == "cpu" and tiny:
        bits.append("on the CPU")
    return ("DEMO · " + " · ".join(bits)) if bits else ""


class DemoBanner(QuietStatic):
    """A line under the connection banner saying the session is a demo (see demo_text)."""

    DEFAULT_CSS = """
    DemoBanner { height: 1; background: $warning-darken-2; color: $text; display: none; padding: 0 1; }
    DemoBanner.-demo { display: block; }
    """

    def __init__(self) -> None:
        super().__init__(markup=False)

    def on_mount(self) -> None:
        app = self.app
        if hasattr(app, "jobs_changed"):
            app.jobs_changed.subscribe(self, self._changed)
            app.gpus_changed.subscribe(self, self._changed)  # the GPU backend is known from these
            self._changed()

    def _changed(self, _=None) -> None:
        text = demo_text(self.app.jobs, self.app.gpu_backend_kind())
        self.set_class(bool(text), "-demo")
        self.update(text)
