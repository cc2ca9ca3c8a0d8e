"""One job in detail: progress, step-time and memory plots, the log, the spec, outputs, frames."""

from __future__ import annotations


from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Sparkline, Static, TabbedContent, TabPane

from cosmos_tui import images
from cosmos_tui.messages import EventsFetched
from cosmos_tui.widgets import format as fmt
from cosmos_tui.widgets import phase_text, spec_view
from cosmos_tui.widgets.banner import ConnectionBanner, DemoBanner
from cosmos_tui.widgets.contact_sheet import ContactSheet
from cosmos_tui.widgets.log_view import LogView
from cosmos_tui.widgets.quiet import QuietBackground, QuietStatic, set_data

MAX_POINTS = 400  # plotted samples; older ones scroll off


def head_line(job: dict) -> str:
    bits = [f"job {job['id']}", job.get("mode") or "?", job.get("preset") or "no preset", job.get("state") or "?"]
    if job.get("attempt_of"):
        bits.append(f"retry of {job['attempt_of']}")
    return " · ".join(bits)


def progress_text(job: dict, clock, gpu_backend: str | None = None) -> str:
    frac = phase_text.overall(job, fmt.elapsed(job, clock))  # the queue row's bar says the same
    pct = f"{int(frac * 100)}%" if frac is not None else "-"
    lines = [
        f"{fmt.bar(frac, 30)} {pct}",
        fmt.units_line(job),
        *([f"phase: {phase_text.phase_line(job)}"] if phase_text.phase_line(job) else []),
        f"ETA {fmt.eta(job)} · {_sps(job)} · elapsed {fmt.duration(fmt.elapsed(job, clock))} · "
        f"GPUs {fmt.gpus_cell(job, gpu_backend)} · peak {fmt.gib(job.get('peak_mem'), 2)}",
    ]
    if job.get("wait_reason"):
        lines.append(f"waiting: {job['wait_reason']}")
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    return "\n".join(lines)


def _sps(job: dict) -> str:
    sps = job.get("sec_per_step")
    return f"{sps:.2f} s/step" if sps else "- s/step"


def outputs_text(job: dict) -> str:
    outs = job.get("outputs") or []
    lines = [f"{o.get('kind', 'file'):>8}  {o.get('path')}" for o in outs]
    lines.append(f"{'log':>8}  {job.get('log_path') or '-'}")
    return "\n".join(lines) if outs else "no outputs yet\n" + lines[-1]


def spec_text(job: dict) -> str:
    return spec_view.spec_text(job.get("spec") or {})


class JobScreen(QuietBackground, Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("a", "tab('tab-progress')", "Progress", show=False),
        Binding("l", "tab('tab-log')", "Log"),
        Binding("i", "tab('tab-spec')", "Spec"),
        Binding("o", "tab('tab-frames')", "Frames"),
        Binding("m", "app.play", "Play"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("c", "app.cancel_job", "Cancel"),
        Binding("r", "app.retry_job", "Retry", show=False),
        Binding("v", "app.critic", "Critic", show=False),
    ]

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.last_seq = 0
        self.step_seconds: list[float] = []
        self.final_passes = 0  # the sampler's clean pass after the last step: timed, but not a step
        self.memory_gib: list[float] = []
        self.phase_events: list[dict] = []
        self._fetching = False

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield DemoBanner()
        yield QuietStatic(f"job {self.job_id}", id="job-head", markup=False)
        with TabbedContent(id="job-tabs"):
            with TabPane("Progress", id="tab-progress"):
                with VerticalScroll():
                    yield QuietStatic(id="job-progress", markup=False)
                    yield QuietStatic(id="job-phases", markup=False)
                    yield QuietStatic("seconds per step", classes="plot-label", markup=False)
                    yield Sparkline([], id="spark-step")
                    mem_label = QuietStatic("GPU memory allocated (GiB)", classes="plot-label", markup=False)
                    mem_plot = Sparkline([], id="spark-mem")
                    mem_label.display = mem_plot.display = False  # until a GPU memory sample arrives
                    yield mem_label
                    yield mem_plot
                    yield QuietStatic(id="job-outputs", markup=False)
            with TabPane("Log", id="tab-log"):
                yield LogView(id="job-log")
                yield Input(placeholder="search the log (enter: next, escape: close)", id="log-search")
                yield QuietStatic(id="log-status", markup=False)
            with TabPane("Spec", id="tab-spec"):
                with VerticalScroll():
                    yield QuietStatic(id="job-spec", markup=False)
            with TabPane("Frames", id="tab-frames"):
                with VerticalScroll():
                    yield ContactSheet(id="job-frames")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#log-search", Input).display = False
        self.query_one("#job-phases", Static).display = False  # until the job reports a phase
        self.app.jobs_changed.subscribe(self, self._jobs_changed)
        self._jobs_changed(self.app.jobs)

    @property
    def job(self) -> dict | None:
        return self.app.jobs.get(self.job_id)

    def _jobs_changed(self, jobs: dict) -> None:
        job = jobs.get(self.job_id)
        if job is None:
            return
        self.query_one("#job-head", Static).update(head_line(job))
        backend = (self.app.queue_info or {}).get("gpu_backend")
        self.query_one("#job-progress", Static).update(progress_text(job, self.app.clock, backend))
        self.query_one("#job-outputs", Static).update(outputs_text(job))
        self.query_one("#job-spec", Static).update(spec_text(job))
        self.query_one(LogView).set_path(job.get("log_path"))
        if job.get("state") == "done":
            self.query_one(ContactSheet).show(images.first_video(job.get("outputs")))
        if not self._fetching and (job.get("state") == "running" or self.last_seq == 0 or
                                   job.get("state") in ("done", "failed", "cancelled")):
            self._fetching = True
            self.fetch_events(self.last_seq)
        self._update_log_status()

    @work(thread=True, exclusive=True, exit_on_error=False, group="events")
    def fetch_events(self, after: int) -> None:
        try:
            events = self.app.client.events(self.job_id, after=after)
        except Exception:
            events = []
        self.post_message(EventsFetched(self.job_id, events))

    @on(EventsFetched)
    def _events_fetched(self, message: EventsFetched) -> None:
        message.stop()
        self._fetching = False
        for ev in message.events:
            self.last_seq = max(self.last_seq, ev.get("seq") or 0)
            kind = ev.get("event")
            if kind == "step" and isinstance(ev.get("seconds"), (int, float)):
                self.step_seconds.append(float(ev["seconds"]))
                self.final_passes += bool(ev.get("final"))
            elif kind == "memory":
                value = ev.get("allocated", ev.get("peak"))
                if isinstance(value, (int, float)):
                    self.memory_gib.append(value / 1024**3)
        self.phase_events += [e for e in message.events if e.get("event") == "phase"]
        phases = self.query_one("#job-phases", Static)
        phases.update(phase_text.summary(self.phase_events))
        phases.display = bool(self.phase_events)
        if message.events:
            set_data(self.query_one("#spark-step", Sparkline), self.step_seconds[-MAX_POINTS:])
            set_data(self.query_one("#spark-mem", Sparkline), self.memory_gib[-MAX_POINTS:])
        labels = self.query(".plot-label").results(Static)
        step_label, mem_label = list(labels)[:2]
        if self.step_seconds:
            s = self.step_seconds
            counted = f"{len(s) - self.final_passes} steps" + (
                f" + {self.final_passes} final pass" if self.final_passes == 1 else
                f" + {self.final_passes} final passes" if self.final_passes else "")
            step_label.update(f"seconds per step: last {s[-1]:.2f}, min {min(s):.2f}, max {max(s):.2f} ({counted})")
        if self.memory_gib:
            mem_label.update(f"GPU memory allocated: last {self.memory_gib[-1]:.2f} GiB, "
                             f"max {max(self.memory_gib):.2f} GiB")
        # a job on the CPU reports no GPU memory: no empty plot for it (shown from the first sample on)
        mem_label.display = self.query_one("#spark-mem", Sparkline).display = bool(self.memory_gib)

    # -- tabs and log search --

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_search(self) -> None:
        self.action_tab("tab-log")
        box = self.query_one("#log-search", Input)
        box.display = True
        self.set_focus(box)  # now: the keys after `/` in one burst are the search text

    @on(Input.Submitted, "#log-search")
    def _search(self, event: Input.Submitted) -> None:
        log = self.query_one(LogView)
        found = log.find(event.value)
        if event.value and found is None:
            self.notify(f"{event.value!r} not found in the log", severity="warning")
        self._update_log_status()

    def on_key(self, event) -> None:
        box = self.query_one("#log-search", Input)
        if event.key == "escape" and box.has_focus:
            box.display = False
            self.query_one(LogView).focus()
            event.stop()
            event.prevent_default()

    @on(LogView.Updated)
    def _update_log_status(self) -> None:
        self.query_one("#log-status", Static).update(self.query_one(LogView).status())
