"""The Slurm executor against a real Slurm (tests/slurm_cluster.py: slurmctld, slurmd and munge on
localhost): tiny CPU jobs go through sbatch, their events reach the daemon through the events file,
and cancels, kills and time limits end them with the right state and reason."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import stop_daemon
from cosmos_tui.client import Client
from slurm_cluster import slurm_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.slurm


def _tiny_image(path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (64, 48))
    for x in range(64):
        for y in range(48):
            img.putpixel((x, y), (x * 4, y * 5, (x + y) * 2))
    img.save(path)


@pytest.fixture
def slurm_daemon(slurm_cluster, cosmos_home, monkeypatch, tmp_path):  # noqa: F811
    """A daemon whose Slurm jobs go to the test cluster; its client, and the spec of a tiny job."""
    for k, v in slurm_cluster.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("COSMOS_TUI_ENGINE_CMD", raising=False)
    monkeypatch.setenv("COSMOS_TUI_GPU", "demo:1")
    monkeypatch.setenv("COSMOS_TUI_SLURM_POLL_S", "0.5")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    image = tmp_path / "in.png"
    _tiny_image(image)
    spec = {
        "model_size": "tiny", "num_steps": 2, "disable_guardrail": True, "disable_prompt_refiner": True,
        "input_path": str(image), "save_path": str(tmp_path / "slurm.mp4"), "prompt": "a gradient drifts",
        "executor": "slurm", "slurm_gpus_per_node": 0, "slurm_partition": slurm_cluster.partition,
        "slurm_time_limit": "10",
    }
    client = Client.connect()
    try:
        yield client, spec
    finally:
        stop_daemon(cosmos_home)


def _ended(client, jid, wait_until, timeout=120):
    return wait_until(lambda: (j := client.job(jid))["state"] not in ("queued", "running") and j, timeout,
                      what=f"job {jid} to end")


def _slurm_id(client, jid, wait_until) -> int:
    def submitted():
        for e in client.events(jid):
            msg = e.get("message") or ""
            if e["event"] == "log" and msg.startswith("submitted to Slurm as job "):
                return int(msg.split()[5])
        return None

    return wait_until(submitted, 60, what="the sbatch submission")


def _first_step(client, jid, wait_until):
    wait_until(lambda: any(e["event"] == "step" for e in client.events(jid)), 120, what="the engine's first step")


def _squeue_state(slurm_id: int) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(slurm_id), "-o", "%T"], capture_output=True,
                         text=True, env=os.environ)
    return out.stdout.strip()


def test_tiny_job_runs_through_sbatch_with_its_events_and_video(slurm_daemon, wait_until):
    client, spec = slurm_daemon
    jid = client.submit(spec)
    job = _ended(client, jid, wait_until)
    log = Path(client.log_path(jid)).read_text()
    assert job["state"] == "done", (job["error"], log[-3000:])
    out = Path(spec["save_path"])
    assert out.is_file() and out.stat().st_size > 0
    assert str(out) in [o["path"] for o in job["outputs"]]
    events = client.events(jid)
    kinds = [e["event"] for e in events]
    # the engine's own events came back through the events file, in order, from rank 0 alone
    assert kinds.index("started") < kinds.index("step") < kinds.index("finished")
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == list(range(1, job["total_steps"] + 1)) and job["step"] == job["total_steps"]
    slurm_id = _slurm_id(client, jid, wait_until)
    messages = [e.get("message") for e in events if e["event"] == "log"]
    assert f"Slurm job {slurm_id}: RUNNING on ctnode" in messages
    # the engine's `finished` decides `done`; Slurm's job ends when the engine process has exited
    wait_until(lambda: _squeue_state(slurm_id) == "COMPLETED", 60, what="Slurm to report the job completed")
    assert "[slurm] cosmos-tui job" in log  # the job's stderr on shared storage reached the job log


def test_cancel_goes_through_scancel_and_ends_cancelled(slurm_daemon, wait_until):
    client, spec = slurm_daemon
    jid = client.submit({**spec, "num_steps": 1000})
    slurm_id = _slurm_id(client, jid, wait_until)
    _first_step(client, jid, wait_until)
    assert client.cancel(jid) == "cancelled"
    job = client.job(jid)
    assert (job["state"], job["reason"]) == ("cancelled", "cancelled")
    wait_until(lambda: _squeue_state(slurm_id) == "CANCELLED", 60, what="Slurm to report the job cancelled")


def test_kill_from_outside_ends_interrupted_with_the_reason(slurm_daemon, wait_until):
    client, spec = slurm_daemon
    jid = client.submit({**spec, "num_steps": 1000})
    slurm_id = _slurm_id(client, jid, wait_until)
    _first_step(client, jid, wait_until)
    subprocess.run(["scancel", "--signal=KILL", str(slurm_id)], check=True, env=os.environ)
    job = _ended(client, jid, wait_until)
    assert (job["state"], job["reason"]) == ("interrupted", "killed")
    assert f"Slurm job {slurm_id} ended CANCELLED" in job["error"] and "retry" in job["error"]
