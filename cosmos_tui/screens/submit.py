"""Queue jobs from a preset, with per-job overrides: prompt, input path, seed and N copies.

N queues N jobs with seeds seed, seed+1, ... (a quick sweep); a best-of-N preset's own
num_generations is a preset setting, edited in the preset editor. Blank fields keep the preset's
value. Everything is validated against the preset's spec before it goes to the daemon, with the
error under the field.
"""

from __future__ import annotations

import re

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from cosmos_tui.messages import SubmitRequested
from cosmos_tui.screens.form import FormScreen
from cosmos_tui.screens.preset_editor import errors_by_field
from cosmos_tui.widgets.quiet import QuietStatic

MAX_COPIES = 100
FIELDS = ("prompt", "input_path", "seed", "count")
# the field a daemon refusal belongs under, by the name its sentence starts with
REFUSAL_FIELDS = {"prompt": "prompt", "input_path": "input_path", "num_conditional_frames": "input_path",
                  "seed": "seed"}


def build_specs(preset_spec: dict, prompt: str, input_path: str, seed: str, count: str) -> tuple[list[dict], dict]:
    """(specs, errors): one override dict per job, or errors by field name."""
    from engine.spec import SpecError, spec_from_dict

    errors: dict[str, list[str]] = {}
    overrides: dict = {}
    if prompt.strip():
        overrides["prompt"] = prompt
    if input_path.strip():
        overrides["input_path"] = input_path.strip()
    base_seed = preset_spec.get("seed", 0)
    if seed.strip():
        try:
            base_seed = int(seed)
            overrides["seed"] = base_seed
        except ValueError:
            errors["seed"] = [f"{seed!r} is not a whole number"]
    n = 1
    if count.strip():
        try:
            n = int(count)
            if not 1 <= n <= MAX_COPIES:
                raise ValueError
        except ValueError:
            errors["count"] = [f"N must be a whole number from 1 to {MAX_COPIES}"]
    if not errors:
        try:
            spec_from_dict({**preset_spec, **overrides})
        except SpecError as err:
            errors = errors_by_field(str(err))
    if errors:
        return [], errors
    if n == 1:
        return [overrides], {}
    return [{**overrides, "seed": base_seed + i} for i in range(n)], {}


class SubmitScreen(FormScreen, ModalScreen):
    FIRST_FIELD = "#submit-prompt"
    AUTO_FOCUS = "#submit-prompt"
    BINDINGS = [
        Binding("escape", "dismiss_form", "Cancel"),
        Binding("ctrl+s", "submit", "Queue", priority=True),
    ]

    def __init__(self, preset: str | None = None) -> None:
        super().__init__()
        self.initial = preset
        self.presets: dict = {}
        self.errors: dict = {}
        self.waiting = False  # a submission is with the daemon
        self._hold_keys()

    def compose(self) -> ComposeResult:
        from cosmos_tui.presets import list_presets

        self.presets = {p.name: p for p in list_presets() if p.spec is not None}
        names = list(self.presets)
        first = self.initial if self.initial in self.presets else (
            "tiny-cpu" if "tiny-cpu" in self.presets else (names[0] if names else None))
        with Vertical(id="submit-box"):
            yield QuietStatic("Queue jobs from a preset (blank = the preset's value)", id="submit-head")
            with Horizontal(classes="form-row"):
                yield Label("preset", classes="form-label")
                yield Select([(n, n) for n in names], value=first if first else Select.NULL, allow_blank=False,
                             id="submit-preset", compact=True)
            for field, label in (("prompt", "prompt"), ("input_path", "input path"), ("seed", "seed"),
                                 ("count", "N jobs")):
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label")
                    yield Input(id=f"submit-{field}", compact=True)
                yield QuietStatic(id=f"submit-err-{field}", classes="field-error", markup=False)
            yield QuietStatic(id="submit-err-spec", classes="field-error", markup=False)
            with Horizontal(id="submit-buttons"):
                yield Button("Queue (ctrl+s)", variant="primary", id="submit-go", compact=True)
                yield Button("Cancel", id="submit-cancel", compact=True)

    async def on_mount(self) -> None:
        self.query(".field-error").set(display=False)
        self._placeholders()
        await self.release_keys()

    @property
    def preset_name(self) -> str | None:
        value = self.query_one("#submit-preset", Select).value
        return value if isinstance(value, str) else None

    def _placeholders(self) -> None:
        preset = self.presets.get(self.preset_name)
        if preset is None:
            return
        spec = preset.spec.model_dump()
        self.query_one("#submit-prompt", Input).placeholder = spec.get("prompt") or "(empty prompt)"
        self.query_one("#submit-input_path", Input).placeholder = spec.get("input_path") or ""
        self.query_one("#submit-seed", Input).placeholder = str(spec.get("seed", 0))
        self.query_one("#submit-count", Input).placeholder = "1"

    @on(Select.Changed, "#submit-preset")
    def _preset_changed(self) -> None:
        self._placeholders()
        self.check()

    @on(Input.Changed)
    def _input_changed(self) -> None:
        self.check()

    def check(self) -> list[dict]:
        preset = self.presets.get(self.preset_name)
        if preset is None:
            self.errors = {"spec": ["choose a preset"]}
            specs = []
        else:
            value = {f: self.query_one(f"#submit-{f}", Input).value for f in FIELDS}
            specs, self.errors = build_specs(preset.spec.model_dump(), value["prompt"], value["input_path"],
                                             value["seed"], value["count"])
        for field in (*FIELDS, "spec"):
            msgs = list(self.errors.get(field) or [])
            if field == "spec":  # errors about fields this form has no box for
                msgs += [f"{k}: {'; '.join(v)}" for k, v in self.errors.items() if k not in (*FIELDS, "spec")]
            self._show(field, "; ".join(msgs))
        return specs

    def action_submit(self) -> None:
        if self.waiting:
            return  # one submission at a time: the daemon has not answered the last one
        specs = self.check()
        if not specs:
            self.notify("fix the fields marked in the form first", severity="error")
            return
        # the form stays until the daemon answers: what only it can check (the input on disk, checkpoints,
        # GPU memory, an empty prompt with the guardrail on) comes back under the field, the values kept
        self.waiting = True
        self.query_one("#submit-go", Button).disabled = True
        self._show("spec", "queueing…")
        self.app.post_message(SubmitRequested(self.preset_name, specs))

    def accepted(self) -> None:
        """The daemon queued the jobs (the app calls this on JobsSubmitted)."""
        self.dismiss(self.preset_name)

    def refused(self, error: str) -> None:
        """The daemon refused the submission: its one sentence goes under the field it names (or under the
        form when it names none of the form's fields), and the form stays as the user filled it in."""
        self.waiting = False
        self.query_one("#submit-go", Button).disabled = False
        self._show("spec", "")
        text = re.sub(r"^item \d+: ", "", error.strip())  # N copies are one batch; they fail alike
        named = text.split(":", 1)[0]
        self._show(REFUSAL_FIELDS.get(named, "spec"), text)

    def _show(self, field: str, text: str) -> None:
        box = self.query_one(f"#submit-err-{field}", Static)
        box.update("  ↳ " + text if text else "")
        box.display = bool(text)

    def action_dismiss_form(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _enter(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#submit-go")
    def _go(self) -> None:
        self.action_submit()

    @on(Button.Pressed, "#submit-cancel")
    def _cancel(self) -> None:
        self.dismiss(None)
