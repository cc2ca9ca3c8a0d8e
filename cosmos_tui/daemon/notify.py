"""The notification hook: a command the daemon runs when a job ends (pueue's `callback`).

Configured in `<config dir>/daemon.toml` (the config dir is $COSMOS_TUI_CONFIG, else the user
config dir, as for presets):

    [notify]
    command = ["notify-send", "cosmos-tui: job {id} {state}", "{prompt}"]   # or one string, split like a shell
    on = ["done", "failed"]      # which ends run it (default); also "cancelled", "interrupted"
    timeout_s = 60               # then it is killed

Fields: {id} {state} {reason} {error} {output} (the first output path) {prompt} {preset}
{log} (the job's log file); `{{` and `}}` are literal braces. No shell is involved: the template
is split into argv first and each field is substituted inside one argv item, so a prompt with
quotes, `;` or `$(...)` stays one argument of text. The same values are in the environment as
COSMOS_TUI_JOB_ID, COSMOS_TUI_JOB_STATE, ... (COSMOS_TUI_JOB_<FIELD>). A hook that fails, hangs or
is missing is logged to daemon.log; the job and the queue are not affected. It runs in the
cosmos-tui home directory, in a session of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("id", "state", "reason", "error", "output", "prompt", "preset", "log")
ENDS = ("done", "failed", "cancelled", "interrupted")
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


class HookConfigError(ValueError):
    """daemon.toml's [notify] table is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class Hook:
    argv: tuple[str, ...]  # the template, already split
    on: tuple[str, ...] = ("done", "failed")
    timeout_s: float = 60.0


def config_path() -> Path:
    from cosmos_tui.presets import config_dir

    return config_dir() / "daemon.toml"


def load_hook(path: Path | None = None) -> Hook | None:
    """The configured hook, None when there is none; HookConfigError when it is wrong."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise HookConfigError(f"{path}: cannot be read as TOML ({err}); fix or remove the file") from None
    table = data.get("notify")
    if table is None:
        return None
    where = f"{path} [notify]"
    if not isinstance(table, dict):
        raise HookConfigError(f"{where}: expected a table with a `command`")
    unknown = sorted(set(table) - {"command", "on", "timeout_s"})
    if unknown:
        raise HookConfigError(f"{where}: unknown key {unknown[0]!r}; the keys are command, on, timeout_s")
    command = table.get("command")
    if isinstance(command, str):
        try:
            argv = shlex.split(command)
        except ValueError as err:
            raise HookConfigError(f"{where} command: {err}; check its quotes") from None
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        argv = list(command)
    else:
        raise HookConfigError(f"{where} command: expected a string or a list of strings")
    if not argv:
        raise HookConfigError(f"{where} command: empty; give the program to run, e.g. [\"notify-send\", \"job {{id}} {{state}}\"]")
    for item in argv:
        for m in _FIELD.finditer(item):
            if m.group(1) is not None and m.group(1) not in FIELDS:
                raise HookConfigError(f"{where} command: unknown field {{{m.group(1)}}}; the fields are "
                                      + " ".join(f"{{{f}}}" for f in FIELDS) + " (write {{ and }} for braces)")
    on = table.get("on", ["done", "failed"])
    if not isinstance(on, list) or not on or any(s not in ENDS for s in on):
        raise HookConfigError(f"{where} on: expected a list of {', '.join(ENDS)}, got {on!r}")
    timeout = table.get("timeout_s", 60)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise HookConfigError(f"{where} timeout_s: expected a positive number of seconds, got {timeout!r}")
    return Hook(tuple(argv), tuple(on), float(timeout))


def _text(value) -> str:
    # argv and the environment cannot carry NUL; anything else goes through as it is
    return "" if value is None else str(value).replace("\0", "\ufffd")


def job_fields(job: dict) -> dict[str, str]:
    outputs = job.get("outputs") or []
    return {
        "id": str(job["id"]), "state": _text(job.get("state")), "reason": _text(job.get("reason")),
        "error": _text(job.get("error")), "output": _text(outputs[0]["path"] if outputs else ""),
        "prompt": _text(job.get("prompt")), "preset": _text(job.get("preset")), "log": _text(job.get("log_path")),
    }


def hook_argv(hook: Hook, fields: dict[str, str]) -> list[str]:
    """The template with the fields substituted, item by item (never re-split)."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return fields[m.group(1)]

    return [_FIELD.sub(sub, item) for item in hook.argv]


def hook_env(fields: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **{f"COSMOS_TUI_JOB_{k.upper()}": v for k, v in fields.items()}}


async def run_hook(argv: list[str], env: dict[str, str], timeout: float, log, cwd: str | None = None) -> int | None:
    """Run the hook to its end (or kill it at `timeout`); every failure goes to `log`, none is
    raised. Returns its exit status, None when it could not run or was killed."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *[os.fsencode(a) if isinstance(a, str) else a for a in argv],
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True)
    except (OSError, ValueError) as err:
        log(f"notification hook {argv[0]!r} could not start: {err}")
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        log(f"notification hook {argv[0]!r} ran past {timeout:g} s and was killed")
        return None
    if proc.returncode != 0:
        tail = out.decode(errors="replace").strip()[-300:]
        log(f"notification hook {argv[0]!r} exited with code {proc.returncode}" + (f": {tail}" if tail else ""))
    return proc.returncode
