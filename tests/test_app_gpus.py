"""The GPU pane: no made-up GPU outside the demo backend, why there is no GPU, per-process memory
with the owning job, and history plotted against a labelled, fixed scale."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cosmos_tui import gpu as gpu_mod
from cosmos_tui.gpu import DemoBackend, NoGpuBackend, attribute, gpu_backend, parent_pid
from cosmos_tui.widgets.history_plot import bucket, plot_rows, plot_text
from fake_client import FakeClient, screen_text
from test_app import make_app, wait_for

T0 = 1_700_000_000.0
GIB = 1024**3


def test_without_nvml_the_default_backend_is_no_gpu_with_the_reason(monkeypatch):
    monkeypatch.delenv("COSMOS_TUI_GPU", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    backend = gpu_backend()
    assert isinstance(backend, NoGpuBackend)
    assert backend.reason.startswith("NVML not available: nvidia-ml-py is not installed")
    (slot,) = backend.list()
    assert slot["cpu"] and slot["mem_used"] is None and slot["util"] is None
    assert "Demo" not in slot["name"]
    assert isinstance(gpu_backend("demo:2"), DemoBackend)  # only when asked for


def test_nvml_with_no_gpu_says_so(monkeypatch):
    class NoDevices:
        count = 0

    monkeypatch.delenv("COSMOS_TUI_GPU", raising=False)
    monkeypatch.setattr(gpu_mod, "NvmlBackend", NoDevices)
    assert gpu_backend().reason == "NVML found no GPU"


async def test_the_gpu_pane_without_nvml_says_why_and_shows_no_demo_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("COSMOS_TUI_GPU", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    fake = FakeClient(tmp_path / "logs", clock=lambda: T0)
    fake.down = True  # the TUI reads the GPUs itself, with the default backend
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: len(app.screen.query("GpuCard")) == 1, what="the CPU slot")
        await wait_for(pilot, lambda: "CPU slot" in screen_text(app), what="the card filled")
        text = screen_text(app)
        assert "no GPU, jobs run on the CPU one at a time · NVML not available" in text
        assert "│ NVML not available: nvidia-ml-py is not installed" in text  # the card has it whole
        assert "Demo GPU" not in text and "80.0G" not in text


class _Engine:
    """A real parent with a real child: the test process plays the engine, a sleeping child its
    torchrun worker, so the ancestor walk reads the real /proc."""

    def __enter__(self):
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        return self

    def __exit__(self, *exc):
        self.child.kill()
        self.child.wait()


def test_attribute_walks_parents_to_the_engine():
    with _Engine() as eng:
        assert parent_pid(eng.child.pid) == os.getpid()
        rows = attribute([{"pid": eng.child.pid, "mem": GIB}, {"pid": os.getppid(), "mem": None}],
                         {os.getpid(): 7})
        assert (rows[0]["engine"], rows[0]["job"]) == (os.getpid(), 7)
        assert rows[1]["job"] is None and rows[1]["engine"] is None and rows[1]["visible"]
    gone = attribute([{"pid": 2**31 - 2, "mem": 1}], {os.getpid(): 7}, parent_of=lambda pid: None)
    assert gone[0]["visible"] is False
    # a loop in the parent chain ends
    assert attribute([{"pid": 10, "mem": 1}], {}, parent_of=lambda pid: 11 if pid == 10 else 10,
                     name_of=lambda pid: None)[0]["job"] is None


async def test_gpu_processes_show_their_memory_and_owning_job(tmp_path, frozen):
    with _Engine() as eng:
        procs = {0: [{"pid": eng.child.pid, "mem": 3 * GIB}, {"pid": os.getppid(), "mem": GIB // 2}]}
        fake = FakeClient(tmp_path / "logs", gpu=DemoBackend(2, processes=procs), clock=lambda: T0)
        job = fake.submit({"prompt": "x"}, preset="tiny-cpu")
        fake.start(job, gpus=(0,))
        # the engine's pid as the daemon records it: this process, whose child is the GPU's worker
        fake._on_daemon(lambda: fake.daemon.store.update(job, engine_pid=os.getpid()))
        app = make_app(fake)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.polls >= 1, what="jobs")
            app.poll_gpus()  # again, now that the app knows the running job's engine
            await pilot.press("2")
            await wait_for(pilot, lambda: f"job {job} (engine {os.getpid()})" in screen_text(app),
                           what="the worker's owner")
            text = screen_text(app)
            worker = next(line for line in text.splitlines() if f"pid {eng.child.pid} " in line)
            assert "3.0G" in worker and "python" in worker
            other = next(line for line in text.splitlines() if f"pid {os.getppid()} " in line)
            assert "0.5G" in other and "not a cosmos-tui job" in other
            assert "no processes" in text  # GPU 1


@pytest.fixture
def frozen(monkeypatch):
    import types

    monkeypatch.setattr(gpu_mod, "time", types.SimpleNamespace(time=lambda: T0))


def test_history_is_bucketed_by_time_against_a_fixed_scale():
    now = 100.0
    samples = [(90.0, 10.0), (95.0, 80.0), (95.5, 20.0), (99.0, 40.0), (100.0, 0.0)]
    cells = bucket(samples, now, 6, seconds_per_cell=2.0)
    assert cells == [10.0, None, 80.0, None, 40.0, 0.0]  # the peak of each 2 s, newest right
    top, bottom = plot_rows(cells, 80.0, rows=2)
    # 40 of 80 is half the height (the bottom row full), 80 of 80 the whole, 10 of 80 one level
    assert bottom == "▂ █ █ " and top == "  █   "
    text = plot_text(cells, 80.0, "80G", "0G", "mem")
    assert text.splitlines() == ["mem 80G┤  █   ", "     0G┤▂ █ █ "]


class _Script:
    """A backend that reports what the test says, one GPU at 80 GiB."""

    kind = "nvml"
    count = 1

    def __init__(self):
        self.mem, self.util = 0, 0

    def list(self):
        return [{"index": 0, "name": "H200", "mem_used": self.mem, "mem_total": 80 * GIB, "util": self.util,
                 "temp": 40, "power": 100, "processes": []}]


async def test_the_gpu_pane_plots_memory_and_utilisation_history_with_its_scale(tmp_path):
    backend = _Script()
    fake = FakeClient(tmp_path / "logs", gpu=backend, clock=lambda: T0)
    now = [T0]
    app = make_app(fake, clock=lambda: now[0])
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: "H200" in screen_text(app), what="the card")
        for mem, util in ((80, 100), (40, 50), (10, 0)):
            now[0] += 2.0
            backend.mem, backend.util = mem * GIB, util
            before = app.gpu_polls
            app.poll_gpus()
            await wait_for(pilot, lambda: app.gpu_polls > before, what="a sample")
            await pilot.pause()
        text = screen_text(app)
        assert "mem 80G┤" in text and "util 100%┤" in text and "0G┤" in text and "0%┤" in text
        mem_top, mem_bottom = str(app.screen.query_one(".gpu-mem").render()).splitlines()
        util_top, util_bottom = str(app.screen.query_one(".gpu-util").render()).splitlines()
        # the last three cells, 2 s apart: 80 GiB (full height), 40 GiB (half), 10 GiB (2 of 16)
        assert (mem_top[-3:], mem_bottom[-3:]) == ("█  ", "██▂")
        # 100 %, 50 %, 0 % (nothing drawn)
        assert (util_top[-3:], util_bottom[-3:]) == ("█  ", "██ ")


def test_nvml_backend_reads_processes_and_hides_unknown_memory(monkeypatch):
    """NVML stubbed as gpustat's tests do: the backend's reading of it, not the driver."""
    import types

    class NVMLError(Exception):
        pass

    proc = lambda pid, mem: types.SimpleNamespace(pid=pid, usedGpuMemory=mem)  # noqa: E731
    nvml = types.SimpleNamespace(
        NVMLError=NVMLError, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=GIB, total=80 * GIB),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42),
        nvmlDeviceGetPowerUsage=lambda h: 350_000, nvmlDeviceGetName=lambda h: b"NVIDIA H200",
        nvmlDeviceGetTemperature=lambda h, kind: 51,
        # a compute process, one that NVML cannot size (None), the same pid again as graphics
        nvmlDeviceGetComputeRunningProcesses=lambda h: [proc(100, 3 * GIB), proc(101, None)],
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [proc(100, 3 * GIB), proc(102, 2**64 - 1)],
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("COSMOS_TUI_GPU", raising=False)
    backend = gpu_backend()
    assert backend.kind == "nvml"
    (g,) = backend.list()
    assert (g["name"], g["mem_used"], g["util"], g["power"], g["temp"]) == ("NVIDIA H200", GIB, 42, 350.0, 51)
    assert g["processes"] == [{"pid": 100, "mem": 3 * GIB}, {"pid": 101, "mem": None}, {"pid": 102, "mem": None}]

    def broken():
        raise NVMLError("Driver/library version mismatch")

    monkeypatch.setattr(nvml, "nvmlInit", broken)
    assert gpu_backend().reason == "NVML not available: Driver/library version mismatch"


async def test_a_sample_that_arrives_before_the_card_is_composed_is_shown_once_it_is():
    """The GPU screen mounts a card and hands it a sample at once; under load the next sample can come before
    the card's children exist (CI saw NoMatches on '.gpu-title'). The card keeps the latest for its mount."""
    from textual.app import App

    from cosmos_tui.widgets.gpu_card import GpuCard

    first, second = (DemoBackend(1).list()[0] for _ in range(2))
    second = {**second, "name": "Second Sample GPU"}

    class Host(App):
        def on_mount(self) -> None:
            card = GpuCard(0)
            self.mount(card)
            card.update_gpu(first)  # before the card's compose has run
            card.update_gpu(second)

    app = Host()
    async with app.run_test(size=(100, 20)) as pilot:
        await pilot.pause()
        title = str(app.query_one(".gpu-title").render())
        assert "Second Sample GPU" in title


# -- naming a job's slot: the CPU slot of a machine with no GPU is "cpu", never GPU 0 --


def test_slots_are_named_by_one_rule_and_the_cpu_slot_is_never_a_number():
    from cosmos_tui.gpu import slot_name, slot_names, slots_phrase

    assert [slot_name(0, k) for k in ("nvml", "demo", None)] == ["0", "0", "0"]
    assert slot_name(0, NoGpuBackend.kind) == "cpu"
    assert slot_names([0, 1], "nvml") == "0,1" and slot_names([0], "cpu") == "cpu" and slot_names([], "cpu") == ""
    assert (slots_phrase([0], "demo"), slots_phrase([0, 1], "nvml"), slots_phrase([0], "cpu")) == \
        ("GPUs [0]", "GPUs [0, 1]", "the CPU")


def _cpu_only_fake(tmp_path) -> FakeClient:
    return FakeClient(tmp_path / "logs", gpu=NoGpuBackend("NVML found no GPU"), clock=lambda: T0)


def test_on_a_cpu_only_machine_the_daemon_says_cpu_in_words_and_keeps_the_index_on_the_wire(tmp_path):
    from cosmos_tui import paths

    fake = _cpu_only_fake(tmp_path)
    running = fake.submit({"prompt": "on the cpu"}, preset="tiny-cpu")
    waiting = fake.submit({"prompt": "next"}, preset="tiny-cpu")
    fake.start(running)
    assert fake.queue()["gpu_backend"] == "cpu" and fake.job(running)["gpus"] == [0]
    assert fake.job(waiting)["wait_reason"] == "waiting for the CPU (it runs one job at a time)"
    assert f"job {running} starts on the CPU" in paths.job_log_path(running).read_text()


async def test_on_a_cpu_only_machine_the_queue_and_the_job_name_the_slot_cpu(tmp_path):
    from textual.widgets import Static

    from test_app import cell, table

    fake = _cpu_only_fake(tmp_path)
    running = fake.submit({"prompt": "on the cpu"}, preset="tiny-cpu")
    fake.submit({"prompt": "next"}, preset="tiny-cpu")
    fake.start(running)
    app = make_app(fake)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 2, what="rows")
        assert cell(app, running, "gpus") == "cpu"
        row = next(line for line in screen_text(app).splitlines() if "on the cpu" in line)
        assert row.split()[-2:] == ["cpu", "30s"]  # the GPU column, then the time: no 0 where the slot goes
        app.selected_job = running
        app.action_open_job()
        await wait_for(pilot, lambda: getattr(app.screen, "job_id", None) == running
                       and " · elapsed " in screen_text(app), what="the job's progress")
        text = str(app.screen.query_one("#job-progress", Static).render())
        assert "GPUs cpu" in text and "GPUs 0" not in text


async def test_with_gpus_the_queue_still_names_the_gpu_by_its_index(tmp_path):
    from test_app import cell, table

    fake = FakeClient(tmp_path / "logs", gpu=DemoBackend(2), clock=lambda: T0)
    a = fake.submit({"prompt": "x"}, preset="tiny-cpu")
    fake.start(a, gpus=(1,))
    app = make_app(fake)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: table(app).row_count == 1, what="row")
        assert cell(app, a, "gpus") == "1"


def test_the_cli_names_the_cpu_slot_and_its_json_keeps_the_index(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from cosmos_tui import cli

    fake = _cpu_only_fake(tmp_path)
    a = fake.submit({"prompt": "on the cpu"}, preset="tiny-cpu")
    fake.start(a)

    class Connect:  # what the commands call, answering with the CPU-only fake daemon
        def __call__(self, *args, **kwargs):
            return fake

        def connect(self, autostart=True):
            return fake

    monkeypatch.setattr(cli, "Client", Connect())
    run = lambda *args: CliRunner().invoke(cli.app, [str(x) for x in args])  # noqa: E731
    ls = run("ls")
    assert ls.exit_code == 0, ls.output
    row = next(line for line in ls.output.splitlines() if "on the cpu" in line)
    assert row.split()[-4:] == ["cpu", "on", "the", "cpu"] and " 0 " not in row
    assert json.loads(run("ls", "--json").output)[0]["gpus"] == [0]  # machine output: schema unchanged
    assert "gpus cpu" in run("show", a).output
    assert json.loads(run("show", a, "--json").output)["gpus"] == [0]
    status = run("daemon", "status").output
    assert "GPUs: 1 (cpu)" in status and "on the CPU: job" in status and "[0]" not in status
