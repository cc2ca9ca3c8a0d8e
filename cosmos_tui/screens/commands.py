"""One table of user actions, feeding the key bindings, the command palette and the help screen.

Every action is an App action (`action_<name>`), so the palette can run it from any screen; the
ones about "the job" act on the job on screen, else the job under the queue's cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider


@dataclass(frozen=True)
class Command:
    action: str
    key: str
    title: str
    help: str
    where: str  # "app" | "queue" | "job" | "presets": where the key is bound
    show: bool = True  # shown in the footer
    key_display: str | None = None


COMMANDS: tuple[Command, ...] = (
    Command("show_queue", "1", "Queue", "Show the job queue", "app"),
    Command("show_gpus", "2", "GPUs", "Show GPU memory, utilisation, temperature, power", "app"),
    Command("show_presets", "3", "Presets", "List, view, edit and queue presets", "app"),
    Command("help", "question_mark", "Help", "Show every key", "app", key_display="?"),
    Command("quit", "q", "Quit", "Leave the TUI (the daemon and its jobs keep running)", "app"),
    Command("refresh", "ctrl+r", "Refresh", "Ask the daemon for the queue now", "app", show=False),
    Command("submit", "s", "Submit", "Queue jobs from a preset with per-job overrides", "queue"),
    Command("open_job", "enter", "Details", "Open the selected job's details", "queue"),
    Command("cancel_job", "c", "Cancel", "Cancel the selected job (queued or running)", "queue"),
    Command("retry_job", "r", "Retry", "Queue a new attempt of a finished, failed or cancelled job", "queue"),
    Command("toggle_pause", "p", "Pause/Resume", "Pause or resume the queue", "queue"),
    Command("move_up", "left_square_bracket", "Sooner", "Move the selected queued job one place up", "queue",
            key_display="["),
    Command("move_down", "right_square_bracket", "Later", "Move the selected queued job one place down",
            "queue", key_display="]"),
    Command("cycle_filter", "f", "Filter", "Show only jobs in one state (cycles)", "queue"),
    Command("find_jobs", "slash", "Find", "Show only jobs whose prompt, preset, id or state has the text", "queue",
            key_display="/"),
    Command("toggle_hold", "h", "Hold", "Hold the selected queued job (it keeps its place) or release it",
            "queue"),
    Command("remove_job", "x", "Remove", "Remove the selected finished job from the list (files stay)", "queue"),
    Command("clean_jobs", "X", "Clean", "Remove every finished job from the list (files stay)", "queue",
            show=False),
    Command("critic", "v", "Critic", "Best-of-N: candidates ranked by the critic", "queue"),
    Command("play", "m", "Play", "Play the job's video with mpv", "job"),
    Command("search_log", "slash", "Search", "Search the job's log", "job", key_display="/"),
    Command("edit_preset", "e", "Edit", "Edit the selected preset as a form", "presets"),
    Command("duplicate_preset", "d", "Duplicate", "Copy the selected preset into a new user preset", "presets"),
    Command("submit_preset", "s", "Queue", "Queue jobs from the selected preset", "presets"),
)


def bindings(where: str) -> list[Binding]:
    return [
        Binding(c.key, c.action if where == "app" else f"app.{c.action}", c.title, show=c.show,
                key_display=c.key_display, id=c.action)
        for c in COMMANDS
        if c.where == where
    ]


class CosmosCommands(Provider):
    """Every action of COMMANDS in the command palette (ctrl+p)."""

    async def discover(self) -> Hits:
        for c in COMMANDS:
            yield DiscoveryHit(c.title, partial(self.app.run_action, c.action), help=c.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for c in COMMANDS:
            text = f"{c.title}: {c.help}"
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self.app.run_action, c.action), help=c.help)
