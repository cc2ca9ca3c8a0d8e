"""How many bytes each model component holds, and moving a component off the GPU and back.

The pipeline keeps the DiT, the VAE and T5 warm between jobs; these helpers let it report what
each costs per device and free a GPU for the component that needs it next.
"""

from __future__ import annotations

import contextlib
import gc
import itertools

import torch
import torch.nn as nn


def module_bytes(module: nn.Module) -> dict[str, int]:
    """Bytes of parameters + buffers per device ("cuda:0", "cpu", ...). Shared tensors count once."""
    seen: set[tuple[str, int]] = set()
    out: dict[str, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_meta:
            continue
        key = (str(t.device), t.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()
    return out


def component_bytes(components: dict[str, nn.Module | None]) -> dict[str, dict[str, int]]:
    """{"dit": {"cuda:0": n}, "vae": {...}, ...}; components that are None are left out."""
    return {name: module_bytes(_module(m)) for name, m in components.items() if m is not None}


def offload(module, empty_cache: bool = True):
    """Move a component to CPU and give its GPU memory back to the driver's pool. One call."""
    _module(module).to("cpu")
    if empty_cache:
        release_cached()
    return module


def onload(module, device: torch.device | str):
    """Move a component (back) to `device`. One call."""
    _module(module).to(device)
    return module


@contextlib.contextmanager
def visiting(module, device: torch.device | str):
    """Run an inference-only component on `device` inside the block while its home copy stays where it is:
    every parameter and buffer points at a copy on `device` until the block ends, then at its own tensor
    again. Why not `.to(device)` and back: the weights do not change, so the trip back is a second copy of
    every byte for nothing (T5-11B in fp32: 19.6 GB, 14.5 s for both trips on the H200 over pageable memory)."""
    m = _module(module)
    homes: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for t in itertools.chain(m.parameters(), m.buffers()):  # tied tensors come once
                homes.append((t, t.data))
                t.data = t.data.to(device, copy=True)
        yield module
    finally:
        for t, home in homes:
            t.data = home


def cuda_memory(device=None) -> dict | None:
    """The fields of a `memory` event (bytes allocated, reserved, and peak since the last reset) for a CUDA
    device (default: the current one); None without CUDA. The engine server resets the peak per job."""
    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device() if device is None else device
    return {"allocated": torch.cuda.memory_allocated(dev), "reserved": torch.cuda.memory_reserved(dev),
            "peak": torch.cuda.max_memory_allocated(dev), "device": str(dev)}


def release_cached() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _module(m) -> nn.Module:
    # TextEncoder wraps its transformers model; everything else is an nn.Module already
    return m if isinstance(m, nn.Module) else m.model
