"""The engine subprocess: JSON-line requests on stdin, JSON-line events on stdout, logs on stderr.

    {"op":"run","job":7,"spec":{...},"cwd":"/dir"}   run one job; ends with one `finished` or `failed`
    {"op":"ping"}                                    answered with {"event":"pong"}, even mid-job
    {"op":"cancel","job":7}                          asks the running job to stop at its next step
    {"op":"exit"}                                    leave after the current job

At start it writes {"event":"ready","pid":...}. One process serves many jobs in a row so the
pipeline (cached inside engine.modes) stays warm. The protocol gets a private duplicate of the
original stdout; fd 1 is pointed at stderr, so a stray print() in any library lands in the log
instead of corrupting the event stream.

If stdin reaches end-of-file while a job runs, the daemon is gone: nobody will read the result, and
a job left running would hold its GPUs against the next daemon. The process group is killed then.

Under torchrun only rank 0 reads requests and writes events. Other ranks must run the same job in
lock-step; `broadcast_request` / `receive_request` are the hooks for that (TODO: context
parallelism issue: send each request from rank 0 over torch.distributed).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
import traceback

from engine import events
from engine.cli_args import leave_process_group


class Protocol:
    """Serialised writes of event lines; a no-op on ranks other than 0."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, event: dict) -> None:
        if self._stream is None:
            return
        line = events.dumps(event)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                # the reader is gone; stdin EOF handling takes the process down
                pass


def _claim_stdout():
    """Keep a private handle on the real stdout for events and send fd 1 to stderr."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    return os.fdopen(proto_fd, "w", buffering=1)


def _log(message: str) -> None:
    try:
        print(f"[engine {os.getpid()}] {message}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass  # the daemon that read our stderr is gone; stdin EOF handling deals with that


def classify(exc: BaseException) -> tuple[str, str]:
    """(reason, one-sentence error) for an exception raised by a job."""
    from engine.spec import InputError, SpecError

    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, (InputError, SpecError)):
        return "invalid", str(exc).strip() or type(exc).__name__
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if (oom_type is not None and isinstance(exc, oom_type)) or (
        isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()
    ):
        return "oom", f"CUDA out of memory: {first}"[:500]
    # by name: importing engine.pipeline here would pull in torch for a spec error
    names = {c.__name__ for c in type(exc).__mro__}
    if "GuardrailBlocked" in names:
        return "guardrail", first or "a guardrail check refused this job"
    if "Cancelled" in names:
        return "cancelled", "cancelled on request"
    reason = getattr(exc, "reason", None)
    if reason in events.FAIL_REASONS:
        return reason, first or type(exc).__name__
    return "crash", f"{type(exc).__name__}: {first}"[:500]


def _cuda_memory_event(job) -> dict | None:
    if "torch" not in sys.modules:  # a job that failed before loading torch used no GPU memory
        return None
    from engine.memory import cuda_memory

    fields = cuda_memory()
    return events.make("memory", job, **fields) if fields else None


def _reset_cuda_peak() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _free_cuda() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_one(request: dict, proto: Protocol, cancel: threading.Event) -> bool:
    """Run one job and make sure exactly one terminal event goes out for it. True if it finished."""
    job = request.get("job")
    ended = False
    t0 = time.time()

    def emit(event: dict) -> None:
        nonlocal ended
        if ended:
            # run_job already reported the end; a second verdict would confuse the daemon
            return
        event = dict(event)
        if event.get("job") is None:
            # the pipeline need not know job ids; the daemon needs them on every event
            event["job"] = job
        event.setdefault("t", time.time())
        if event.get("event") in ("finished", "failed"):
            ended = True
        proto.write(event)

    try:
        from engine.spec import spec_from_dict

        spec = spec_from_dict(request.get("spec") or {}, source=f"job {job}")
        cwd = request.get("cwd")
        if cwd and os.path.isdir(cwd):
            # relative paths in the spec mean what they meant where the job was submitted
            os.chdir(cwd)
        _reset_cuda_peak()
        from engine.modes import run_job  # lazily: the import pulls in torch and the models

        outputs = run_job(spec, emit, cancel=cancel)
        mem = _cuda_memory_event(job)
        if mem:
            emit(mem)
        if cancel.is_set():
            emit(events.make("failed", job, error="cancelled on request", reason="cancelled"))
        else:
            emit(events.make("finished", job, outputs=[str(p) for p in (outputs or [])], seconds=time.time() - t0))
            return True
        return False
    except BaseException as exc:  # noqa: BLE001 - the server must survive every job
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if cancel.is_set():
            reason, error = "cancelled", "cancelled on request"
        else:
            reason, error = classify(exc)
        if reason == "crash":
            traceback.print_exc(file=sys.stderr)
        else:
            _log(f"job {job} failed ({reason}): {error}")
        if reason == "oom":
            _free_cuda()
        mem = _cuda_memory_event(job)
        if mem:
            emit(mem)
        emit(events.make("failed", job, error=error, reason=reason))
        return False


def broadcast_request(request: dict | None) -> None:
    """Rank 0 hands the request it is about to run to the other ranks (no-op in one process)."""
    from engine import parallel

    if parallel.world_size() > 1:
        parallel.send_request(request)


def receive_request() -> dict | None:
    """Ranks other than 0: block until rank 0 hands over the next request (None: shut down)."""
    from engine import parallel

    return parallel.next_request()


def _multi_rank() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _kill_own_group() -> None:
    try:
        if os.getpgrp() == os.getpid() or os.environ.get("COSMOS_TUI_ENGINE_OF"):
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(1)


def serve(stdin=None, proto: Protocol | None = None) -> int:
    stdin = stdin or sys.stdin
    requests: "queue.Queue[dict | None]" = queue.Queue()
    state = {"job": None, "cancel": threading.Event()}

    gone = threading.Event()

    def reader() -> None:
        for line in stdin:
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except ValueError as e:
                _log(f"ignoring a malformed request ({e}): {line[:200]!r}")
                continue
            op = req.get("op")
            if op == "ping":
                proto.write({"event": "pong", "job": state["job"], "t": time.time(), "pid": os.getpid()})
            elif op == "cancel":
                if state["job"] is not None and req.get("job") in (None, state["job"]):
                    state["cancel"].set()
            elif op in ("run", "exit"):
                requests.put(req)
            else:
                _log(f"ignoring unknown op {op!r}")
        # `gone` first, then the job check; serve() sets the job first, then checks `gone`: whichever
        # comes second sees the other, so a request read together with the EOF never runs
        gone.set()
        if state["job"] is not None:
            _log("stdin closed while a job runs: the daemon is gone, stopping the job's processes")
            _kill_own_group()
        requests.put(None)

    proto.write({"event": "ready", "job": None, "t": time.time(), "pid": os.getpid()})
    threading.Thread(target=reader, name="requests", daemon=True).start()
    _log("ready")
    while True:
        req = requests.get()
        if req is None or req.get("op") == "exit":
            broadcast_request(None)
            break
        state["cancel"] = threading.Event()
        state["job"] = req.get("job")
        if gone.is_set():
            _log(f"job {state['job']} not started: stdin closed, the daemon is gone")
            broadcast_request(None)
            break
        broadcast_request(req)
        _log(f"job {state['job']} starting")
        try:
            ok = run_one(req, proto, state["cancel"])
        finally:
            _log(f"job {state['job']} ended")
            state["job"] = None
        if not ok and _multi_rank():
            # after a failed collective the process group can't be trusted: end the engine, the daemon
            # starts a fresh one for the next job
            _log("a multi-GPU job failed: exiting so the next job gets a fresh process group")
            broadcast_request(None)
            break
    _log("exiting")
    return 0


def die_with_parent() -> None:
    """Linux: be SIGKILLed when the parent dies. The daemon sets this on the process it starts; a
    torchrun worker sets it itself, so a killed torchrun takes its ranks (and their GPUs) along."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    except (OSError, AttributeError):
        pass


def main() -> int:
    if os.environ.get("LOCAL_RANK") is not None and os.environ.get("COSMOS_TUI_ENGINE_OF"):
        die_with_parent()
    rank = int(os.environ.get("RANK", "0"))
    if _multi_rank():
        from engine import parallel

        parallel.init_from_env()
    if rank != 0:
        while True:
            req = receive_request()
            if req is None or req.get("op") == "exit":
                return _leave(0)
            if not run_one(req, Protocol(None), threading.Event()):
                return 1
    proto = Protocol(_claim_stdout())
    return _leave(serve(sys.stdin, proto))


def _leave(code: int) -> int:
    """A clean exit leaves the process group first (cli_args.leave_process_group says why)."""
    leave_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
