"""engine.memory.HostParking: a module's tensors parked in one reused host buffer and brought back.

CI has no GPU, so the parking is asked to take every tensor (`select`), and CPU modules stand in for the
device side: the same copies, views and `.data` swaps run, only between two places in host memory.
"""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn as nn

from engine import memory

EVERYTHING = dict(select=lambda t: True)


def integer_(t: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return t.copy_(torch.randint(-3, 4, t.shape, generator=g).to(t.dtype))


class Net(nn.Module):
    """Every kind of tensor a park must handle: plain, channels-last-3d, tied (one object used twice and
    two objects viewing one storage), a transposed (dense, permuted) buffer, non-dense buffers (every other
    column, an expansion), bf16, int."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.conv.weight.data = self.conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight  # one object in two places
        self.bf16 = nn.Parameter(torch.zeros(5, dtype=torch.bfloat16))
        self.alias = nn.Parameter(self.bf16.data)  # a second object on the same data
        self.register_buffer("transposed", torch.arange(12.0).reshape(3, 4).t())
        self.register_buffer("gaps", torch.arange(24.0).reshape(4, 6)[:, ::2])
        self.register_buffer("expanded", torch.arange(3.0).reshape(3, 1).expand(3, 4))
        self.register_buffer("count", torch.tensor([7, 8, 9], dtype=torch.int64))
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                integer_(p, i)

    def forward(self, x, v):
        return self.b(self.a(v)) + self.transposed.sum() + self.gaps.sum() + self.expanded.sum(), self.conv(x)


def inputs():
    return integer_(torch.empty(1, 2, 3, 4, 4), 100), integer_(torch.empty(2, 4), 101)


def snapshot(m: nn.Module) -> dict[str, tuple[torch.Tensor, tuple]]:
    return {n: (t.detach().clone(), t.stride()) for n, t in [*m.named_parameters(), *m.named_buffers()]}


NON_DENSE = {"gaps", "expanded"}  # these come back contiguous


def assert_same(m: nn.Module, before: dict, strides: bool = True):
    for n, t in [*m.named_parameters(), *m.named_buffers()]:
        value, stride = before[n]
        assert t.dtype == value.dtype and torch.equal(t, value), n  # bit-identical: equal values, same dtype
        if strides and n not in NON_DENSE:
            assert t.stride() == stride, n


def inside(t: torch.Tensor, buf: torch.Tensor) -> bool:
    return buf.data_ptr() <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= buf.data_ptr() + buf.numel()


def test_park_and_unpark_keep_every_value_bit_for_bit_and_dense_strides():
    m, parking = Net(), memory.HostParking(**EVERYTHING)
    before = snapshot(m)
    parking.park(m)
    buf = parking.buffer(m)
    assert_same(m, before)  # dense tensors keep their strides in the buffer
    for n, t in [*m.named_parameters(), *m.named_buffers()]:
        assert inside(t, buf), n
        assert (t.data_ptr() - buf.data_ptr()) % memory.ALIGN == 0 and t.data_ptr() % memory.ALIGN == 0, n
    # the channels-last-3d conv weight and the transposed buffer among them
    assert m.transposed.stride() == (1, 4)
    assert m.conv.weight.stride() == before["conv.weight"][1] != torch.empty(3, 2, 3, 3, 3).stride()
    assert m.a.weight.stride() == (4, 1)
    parking.unpark(m, "cpu")
    assert_same(m, before)
    assert m.conv.weight.stride() == before["conv.weight"][1]  # channels-last again after the trip
    for n, t in [*m.named_parameters(), *m.named_buffers()]:
        assert not inside(t, buf), n  # copy=True: the module does not alias the buffer the next park writes


def test_non_dense_buffers_round_trip_through_a_contiguous_home():
    m, parking = Net(), memory.HostParking(**EVERYTHING)
    before = snapshot(m)
    assert m.gaps.stride() == (6, 2) and m.expanded.stride() == (1, 0)
    parking.park(m)
    assert m.gaps.is_contiguous() and m.expanded.is_contiguous()
    parking.unpark(m, "cpu")
    assert_same(m, before, strides=False)


def test_tied_tensors_take_one_slot_and_come_back_as_one_tensor():
    m, parking = Net(), memory.HostParking(**EVERYTHING)
    n_bytes = parking.park(m)
    # every slot once: the Linear weight shared by a and b once, `bf16` and its alias once
    distinct = {"conv.weight", "conv.bias", "a.weight", "a.bias", "bf16", "transposed", "gaps",
                "expanded", "count"}
    named = dict([*m.named_parameters(remove_duplicate=False), *m.named_buffers()])
    assert n_bytes == sum(named[k].numel() * named[k].element_size() for k in distinct)
    assert m.alias.data_ptr() == m.bf16.data_ptr()
    parking.unpark(m, "cpu")
    assert m.b.weight is m.a.weight
    assert m.alias.data_ptr() == m.bf16.data_ptr()
    with torch.no_grad():
        m.bf16.add_(1)
    assert torch.equal(m.alias, m.bf16)  # still one tensor, not two copies that drift apart


def test_a_second_park_reuses_the_buffer_and_copies_the_current_values():
    m, parking = Net(), memory.HostParking(**EVERYTHING)
    parking.park(m)
    buf = parking.buffer(m)
    ptrs = {n: t.data_ptr() for n, t in m.named_parameters()}
    parking.unpark(m, "cpu")
    with torch.no_grad():
        m.a.weight.mul_(2)  # weights changed between parks: the host copy must not be stale
        m.count.add_(1)
    before = snapshot(m)
    parking.park(m)
    assert parking.buffer(m) is buf and parking.buffer(m).data_ptr() == buf.data_ptr()
    assert {n: t.data_ptr() for n, t in m.named_parameters()} == ptrs
    assert_same(m, before, strides=False)
    parking.unpark(m, "cpu")
    assert_same(m, before)


def test_a_changed_module_gets_a_new_buffer():
    m, parking = Net(), memory.HostParking(**EVERYTHING)
    parking.park(m)
    parking.unpark(m, "cpu")
    old = parking.buffer(m)
    m.a.bias = nn.Parameter(torch.ones(4))
    m.extra = nn.Parameter(torch.ones(1000))
    before = snapshot(m)
    parking.park(m)
    assert parking.buffer(m) is not old and inside(m.extra, parking.buffer(m))
    parking.unpark(m, "cpu")
    assert_same(m, before)


def test_the_module_computes_the_same_after_unpark():
    # Weights and inputs are small integers, so every product and partial sum is an integer far below
    # 2**24 and exact in fp32: any summation order (other addresses, other kernel blockings) gives the
    # same bits, and the outputs are compared exactly.
    m, parking = Net(), memory.HostParking(**EVERYTHING)
    x, v = inputs()
    with torch.no_grad():
        expected = m(x, v)
        for _ in range(2):
            parking.park(m)
            parked = m(x, v)
            parking.unpark(m, "cpu")
            after = m(x, v)
            for e, p, a in zip(expected, parked, after):
                assert torch.equal(e, p) and torch.equal(e, a)


def test_tensors_not_selected_are_left_alone():
    m, parking = Net(), memory.HostParking()  # default: only tensors off the CPU, and these are on it
    ptrs = {n: t.data_ptr() for n, t in m.named_parameters()}
    assert parking.park(m) == 0
    assert {n: t.data_ptr() for n, t in m.named_parameters()} == ptrs
    assert parking.unpark(m, "cpu") == 0
    assert {n: t.data_ptr() for n, t in m.named_parameters()} == ptrs


def test_park_twice_is_one_park_and_unpark_without_park_does_nothing():
    m, parking = Net(), memory.HostParking(**EVERYTHING)
    assert parking.unpark(m, "cpu") == 0
    assert parking.park(m) > 0
    ptr = m.a.weight.data_ptr()
    assert parking.park(m) == 0 and m.a.weight.data_ptr() == ptr
    assert parking.unpark(m, "cpu") > 0 and parking.unpark(m, "cpu") == 0


class FakeCudart:
    """Records the calls; refuses to unregister memory that is not registered (a double release)."""

    def __init__(self, register_error: int = 0):
        self.register_error = register_error
        self.registered: list[tuple[int, int]] = []  # (ptr, size), in order; a freed address may come again
        self.unregistered: list[int] = []
        self.live: set[int] = set()

    def cudaHostRegister(self, ptr, size, flags):
        if not self.register_error:
            self.registered.append((ptr, size))
            self.live.add(ptr)
        return self.register_error

    def cudaHostUnregister(self, ptr):
        assert ptr in self.live, "unregistering memory that is not registered"
        self.live.remove(ptr)
        self.unregistered.append(ptr)
        return 0


def test_the_buffer_is_registered_once_at_its_size_and_unregistered_on_close_and_on_collection():
    rt = FakeCudart()
    m, m2 = Net(), Net()
    parking = memory.HostParking(pin=True, cudart=rt, **EVERYTHING)
    n = parking.park(m)
    parking.unpark(m, "cpu")
    parking.park(m)  # the second park reuses the registered buffer
    assert len(rt.registered) == 1 and parking.pinned(m)
    ((ptr, size),) = rt.registered
    # the size used, not a power of two: slots rounded up to ALIGN (9 slots), plus ALIGN - 1 spare bytes
    # that align the start
    assert parking.buffer(m).numel() - n < memory.ALIGN * 9 and size == parking.buffer(m).numel() + memory.ALIGN - 1
    parking.unpark(m, "cpu")
    held = parking._entries[m].buffer  # close() unregisters even while something still holds the buffer
    parking.close()
    assert rt.unregistered == [ptr] and not rt.live and not held.pinned
    del held
    parking.close()  # idempotent: FakeCudart would refuse a second unregister

    other = memory.HostParking(pin=True, cudart=rt, **EVERYTHING)
    other.park(m2)
    other.unpark(m2, "cpu")
    assert len(rt.registered) == 2 and rt.live
    del other
    gc.collect()
    assert len(rt.unregistered) == 2 and not rt.live


def test_a_failed_registration_falls_back_to_pageable_and_is_logged_once():
    logs: list[str] = []
    rt = FakeCudart(register_error=2)
    parking = memory.HostParking(log=logs.append, pin=True, cudart=rt, **EVERYTHING)
    m, m2 = Net(), Net()
    before = snapshot(m)
    parking.park(m)
    parking.park(m2)
    assert not parking.pinned(m) and parking.pin_failed
    assert len(logs) == 1 and "error 2" in logs[0] and "pageable" in logs[0]
    parking.unpark(m, "cpu")
    assert_same(m, before)
    parking.close()
    assert rt.unregistered == []


def test_offload_generator_parks_dit_vae_and_t5_and_the_next_generate_brings_them_back():
    from engine.models.text import tiny_text_encoder
    from engine.pipeline import Video2WorldPipeline
    from engine.spec import BuildConfig

    events: list[dict] = []
    pipe = Video2WorldPipeline(BuildConfig(model_size="2B"), device=torch.device("cpu"), emit=events.append)
    pipe.dit, pipe.vae, pipe.text_encoder = Net(), Net(), tiny_text_encoder(0)
    parts = {"dit": pipe.dit, "vae": pipe.vae, "t5": pipe.text_encoder.model}
    before = {k: snapshot(m) for k, m in parts.items()}
    # A CPU pipeline parks nothing (its models are home already); posing as a CUDA one, with a parking
    # that takes every tensor, runs the same path a GPU pipeline does, between two places in host memory.
    pipe.device = torch.device("cuda")
    pipe._parking = parking = memory.HostParking(**EVERYTHING)
    pipe.offload_generator()
    assert pipe._offloaded and any("generator moved to the CPU" in e.get("message", "") for e in events)
    for k, m in parts.items():
        assert all(inside(p, parking.buffer(m)) for p in m.parameters()), k
    bufs = {k: parking.buffer(m).data_ptr() for k, m in parts.items()}
    pipe.offload_generator()  # already parked: nothing moves
    pipe.device = torch.device("cpu")
    pipe._onload_generator()
    assert not pipe._offloaded and any("generator back on" in e.get("message", "") for e in events)
    for k, m in parts.items():
        assert_same(m, before[k], strides=False)
        assert not any(inside(p, parking.buffer(m)) for p in m.parameters()), k
    pipe.device = torch.device("cuda")
    pipe.offload_generator()
    assert pipe._parking is parking and {k: parking.buffer(m).data_ptr() for k, m in parts.items()} == bufs


def test_the_pipeline_makes_its_parking_at_the_first_park():
    from engine.pipeline import Video2WorldPipeline
    from engine.spec import BuildConfig

    pipe = Video2WorldPipeline(BuildConfig(model_size="2B"), device=torch.device("cpu"))
    assert pipe._parking is None
    pipe.dit, pipe.vae = Net(), Net()
    pipe.device = torch.device("cuda")  # see above; the default parking leaves these CPU tensors alone
    pipe.offload_generator()
    first = pipe._parking
    assert isinstance(first, memory.HostParking)
    pipe.device = torch.device("cpu")
    pipe._onload_generator()
    pipe.device = torch.device("cuda")
    pipe.offload_generator()
    assert pipe._parking is first


@pytest.mark.parametrize("shape,stride,dense", [((2, 3), (3, 1), True), ((2, 3), (1, 2), True),
                                                ((3, 4), (1, 3), True), ((3, 4), (1, 0), False),
                                                ((2, 3), (4, 1), False), ((1, 5), (99, 1), True)])
def test_dense_means_numel_slots_in_some_order(shape, stride, dense):
    t = torch.empty(64).as_strided(shape, stride)
    assert memory._dense(t) is dense
