"""An in-memory stand-in for cosmos_tui.client.Client (the API in docs/CONTRACTS.md).

Jobs only move when a test says so (`start`, `step`, `finish`, `fail`), so TUI tests are fast and
deterministic. Every call is recorded in `calls`. `down = True` makes every call fail the way a
vanished daemon does (DaemonNotRunning). Log lines go to real files under `log_dir`, because the
TUI tails log files, and GPUs come from a gpu.py backend (demo by default).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from rich.console import Console

from cosmos_tui.client import DaemonError, DaemonNotRunning
from cosmos_tui.gpu import DemoBackend

TERMINAL = ("done", "failed", "cancelled", "interrupted")


class FakeClient:
    def __init__(self, log_dir: str | Path, gpu=None, clock=lambda: 1_700_000_000.0):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.gpu = gpu or DemoBackend(2)
        self.clock = clock
        self.down = False
        self.paused = False
        self.pause_reason: str | None = None
        self.calls: list[tuple] = []
        self._jobs: dict[int, dict] = {}
        self._order: list[int] = []  # queued jobs, in queue order
        self._events: dict[int, list[dict]] = {}
        self._seq = 0
        self._lock = threading.Lock()  # the TUI calls from worker threads

    # -- plumbing --

    def _call(self, name, *args):
        self.calls.append((name, *args))
        if self.down:
            raise DaemonNotRunning("no cosmos-tui daemon is running (fake daemon is down)")

    def _job(self, id: int) -> dict:
        if id not in self._jobs:
            raise DaemonError(f"job {id} does not exist")
        return self._jobs[id]

    def log(self, id: int, text: str) -> None:
        with open(self._jobs[id]["log_path"], "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def emit(self, id: int, event: str, **fields) -> dict:
        self._seq += 1
        ev = {"event": event, "job": id, "t": self.clock(), **fields, "seq": self._seq}
        self._events.setdefault(id, []).append(ev)
        return ev

    # -- the client API --

    def ping(self) -> dict:
        self._call("ping")
        return {"pong": True, "pid": 4242, "protocol": 1, "home": str(self.log_dir), "warnings": []}

    def submit(self, spec: dict, preset: str | None = None, priority: int = 0) -> int:
        self._call("submit", spec, preset)
        return self._add(spec, preset)

    def submit_batch(self, specs: list[dict], preset: str | None = None, priority: int = 0, base=None) -> list[int]:
        self._call("submit_batch", specs, preset)
        return [self._add({**(base or {}), **s}, preset) for s in specs]

    def _add(self, spec: dict, preset: str | None, attempt_of: int | None = None) -> int:
        from cosmos_tui.presets import load_preset

        with self._lock:
            full = dict(spec)
            if preset:
                full = {**load_preset(preset).spec.model_dump(mode="json"), **spec}
            jid = max(self._jobs, default=0) + 1
            mode = full.get("mode", "video2world")
            self._jobs[jid] = {
                "id": jid, "state": "queued", "mode": mode, "preset": preset, "prompt": full.get("prompt", ""),
                "spec": full, "created": self.clock(), "started": None, "finished": None, "step": None,
                "total_steps": None, "chunk": None,
                "num_chunks": full.get("num_chunks") if mode == "lvg" else None, "generation": None,
                "num_generations": full.get("num_generations") if mode == "bestofn" else None,
                "sec_per_step": None, "eta_s": None, "gpus": [], "gpus_wanted": full.get("num_gpus", 1),
                "peak_mem": None, "error": None, "reason": None, "outputs": [], "critic": [],
                "attempt_of": attempt_of, "log_path": str(self.log_dir / f"job-{jid}.log"), "cwd": None,
                "place": None, "wait_reason": None,
            }
            self._order.append(jid)
        self.log(jid, f"job {jid} queued" + (f" from preset {preset}" if preset else ""))
        return jid

    def jobs(self, states=None) -> list[dict]:
        self._call("jobs", states)
        with self._lock:
            queued = [self._jobs[i] for i in self._order]
            rest = sorted((j for j in self._jobs.values() if j["state"] != "queued"), key=lambda j: -j["id"])
            out = [dict(j) for j in queued + rest if not states or j["state"] in states]
        for place, j in enumerate((j for j in out if j["state"] == "queued"), 1):
            j["place"] = place
            j["wait_reason"] = "queue paused" if self.paused else f"number {place} in the queue"
        return out

    def job(self, id: int) -> dict:
        self._call("job", id)
        return dict(self._job(id))

    def events(self, id: int, after: int = 0) -> list[dict]:
        self._call("events", id, after)
        self._job(id)
        return [e for e in self._events.get(id, []) if e["seq"] > after]

    def cancel(self, id: int) -> str:
        self._call("cancel", id)
        job = self._job(id)
        if job["state"] in TERMINAL:
            raise DaemonError(f"job {id} is already {job['state']}; nothing to cancel")
        self._end(id, "cancelled", error="cancelled by the user", reason="cancelled")
        return "cancelled"

    def retry(self, id: int) -> int:
        self._call("retry", id)
        job = self._job(id)
        if job["state"] not in TERMINAL:
            raise DaemonError(f"job {id} is {job['state']}; only finished, failed, cancelled or interrupted jobs can be retried")
        new = self._add(job["spec"], job["preset"], attempt_of=id)
        self._order.remove(new)
        self._order.insert(0, new)
        return new

    def pause(self, reason: str | None = None) -> dict:
        self._call("pause", reason)
        self.paused, self.pause_reason = True, reason or "paused by the user"
        return self.queue()

    def resume(self) -> dict:
        self._call("resume")
        self.paused, self.pause_reason = False, None
        return self.queue()

    def move(self, id: int, offset: int = 0, to: int | None = None) -> int:
        self._call("move", id, offset)
        if id not in self._order:
            raise DaemonError(f"job {id} is not queued; only queued jobs can be moved")
        old = self._order.index(id)
        new = max(0, min(len(self._order) - 1, (to - 1) if to is not None else old + offset))
        self._order.pop(old)
        self._order.insert(new, id)
        return new + 1

    def hold(self, id: int) -> bool:
        self._call("hold", id)
        return self._set_held(id, True)

    def release(self, id: int) -> bool:
        self._call("release", id)
        return self._set_held(id, False)

    def _set_held(self, id: int, held: bool) -> bool:
        if self._job(id)["state"] != "queued":
            raise DaemonError(f"job {id} is {self._jobs[id]['state']}; only queued jobs can be held or released")
        self._jobs[id]["held"] = held
        return held

    def remove(self, ids: list[int]) -> list[int]:
        self._call("remove", list(ids))
        for i in ids:
            if self._job(i)["state"] not in TERMINAL:
                raise DaemonError(f"job {i} is {self._jobs[i]['state']}; cancel it before removing it")
        for i in ids:
            del self._jobs[i]
        return list(ids)

    def clean(self) -> list[int]:
        self._call("clean")
        ids = sorted(i for i, j in self._jobs.items() if j["state"] in TERMINAL)
        for i in ids:
            del self._jobs[i]
        return ids

    def queue(self) -> dict:
        self._call("queue")
        counts: dict[str, int] = {}
        for j in self._jobs.values():
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        return {"paused": self.paused, "reason": self.pause_reason, "counts": counts, "engines": [],
                "gpu_backend": getattr(self.gpu, "kind", "?"), "gpu_count": getattr(self.gpu, "count", 0),
                "warnings": []}

    def gpus(self) -> list[dict]:
        self._call("gpus")
        owners = {g: j["id"] for j in self._jobs.values() if j["state"] == "running" for g in j["gpus"]}
        return [{**g, "job": owners.get(g["index"]), "engine": "busy" if g["index"] in owners else None}
                for g in self.gpu.list()]

    def log_path(self, id: int) -> str:
        self._call("log_path", id)
        return self._job(id)["log_path"]

    def shutdown(self, force: bool = False) -> str:
        self._call("shutdown", force)
        return "stopping"

    # -- what the tests drive --

    def start(self, id: int, gpus=(0,)) -> None:
        job = self._jobs[id]
        self._order.remove(id)
        total = job["spec"].get("num_steps", 35)
        job.update(state="running", started=self.clock(), gpus=list(gpus), step=0, total_steps=total)
        self.emit(id, "started", mode=job["mode"], spec=job["spec"])
        self.log(id, f"started {{\"mode\": \"{job['mode']}\"}}")

    def step(self, id: int, seconds: float = 0.5, memory: int | None = None, chunk=None, generation=None) -> None:
        job = self._jobs[id]
        job["step"] = (job["step"] or 0) + 1
        if chunk is not None:
            job["chunk"] = chunk
        if generation is not None:
            job["generation"] = generation
        job["sec_per_step"] = seconds
        job["eta_s"] = (job["total_steps"] - job["step"]) * seconds
        self.emit(id, "step", step=job["step"], total=job["total_steps"], seconds=seconds)
        self.log(id, f"step {job['step']}/{job['total_steps']} ({seconds:.2f} s)")
        if memory is not None:
            job["peak_mem"] = max(memory, job["peak_mem"] or 0)
            self.emit(id, "memory", allocated=memory, reserved=memory, peak=job["peak_mem"], device=0)

    def finish(self, id: int, outputs: list[str] = (), kinds: list[str] | None = None) -> None:
        job = self._jobs[id]
        job["outputs"] = [{"path": p, "kind": (kinds[i] if kinds else "video")} for i, p in enumerate(outputs)]
        self._end(id, "done")
        self.emit(id, "finished", outputs=list(outputs), seconds=1.0)

    def fail(self, id: int, error: str, reason: str = "crash") -> None:
        self._end(id, "failed", error=error, reason=reason)

    def _end(self, id: int, state: str, error: str | None = None, reason: str | None = None) -> None:
        job = self._jobs[id]
        if id in self._order:
            self._order.remove(id)
        job.update(state=state, finished=self.clock(), error=error, reason=reason, eta_s=None)
        if job["started"] is None and state != "cancelled":
            job["started"] = self.clock()
        self.log(id, f"{state}" + (f": {error}" if error else ""))


def screen_text(app) -> str:
    """The current screen of a running app as plain text: what a user reads. Used for assertions
    and text snapshots (readable diffs; colour is left to the SVG snapshots)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    lines = console.export_text(styles=False).splitlines()
    return "\n".join(line.rstrip() for line in lines[:height])
