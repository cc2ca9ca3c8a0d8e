"""GPU inventory and telemetry behind one small interface.

`gpu_backend()` returns an object whose `.list()` gives one dict per GPU:
index, name, mem_used, mem_total (bytes), util (percent), temp (Celsius), power (watts).
Two backends: NVML (nvidia-ml-py, imported lazily so a machine without the driver can still start
the TUI) and a demo backend with N fake GPUs, chosen by COSMOS_TUI_GPU=demo[:N] or used when NVML
is unavailable. COSMOS_TUI_GPU=nvml insists on NVML and fails loudly if it is missing.
"""

from __future__ import annotations

import math
import os
import time


class DemoBackend:
    """Fake GPUs with plausible, slowly varying numbers: for CI and laptops."""

    kind = "demo"

    def __init__(self, count: int = 1, mem_total: int = 80 * 1024**3):
        self.count = count
        self.mem_total = mem_total
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
                    "mem_used": int(self.mem_total * 0.05 * wave),
                    "mem_total": self.mem_total,
                    "util": round(10 * wave, 1),
                    "temp": round(35 + 5 * wave, 1),
                    "power": round(60 + 20 * wave, 1),
                }
            )
        return out


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
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "mem_used": mem.used if mem else None,
                    "mem_total": mem.total if mem else None,
                    "util": util.gpu if util else None,
                    "temp": self._read(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
                    "power": power_mw / 1000.0 if power_mw is not None else None,
                }
            )
        return out


def gpu_backend(choice: str | None = None):
    """The backend named by `choice` or $COSMOS_TUI_GPU ("nvml", "demo", "demo:N"); by default
    NVML when it works and has at least one GPU, else one demo GPU."""
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
        if backend.count:
            return backend
    except Exception:
        pass
    return DemoBackend(1)
