"""The Slurm executor: a job whose spec says `executor = "slurm"` runs as a batch job on a cluster.

The daemon hands such a job here instead of planning it onto local GPUs. This module

  * renders a batch script (`job.sh`) and a per-node script (`node.sh`) into the job's directory on
    shared storage and submits it with `sbatch`; the node script starts the engine (`engine.server`,
    the same entry point a local engine runs) under torchrun, one torchrun per node through `srun`,
    with a multi-node rendezvous on the first node of $SLURM_JOB_NODELIST when slurm_nodes > 1;
  * feeds the engine its request from a file and points rank 0's event stream (JSON lines, the
    local engine's stdout) at `events.jsonl` in that directory; the daemon tails that file and hands
    each event to the same handlers a local engine's events go through, so steps, ETA, logs and
    outputs show up unchanged; the job's stderr (`slurm.log`) is tailed into the job log;
  * polls `squeue` (and `sacct` once squeue has forgotten the job) for the job's state, and when
    the job ends without the engine's own verdict, maps Slurm's: a time-limit kill, a node failure,
    a preemption or a kill from outside end the job `interrupted` with that reason; a retry is a new
    job with the same spec and save_path, so a long video resumes from its last finished chunk;
  * cancels with `scancel`.

Where things live (set in the daemon's environment; see the README):
  COSMOS_TUI_SLURM_DIR     job directories; must be on storage the compute nodes see (default
                           <cosmos-tui home>/slurm, which is under $HOME)
  COSMOS_TUI_SLURM_PYTHON  the Python that runs the engine on the nodes (default: the daemon's)
  COSMOS_TUI_SLURM_SETUP   shell lines the job runs first (`module load cuda`, `source venv/bin/activate`)
  COSMOS_TUI_SLURM_SBATCH_ARGS  more sbatch options, as shell words (`--cpus-per-gpu=8 --qos=high`)
  COSMOS_TUI_SLURM_POLL_S  seconds between squeue polls (default 5)

The host (the daemon, cosmos_tui/daemon/service.py) provides: store, wake, on_job_event(job, ev) (the
queue core's rules for an engine event, recorded), _set_state(job, state, **cols), fail_job(job, error,
reason), finish_cancelled(job), job_log(job, text).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_tui import paths

# still in the queue or on the nodes
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
})
# Slurm ended the job from outside the engine: the work is not wrong, it was stopped. (state,
# reason, what to do)
INTERRUPTIONS = {
    "TIMEOUT": ("time limit", "it reached its time limit (slurm_time_limit = {limit}); raise slurm_time_limit "
                              "and retry it"),
    "NODE_FAIL": ("node failure", "a node it ran on failed; retry it"),
    "BOOT_FAIL": ("node failure", "a node it was given failed to boot; retry it"),
    "PREEMPTED": ("preempted", "a job of higher priority preempted it; retry it"),
    "DEADLINE": ("deadline", "it reached its deadline; retry it"),
    "CANCELLED": ("killed", "it was cancelled or killed outside cosmos-tui (scancel or an administrator); "
                            "retry it to run it again"),
}
RESUME_HINT = " (a long video resumes from its last finished chunk)"
TAIL_INTERVAL_S = 0.5
# after Slurm says the job ended: how long to wait for the engine's last lines to appear on shared
# storage (NFS attribute caches lag by a few seconds)
DRAIN_S = 10.0
SBATCH_TIMEOUT_S = 60


class SlurmError(RuntimeError):
    """A Slurm command that failed; the message is one sentence for the job's error."""


# -- settings and scripts --


def slurm_dir() -> Path:
    env = os.environ.get("COSMOS_TUI_SLURM_DIR")
    return Path(env).expanduser() if env else paths.home() / "slurm"


def poll_interval() -> float:
    try:
        return max(0.2, float(os.environ.get("COSMOS_TUI_SLURM_POLL_S", "5")))
    except ValueError:
        return 5.0


def job_name(job_id: int, home: Path | None = None) -> str:
    """Unique per daemon home, so a restarted daemon finds (and cancels) what its predecessor left."""
    tag = hashlib.sha1(str(home or paths.home()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"cosmos-tui-{tag}-{job_id}"


def _engine_root() -> str:
    import engine

    return str(Path(engine.__file__).resolve().parent.parent)


def _q(value) -> str:
    return shlex.quote(str(value))


@dataclass(frozen=True)
class JobFiles:
    dir: Path

    @property
    def script(self) -> Path:
        return self.dir / "job.sh"

    @property
    def node_script(self) -> Path:
        return self.dir / "node.sh"

    @property
    def request(self) -> Path:
        return self.dir / "request.jsonl"

    @property
    def events(self) -> Path:
        return self.dir / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.dir / "slurm.log"

    @property
    def slurm_id(self) -> Path:
        return self.dir / "slurm_job_id"


def render_batch_script(job_id: int, spec: dict, files: JobFiles) -> str:
    """The sbatch script. Resource requests are directives (the spec validated them as names and
    times); paths go through shlex.quote."""
    gpus = spec.get("slurm_gpus_per_node", 1)
    lines = [
        "#!/bin/bash",
        f"# cosmos-tui job {job_id}: written by the daemon, submitted with sbatch",
        f"#SBATCH --nodes={spec.get('slurm_nodes', 1)}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --time={spec.get('slurm_time_limit', '4:00:00')}",
        # a retry is a new job of the queue; Slurm requeueing it would run it twice
        "#SBATCH --no-requeue",
    ]
    if gpus > 0:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if spec.get("slurm_partition"):
        lines.append(f"#SBATCH --partition={spec['slurm_partition']}")
    if spec.get("slurm_account"):
        lines.append(f"#SBATCH --account={spec['slurm_account']}")
    lines += [
        "set -u",
        f'echo "cosmos-tui job {job_id}: Slurm job $SLURM_JOB_ID on $SLURM_JOB_NODELIST" >&2',
        # one task per node; node.sh decides who talks. --kill-on-bad-exit: one node failing ends all
        f"exec srun --nodes=\"$SLURM_NNODES\" --ntasks-per-node=1 --kill-on-bad-exit=1 bash {_q(files.node_script)}",
        "",
    ]
    return "\n".join(lines)


def render_node_script(spec: dict, files: JobFiles, python: str | None = None, setup: str | None = None) -> str:
    """Runs once per node. Node 0 hosts rank 0, which reads the request and writes the events."""
    python = python or os.environ.get("COSMOS_TUI_SLURM_PYTHON") or sys.executable
    setup = os.environ.get("COSMOS_TUI_SLURM_SETUP", "") if setup is None else setup
    nproc = max(spec.get("slurm_gpus_per_node", 1), 1)
    root = _engine_root()
    torchrun = f"{_q(python)} -m torch.distributed.run --nproc-per-node={nproc}"
    lines = [
        "#!/bin/bash",
        "set -u",
        setup,
        f"export PYTHONPATH={_q(root)}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export PYTHONUNBUFFERED=1",
        # the engine must not think a local daemon is its parent (it would kill its group on EOF)
        "unset COSMOS_TUI_ENGINE_OF",
        'if [ "${SLURM_NNODES:-1}" -gt 1 ]; then',
        # static rendezvous: node 0 (the first of the node list) is the master and holds rank 0
        '    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        '    port=$((20000 + ${SLURM_JOB_ID:-0} % 20000))',
        f'    launch="{torchrun} --nnodes=$SLURM_NNODES --node-rank=$SLURM_NODEID --master-addr=$head '
        f'--master-port=$port"',
        "else",
        f'    launch="{torchrun} --standalone --nnodes=1"',
        "fi",
        'if [ "${SLURM_NODEID:-0}" = 0 ]; then',
        # stdin stays open after the request (an engine reads EOF as "the daemon is gone"); the
        # request ends with {"op": "exit"}, so the engine leaves once the job is done
        f"    exec 3< <(cat {_q(files.request)}; exec sleep infinity)",
        "    feeder=$!",
        f"    $launch -m engine.server <&3 >>{_q(files.events)}",
        "    rc=$?",
        "    exec 3<&-",
        '    kill "$feeder" 2>/dev/null',
        '    exit "$rc"',
        "else",
        "    exec $launch -m engine.server </dev/null >/dev/null",
        "fi",
        "",
    ]
    return "\n".join(lines)


def write_job_files(job_id: int, spec: dict, cwd: str | None, home: Path | None = None) -> JobFiles:
    files = JobFiles(slurm_dir() / f"job-{job_id}")
    files.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(files.dir, 0o700)
    for stale in (files.events, files.log, files.slurm_id):
        stale.unlink(missing_ok=True)
    request = [{"op": "run", "job": job_id, "spec": spec, "cwd": cwd}, {"op": "exit"}]
    files.request.write_text("".join(json.dumps(r) + "\n" for r in request))
    for path, text in ((files.script, render_batch_script(job_id, spec, files)),
                       (files.node_script, render_node_script(spec, files))):
        # a cwd or save_path that is not UTF-8 goes through as the bytes it was
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        os.chmod(path, 0o700)
    return files


# -- Slurm commands --


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} was not found on PATH; install the Slurm client commands on the daemon's "
                         f"machine, or set executor = \"local\"") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {timeout:.0f} s; is slurmctld reachable?") from None


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(sbatch|squeue|scancel|sacct): error: ", "", line)
    return "no message"


# sbatch's messages for the mistakes a user makes in a preset, and the field to fix
SBATCH_FIELDS = (
    ("invalid partition", "slurm_partition", "set slurm_partition to one `sinfo` lists"),
    ("invalid account", "slurm_account", "set slurm_account to one `sacctmgr show assoc user=$USER` lists"),
    ("time limit", "slurm_time_limit", "lower slurm_time_limit to what the partition allows (`sinfo -o %l`)"),
    ("node count", "slurm_nodes", "lower slurm_nodes"),
    ("node configuration is not available", "slurm_nodes",
     "ask for fewer slurm_nodes or slurm_gpus_per_node, or another slurm_partition"),
    ("gres", "slurm_gpus_per_node", "lower slurm_gpus_per_node, or pick a slurm_partition with GPUs"),
)


def submit(files: JobFiles, name: str, cwd: str | None) -> int:
    """sbatch the job; its Slurm id. SlurmError (naming the spec field where one is to blame)."""
    try:
        extra = shlex.split(os.environ.get("COSMOS_TUI_SLURM_SBATCH_ARGS", ""))
    except ValueError as err:
        raise SlurmError(f"COSMOS_TUI_SLURM_SBATCH_ARGS: not valid shell words ({err}); fix the quoting in the "
                         f"daemon's environment") from None
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--output={files.log}", "--open-mode=append",
            f"--chdir={cwd or files.dir}", *extra, str(files.script)]
    out = _run(argv, timeout=SBATCH_TIMEOUT_S)
    if out.returncode != 0:
        msg = _first_error(out.stderr)
        low = msg.lower()
        for needle, fieldname, fix in SBATCH_FIELDS:
            if needle in low:
                raise SlurmError(f"{fieldname}: sbatch refused the job ({msg}); {fix}")
        raise SlurmError(f"sbatch refused the job: {msg}")
    first = out.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    if not first.isdigit():
        raise SlurmError(f"sbatch printed {out.stdout.strip()[:80]!r} instead of a job id")
    return int(first)


@dataclass(frozen=True)
class SlurmStatus:
    state: str  # PENDING, RUNNING, COMPLETED, TIMEOUT, ... ; "UNKNOWN" when no command knows the job
    reason: str = ""  # squeue's %r (why pending, or why it ended)
    nodes: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def query(slurm_id: int) -> SlurmStatus:
    """The job's state: squeue while slurmctld remembers it (MinJobAge), sacct after that. SlurmError
    when slurmctld does not answer: that says nothing about the job, so the caller asks again."""
    out = _run(["squeue", "-h", "-t", "all", "-j", str(slurm_id), "-o", "%T|%r|%N"])
    if out.returncode == 0 and out.stdout.strip():
        state, _, rest = out.stdout.strip().splitlines()[0].partition("|")
        reason, _, nodes = rest.partition("|")
        return SlurmStatus(state.strip(), reason.strip(), nodes.strip())
    if out.returncode != 0 and "invalid job id" not in out.stderr.lower():
        raise SlurmError(f"squeue failed: {_first_error(out.stderr)}")
    acct = _run(["sacct", "-n", "-P", "-X", "-j", str(slurm_id), "-o", "State,Reason,NodeList"])
    if acct.returncode == 0 and acct.stdout.strip():
        state, _, rest = acct.stdout.strip().splitlines()[0].partition("|")
        reason, _, nodes = rest.partition("|")
        # sacct writes "CANCELLED by 1000"
        return SlurmStatus(state.split()[0] if state.strip() else "UNKNOWN", reason.strip(), nodes.strip())
    return SlurmStatus("UNKNOWN", _first_error(out.stderr or acct.stderr))


def cancel(slurm_id: int) -> None:
    out = _run(["scancel", str(slurm_id)])
    if out.returncode != 0:
        raise SlurmError(f"scancel {slurm_id} failed: {_first_error(out.stderr)}")


def cancel_by_name(name: str) -> None:
    with contextlib.suppress(SlurmError):
        _run(["scancel", f"--name={name}", f"--user={getpass.getuser()}"])


# -- Slurm's verdict --


def outcome(status: SlurmStatus, cancel_requested: bool, spec: dict, slurm_id: int) -> tuple[str, str, str]:
    """(job state, reason, error) for a Slurm job that ended without the engine's own verdict."""
    st = status.state
    if st == "CANCELLED" and cancel_requested:
        return "cancelled", "cancelled", "cancelled on request"
    if st in INTERRUPTIONS:
        reason, why = INTERRUPTIONS[st]
        why = why.format(limit=spec.get("slurm_time_limit"))
        return "interrupted", reason, f"Slurm job {slurm_id} ended {st}: {why}{RESUME_HINT}"
    if st == "OUT_OF_MEMORY":
        return "failed", "crash", (f"Slurm job {slurm_id} ran out of host memory (OUT_OF_MEMORY); ask for a node "
                                   f"with more memory (another slurm_partition) or a smaller job")
    if st == "COMPLETED":
        return "failed", "crash", (f"Slurm job {slurm_id} ended without the engine reporting a result; see the job "
                                   f"log")
    if st == "UNKNOWN":
        return "interrupted", "lost", (f"Slurm no longer knows job {slurm_id} ({status.reason}); retry it"
                                       f"{RESUME_HINT}")
    return "failed", "crash", f"Slurm job {slurm_id} ended {st}" + (
        f" ({status.reason})" if status.reason and status.reason != "None" else "") + "; see the job log"


# -- tailing files on shared storage --


class FileTail:
    """New complete lines of a file another machine appends to. A half-written last line waits
    for its newline; a file that does not exist yet reads as empty."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def read_lines(self, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]


# -- the executor --


@dataclass
class SlurmRun:
    job: int
    spec: dict
    files: JobFiles
    name: str
    slurm_id: int | None = None
    cancel_requested: bool = False
    ended: bool = False  # the job's end is recorded (by the engine's event or Slurm's state)
    last: SlurmStatus | None = None
    unreachable: str | None = None  # the last error of a squeue that did not answer
    task: asyncio.Task | None = field(default=None, repr=False)
    events: FileTail | None = None
    log: FileTail | None = None


def wants_slurm(spec: dict) -> bool:
    return (spec or {}).get("executor") == "slurm"


class SlurmExecutor:
    def __init__(self, host):
        self.host = host
        self.runs: dict[int, SlurmRun] = {}

    def owns(self, job: int) -> bool:
        return job in self.runs

    # -- starting --

    async def dispatch(self, queued: list[dict], ready) -> list[dict]:
        """Submit the queued Slurm jobs `ready(job)` lets start; the rest is the local queue's."""
        rest = []
        for job in queued:
            if not wants_slurm(job.get("spec")):
                rest.append(job)
            elif ready(job) and job["id"] not in self.runs:
                await self.start(job)
        return rest

    async def start(self, job: dict) -> None:
        host, jid, spec = self.host, job["id"], job["spec"]
        run = SlurmRun(jid, spec, JobFiles(slurm_dir() / f"job-{jid}"), job_name(jid))
        # stored before it is submitted: a job that could not be marked running must not run unrecorded
        host.store.update(jid, state="running", started=time.time(), gpus=[], engine_pid=None, step=None,
                          total_steps=None, error=None, reason=None)
        self.runs[jid] = run
        try:
            run.files = await asyncio.to_thread(write_job_files, jid, spec, job.get("cwd"))
            run.slurm_id = await asyncio.to_thread(submit, run.files, run.name, job.get("cwd"))
            run.files.slurm_id.write_text(f"{run.slurm_id}\n")
        except (SlurmError, OSError) as err:
            del self.runs[jid]
            msg = str(err) if isinstance(err, SlurmError) else f"could not write the Slurm job's files: {err}"
            invalid = isinstance(err, SlurmError) and msg.split(":")[0].startswith("slurm_")
            host.fail_job(jid, msg, "invalid" if invalid else "crash")
            host.wake.set()
            return
        gpus = spec.get("slurm_gpus_per_node", 1)
        self._log(jid, f"submitted to Slurm as job {run.slurm_id} ({spec.get('slurm_nodes', 1)} node(s), "
                       f"{gpus} GPU(s) per node, partition {spec.get('slurm_partition') or '(default)'}, "
                       f"time limit {spec.get('slurm_time_limit')}); files in {run.files.dir}")
        run.events, run.log = FileTail(run.files.events), FileTail(run.files.log)
        run.task = asyncio.create_task(self._follow(run))

    # -- following --

    async def _follow(self, run: SlurmRun) -> None:
        try:
            await self._follow_until_end(run)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not run.ended:
                run.ended = True
                self.host.fail_job(run.job, "the daemon lost track of the Slurm job (internal error; see the "
                                            "daemon log)", "crash")
        finally:
            self.runs.pop(run.job, None)
            self.host.wake.set()

    async def _follow_until_end(self, run: SlurmRun) -> None:
        interval = poll_interval()
        next_poll = 0.0
        while True:
            self._drain(run)
            if run.ended and run.last is not None and not run.last.active:
                return
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + interval
                try:
                    status = await asyncio.to_thread(query, run.slurm_id)
                except SlurmError as err:
                    # slurmctld restarting or the network away: the job may be fine; ask again
                    if str(err) != run.unreachable:
                        run.unreachable = str(err)
                        self._log(run.job, f"Slurm did not answer ({err}); still trying", level="warning")
                    await asyncio.sleep(TAIL_INTERVAL_S)
                    continue
                run.unreachable = None
                if run.last is None or (status.state, status.reason) != (run.last.state, run.last.reason):
                    where = f" on {status.nodes}" if status.nodes and status.state != "PENDING" else ""
                    why = f" ({status.reason})" if status.reason and status.reason != "None" else ""
                    self._log(run.job, f"Slurm job {run.slurm_id}: {status.state}{why}{where}")
                run.last = status
                if not status.active:
                    await self._finish(run, status)
                    return
            await asyncio.sleep(TAIL_INTERVAL_S)

    async def _finish(self, run: SlurmRun, status: SlurmStatus) -> None:
        """Slurm says the job is over: let the engine's last lines arrive, then decide."""
        deadline = time.monotonic() + DRAIN_S
        while not run.ended and time.monotonic() < deadline and status.state in ("COMPLETED", "FAILED"):
            # the engine may well have written its verdict; shared storage can be a few seconds late
            self._drain(run)
            if run.ended:
                break
            await asyncio.sleep(TAIL_INTERVAL_S)
        self._drain(run, final=True)
        if run.ended:
            return
        run.ended = True
        state, reason, error = outcome(status, run.cancel_requested, run.spec, run.slurm_id)
        host = self.host
        if state == "cancelled":
            host.finish_cancelled(run.job)
        elif state == "failed":
            host.fail_job(run.job, error, reason)
        else:
            self._log(run.job, error, level="error")
            host._set_state(run.job, state, finished=time.time(), reason=reason, error=error)

    def _drain(self, run: SlurmRun, final: bool = False) -> None:
        for line in run.events.read_lines(final):
            self._on_line(run, line)
        for line in run.log.read_lines(final):
            self.host.job_log(run.job, f"[slurm] {line}")

    def _on_line(self, run: SlurmRun, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            ev = json.loads(line)
            if not isinstance(ev, dict):
                raise ValueError
        except ValueError:
            self.host.job_log(run.job, f"[engine stdout] {line}")
            return
        kind = ev.get("event")
        if kind in ("ready", "pong"):
            return
        if ev.get("job") != run.job:
            self.host.job_log(run.job, f"stray event {json.dumps(ev)[:300]}")
            return
        if run.ended:
            return  # Slurm's verdict was recorded first
        host = self.host
        try:
            # the same rules as a local engine's events (queue/core.apply), recorded the same way; while
            # a cancel is under way the cancel, not the engine's last word, decides how the job ends
            decision = host.on_job_event(run.job, ev, cancelling=run.cancel_requested)
        except Exception as err:
            run.ended = True
            self._cancel_quietly(run)
            host.fail_job(run.job, f"could not record the engine's {kind!r} event ({type(err).__name__}: {err}); "
                                   f"check the disk, then retry the job", "crash")
            return
        if decision.frees_engine:
            run.ended = True

    def _log(self, job: int, message: str, level: str = "info") -> None:
        """A line the user sees with the engine's: stored as a log event, shown in the TUI's log."""
        ev = {"event": "log", "job": job, "t": time.time(), "level": level, "message": message}
        try:
            self.host.on_job_event(job, ev)
        except Exception:
            self.host.job_log(job, message)

    def _cancel_quietly(self, run: SlurmRun) -> None:
        if run.slurm_id is not None:
            with contextlib.suppress(SlurmError):
                cancel(run.slurm_id)

    # -- stopping --

    async def cancel(self, job: int) -> str:
        run = self.runs[job]
        run.cancel_requested = True
        for _ in range(int(SBATCH_TIMEOUT_S / 0.1)):
            if run.slurm_id is not None or job not in self.runs:
                break
            await asyncio.sleep(0.1)  # sbatch is still answering
        if run.slurm_id is None:  # sbatch refused it: the job has failed already
            return self.host.store.job(job)["state"]
        self.host.job_log(job, f"cancelling: scancel {run.slurm_id}")
        try:
            await asyncio.to_thread(cancel, run.slurm_id)
        except SlurmError as err:
            run.cancel_requested = False
            from cosmos_tui.daemon.handlers import RequestError  # lazily: the daemon imports this module

            raise RequestError(f"job {job} could not be cancelled: {err}") from None
        # the follower records the cancellation when Slurm reports it; wait so the reply means "done"
        if run.task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.task), 30)
        return "cancelled"

    async def shutdown(self, reason: str) -> None:
        """The daemon stops: nobody will follow these jobs, so they are cancelled and interrupted."""
        for run in list(self.runs.values()):
            if run.task is not None:
                run.task.cancel()
            if not run.ended:
                run.ended = True
                self.host._set_state(run.job, "interrupted", finished=time.time(), reason="interrupted",
                                     error=reason)
            await asyncio.to_thread(self._cancel_quietly, run)
        self.runs.clear()

    def recover(self, jobs: list[dict]) -> None:
        """Jobs the last daemon left running (now interrupted): cancel what is left of them on Slurm."""
        for job in jobs:
            if wants_slurm(job.get("spec")):
                cancel_by_name(job_name(job["id"]))
