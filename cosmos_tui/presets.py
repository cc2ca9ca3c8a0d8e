"""Presets: named job setups stored as TOML, one file each.

File format (the CLI flags as data)::

    name = "2b-480p10"                 # must equal the file name without .toml
    description = "one line for lists"
    [spec]                             # GenerationSpec fields (engine/spec.py), the flag names
    model_size = "2B"
    resolution = "480"
    fps = 10

Only `name`, `description` and the `[spec]` table are allowed at the top level, and `[spec]` takes
only GenerationSpec fields; anything else is rejected naming the key and the file. A preset lists
only what it changes: fields it leaves out take GenerationSpec's defaults when loaded.

Where presets live:
  * shipped: the repository's `presets/` directory, or `cosmos_tui/presets/` when installed as
    package data, or $COSMOS_TUI_PRESETS_DIR if set;
  * user: `<config dir>/presets`, the config dir being $COSMOS_TUI_CONFIG if set, else
    platformdirs.user_config_dir("cosmos-tui").
A user preset with the name of a shipped one shadows it.

Torch-free: the TUI lists and validates presets without loading the engine.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmos_tui.queue.resolve import clean_text
from engine.spec import GenerationSpec, SpecError, not_utf8, spec_from_dict

TOP_LEVEL_KEYS = ("name", "description", "spec")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PresetError(ValueError):
    """A preset that can't be found, read or validated; the message names the file and the key."""


@dataclass
class Preset:
    name: str
    description: str
    path: Path
    source: str  # "shipped" | "user"
    spec: GenerationSpec | None  # None when the file is invalid (see `error`)
    overrides: dict[str, Any] = field(default_factory=dict)  # the [spec] table as written
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# locations


def config_dir() -> Path:
    env = os.environ.get("COSMOS_TUI_CONFIG")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("cosmos-tui"))


def user_preset_dir() -> Path:
    return config_dir() / "presets"


def shipped_preset_dir() -> Path:
    """The first of: $COSMOS_TUI_PRESETS_DIR, the package's presets/ (installed wheel), the
    repository's presets/ (a checkout or an editable install)."""
    env = os.environ.get("COSMOS_TUI_PRESETS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets", here.parent / "presets"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    return here.parent / "presets"


def preset_paths() -> dict[str, Path]:
    """name -> the file that wins for that name (user over shipped), sorted by name."""
    found: dict[str, Path] = {}
    for directory in (shipped_preset_dir(), user_preset_dir()):  # later wins
        if directory.is_dir():
            for p in directory.glob("*.toml"):
                if p.is_file() and not p.name.startswith("."):
                    found[p.stem] = p
    return dict(sorted(found.items()))


def preset_source(path: Path) -> str:
    """"user" for a file in the user's preset folder, else "shipped"."""
    try:
        path.resolve().relative_to(user_preset_dir().resolve())
        return "user"
    except ValueError:
        return "shipped"


# ---------------------------------------------------------------------------------------------
# reading


def _parse_file(path: Path) -> Preset:
    import tomlkit
    from tomlkit.exceptions import ParseError

    # a file name's undecodable bytes arrive as lone surrogates, which no terminal or JSON encoder takes
    where = clean_text(path.name)
    if where != path.name:  # never a name to submit by
        raise PresetError(f"{where}: the file name is not UTF-8; rename the file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PresetError(f"{path}: no such preset file") from None
    except OSError as err:
        raise PresetError(f"{where}: could not be read ({err.strerror})") from None
    except UnicodeDecodeError as err:  # TOML is UTF-8 by definition; a stray file must not take the list down
        raise PresetError(f"{where}: {not_utf8(err)}") from None
    try:
        data = tomlkit.parse(text).unwrap()
    except ParseError as err:
        raise PresetError(f"{where}: not valid TOML ({err})") from None
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        hint = ""
        if unknown[0] in GenerationSpec.model_fields:
            hint = f"; job settings go under [spec] (move {unknown[0]} below the [spec] line)"
        raise PresetError(f"{where}: {unknown[0]}: unknown top-level key; allowed are name, description, [spec]{hint}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or name != path.stem:
        raise PresetError(f"{where}: name: {name!r} differs from the file name; set name = {path.stem!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PresetError(f"{where}: description: must be a string")
    overrides = data.get("spec", {})
    if not isinstance(overrides, dict):
        raise PresetError(f"{where}: spec: must be a table ([spec] followed by key = value lines)")
    try:
        spec = spec_from_dict(overrides, source=where)
    except SpecError as err:
        raise PresetError(str(err)) from None
    return Preset(name=name, description=description, path=path, source=preset_source(path), spec=spec,
                  overrides=overrides)


def load_preset(name_or_path: str | os.PathLike) -> Preset:
    """A preset by name (user presets first) or by the path of a .toml file. Raises PresetError."""
    text = str(name_or_path)
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text
    if looks_like_path:
        return _parse_file(Path(text))
    paths = preset_paths()
    if text not in paths:
        known = ", ".join(paths) or "none"
        raise PresetError(f"preset {text!r} not found; known presets: {known}")
    return _parse_file(paths[text])


def list_presets() -> list[Preset]:
    """Every preset that wins by name, sorted. A broken file is listed with `spec` None and its
    `error` set rather than hidden, so the TUI can show what to fix."""
    out = []
    for name, path in preset_paths().items():
        try:
            out.append(_parse_file(path))
        except PresetError as err:
            out.append(Preset(name=clean_text(name), description="", path=path, source=preset_source(path), spec=None,
                              error=str(err)))
    return out


# ---------------------------------------------------------------------------------------------
# writing


def spec_overrides(spec: GenerationSpec) -> dict[str, Any]:
    """The fields of `spec` that differ from GenerationSpec's defaults, in field order."""
    return spec.model_dump(mode="json", exclude_defaults=True)


def preset_toml(name: str, spec: GenerationSpec, description: str = "") -> str:
    """The TOML text of a preset. Only non-default fields are written, so a preset keeps following
    the defaults for everything it does not set."""
    import tomlkit

    doc = tomlkit.document()
    doc.add("name", name)
    doc.add("description", description)
    table = tomlkit.table()
    for key, value in spec_overrides(spec).items():
        table.add(key, value)
    doc.add("spec", table)
    return tomlkit.dumps(doc)


def save_user_preset(name: str, spec: GenerationSpec | dict, description: str = "") -> Path:
    """Write (or replace) a user preset; returns its path. Atomic: written beside it, then renamed."""
    if not NAME_RE.match(name or ""):
        raise PresetError(
            f"name: {name!r} is not a usable preset name; use letters, digits, '.', '_' or '-' "
            "(up to 64, starting with a letter or digit)"
        )
    if isinstance(spec, dict):
        try:
            spec = spec_from_dict(spec, source=f"{name}.toml")
        except SpecError as err:
            raise PresetError(str(err)) from None
    directory = user_preset_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(preset_toml(name, spec, description))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def delete_user_preset(name: str) -> bool:
    """Remove a user preset (a shipped one of the same name shows again). True if one was removed."""
    path = user_preset_dir() / f"{name}.toml"
    if path.is_file():
        path.unlink()
        return True
    return False
