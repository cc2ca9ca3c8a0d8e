"""The current screen of a running Textual app as plain text: what a user would read.

Used by the TUI tests to assert on what is on screen and by the text snapshots (readable diffs,
unlike SVG). Colour is left out on purpose; the SVG route (snap_compare) covers styling.
"""

from __future__ import annotations

import io

from rich.console import Console


def screen_text(app) -> str:
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    lines = console.export_text(styles=False).splitlines()
    return "\n".join(line.rstrip() for line in lines[:height])
