"""A log pane that tails a file: read incrementally in a worker thread, render only visible lines.

Toolong's idea, small: the file on disk is the log (the daemon writes it), a worker reads only the
bytes appended since the last read and posts complete lines, and the widget is a ScrollView whose
`render_line` draws just the rows on screen. Nothing streams log text through the message queue
line by line, which is what freezes Textual apps under chatty logs.

Follow mode sticks to the end; scrolling up leaves it and counts the lines that arrived since.
"""

from __future__ import annotations

import os

from rich.segment import Segment
from rich.style import Style
from textual import on, work
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from cosmos_tui.messages import LogRead

READ_CHUNK = 1 << 20  # at most this much per read, so a huge log shows up progressively


def read_new_lines(path: str, offset: int, limit: int = READ_CHUNK) -> tuple[list[str], int, bool]:
    """Complete lines appended to `path` after byte `offset`: (lines, new offset, reset).
    A partial last line is left for the next read. `reset` is True when the file shrank (it was
    replaced or truncated) and the lines are from its start."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return [], offset, False
    reset = size < offset
    if reset:
        offset = 0
    if size == offset:
        return [], offset, reset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(min(limit, size - offset))
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= limit:  # one enormous line: show it cut rather than never
            end = len(data) - 1
        else:
            return [], offset, reset
    chunk = data[: end + 1]
    lines = chunk.decode("utf-8", errors="replace").splitlines()
    return lines, offset + len(chunk), reset


class LogView(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    LogView { height: 1fr; background: $surface; }
    """
    BINDINGS = [
        ("end", "follow", "Follow"),
        ("home", "scroll_home", "Top"),
        ("n", "next_match", "Next match"),
    ]

    class Updated(Message):
        """Lines arrived, or follow/search changed: the status line should be redrawn."""

    follow: reactive[bool] = reactive(True)
    pending = reactive(0)  # lines that arrived while not following
    search = reactive("")

    def __init__(self, path: str | None = None, poll_interval: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.poll_interval = poll_interval
        self.lines: list[str] = []
        self.read_offset = 0
        self.match_line: int | None = None
        self._width = 0

    def on_mount(self) -> None:
        if self.path:
            self.read_more()

    def set_path(self, path: str | None) -> None:
        if path == self.path:
            return
        self.path = path
        self.lines, self.read_offset, self._width = [], 0, 0
        self.virtual_size = Size(0, 0)
        self.refresh()
        if path:
            self.read_more()

    @work(thread=True, exclusive=True, exit_on_error=False, group="log-tail")
    def read_more(self) -> None:
        path, offset = self.path, self.read_offset
        if not path:
            return
        lines, end, reset = read_new_lines(path, offset)
        self.post_message(LogRead(path, lines, offset, end, reset))

    @on(LogRead)
    def _lines_read(self, message: LogRead) -> None:
        message.stop()
        if message.path == self.path and message.start == (0 if message.reset else self.read_offset):
            if message.reset:
                self.lines, self._width = [], 0
            self.read_offset = message.end
            self.append(message.lines)
        if self.is_attached and self.poll_interval > 0:
            # re-armed after each read, so slow disks never stack reads up
            self.set_timer(self.poll_interval, self.read_more)

    def append(self, lines: list[str]) -> None:
        if not lines:
            return
        self.lines.extend(lines)
        self._width = max(self._width, *(len(line) for line in lines))
        self.virtual_size = Size(self._width, len(self.lines))
        if self.follow:
            self.scroll_end(animate=False, x_axis=False)
        else:
            self.pending += len(lines)
        self.refresh()
        self.post_message(self.Updated())

    def watch_follow(self) -> None:
        self.post_message(self.Updated())

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        if index >= len(self.lines):
            return Strip.blank(width, self.rich_style)
        text = self.lines[index]
        base = self.rich_style
        segments = self._highlight(text, base, index == self.match_line)
        strip = Strip(segments).crop(scroll_x, scroll_x + width)
        return strip.extend_cell_length(width, base)

    def _highlight(self, text: str, base: Style, current: bool) -> list[Segment]:
        if not self.search:
            return [Segment(text, base)]
        # reverse video, not colour: a match stays visible with NO_COLOR
        mark = base + Style(reverse=True, bold=current)
        out, low, needle, i = [], text.lower(), self.search.lower(), 0
        while True:
            j = low.find(needle, i)
            if j < 0:
                out.append(Segment(text[i:], base))
                return out
            out.append(Segment(text[i:j], base))
            out.append(Segment(text[j : j + len(needle)], mark))
            i = j + len(needle)

    # -- follow and search --

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        at_end = new >= self.max_scroll_y
        if new < old and not at_end:
            self.follow = False
        elif at_end:
            self.follow, self.pending = True, 0

    def action_follow(self) -> None:
        self.follow, self.pending = True, 0
        self.scroll_end(animate=False, x_axis=False)

    def find(self, text: str, start: int | None = None) -> int | None:
        """Move to the next line containing `text` (case-insensitive) after `start`; wraps."""
        self.search = text
        if not text or not self.lines:
            self.match_line = None
            self.refresh()
            return None
        needle = text.lower()
        first = (self.match_line + 1) if start is None and self.match_line is not None else (start or 0)
        n = len(self.lines)
        for k in range(n):
            i = (first + k) % n
            if needle in self.lines[i].lower():
                self.match_line = i
                self.follow = False
                self.scroll_to(y=max(0, i - self.scrollable_content_region.height // 2), animate=False)
                self.refresh()
                return i
        self.match_line = None
        self.refresh()
        return None

    def action_next_match(self) -> None:
        if self.search:
            self.find(self.search)

    def status(self) -> str:
        mode = "following" if self.follow else f"paused, {self.pending} new line(s)"
        return f"{len(self.lines)} lines · {mode}" + (f" · /{self.search}" if self.search else "")
