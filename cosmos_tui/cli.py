"""`cosmos-tui`: the command line. With no subcommand it opens the TUI.

Every queue command talks to the daemon through cosmos_tui.client (the daemon starts on demand);
`run` works without one, in this process.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import typing
from pathlib import Path
from typing import List, Optional

import typer

from cosmos_tui.client import Client, DaemonError, DaemonNotRunning, start_daemon
from cosmos_tui.gpu import slot_names, slots_phrase
from cosmos_tui.queue.state import JobState

# "\b" alone on a line: click prints the paragraph after it as written, not rewrapped into one block
EXAMPLES = """
Examples:

\b
  cosmos-tui                                   open the workstation (TUI)
  cosmos-tui demo                              queue a tiny CPU job and open the TUI
  cosmos-tui submit tiny-cpu --set prompt="a red kite over the sea" --set seed=3
  cosmos-tui submit 2b-720p16 --batch batch.json      one job per entry of the seed's batch JSON
  cosmos-tui submit --model_size 2B --input_path x.jpg --prompt "a kite"   the seed scripts' own flags
  cosmos-tui ls                                 the queue; `ls --json` for scripts
  cosmos-tui show 12          cosmos-tui logs -f 12          cosmos-tui cancel 12
  cosmos-tui retry 12         cosmos-tui move 14 --to 1      cosmos-tui pause / resume
  cosmos-tui edit 14 --set seed=4   cosmos-tui hold 14 / release 14   cosmos-tui submit ... --after 12
  cosmos-tui remove 12        cosmos-tui clean --failed-only  (finished jobs only; videos stay on disk)
  cosmos-tui run tiny-cpu --set num_steps=2     run in the foreground, no daemon
  cosmos-tui daemon status    cosmos-tui presets list        cosmos-tui presets show tiny-cpu
"""

app = typer.Typer(
    help="A terminal workstation for Cosmos-Predict2 Video2World: queue jobs, close the laptop, "
    "come back to finished videos.\n" + EXAMPLES,
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
daemon_app = typer.Typer(help="Start, stop or inspect the queue daemon (one per user, survives logout).",
                         no_args_is_help=True)
presets_app = typer.Typer(help="List, show and create presets (named job setups, TOML).", no_args_is_help=True)
app.add_typer(daemon_app, name="daemon")
app.add_typer(presets_app, name="presets")


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


USER_MISTAKE = 2  # one exit code for every error a user can cause, as the seed scripts


def friendly(fn):
    """Turn the errors a user can cause into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cosmos_tui.presets import PresetError
        from cosmos_tui.queue.resolve import SubmitError
        from engine.spec import InputError, SpecError

        try:
            return fn(*args, **kwargs)
        except (DaemonError, SpecError, InputError, PresetError, SubmitError) as err:
            _err(safe_text(str(err), keep_newlines=True))
            raise typer.Exit(USER_MISTAKE)

    return wrapper


# -- user text on the terminal --

# C0 controls, DEL and C1 controls: ESC starts OSC 52 (clipboard), title and cursor sequences
_CONTROL = {c: "\ufffd" for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}


def safe_text(value, keep_newlines: bool = False) -> str:
    """A prompt, path or error as printable text: control characters replaced, undecodable bytes
    (surrogate escapes) shown as U+FFFD, so user text never drives the terminal."""
    text = "" if value is None else str(value)
    table = dict(_CONTROL)
    table[0x09] = " "
    if keep_newlines:
        table.pop(0x0A)
    else:
        table[0x0A] = " "
    text = text.translate(table)
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


# -- --set parsing --


def _is_text_field(name: str) -> bool:
    from engine.spec import GenerationSpec

    field = GenerationSpec.model_fields.get(name)
    if field is None:
        return False
    ann = field.annotation
    if ann is str:
        return True
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Literal:
        return all(isinstance(a, str) for a in args)
    return str in args  # Optional[str]


def parse_sets(items: List[str]) -> dict:
    """`key=value` pairs into spec overrides. Text fields keep the text as written (resolution
    "720" stays a string); other values are read as JSON (3, 7.5, true) and fall back to text."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: write --set key=value, e.g. --set seed=3", param_hint="--set")
        if _is_text_field(key):
            out[key] = value
            if key in ("prompt", "negative_prompt"):
                from cosmos_tui.queue.resolve import clean_text

                out[key] = clean_text(value)  # argv bytes that were not UTF-8
            continue
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def seed_flag_overrides(args: List[str]) -> tuple[Optional[str], dict]:
    """The preset (the one bare word, if any) and the spec fields given as the seed scripts' flags
    (`--model_size 2B --prompt "..."`), parsed by the seed's own parser (engine/cli_args.py), so
    names, types and choices are the same. Only the flags given count: the preset keeps the rest.
    A mistake exits 2 with one line, like the seed scripts."""
    import argparse

    from engine.cli_args import build_parser

    parser = build_parser("video2world")
    parser.prog = "cosmos-tui submit"
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS  # given flags only
    parser.add_argument("preset", nargs="?", default=None, help="preset name or .toml path")
    given = vars(parser.parse_args(args))
    preset = given.pop("preset", None)
    for key in ("prompt", "negative_prompt"):
        if isinstance(given.get(key), str):
            from cosmos_tui.queue.resolve import clean_text

            given[key] = clean_text(given[key])  # argv bytes that were not UTF-8
    return preset, given


def batch_items(path: Path) -> list[dict]:
    """Spec overrides per entry of a batch file: the seed's format ({input_video, prompt,
    output_video}) or spec field names."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise typer.BadParameter(f"{path}: {err.strerror}", param_hint="--batch") from None
    except UnicodeDecodeError as err:
        from engine.spec import not_utf8

        raise typer.BadParameter(f"{path} {not_utf8(err)}", param_hint="--batch") from None
    except ValueError as err:
        raise typer.BadParameter(f"{path} is not valid JSON ({err})", param_hint="--batch") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise typer.BadParameter(f"{path}: expected a JSON list of objects", param_hint="--batch")
    return [_renamed(entry) for entry in data]


def _renamed(entry: dict) -> dict:
    renames = {"input_video": "input_path", "input_image": "input_path", "output_video": "save_path"}
    return {renames.get(k, k): v for k, v in entry.items()}


# -- the TUI --


def _open_tui() -> None:
    try:
        from cosmos_tui.app import run_app
    except ImportError as err:
        _err(f"the TUI is not available in this installation ({err}); the CLI commands work: "
             f"cosmos-tui --help")
        raise typer.Exit(1)
    run_app()


@app.callback()
def root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        _open_tui()


# -- queue commands --


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             options_metavar="[PRESET] [SEED FLAGS...] [OPTIONS]")
@friendly
def submit(
    ctx: typer.Context,
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a spec field: --set prompt=\"...\" --set seed=3"),
    batch: Optional[Path] = typer.Option(None, "--batch", help="Batch JSON: a list of {input_video, prompt, output_video}; one job each."),
    priority: int = typer.Option(0, help="Higher goes ahead of lower in the queue."),
    after: Optional[int] = typer.Option(None, "--after", metavar="ID", help="Run only once job ID is done (fail if it fails)."),
    as_json: bool = typer.Option(False, "--json", help="Print the job ids as JSON."),
) -> None:
    """Queue a job (or a batch): [PRESET] [SEED FLAGS...] [--set key=value...].

    PRESET is a preset name or .toml path (see `presets list`). The seed scripts' own flags work
    too, exactly as `python -m engine.video2world --help` lists them; they override the preset,
    and --set overrides both.

    \b
    Examples:
      cosmos-tui submit tiny-cpu --set prompt="a red kite" --set seed=3
      cosmos-tui submit --model_size 2B --input_path x.jpg --prompt "a red kite" --num_gpus 1
    """
    preset, seed_flags = seed_flag_overrides(ctx.args)
    from cosmos_tui.queue.resolve import batch_entry_problem

    overrides = {**seed_flags, **parse_sets(set_)}
    if after is not None and batch is not None:
        _err("--after works with a single job, not with --batch; submit the batch, then hold/release its jobs")
        raise typer.Exit(USER_MISTAKE)
    client = Client.connect()
    refused: list[tuple[int, str]] = []
    if batch is not None:
        items = batch_items(batch)
        numbered = []
        for n, item in enumerate(items, 1):
            problem = batch_entry_problem(item)
            if problem:
                refused.append((n, f"item {n}: {problem}"))
            else:
                numbered.append((n, item))
        ids = []
        if numbered:
            got = client.submit_batch_partial([it for _, it in numbered], preset=preset, priority=priority,
                                              base=overrides)
            ids = got["ids"]
            # the daemon numbers the items it was sent; name them as the file does
            for r in got["refused"]:
                n = numbered[r["item"] - 1][0]
                refused.append((n, r["error"].replace(f"item {r['item']}: ", f"item {n}: ", 1)))
    else:
        ids = [client.submit(overrides, preset=preset, priority=priority, after=after)]
    if as_json:
        typer.echo(json.dumps(ids))
    else:
        for jid in ids:
            typer.echo(f"queued job {jid}")
    if refused:
        for _, error in sorted(refused):
            _err(safe_text(error))
        _err(f"{len(refused)} of the batch's entries were refused (listed above), {len(ids)} queued; fix the "
             f"entries and submit them again")
        raise typer.Exit(USER_MISTAKE)


def _progress(j: dict) -> str:
    """The TUI's progress words (cosmos_tui.widgets.format), for running jobs only."""
    from cosmos_tui.widgets.format import units_line

    return units_line(j) if j["state"] == "running" and j.get("total_steps") else ""


def _eta(seconds) -> str:
    from cosmos_tui.widgets.format import duration

    return "" if seconds is None else duration(seconds)


@app.command("ls")
@friendly
def ls_(
    state: List[str] = typer.Option([], "--state", metavar="STATE", help="Only jobs in these states (repeatable): " + ", ".join(s.value for s in JobState) + "."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable: the job dicts as a JSON list."),
) -> None:
    """List jobs: the queue in order, then the rest newest first."""
    client = Client.connect()
    jobs = client.jobs(state or None)
    if as_json:
        typer.echo(json.dumps(jobs, default=str))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    q = client.queue()
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "STATE", "MODE", "PRESET", "PROGRESS", "ETA", "GPUS", "PROMPT"):
        table.add_column(col, no_wrap=col != "PROMPT", overflow="ellipsis")
    for j in jobs:
        state_txt = j["state"] + (f" ({j['reason']})" if j["state"] == "failed" and j.get("reason") else "")
        # Text, not markup strings: a prompt holding "[/red]" is the user's words, not styling
        cells = [str(j["id"]), state_txt, j["mode"], j.get("preset") or "", _progress(j), _eta(j.get("eta_s")),
                 slot_names(j.get("gpus") or [], q.get("gpu_backend")), (j.get("prompt") or "")[:60]]
        table.add_row(*(Text(safe_text(c)) for c in cells))
    console = Console()
    if q["paused"]:
        console.print(f"[yellow]queue paused[/]: {escape(safe_text(q.get('reason') or ''))}")
    for w in q.get("warnings") or []:
        console.print(f"[red]warning[/]: {escape(safe_text(w))}")
    failed = [j for j in jobs if j["state"] == "failed" and j.get("error")]
    console.print(table if jobs else "no jobs")
    for j in failed[:5]:
        console.print(Text(safe_text(f"job {j['id']} failed: {j['error']}")))


@app.command()
@friendly
def show(job_id: int = typer.Argument(..., metavar="ID"),
         as_json: bool = typer.Option(False, "--json", help="The job dict as JSON.")) -> None:
    """Show one job: state, progress, outputs, critic verdicts, error."""
    client = Client.connect()
    j = client.job(job_id)
    if as_json:
        typer.echo(json.dumps(j, default=str, indent=2))
        return
    slots = slot_names(j["gpus"], client.queue().get("gpu_backend")) if j.get("gpus") else ""
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"  # noqa: E731
    lines = [
        f"job {j['id']}  {j['state']}" + (f" ({j['reason']})" if j.get("reason") else ""),
        f"mode {j['mode']}   preset {j.get('preset') or '-'}   gpus {slots or '-'}",
        f"prompt: {j.get('prompt')}",
        f"created {stamp(j['created'])}   started {stamp(j['started'])}   finished {stamp(j['finished'])}",
    ]
    if _progress(j):
        lines.append(f"progress: {_progress(j)}   eta {_eta(j.get('eta_s')) or '?'}")
    if j.get("wait_reason"):
        lines.append(f"waiting: {j['wait_reason']}")
    if j.get("peak_mem"):
        lines.append(f"peak GPU memory: {j['peak_mem'] / 1024**3:.2f} GiB")
    if j.get("attempt_of"):
        lines.append(f"retry of job {j['attempt_of']}")
    if j.get("error"):
        lines.append(f"error: {j['error']}")
    for o in j.get("outputs") or []:
        lines.append(f"output ({o['kind']}): {o['path']}")
    for c in j.get("critic") or []:
        lines.append(f"critic: {c.get('video')} trial {c.get('trial')} score {c.get('score')}")
    lines.append(f"log: {j['log_path']}")
    typer.echo("\n".join(safe_text(line) for line in lines))


@app.command()
@friendly
def logs(job_id: int = typer.Argument(..., metavar="ID"),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends.")) -> None:
    """Print a job's log (engine output and events); -f follows it."""
    client = Client.connect()
    path = Path(client.log_path(job_id))
    pos = 0
    while True:
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        if not follow:
            return
        if client.job(job_id)["state"] not in ("queued", "running"):
            # one last read: lines written between the read above and the state check
            if path.exists() and path.stat().st_size > pos:
                continue
            return
        time.sleep(0.5)


@app.command()
@friendly
def cancel(job_ids: List[int] = typer.Argument(..., metavar="ID...")) -> None:
    """Cancel queued or running jobs (a running job's whole process group is stopped)."""
    client = Client.connect()
    for jid in job_ids:
        client.cancel(jid)
        typer.echo(f"cancelled job {jid}")


@app.command()
@friendly
def retry(job_ids: List[int] = typer.Argument(..., metavar="ID...")) -> None:
    """Queue a new attempt of finished/failed/cancelled/interrupted jobs, at the front."""
    client = Client.connect()
    # each retry goes to the front: submit in reverse so they run in the order given
    new = {jid: client.retry(jid) for jid in reversed(job_ids)}
    for jid in job_ids:
        typer.echo(f"job {new[jid]} queued (retry of job {jid})")


@app.command()
@friendly
def pause() -> None:
    """Pause the queue: running jobs finish, nothing new starts."""
    Client.connect().pause()
    typer.echo("queue paused")


@app.command()
@friendly
def resume() -> None:
    """Resume the queue (after a pause, an out-of-memory stop or a restart after a crash)."""
    Client.connect().resume()
    typer.echo("queue resumed")


@app.command()
@friendly
def hold(job_ids: List[int] = typer.Argument(..., metavar="ID...")) -> None:
    """Keep queued jobs in their place but don't start them until `release`."""
    client = Client.connect()
    for jid in job_ids:
        client.hold(jid)
        typer.echo(f"job {jid} held")


@app.command()
@friendly
def release(job_ids: List[int] = typer.Argument(..., metavar="ID...")) -> None:
    """Let held jobs run again."""
    client = Client.connect()
    for jid in job_ids:
        client.release(jid)
        typer.echo(f"job {jid} released")


@app.command()
@friendly
def move(
    job_id: int = typer.Argument(..., metavar="ID"),
    up: bool = typer.Option(False, "--up", help="One place sooner."),
    down: bool = typer.Option(False, "--down", help="One place later."),
    to: Optional[int] = typer.Option(None, "--to", metavar="N", help="To this place (1 = next to run)."),
) -> None:
    """Reorder a queued job: --up, --down or --to N."""
    if sum([up, down, to is not None]) != 1:
        raise typer.BadParameter("give exactly one of --up, --down, --to N")
    client = Client.connect()
    place = client.move(job_id, to=to) if to is not None else client.move(job_id, -1 if up else 1)
    typer.echo(f"job {job_id} is number {place} in the queue")


@app.command()
@friendly
def remove(job_ids: List[int] = typer.Argument(..., metavar="ID...")) -> None:
    """Forget finished jobs (done, failed, cancelled, interrupted): their entries and logs go, their
    videos stay on disk. All the IDs or none."""
    removed = Client.connect().remove(job_ids)
    typer.echo(f"removed job(s) {', '.join(map(str, removed))}")


@app.command()
@friendly
def clean(failed_only: bool = typer.Option(False, "--failed-only", help="Only failed and interrupted jobs.")) -> None:
    """Remove every finished job from the list (videos stay on disk)."""
    removed = Client.connect().clean(failed_only)
    typer.echo(f"removed job(s) {', '.join(map(str, removed))}" if removed else "nothing to clean")


@app.command()
@friendly
def edit(
    job_id: int = typer.Argument(..., metavar="ID"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="A spec field to change: --set seed=4 --set prompt=\"...\""),
) -> None:
    """Change a queued (or held) job's spec; checked like a submit.

    \b
    Example:
      cosmos-tui edit 12 --set num_steps=20 --set offload_text_encoder=false
    """
    changes = parse_sets(set_)
    if not changes:
        raise typer.BadParameter("give at least one --set key=value", param_hint="--set")
    job = Client.connect().edit(job_id, changes)
    typer.echo(f"job {job_id} edited: " + ", ".join(f"{k}={safe_text(json.dumps(job['spec'].get(k)))}"
                                                   for k in sorted(changes)))


# -- the daemon --


@daemon_app.command("start")
@friendly
def daemon_start() -> None:
    """Start the daemon in the background (no-op if it runs)."""
    for line in start_daemon():
        typer.echo(line)
    info = Client().ping()
    typer.echo(f"daemon running (pid {info['pid']}), state in {info['home']}")
    for w in info.get("warnings") or []:
        typer.echo(f"warning: {w}", err=True)


@daemon_app.command("stop")
@friendly
def daemon_stop(force: bool = typer.Option(False, "--force", help="Stop even with jobs running (they become interrupted).")) -> None:
    """Stop the daemon."""
    try:
        Client().shutdown(force=force)
    except DaemonNotRunning:
        typer.echo("no daemon is running")
        return
    typer.echo("daemon stopping")


@daemon_app.command("status")
@friendly
def daemon_status() -> None:
    """Is the daemon running; queue counts; engines; warnings."""
    client = Client()
    try:
        info = client.ping()
    except DaemonNotRunning:
        typer.echo("no daemon is running (it starts on demand, or: cosmos-tui daemon start)")
        raise typer.Exit(1)
    q = client.queue()
    typer.echo(f"daemon running (pid {info['pid']}), state in {info['home']}")
    typer.echo(f"queue {'paused: ' + (q.get('reason') or '') if q['paused'] else 'running'}")
    typer.echo("jobs: " + (", ".join(f"{n} {s}" for s, n in sorted(q["counts"].items())) or "none"))
    typer.echo(f"GPUs: {q['gpu_count']} ({q['gpu_backend']}); engines: {len(q['engines'])}")
    for e in q["engines"]:
        where = slots_phrase(e["gpus"], q.get("gpu_backend"))
        typer.echo(f"  engine {e['pid']} on {where}: {'job ' + str(e['job']) if e['job'] else 'idle'}")
    for w in q.get("warnings") or []:
        typer.echo(f"warning: {w}", err=True)


# -- foreground run --


def _resolve_local(preset: Optional[str], overrides: dict):
    from engine.spec import spec_from_dict

    base = {}
    if preset:
        from cosmos_tui.presets import load_preset

        p = load_preset(preset)
        if p.spec is None:
            raise DaemonError(f"preset {preset!r} is invalid: {p.error}")
        base = dict(p.overrides)
    return spec_from_dict({**base, **overrides})


@app.command()
@friendly
def run(
    preset: Optional[str] = typer.Argument(None, help="Preset name or .toml path."),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Override a spec field, e.g. --set num_steps=2"),
) -> None:
    """Run one job here, in the foreground, without the daemon (Ctrl-C stops it)."""
    import threading

    from engine.progress import make_renderer
    from engine.spec import InputError

    spec = _resolve_local(preset, parse_sets(set_))
    from engine.modes import run_job

    cancel = threading.Event()
    with make_renderer() as render:
        try:
            outputs = run_job(spec, render, cancel=cancel)
        except KeyboardInterrupt:
            cancel.set()
            _err("interrupted")
            raise typer.Exit(130)
        except InputError as err:
            _err(safe_text(str(err)))
            raise typer.Exit(USER_MISTAKE)
    for p in outputs or []:
        typer.echo(p)


@app.command()
@friendly
def demo() -> None:
    """Queue a tiny CPU job (the tiny-cpu preset) and open the TUI."""
    jid = Client.connect().submit({}, preset="tiny-cpu")
    typer.echo(f"queued job {jid} (tiny-cpu)")
    _open_tui()


# -- presets --


def _presets():
    try:
        import cosmos_tui.presets as presets
    except ImportError as err:
        _err(f"presets are not available in this installation ({err})")
        raise typer.Exit(1)
    return presets


@presets_app.command("list")
@friendly
def presets_list() -> None:
    """Every preset, shipped and user (a user preset shadows a shipped one of the same name)."""
    for p in _presets().list_presets():
        note = f"  [broken: {p.error}]" if p.error else ""
        typer.echo(f"{p.name:24} {p.source:8} {p.description}{note}")


@presets_app.command("show")
@friendly
def presets_show(name: str = typer.Argument(..., help="Preset name or .toml path.")) -> None:
    """Print a preset's file and the full spec it gives."""
    p = _presets().load_preset(name)
    typer.echo(f"# {p.path} ({p.source})")
    typer.echo(Path(p.path).read_text(encoding="utf-8").rstrip())
    if p.spec is not None:
        typer.echo("\n# resolved spec")
        typer.echo(json.dumps(p.spec.model_dump(mode="json"), indent=2))


@presets_app.command("new")
@friendly
def presets_new(
    name: str = typer.Argument(..., help="The new preset's name."),
    base: Optional[str] = typer.Option(None, "--from", metavar="PRESET", help="Start from this preset."),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="Fields to change, e.g. --set fps=10"),
    description: str = typer.Option("", "--description", "-d", metavar="TEXT", help="One line shown by `presets list`."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a user preset of the same name."),
) -> None:
    """Save a user preset: a base preset plus --set changes.

    \b
    Example:
      cosmos-tui presets new my-480 --from 2b-720p16 --set resolution=480 --set fps=10
    """
    presets = _presets()
    spec = _resolve_local(base, parse_sets(set_))
    existing = presets.preset_paths().get(name)
    origin = existing and presets.preset_source(existing)
    # "new" must not silently write over a preset the user made (a typo'd name would lose its edits)
    if origin == "user" and not replace:
        raise presets.PresetError(f"name: {name!r} is already your preset ({existing}); choose another name, "
                                  f"or pass --replace to overwrite it")
    path = presets.save_user_preset(name, spec, description)
    typer.echo(f"saved {path}" + (f" (in place of the shipped {name}, which `presets list` no longer shows)"
                                  if origin == "shipped" else ""))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
