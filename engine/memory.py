"""How many bytes each model component holds, and moving a component off the GPU and back.

The pipeline keeps the DiT, the VAE and T5 warm between jobs; these helpers let it report what
each costs per device and free a GPU for the component that needs it next.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

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


ALIGN = 256  # bytes; every tensor's slice of a parking buffer starts on such a boundary


@dataclass
class _Slot:
    tensors: list[torch.Tensor]  # the parameter/buffer objects that share this data (tied: more than one)
    offset: int  # bytes from the start of the flat buffer
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # the home's strides: the tensor's own when dense, else contiguous
    home: Optional[torch.Tensor] = None  # a view of the flat buffer


class _HostBuffer:
    """`n` bytes of host memory, page-locked with cudaHostRegister when asked and able.

    Why not `torch.empty(n, pin_memory=True)`: torch's pinned caching allocator rounds every request up
    to a power of two (CachingHostAllocator.h, allocate: `c10::llvm::PowerOf2Ceil(size)` unless
    PYTORCH_CUDA_ALLOC_CONF's pinned_max_round_threshold says otherwise; its default is SIZE_MAX), so
    the 14B DiT's 26.8 GiB would take 32 GiB of host RAM, and a size just above a power of two nearly
    twice itself; it also keeps a freed block cached instead of giving it back. Registering a plain
    allocation pins exactly what is used."""

    def __init__(self, n: int, pin: bool, cudart=None, on_pin_failure: Callable[[str], None] | None = None):
        # ALIGN - 1 spare bytes so the first slice starts on an absolute ALIGN boundary (large host
        # allocations come back page + 64 bytes)
        self.raw = torch.empty(n + ALIGN - 1, dtype=torch.uint8)
        start = -self.raw.data_ptr() % ALIGN
        self.flat = self.raw[start:start + n]
        self.pinned = False
        self._finalizer = None
        if pin and n:
            err = _register(cudart, self.raw)
            if err is None:
                self.pinned = True
                # the finalizer holds `raw`, so its memory cannot be freed while it is still registered
                self._finalizer = weakref.finalize(self, _unregister, cudart, self.raw)
                self._finalizer.atexit = False  # at exit the process's memory goes back whole
            elif on_pin_failure is not None:
                on_pin_failure(err)

    def release(self) -> None:
        """Unregister now (idempotent). Views already handed out stay valid, as pageable memory."""
        if self._finalizer is not None:
            self._finalizer()
        self.pinned = False


def _register(cudart, raw: torch.Tensor) -> str | None:
    """Page-lock `raw`; None on success, else why not."""
    try:
        rt = cudart if cudart is not None else torch.cuda.cudart()
        # portable (flag 1): pinned for every device's context, not only the one current here
        code = int(rt.cudaHostRegister(raw.data_ptr(), raw.numel(), 1))
    except Exception as e:  # no CUDA runtime bindings in this torch, or the call itself raised
        return f"{type(e).__name__}: {e}"
    if code == 0:
        return None
    _clear_cuda_error()
    return f"cudaHostRegister returned error {code}"


def _unregister(cudart, raw: torch.Tensor) -> None:
    rt = cudart if cudart is not None else torch.cuda.cudart()
    if int(rt.cudaHostUnregister(raw.data_ptr())) != 0:
        _clear_cuda_error()


def _clear_cuda_error() -> None:
    # A failed runtime call stays the thread's "last error" (torch's cudart bindings do not clear it),
    # and the next kernel launch check would report it against an unrelated kernel. One launch here
    # reads and clears it; the error itself has been reported by the caller.
    if torch.cuda.is_available():
        try:
            torch.ones(1, device="cuda")
        except Exception:
            pass


def _dense(t: torch.Tensor) -> bool:
    """True when t's elements fill exactly numel() contiguous slots in some dimension order (contiguous,
    channels-last(-3d), any permutation), so a home with t's own strides needs numel() elements."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _contiguous_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for size in reversed(shape):
        out.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(out))


def _off_cpu(t: torch.Tensor) -> bool:
    return t.device.type != "cpu"


class HostParking:
    """Parks a module's GPU tensors in host memory and brings them back, one flat buffer per module.

    `park` copies every selected parameter and buffer (default: those not on the CPU; an offloaded T5
    already lives there and is left alone) into its slice of the module's buffer and points the tensor's
    `.data` at that slice, which frees its GPU storage (`release_cached()` then gives it to the driver);
    `unpark` points each back at a fresh copy on the device. Against `module.to("cpu")`, which allocates
    pageable memory for every tensor every time (the 14B DiT: 26.8 GiB in 30.4 s on the H200), the
    buffer is allocated and page-locked once, at the first park, and reused by every later one: DMA
    straight from and to pinned pages, no new allocation. Each park copies the current values again, so
    weights changed between parks are parked as they are then, never a stale copy.

    Homes keep each tensor's strides when it is dense (the VAE decoder's channels-last-3d weights come back
    channels-last), else they are contiguous. Tied tensors (one object, or objects viewing the same data
    the same way) get one slot and come back as one tensor. Inference only: gradients are not parked.
    """

    def __init__(self, log: Callable[[str], None] | None = None, *, pin: bool | None = None, cudart=None,
                 select: Callable[[torch.Tensor], bool] = _off_cpu):
        self._log = log
        self._pin = pin  # None: page-lock when the parked tensors are CUDA tensors
        self._cudart = cudart  # torch.cuda.cudart() unless a test gives a stand-in
        self._select = select
        self._entries: "weakref.WeakKeyDictionary[nn.Module, _Entry]" = weakref.WeakKeyDictionary()
        self.pin_failed = False

    def buffer(self, module) -> torch.Tensor | None:
        """The module's flat host buffer (uint8), None before its first park."""
        e = self._entries.get(_module(module))
        return None if e is None else e.buffer.flat

    def pinned(self, module) -> bool:
        e = self._entries.get(_module(module))
        return e is not None and e.buffer.pinned

    def park(self, module) -> int:
        """Move the module's selected tensors into its host buffer; returns the bytes parked. A module that
        is parked already stays as it is (0)."""
        m = _module(module)
        e = self._entries.get(m)
        if e is not None and e.parked:
            return 0
        slots, n = self._plan(m)
        if e is None or e.layout != _layout(slots, n):
            if e is not None:
                e.buffer.release()
            on_cuda = any(s.tensors[0].is_cuda for s in slots)
            pin = on_cuda if self._pin is None else self._pin
            e = _Entry(_HostBuffer(n, pin, self._cudart, self._pin_failure), slots, _layout(slots, n))
            for s in e.slots:
                s.home = (e.buffer.flat[s.offset:s.offset + s.nbytes].view(s.dtype)
                          .as_strided(s.shape, s.stride))
            self._entries[m] = e
        else:
            for old, new in zip(e.slots, slots):
                old.tensors = new.tensors  # same layout; the objects may be new (a module rebuilt in place)
        with torch.no_grad():
            for s in e.slots:
                s.home.copy_(s.tensors[0].data, non_blocking=True)
            _synchronize({s.tensors[0].device for s in e.slots})  # every copy landed before the GPU data goes
            for s in e.slots:
                for t in s.tensors:
                    t.data = s.home
        e.parked = True
        return sum(s.nbytes for s in e.slots)

    def unpark(self, module, device: torch.device | str) -> int:
        """Point the parked tensors at fresh copies on `device` (copy=True: on a CPU `device` too, the module
        must not alias the buffer the next park writes into). Returns the bytes moved; 0 if not parked."""
        m = _module(module)
        e = self._entries.get(m)
        if e is None or not e.parked:
            return 0
        device = torch.device(device)
        with torch.no_grad():
            for s in e.slots:
                on_device = s.home.to(device, non_blocking=True, copy=True)
                for t in s.tensors:
                    t.data = on_device
        # the copies read the buffer asynchronously: done before anyone may write it (the next park) or
        # unregister it, and before the caller's clock stops
        _synchronize({device})
        e.parked = False
        return sum(s.nbytes for s in e.slots)

    def close(self) -> None:
        """Unregister every buffer and forget them. A module still parked keeps valid (pageable) host tensors."""
        for e in list(self._entries.values()):
            e.buffer.release()
        self._entries.clear()

    def _pin_failure(self, why: str) -> None:
        if not self.pin_failed and self._log is not None:
            self._log(f"host parking: could not page-lock the host buffer ({why}); parking in pageable "
                      f"memory, which is slower")
        self.pin_failed = True

    def _plan(self, m: nn.Module) -> tuple[list[_Slot], int]:
        slots: list[_Slot] = []
        by_view: dict[tuple, _Slot] = {}
        n = 0
        for t in itertools.chain(m.parameters(), m.buffers()):  # each object once
            if t.is_meta or not self._select(t):
                continue
            # distinct objects viewing the same data the same way are one tensor to the module's maths
            key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if key in by_view and t.numel():
                by_view[key].tensors.append(t)
                continue
            stride = t.stride() if _dense(t) else _contiguous_strides(t.shape)
            nbytes = t.numel() * t.element_size()
            s = _Slot([t], n, nbytes, t.dtype, tuple(t.shape), tuple(stride))
            slots.append(s)
            by_view[key] = s
            n += -(-nbytes // ALIGN) * ALIGN
        return slots, n


@dataclass
class _Entry:
    buffer: _HostBuffer
    slots: list[_Slot]
    layout: tuple
    parked: bool = False


def _layout(slots: list[_Slot], n: int) -> tuple:
    return n, tuple((s.offset, s.dtype, s.shape, s.stride, len(s.tensors)) for s in slots)


def _synchronize(devices) -> None:
    for d in devices:
        if torch.device(d).type == "cuda":
            torch.cuda.synchronize(d)


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
