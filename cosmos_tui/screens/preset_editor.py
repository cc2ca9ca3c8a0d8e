"""A preset as a form: one row per GenerationSpec field, validated on every change, with the
one-line error shown under the field it is about. Saving writes a user preset."""

from __future__ import annotations

import typing

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Select, Static

from cosmos_tui.screens.form import FormScreen
from cosmos_tui.widgets.quiet import QuietStatic
from engine.spec import GenerationSpec, SpecError, offered_choices, spec_from_dict

LONG_TEXT = ("prompt", "negative_prompt")


def field_kind(name: str):
    """('choice', values) | ('bool', None) | ('int'|'float'|'str'|'optional-str', None)."""
    ann = GenerationSpec.model_fields[name].annotation
    if typing.get_origin(ann) is typing.Literal:
        return "choice", offered_choices(name, typing.get_args(ann))
    if ann is bool:
        return "bool", None
    if ann is int:
        return "int", None
    if ann is float:
        return "float", None
    if typing.get_origin(ann) is typing.Union and type(None) in typing.get_args(ann):
        return "optional-str", None
    return "str", None


def parse_value(name: str, text: str):
    """Text from an Input as the value pydantic should see; text that is not a number stays text,
    so the error message comes from the spec and names the field."""
    kind, _ = field_kind(name)
    text = text.strip() if kind != "str" else text
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return text
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "optional-str":
        return text or None
    return text


def errors_by_field(message: str) -> dict[str, list[str]]:
    """`format_validation_error` lines ('[source: ]field: message') grouped by field. A model-level
    error reads 'spec: natten: ...'; it goes to the field it names."""
    out: dict[str, list[str]] = {}
    fields = GenerationSpec.model_fields
    for line in message.splitlines():
        parts = [p.strip() for p in line.split(":")]
        # drop a leading "<preset>.toml" source
        if parts and parts[0].endswith(".toml"):
            parts = parts[1:]
        field = parts[0] if parts else "spec"
        rest = parts[1:]
        if field not in fields and rest and rest[0] in fields:
            field, rest = rest[0], rest[1:]
        out.setdefault(field if field in fields else "spec", []).append(": ".join(rest) or line)
    return out


class PresetEditor(FormScreen, Screen[str | None]):
    FIRST_FIELD = "#in-name"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, preset, name: str | None = None) -> None:
        super().__init__()
        self.preset = preset
        self.initial_name = name or preset.name
        self.values: dict = dict(preset.spec.model_dump(mode="json")) if preset.spec else dict(preset.overrides)
        self.errors: dict[str, list[str]] = {}
        self.pristine: tuple | None = None
        self._hold_keys()

    def compose(self) -> ComposeResult:
        # the form's ~40 rows mount in on_mount, so this line shows while they do
        yield QuietStatic(f"loading the editor for {self.preset.name}…", id="editor-head", markup=False)
        yield VerticalScroll(id="editor-form")
        yield Footer()

    def _rows(self) -> list:
        rows = self._row("name", Input(self.initial_name, id="in-name", compact=True))
        rows += self._row("description", Input(self.preset.description or "", id="in-description", compact=True))
        for name in GenerationSpec.model_fields:
            rows += self._row(name, self._widget(name))
        return rows + [QuietStatic(id="err-spec", classes="field-error", markup=False)]

    def _row(self, name: str, widget) -> list:
        return [Horizontal(Label(name, classes="form-label"), widget, classes="form-row"),
                QuietStatic(id=f"err-{name}", classes="field-error", markup=False)]

    def _widget(self, name: str):
        kind, choices = field_kind(name)
        value = self.values.get(name, GenerationSpec.model_fields[name].default)
        wid = f"in-{name}"
        if kind == "choice":
            return Select([(str(c), c) for c in choices], value=value if value in choices else Select.NULL,
                          allow_blank=False, id=wid, compact=True)
        if kind == "bool":
            # a Select of words, not a Switch: a switch's state is only colour, lost with NO_COLOR
            return Select([("true", True), ("false", False)], value=bool(value), allow_blank=False, id=wid,
                          compact=True)
        return Input("" if value is None else str(value), id=wid, compact=True)

    async def on_mount(self) -> None:
        await self.query_one("#editor-form").mount_all(self._rows())
        self.query(".field-error").set(display=False)
        self.validate()
        self.pristine = self._snapshot()
        self.query_one("#editor-head", Static).update(
            f"editing {self.preset.name} → saved as a user preset  (ctrl+s save, escape cancel)")
        await self.release_keys()

    def _snapshot(self) -> tuple:
        return (self.query_one("#in-name", Input).value, self.query_one("#in-description", Input).value,
                self.form_values())

    @property
    def dirty(self) -> bool:
        return self.pristine is not None and self._snapshot() != self.pristine

    def form_values(self) -> dict:
        out = {}
        for name in GenerationSpec.model_fields:
            w = self.query_one(f"#in-{name}")
            if isinstance(w, Select):
                out[name] = w.value
            else:
                out[name] = parse_value(name, w.value)
        return out

    def validate(self) -> GenerationSpec | None:
        from cosmos_tui.presets import NAME_RE

        spec, errors = None, {}
        try:
            spec = spec_from_dict(self.form_values())
        except SpecError as err:
            errors = errors_by_field(str(err))
        name = self.query_one("#in-name", Input).value
        if not NAME_RE.match(name):
            errors["name"] = ["use letters, digits, '.', '_' or '-' (up to 64, starting with a letter or digit)"]
        for field in ["name", "description", "spec", *GenerationSpec.model_fields]:
            box = self.query_one(f"#err-{field}", Static)
            msgs = errors.get(field)
            box.update("  ↳ " + "; ".join(msgs) if msgs else "")
            box.display = bool(msgs)
        self.errors = errors
        return spec if not errors else None

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        if self.pristine is not None:
            self.validate()

    def action_save(self) -> None:
        from cosmos_tui.presets import preset_paths, preset_source

        if self.pristine is None:  # still loading
            return
        spec = self.validate()
        if spec is None:
            self.notify("fix the fields marked below first", severity="error")
            return
        name = self.query_one("#in-name", Input).value
        target = preset_paths().get(name)
        editing_it = self.preset.source == "user" and name == self.preset.name
        if target is not None and preset_source(target) == "user" and not editing_it:
            # a duplicate's "-copy" name, or a rename, that lands on another preset of the user's: ask first
            from cosmos_tui.screens.confirm import ConfirmScreen

            self.app.push_screen(ConfirmScreen(f"Overwrite your preset {name}?"),
                                 lambda yes: self._write(name, spec) if yes else None)
            return
        self._write(name, spec)

    def _write(self, name: str, spec) -> None:
        from cosmos_tui.presets import PresetError, save_user_preset

        try:
            path = save_user_preset(name, spec, self.query_one("#in-description", Input).value)
        except PresetError as err:
            self.notify(str(err), severity="error")
            return
        self.notify(f"saved {path}")
        self.dismiss(name)

    def action_cancel(self) -> None:
        if not self.dirty:
            self.dismiss(None)
            return
        from cosmos_tui.screens.confirm import ConfirmScreen

        def answered(discard: bool | None) -> None:
            if discard:
                self.dismiss(None)

        self.app.push_screen(ConfirmScreen(f"Discard your edits to {self.preset.name}?"), answered)

