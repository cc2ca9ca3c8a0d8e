"""GPU inventory and telemetry behind one small interface.

`gpu_backend()` returns an object whose `.list()` gives one dict per device:
index, name, mem_used, mem_total (bytes), util (percent), temp (Celsius), power (watts), and
`processes` ([{pid, mem}], the compute processes NVML sees on it; mem may be None).
Backends:
- NVML (nvidia-ml-py, imported lazily so a machine without the driver can still start the TUI);
- `NoGpuBackend`, the default when NVML is missing or finds no GPU: one CPU slot (the daemon runs one
  CPU job at a time on it), no numbers at all, and `reason` saying why there is no GPU;
- `DemoBackend`, N made-up GPUs, only when asked for (COSMOS_TUI_GPU=demo[:N]) or by tests.
COSMOS_TUI_GPU=nvml insists on NVML and fails loudly if it is missing.

`slot_name` / `slot_names` / `slots_phrase` are the one rule for naming a slot to a user (the CPU
slot is "cpu", never "0"); the TUI, the CLI and the daemon's logs and wait reasons all use them.

Per-process attribution (`attribute`) joins NVML's PIDs to the daemon's engines by walking each
process's parents in /proc: a torchrun worker belongs to the engine that launched it. NVML reports
host PIDs, so in a container without the host's PID namespace the join finds nothing, and says so.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable


class DemoBackend:
    """Made-up GPUs with plausible, slowly varying numbers: for the demo and tests only."""

    kind = "demo"

    def __init__(self, count: int = 1, mem_total: int | list[int] = 80 * 1024**3, processes: dict | None = None):
        self.count = count
        # one size for all, or one per GPU (a machine with GPUs of different sizes)
        self.mem_totals = list(mem_total) if isinstance(mem_total, (list, tuple)) else [mem_total] * count
        self.processes = processes or {}  # index -> [{pid, mem}], for tests of attribution
        self._t0 = time.time()

    def list(self) -> list[dict]:
        t = time.time() - self._t0
        out = []
        for i in range(self.count):
            wave = 0.5 + 0.5 * math.sin(t / 7.0 + i)
            out.append(
                {
                    "index": i,
                    "name": "Demo GPU",
                    "mem_used": int(self.mem_totals[i] * 0.05 * wave),
                    "mem_total": self.mem_totals[i],
                    "util": round(10 * wave, 1),
                    "temp": round(35 + 5 * wave, 1),
                    "power": round(60 + 20 * wave, 1),
                    "processes": [dict(p) for p in self.processes.get(i, [])],
                }
            )
        return out


class NoGpuBackend:
    """No GPU to read: one CPU slot so CPU jobs (the tiny profile) can still be scheduled, and
    nothing made up: every number is None and `reason` says why there is no GPU."""

    kind = "cpu"  # the daemon reports "GPUs: 1 (cpu)": one CPU slot
    count = 0

    def __init__(self, reason: str):
        self.reason = reason

    def list(self) -> list[dict]:
        return [{"index": 0, "name": "CPU (no GPU)", "cpu": True, "note": self.reason, "mem_used": None,
                 "mem_total": None, "util": None, "temp": None, "power": None, "processes": []}]


def cpu_only(backend: str | None) -> bool:
    """Is `backend` (a GPU backend's `kind`, as the daemon's `queue()` reports it in `gpu_backend`) the
    no-GPU one, whose single slot is the CPU?"""
    return backend == NoGpuBackend.kind


def slot_name(index: int, backend: str | None) -> str:
    """Slot `index` as a user reads it in a cell or a list: every renderer of a job's or engine's slots
    names them here. On a machine with no GPU the slot is the CPU; showing its index, 0, read as GPU 0 in use."""
    return "cpu" if cpu_only(backend) else str(index)


def slot_names(indices, backend: str | None) -> str:
    """'0,1' on GPUs, 'cpu' on the CPU slot; '' for none."""
    return ",".join(dict.fromkeys(slot_name(i, backend) for i in indices))


def slots_phrase(indices, backend: str | None) -> str:
    """The slots for a sentence ("starts on ..."): 'GPUs [0, 1]' (the log lines' format of old, which
    people grep) or 'the CPU'."""
    if cpu_only(backend):
        return "the CPU"
    return f"GPUs [{', '.join(slot_name(i, backend) for i in indices)}]"


class NvmlBackend:
    kind = "nvml"

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self.count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]

    def _read(self, fn, *args, default=None):
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return default

    def _processes(self, handle) -> list[dict]:
        n = self._nvml
        seen: dict[int, dict] = {}
        for fn in (n.nvmlDeviceGetComputeRunningProcesses, n.nvmlDeviceGetGraphicsRunningProcesses):
            for p in self._read(fn, handle, default=None) or []:
                mem = getattr(p, "usedGpuMemory", None)
                # NVML says "not available" (no permission, MIG) with None or a huge sentinel
                if not isinstance(mem, int) or mem < 0 or mem >= 2**63:
                    mem = None
                seen.setdefault(int(p.pid), {"pid": int(p.pid), "mem": mem})
        return list(seen.values())

    def list(self) -> list[dict]:
        n = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            mem = self._read(n.nvmlDeviceGetMemoryInfo, h)
            util = self._read(n.nvmlDeviceGetUtilizationRates, h)
            power_mw = self._read(n.nvmlDeviceGetPowerUsage, h)
            name = self._read(n.nvmlDeviceGetName, h, default="GPU")
            out.append(
                {
                    "index": i,
                    "name": name.decode(errors="replace") if isinstance(name, bytes) else name,
                    "mem_used": mem.used if mem else None,
                    "mem_total": mem.total if mem else None,
                    "util": util.gpu if util else None,
                    "temp": self._read(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
                    "power": power_mw / 1000.0 if power_mw is not None else None,
                    "processes": self._processes(h),
                }
            )
        return out


def gpu_backend(choice: str | None = None):
    """The backend named by `choice` or $COSMOS_TUI_GPU ("nvml", "demo", "demo:N"); by default
    NVML when it works and has at least one GPU, else no GPU (a CPU slot) with the reason."""
    choice = choice if choice is not None else os.environ.get("COSMOS_TUI_GPU", "")
    if choice.startswith("demo"):
        _, _, n = choice.partition(":")
        try:
            count = int(n) if n else 1
        except ValueError:
            raise ValueError(f"COSMOS_TUI_GPU={choice!r}: the demo GPU count must be a number, e.g. demo:2") from None
        return DemoBackend(max(1, count))
    if choice == "nvml":
        return NvmlBackend()
    if choice:
        raise ValueError(f"COSMOS_TUI_GPU={choice!r} is not a GPU backend; use nvml, demo or demo:N")
    try:
        backend = NvmlBackend()
    except Exception as err:  # no library, no driver, driver/library mismatch: all mean "no GPU here"
        return NoGpuBackend(f"NVML not available: {_reason(err)}")
    if not backend.count:
        return NoGpuBackend("NVML found no GPU")
    return backend


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, ImportError):
        return f"nvidia-ml-py is not installed ({text})" if text else "nvidia-ml-py is not installed"
    return text or type(err).__name__


# -- who owns a GPU process --


def parent_pid(pid: int) -> int | None:
    """The parent of `pid` from /proc (None when it is gone or not in our PID namespace)."""
    try:
        stat = open(f"/proc/{int(pid)}/stat", "rb").read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and ')'
    except (OSError, IndexError, ValueError):
        return None


def process_name(pid: int) -> str | None:
    try:
        raw = open(f"/proc/{int(pid)}/comm", "rb").read().strip()
    except OSError:
        return None
    # a process name is bytes: shown as data, never as escapes to the terminal
    return "".join(c if c.isprintable() else "?" for c in raw.decode("utf-8", "replace"))[:32]


def attribute(processes: list[dict], engines: dict[int, int | None],
              parent_of: Callable[[int], int | None] = parent_pid,
              name_of: Callable[[int], str | None] = process_name) -> list[dict]:
    """Each NVML process with the engine (and job) it belongs to: the process itself or its
    nearest ancestor that is an engine. `engines` maps engine pid -> job id (None when idle).
    A process not in our PID namespace (a container without the host's) gets `visible` False."""
    out = []
    for p in processes:
        pid = int(p["pid"])
        row = {**p, "engine": None, "job": None, "name": name_of(pid), "visible": True}
        cur: int | None = pid
        for _ in range(64):  # a parent chain is short; a loop in a bad /proc read must end
            if cur is None or cur <= 1:
                break
            if cur in engines:
                row["engine"], row["job"] = cur, engines[cur]
                break
            nxt = parent_of(cur)
            if nxt is None and cur == pid:
                row["visible"] = False
            cur = nxt
        out.append(row)
    return out
