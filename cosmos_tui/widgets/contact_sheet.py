"""A contact sheet of a video's frames, drawn with textual-image (Kitty, Sixel or half blocks).

Frames are decoded in a worker thread (imageio + numpy, see cosmos_tui.images); the widget only
mounts the finished picture. With images off it still says where the file is, so a user can copy
it off the box.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from cosmos_tui import images
from cosmos_tui.messages import FramesLoaded
from cosmos_tui.widgets.quiet import QuietStatic


class ContactSheet(Vertical):
    DEFAULT_CSS = """
    ContactSheet { height: auto; }
    ContactSheet .sheet-image { height: 12; width: auto; }
    """

    def __init__(self, frames: int = 6, columns: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.frames = frames
        self.columns = columns
        self.path: str | None = None
        self.loaded: str | None = None  # the path whose picture is shown

    def compose(self) -> ComposeResult:
        yield QuietStatic("no video yet", classes="sheet-caption", markup=False)

    def show(self, path: str | None) -> None:
        if path == self.path:
            return
        self.path = path
        caption = self.query_one(".sheet-caption", Static)
        if not path:
            caption.update("no video yet")
            return
        if getattr(self.app, "image_mode", "none") == "none":
            caption.update(f"{path}  (images off: COSMOS_TUI_IMAGES=none)")
            return
        caption.update(f"{path}  (reading frames…)")
        self.load(path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="frames")
    def load(self, path: str) -> None:
        try:
            sheet = images.contact_sheet_for(path, count=self.frames, columns=self.columns)
        except Exception as err:  # a half-written or odd file must not take the screen down
            self.post_message(FramesLoaded(path, None, f"{type(err).__name__}: {err}"))
            return
        self.post_message(FramesLoaded(path, sheet))

    @on(FramesLoaded)
    def _loaded(self, message: FramesLoaded) -> None:
        message.stop()
        if message.path != self.path:
            return
        caption = self.query_one(".sheet-caption", Static)
        if message.image is None:
            caption.update(f"{message.path}  (no frames: {message.error})")
            return
        caption.update(message.path)
        self.query(".sheet-image").remove()
        cls = getattr(self.app, "image_widget", None)
        if cls is not None:
            self.mount(cls(message.image, classes="sheet-image"))
        self.loaded = message.path
