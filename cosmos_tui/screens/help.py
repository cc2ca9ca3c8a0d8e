"""Every key, generated from the same command table as the bindings and the palette."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from cosmos_tui.screens.commands import COMMANDS

WHERE = {"app": "Everywhere", "queue": "Queue", "job": "Job detail", "presets": "Presets"}
EXTRA = (
    ("job", "l / i / o", "Log, spec and frames tabs of the job detail"),
    ("job", "n", "Next search match in the log"),
    ("job", "end", "Follow the log again"),
    ("job", "escape", "Back to the list"),
    ("app", "ctrl+p", "Command palette: every action by name"),
)


def help_text() -> str:
    rows: dict[str, list[tuple[str, str]]] = {k: [] for k in WHERE}
    for c in COMMANDS:
        key = c.key_display or c.key
        rows[c.where].append((key, c.help))
    for where, key, text in EXTRA:
        rows[where].append((key, text))
    out = []
    for where, title in WHERE.items():
        out.append(title)
        out += [f"  {key:<8} {text}" for key, text in rows[where]]
        out.append("")
    out.append("The daemon keeps running when you quit; jobs are never lost with the TUI.")
    return "\n".join(out)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(help_text(), id="help-text", markup=False)
