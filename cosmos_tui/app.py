"""The Textual workstation: composition, routing, and the state every screen shows.

Threading model (harlequin's): every call to the daemon runs in a thread worker that only posts a
message (cosmos_tui.messages); the `@on` handlers here own the state (jobs, queue, GPUs, the
connection) and publish it through Signals that screens subscribe to. Polls re-arm a timer after
each answer, so a slow daemon never gets overlapping requests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import deque
from typing import Any, Callable

from textual import events, on, work
from textual.app import App
from textual.widgets import Input, TextArea
from textual.signal import Signal

from cosmos_tui import images
from cosmos_tui.messages import (
    ActionDone,
    ActionFailed,
    DaemonConnected,
    DaemonLost,
    GpusSampled,
    JobsRefreshed,
    JobsSubmitted,
    SubmitRequested,
)
from cosmos_tui.screens.commands import COMMANDS, CosmosCommands, bindings
from cosmos_tui.screens.gpus import GpuScreen
from cosmos_tui.screens.presets import PresetsScreen
from cosmos_tui.screens.queue import QueueScreen
from cosmos_tui.widgets.gpu_card import HISTORY

# actions on printable keys: a user typing text into a field or a form must never trigger them
LETTER_KEYS = {"question_mark", "slash", "left_square_bracket", "right_square_bracket"}
LETTER_ACTIONS = frozenset(c.action for c in COMMANDS if len(c.key) == 1 or c.key in LETTER_KEYS)

ENDED = {"done": "done", "failed": "failed", "cancelled": "cancelled", "interrupted": "interrupted"}


def osc9_supported(env=None) -> bool:
    """Terminals that show OSC 9 as a notification (others may print it, or beep); tmux and
    screen swallow it unless passed through, so not inside them."""
    env = os.environ if env is None else env
    if env.get("TMUX") or env.get("STY"):
        return False
    term, program = env.get("TERM", ""), env.get("TERM_PROGRAM", "")
    return program in ("iTerm.app", "WezTerm", "ghostty") or "kitty" in term or bool(env.get("KITTY_WINDOW_ID"))


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError)


def _is_transport_error(err: BaseException) -> bool:
    from cosmos_tui.client import DaemonNotRunning

    return isinstance(err, (DaemonNotRunning, *TRANSPORT_ERRORS))  # DaemonGone (hung up mid-answer) included


class CosmosApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "cosmos-tui"
    COMMANDS = App.COMMANDS | {CosmosCommands}
    MODES = {"queue": QueueScreen, "gpus": GpuScreen, "presets": PresetsScreen}
    DEFAULT_MODE = "queue"
    BINDINGS = bindings("app")

    def __init__(
        self,
        client: Any = None,
        *,
        autostart: bool = True,
        poll_interval: float = 1.0,
        gpu_interval: float = 1.0,
        reconnect_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        image_mode: str | None = None,
        gpu_backend: Any = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client
        self._client_given = client is not None
        self.autostart = autostart
        self.poll_interval = poll_interval
        self.gpu_interval = gpu_interval
        self.reconnect_interval = reconnect_interval
        self.clock = clock
        self.image_mode = images.image_mode(image_mode)
        self.image_widget = None if self.image_mode == "none" else images.widget_class(self.image_mode)
        self._local_gpu = gpu_backend
        # state owned by the handlers below
        self.jobs: dict[int, dict] = {}
        self.queue_info: dict = {}
        self.gpus: list[dict] = []
        self.gpu_history: dict[int, deque] = {}  # index -> (time, mem_used, util) samples
        self.gpu_sampled_at = 0.0
        self.gpu_source: str | None = None
        self.connection_error: str | None = "connecting"
        self.selected_job: int | None = None
        self.polls = 0
        self.gpu_polls = 0  # answers handled, for tests
        self._poll_timer = None
        self._gpu_timer = None
        self._reconnect_timer = None
        self.jobs_changed: Signal[dict] = Signal(self, "jobs")
        self.gpus_changed: Signal[list] = Signal(self, "gpus")
        self.connection_changed: Signal[str | None] = Signal(self, "connection")

    # -- keys --

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and not event.is_forwarded:
            held = getattr(self.screen, "held_keys", None)
            if held is not None:  # a form screen is still mounting: it replays these in order
                held.append(event)
                return
            await self.route_key(event)
            return
        await super().on_event(event)

    async def route_key(self, event: events.Key) -> None:
        # Tab between a form's fields moves focus now, not when the Tab has bubbled back up from
        # the field, so the keys after it in the same burst go to the next field
        if (event.key in ("tab", "shift+tab") and getattr(self.screen, "takes_text", False)
                and isinstance(self.focused, Input)):
            if event.key == "tab":
                self.screen.focus_next()
            else:
                self.screen.focus_previous()
            return
        # A key bound here (s, 3, enter on the queue, ...) acts now, before the next key of the
        # burst is read: Textual would only run the binding once the key had bubbled back up from
        # the focused widget, and by then the keys after it had gone to the old screen. Widgets
        # that take text get the key first, as always.
        if not self.typing() and type(self.focused).__name__ != "SelectOverlay":
            if await self._check_bindings(event.key, priority=True) or await self._check_bindings(event.key):
                return
        await super().on_event(event)

    def typing(self) -> bool:
        """True while keys are text: a text field has focus or a form screen is on top."""
        return getattr(self.screen, "takes_text", False) or isinstance(self.focused, (Input, TextArea))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in LETTER_ACTIONS and self.typing():
            return False
        return True

    def on_mount(self) -> None:
        # GPUs are sampled once the connection attempt is decided: from the daemon (which knows
        # which job owns each GPU) or, without one, from the local backend
        self.connect_daemon()

    # -- connection --

    @work(thread=True, exclusive=True, exit_on_error=False, group="connect")
    def connect_daemon(self) -> None:
        try:
            if self._client_given:
                info = self.client.ping()
                client = self.client
            else:
                from cosmos_tui.client import Client

                client = Client.connect(autostart=self.autostart)
                info = client.ping()
        except Exception as err:  # any failure to reach it: banner and retry
            self.post_message(DaemonLost(str(err) or type(err).__name__))
            return
        self.post_message(DaemonConnected(client, info))

    @on(DaemonConnected)
    def _connected(self, message: DaemonConnected) -> None:
        self.client = message.client
        if self.connection_error is not None and self.connection_error != "connecting":
            self.notify("reconnected to the daemon")
        self.connection_error = None
        self.connection_changed.publish(None)
        self.refresh_jobs()
        self.poll_gpus()

    @on(DaemonLost)
    def _lost(self, message: DaemonLost) -> None:
        self.connection_error = message.error
        self.connection_changed.publish(message.error)
        if not self.gpus:
            self.poll_gpus()
        if self._reconnect_timer is not None:
            self._reconnect_timer.stop()
        self._reconnect_timer = self.set_timer(self.reconnect_interval, self.connect_daemon)

    # -- polling the queue --

    def refresh_jobs(self) -> None:
        if self.client is not None and self.connection_error is None:
            self.poll_jobs()

    @work(thread=True, exclusive=True, exit_on_error=False, group="poll")
    def poll_jobs(self) -> None:
        try:
            jobs = self.client.jobs()
            queue = self.client.queue()
        except Exception as err:
            if _is_transport_error(err):
                self.post_message(DaemonLost(str(err) or type(err).__name__))
            else:
                self.post_message(ActionFailed("refresh", str(err)))
            return
        self.post_message(JobsRefreshed(jobs, queue))

    @on(JobsRefreshed)
    def _jobs_refreshed(self, message: JobsRefreshed) -> None:
        self.polls += 1
        before = self.jobs
        self.jobs = {j["id"]: j for j in message.jobs}
        if self.polls > 1:
            self._announce_ends(before, self.jobs)
        self.queue_info = message.queue or {}
        self.jobs_changed.publish(self.jobs)
        self._arm_poll()

    def _announce_ends(self, before: dict, now: dict) -> None:
        for jid, job in now.items():
            old = (before.get(jid) or {}).get("state")
            state = job.get("state")
            if old in ("queued", "running") and state in ENDED:
                severity = "information" if state == "done" else "warning"
                why = f": {job['error']}" if state == "failed" and job.get("error") else ""
                self.notify(f"job {jid} {state}{why}", title="job ended", severity=severity, markup=False)
                self.bell()
                self._desktop_notice(f"cosmos-tui: job {int(jid)} {ENDED[state]}")

    def _desktop_notice(self, text: str) -> None:
        """OSC 9 (a desktop notification) on terminals known to show it. `text` is built here
        from a job number and a fixed word, never from user text, and is checked once more."""
        if not osc9_supported() or not all(c.isalnum() or c in " :-" for c in text):
            return
        driver = getattr(self, "_driver", None)
        if driver is not None and not self.is_headless:
            driver.write(f"\x1b]9;{text}\x07")

    def _arm_poll(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
        if self.poll_interval > 0:
            self._poll_timer = self.set_timer(self.poll_interval, self.refresh_jobs)

    # -- GPUs --

    @work(thread=True, exclusive=True, exit_on_error=False, group="gpu-poll")
    def poll_gpus(self) -> None:
        gpus, source = None, None
        if self.client is not None and self.connection_error is None:
            try:
                gpus, source = self.client.gpus(), "daemon"
            except Exception:
                pass  # fall back to reading the GPUs ourselves
        if gpus is None:
            try:
                if self._local_gpu is None:
                    from cosmos_tui.gpu import gpu_backend

                    self._local_gpu = gpu_backend()
                gpus, source = self._local_gpu.list(), getattr(self._local_gpu, "kind", "local")
            except Exception as err:
                self.post_message(GpusSampled([], f"unavailable: {err}"))
                return
        self.post_message(GpusSampled(self._with_owners(gpus), source))

    def _with_owners(self, gpus: list[dict]) -> list[dict]:
        """Each GPU process joined to the engine (and job) it belongs to (runs in the worker:
        it reads /proc)."""
        from cosmos_tui.gpu import attribute

        engines: dict[int, int | None] = {}
        for e in (self.queue_info or {}).get("engines") or []:
            if e.get("pid"):
                engines[int(e["pid"])] = e.get("job")
        for j in list(self.jobs.values()):
            if j.get("state") == "running" and j.get("engine_pid"):
                engines[int(j["engine_pid"])] = j["id"]
        return [{**g, "processes": attribute(g["processes"], engines)} if g.get("processes") else g
                for g in gpus]

    def gpu_backend_kind(self) -> str | None:
        """nvml / demo / cpu: the daemon's backend, or ours when there is no daemon."""
        if self.gpu_source == "daemon":
            return (self.queue_info or {}).get("gpu_backend")
        return self.gpu_source

    @on(GpusSampled)
    def _gpus_sampled(self, message: GpusSampled) -> None:
        self.gpu_polls += 1
        self.gpus = message.gpus
        self.gpu_source = message.source
        self.gpu_sampled_at = now = self.clock()
        for g in message.gpus:
            hist = self.gpu_history.setdefault(g["index"], deque(maxlen=HISTORY))
            if g.get("mem_used") is not None or g.get("util") is not None:
                hist.append((now, g.get("mem_used"), g.get("util")))
        self.gpus_changed.publish(self.gpus)
        if self._gpu_timer is not None:
            self._gpu_timer.stop()
        if self.gpu_interval > 0:
            self._gpu_timer = self.set_timer(self.gpu_interval, self.poll_gpus)

    # -- queue actions: one thread worker per call, results come back as messages --

    @work(thread=True, exit_on_error=False, group="actions")
    def call_daemon(self, action: str, job: int | None, method: str, *args, **kwargs) -> None:
        if self.client is None:
            self.post_message(ActionFailed(action, "not connected to the daemon", job))
            return
        try:
            result = getattr(self.client, method)(*args, **kwargs)
        except Exception as err:
            if _is_transport_error(err):
                self.post_message(DaemonLost(str(err)))
            self.post_message(ActionFailed(action, str(err), job))
            return
        self.post_message(ActionDone(action, _done_text(action, job, result), job, result))

    @on(ActionDone)
    def _action_done(self, message: ActionDone) -> None:
        if message.text:
            self.notify(message.text)
        if message.action == "retry" and isinstance(message.result, int):
            self.selected_job = message.result
        self.refresh_jobs()

    @on(ActionFailed)
    def _action_failed(self, message: ActionFailed) -> None:
        form = self._waiting_submit_form()
        if message.action == "submit" and form is not None:
            form.refused(message.error)  # shown in the form, whose values stay for the fix
            return
        self.notify(message.error, title=f"{message.action} failed", severity="error")

    def _waiting_submit_form(self):
        """The submit form on top, waiting for the daemon's answer; None otherwise (closed with Escape)."""
        from cosmos_tui.screens.submit import SubmitScreen

        screen = self.screen
        return screen if isinstance(screen, SubmitScreen) and screen.waiting else None

    @on(SubmitRequested)
    def _submit_requested(self, message: SubmitRequested) -> None:
        self.submit_jobs(message.preset, message.specs)

    @work(thread=True, exit_on_error=False, group="actions")
    def submit_jobs(self, preset: str | None, specs: list[dict]) -> None:
        try:
            if len(specs) == 1:
                ids = [self.client.submit(specs[0], preset=preset)]
            else:
                ids = self.client.submit_batch(specs, preset=preset)
        except Exception as err:
            if _is_transport_error(err):
                self.post_message(DaemonLost(str(err)))
            self.post_message(ActionFailed("submit", str(err)))
            return
        self.post_message(JobsSubmitted(list(ids), preset))

    @on(JobsSubmitted)
    def _submitted(self, message: JobsSubmitted) -> None:
        form = self._waiting_submit_form()
        if form is not None:
            form.accepted()
        ids = ", ".join(map(str, message.ids))
        self.notify(f"queued job{'s' if len(message.ids) > 1 else ''} {ids}")
        if message.ids:
            self.selected_job = message.ids[0]
        self.refresh_jobs()

    # -- actions (also reachable from the palette) --

    def current_job(self) -> int | None:
        job = getattr(self.screen, "job_id", None)
        return job if job is not None else self.selected_job

    def _need_job(self) -> int | None:
        job = self.current_job()
        if job is None:
            self.notify("select a job first", severity="warning")
        return job

    def action_show_queue(self) -> None:
        self._show_mode("queue")

    def action_show_gpus(self) -> None:
        self._show_mode("gpus")

    def action_show_presets(self) -> None:
        self._show_mode("presets")

    def _show_mode(self, mode: str) -> None:
        # a detail screen pushed on the queue comes off first, so "1" always means the queue list
        if self.current_mode == mode and len(self.screen_stack) > 1:
            while len(self.screen_stack) > 1:
                self.pop_screen()
            return
        self.switch_mode(mode)

    def action_help(self) -> None:
        from cosmos_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_refresh(self) -> None:
        self.refresh_jobs()
        self.poll_gpus()

    def action_submit(self, preset: str | None = None) -> None:
        from cosmos_tui.screens.submit import SubmitScreen

        self.push_screen(SubmitScreen(preset=preset))

    def action_open_job(self) -> None:
        from cosmos_tui.screens.job import JobScreen

        job = self._need_job()
        if job is not None:
            self.push_screen(JobScreen(job))

    def action_cancel_job(self) -> None:
        job = self._need_job()
        if job is None:
            return
        if (self.jobs.get(job) or {}).get("state") != "running":
            self.call_daemon("cancel", job, "cancel", job)
            return
        from cosmos_tui.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self.call_daemon("cancel", job, "cancel", job)

        # a running job loses its progress: ask first
        self.push_screen(ConfirmScreen(f"Job {job} is running. Cancel it and lose its progress?"), answered)

    def action_retry_job(self) -> None:
        job = self._need_job()
        if job is not None:
            self.call_daemon("retry", job, "retry", job)

    def action_toggle_pause(self) -> None:
        if self.queue_info.get("paused"):
            self.call_daemon("resume", None, "resume")
        else:
            self.call_daemon("pause", None, "pause")

    def action_move_up(self) -> None:
        self._move(-1)

    def action_move_down(self) -> None:
        self._move(1)

    def _move(self, offset: int) -> None:
        job = self._need_job()
        if job is not None:
            self.call_daemon("move", job, "move", job, offset)

    def action_cycle_filter(self) -> None:
        screen = self._queue_screen()
        if screen is not None:
            screen.cycle_filter()

    def action_find_jobs(self) -> None:
        screen = self._queue_screen()
        if screen is not None and self.screen is screen:
            screen.open_find()

    def action_toggle_hold(self) -> None:
        job = self._need_job()
        if job is None:
            return
        if (self.jobs.get(job) or {}).get("held"):
            self.call_daemon("release", job, "release", job)
        else:
            self.call_daemon("hold", job, "hold", job)

    def action_remove_job(self) -> None:
        job = self._need_job()
        if job is None:
            return
        state = (self.jobs.get(job) or {}).get("state")
        if state not in ENDED:
            self.notify(f"job {job} is {state}; only finished, failed, cancelled or interrupted jobs can be "
                        "removed (cancel it first)", severity="warning")
            return
        self._confirm(f"Remove job {job} ({state}) from the list? Its output files stay on disk.",
                      lambda: self.call_daemon("remove", job, "remove", [job]))

    def action_clean_jobs(self) -> None:
        ended = sorted(j for j, job in self.jobs.items() if job.get("state") in ENDED)
        if not ended:
            self.notify("no finished jobs to remove", severity="information")
            return
        self._confirm(f"Remove all {len(ended)} finished job(s) (done, failed, cancelled, interrupted) from "
                      "the list? Their output files stay on disk.", lambda: self.call_daemon("clean", None, "clean"))

    def _confirm(self, question: str, then: Callable[[], None]) -> None:
        from cosmos_tui.screens.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.push_screen(ConfirmScreen(question), answered)

    def action_critic(self) -> None:
        from cosmos_tui.screens.critic import CriticScreen

        job = self._need_job()
        if job is not None:
            self.push_screen(CriticScreen(job))

    def action_play(self) -> None:
        job = self._need_job()
        if job is None:
            return
        path = images.first_video(self.jobs.get(job, {}).get("outputs"))
        if path is None:
            self.notify(f"job {job} has no video on disk yet", severity="warning")
            return
        self.play_video(path)

    def play_video(self, path: str) -> None:
        mpv = shutil.which("mpv")
        if mpv is None:
            self.notify(f"mpv is not installed; the video is {path}", severity="warning")
            return
        with self.suspend():
            subprocess.run([mpv, *images.mpv_video_output(self.image_mode), path], check=False)

    def action_search_log(self) -> None:
        action = getattr(self.screen, "action_search", None)
        if action is not None:
            action()

    def _presets_action(self, name: str) -> None:
        if not isinstance(self.screen, PresetsScreen):
            self.switch_mode("presets")
            return
        getattr(self.screen, name)()

    def action_edit_preset(self) -> None:
        self._presets_action("edit")

    def action_duplicate_preset(self) -> None:
        self._presets_action("duplicate")

    def action_submit_preset(self) -> None:
        self._presets_action("queue_from")

    def _queue_screen(self) -> QueueScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, QueueScreen):
                return screen
        return None


def _done_text(action: str, job: int | None, result: Any) -> str:
    if action == "cancel":
        return f"job {job} cancelled"
    if action == "retry":
        return f"job {job} queued again as job {result}"
    if action == "move":
        return f"job {job} is now number {result} in the queue"
    if action == "pause":
        return "queue paused; running jobs finish, nothing new starts"
    if action == "resume":
        return "queue resumed"
    if action == "hold":
        return f"job {job} held: it keeps its place and is passed over until released"
    if action == "release":
        return f"job {job} released"
    if action == "remove":
        return f"job {job} removed from the list"
    if action == "clean":
        n = result if isinstance(result, int) else len(result) if isinstance(result, (list, tuple)) else None
        return f"removed {n} finished job(s) from the list" if n is not None else "finished jobs removed"
    return ""


def run_app(**options) -> None:
    """Open the TUI. Options go to CosmosApp (client, image_mode, poll_interval, ...)."""
    # textual-image asks the terminal what it supports; that must happen before Textual takes
    # over stdin, hence here and not in the widget.
    mode = images.image_mode(options.get("image_mode") or os.environ.get("COSMOS_TUI_IMAGES"))
    options["image_mode"] = mode
    if mode != "none":
        try:
            images.widget_class(mode)
        except Exception:
            options["image_mode"] = "none"
    CosmosApp(**options).run()
