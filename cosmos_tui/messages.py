"""The TUI's event vocabulary.

Worker threads only ever post these; the handlers (`@on(...)` on the App or a screen) own the
state they change. Past-tense names report what happened; `...Requested` names ask for something.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message


class DaemonConnected(Message):
    def __init__(self, client: Any, info: dict | None = None) -> None:
        self.client = client
        self.info = info or {}
        super().__init__()


class DaemonLost(Message):
    """A call to the daemon failed with a transport error: show the banner, retry later."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__()


class JobsRefreshed(Message):
    def __init__(self, jobs: list[dict], queue: dict) -> None:
        self.jobs = jobs
        self.queue = queue
        super().__init__()


class GpusSampled(Message):
    def __init__(self, gpus: list[dict], source: str) -> None:
        self.gpus = gpus
        self.source = source  # "daemon" | the local backend's kind
        super().__init__()


class ActionDone(Message):
    """A queue action (cancel, retry, move, pause...) succeeded; `text` is for the user."""

    def __init__(self, action: str, text: str, job: int | None = None, result: Any = None) -> None:
        self.action = action
        self.text = text
        self.job = job
        self.result = result
        super().__init__()


class ActionFailed(Message):
    """The daemon refused an action; `error` is its one-sentence reason."""

    def __init__(self, action: str, error: str, job: int | None = None) -> None:
        self.action = action
        self.error = error
        self.job = job
        super().__init__()


class JobsSubmitted(Message):
    def __init__(self, ids: list[int], preset: str | None) -> None:
        self.ids = ids
        self.preset = preset
        super().__init__()


class SubmitRequested(Message):
    """The submit form was filled in: queue `specs` (one job each) from `preset`."""

    def __init__(self, preset: str | None, specs: list[dict]) -> None:
        self.preset = preset
        self.specs = specs
        super().__init__()


class EventsFetched(Message):
    def __init__(self, job: int, events: list[dict]) -> None:
        self.job = job
        self.events = events
        super().__init__()


class LogRead(Message):
    """New complete lines of a log file, read from byte `start` up to `end`."""

    def __init__(self, path: str, lines: list[str], start: int, end: int, reset: bool = False) -> None:
        self.path = path
        self.lines = lines
        self.start = start
        self.end = end
        self.reset = reset  # the file shrank or was replaced: start over
        super().__init__()


class FramesLoaded(Message):
    def __init__(self, path: str, image: Any | None, error: str | None = None) -> None:
        self.path = path
        self.image = image
        self.error = error
        super().__init__()


class CriticLoaded(Message):
    def __init__(self, job: int, report: dict) -> None:
        self.job = job
        self.report = report
        super().__init__()


class PresetSaved(Message):
    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        super().__init__()
