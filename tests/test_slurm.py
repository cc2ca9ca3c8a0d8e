"""The Slurm executor against a real Slurm (tests/slurm_cluster.py: slurmctld, slurmd and munge on
localhost): tiny CPU jobs go through sbatch, their events reach the daemon through the events file,
and cancels, kills and time limits end them with the right state and reason."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import stop_daemon
from test_daemon import _tiny_image  # the same drawn input the local end-to-end tests use
from cosmos_tui.client import Client
from slurm_cluster import slurm_cluster, slurm_fast_clock_cluster  # noqa: F401 - fixtures

pytestmark = pytest.mark.slurm


def _daemon_on(cluster, cosmos_home, monkeypatch, tmp_path):
    """A daemon whose Slurm jobs go to `cluster`; its client, and the spec of a tiny job."""
    for k, v in cluster.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("COSMOS_TUI_ENGINE_CMD", raising=False)
    monkeypatch.setenv("COSMOS_TUI_GPU", "demo:1")
    monkeypatch.setenv("COSMOS_TUI_SLURM_POLL_S", "0.5")
    monkeypatch.setenv("COSMOS_TUI_SLURM_SBATCH_ARGS", "--comment='from the daemon env'")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    image = tmp_path / "in.png"
    _tiny_image(image)
    spec = {
        "model_size": "tiny", "num_steps": 2, "disable_guardrail": True, "disable_prompt_refiner": True,
        "input_path": str(image), "save_path": str(tmp_path / "slurm.mp4"), "prompt": "a gradient drifts",
        "executor": "slurm", "slurm_gpus_per_node": 0, "slurm_partition": cluster.partition,
        "slurm_time_limit": "10",
    }
    client = Client.connect()
    try:
        yield client, spec
    finally:
        stop_daemon(cosmos_home)


@pytest.fixture
def slurm_daemon(slurm_cluster, cosmos_home, monkeypatch, tmp_path):  # noqa: F811
    yield from _daemon_on(slurm_cluster, cosmos_home, monkeypatch, tmp_path)


@pytest.fixture
def fast_clock_daemon(slurm_fast_clock_cluster, cosmos_home, monkeypatch, tmp_path):  # noqa: F811
    yield from _daemon_on(slurm_fast_clock_cluster, cosmos_home, monkeypatch, tmp_path)


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
    # the sampler's final clean pass is a step event of its own, marked final (engine/phases.py)
    steps = [e["step"] for e in events if e["event"] == "step" and not e.get("final")]
    assert steps == list(range(1, job["total_steps"] + 1)) and job["step"] == job["total_steps"]
    slurm_id = _slurm_id(client, jid, wait_until)
    messages = [e.get("message") for e in events if e["event"] == "log"]
    assert f"Slurm job {slurm_id}: RUNNING on ctnode" in messages
    # the engine's `finished` decides `done`; Slurm's job ends when the engine process has exited
    wait_until(lambda: _squeue_state(slurm_id) == "COMPLETED", 60, what="Slurm to report the job completed")
    comment = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(slurm_id), "-o", "%k"], capture_output=True,
                             text=True, env=os.environ).stdout.strip()
    assert comment == "from the daemon env"  # COSMOS_TUI_SLURM_SBATCH_ARGS reached sbatch
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


def test_time_limit_kill_ends_interrupted_with_reason_time_limit(fast_clock_daemon, wait_until):
    client, spec = fast_clock_daemon
    jid = client.submit({**spec, "num_steps": 1000, "slurm_time_limit": "1"})
    slurm_id = _slurm_id(client, jid, wait_until)
    job = _ended(client, jid, wait_until)
    assert (job["state"], job["reason"]) == ("interrupted", "time limit"), job["error"]
    assert f"Slurm job {slurm_id} ended TIMEOUT" in job["error"] and "slurm_time_limit = 1" in job["error"]
    assert _squeue_state(slurm_id) == "TIMEOUT"
    assert any(e.get("message") == f"Slurm job {slurm_id}: RUNNING on ctnode" for e in client.events(jid))


@pytest.mark.slow
def test_killed_long_video_resumes_from_its_last_chunk_when_retried(slurm_daemon, wait_until):
    """Two engine start-ups (the kill, the retry): the slowest test here, ~25 s."""
    client, spec = slurm_daemon
    # chunks of ~2 s: the kill lands while chunk 2 or 3 is in work
    jid = client.submit({**spec, "mode": "lvg", "num_chunks": 3, "num_steps": 40})
    slurm_id = _slurm_id(client, jid, wait_until)
    wait_until(lambda: any(e["event"] == "chunk" for e in client.events(jid)), 120, what="the first chunk")
    subprocess.run(["scancel", "--signal=KILL", str(slurm_id)], check=True, env=os.environ)
    assert _ended(client, jid, wait_until)["state"] == "interrupted"
    retry = client.retry(jid)
    job = _ended(client, retry, wait_until)
    assert job["state"] == "done", job["error"]
    events = client.events(retry)
    resumed = [e["message"] for e in events if (e.get("message") or "").startswith("resuming long video at chunk")]
    assert resumed, "the retry started over instead of resuming"
    assert min(e["chunk"] for e in events if e["event"] == "step") >= 2  # chunk 1 was not generated again
    assert Path(spec["save_path"]).is_file()


def test_daemon_stop_cancels_its_slurm_jobs_and_marks_them_interrupted(slurm_daemon, cosmos_home, wait_until):
    client, spec = slurm_daemon
    jid = client.submit({**spec, "num_steps": 1000})
    slurm_id = _slurm_id(client, jid, wait_until)
    _first_step(client, jid, wait_until)
    stop_daemon(cosmos_home)
    wait_until(lambda: _squeue_state(slurm_id) == "CANCELLED", 60, what="the Slurm job to be cancelled")
    job = Client.connect().job(jid)
    assert (job["state"], job["reason"]) == ("interrupted", "interrupted")


def _free_rendezvous_job_id() -> int:
    """A job id whose rendezvous port (node.sh: 20000 + id % 20000) is free now."""
    import random
    import socket

    for _ in range(100):
        job_id = random.randrange(1, 20000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 20000 + job_id))
                return job_id
            except OSError:
                continue
    pytest.skip("no free port in 20000..39999 for the rendezvous")


@pytest.mark.slow
def test_two_node_rendezvous_on_the_first_node_of_the_list(slurm_cluster, cosmos_home, monkeypatch, tmp_path):  # noqa: F811
    """node.sh as srun runs it on each node of a 2-node allocation (here both 'nodes' are this
    machine): torchrun meets on the first host of $SLURM_JOB_NODELIST, rank 0 on node 0 writes the
    events, and the job's two ranks finish it together (a static rendezvous of --nnodes=2 does not
    start until both nodes joined, so an end at all means both were there). ~25 s: two torchruns."""
    from cosmos_tui.executors.slurm import write_job_files

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    image = tmp_path / "in.png"
    _tiny_image(image)
    spec = {"model_size": "tiny", "num_steps": 2, "disable_guardrail": True, "disable_prompt_refiner": True,
            "input_path": str(image), "save_path": str(tmp_path / "two.mp4"), "prompt": "two nodes",
            "executor": "slurm", "slurm_nodes": 2, "slurm_gpus_per_node": 0, "num_gpus": 2}
    from cosmos_tui.queue.resolve import resolve_spec

    spec = resolve_spec(spec, None, gpu_count=0)
    files = write_job_files(7, spec, str(tmp_path))
    env = {**os.environ, "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": str(_free_rendezvous_job_id()),
           "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(["bash", str(files.node_script)], env={**env, "SLURM_NODEID": str(i)},
                              stderr=open(tmp_path / f"node{i}.log", "wb"), start_new_session=True) for i in (0, 1)]
    try:
        codes = [p.wait(timeout=240) for p in nodes]
    finally:
        for p in nodes:  # a rendezvous that never completes must not outlive the test
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    logs = "".join(f"--- node {i}:\n" + (tmp_path / f"node{i}.log").read_text()[-4000:] for i in (0, 1))
    assert codes == [0, 0], logs
    events = [json.loads(line) for line in files.events.read_text().splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "finished", logs
    steps = [e["step"] for e in events if e["event"] == "step" and not e.get("final")]
    assert steps == sorted(set(steps)) and steps[0] == 1  # one voice: rank 0 alone
    assert Path(spec["save_path"]).is_file()


def test_a_partition_sbatch_refuses_fails_the_job_naming_the_field(slurm_daemon, wait_until):
    client, spec = slurm_daemon
    jid = client.submit({**spec, "slurm_partition": "nosuch"})
    job = _ended(client, jid, wait_until)
    assert (job["state"], job["reason"]) == ("failed", "invalid")
    assert job["error"].startswith("slurm_partition: sbatch refused the job (invalid partition specified: nosuch)")
    assert job["error"].endswith("set slurm_partition to one `sinfo` lists")


def test_a_restarted_daemon_cancels_what_its_killed_predecessor_left_on_slurm(slurm_daemon, cosmos_home,
                                                                              wait_until):
    """SIGKILL takes a local engine along (PDEATHSIG); a Slurm job it does not. Left running, it would
    write the same long-video state as the retry, so the next daemon cancels it."""
    import signal

    client, spec = slurm_daemon
    jid = client.submit({**spec, "num_steps": 1000})
    slurm_id = _slurm_id(client, jid, wait_until)
    _first_step(client, jid, wait_until)
    os.kill(int((cosmos_home / "run" / "daemon.pid").read_text()), signal.SIGKILL)
    assert _squeue_state(slurm_id) == "RUNNING"
    job = wait_until(lambda: _jobs_after_restart(jid), 60, what="a new daemon")
    assert job["state"] == "interrupted"
    wait_until(lambda: _squeue_state(slurm_id) == "CANCELLED", 60, what="the left-over Slurm job to be cancelled")


def _jobs_after_restart(jid):
    from cosmos_tui.client import DaemonError

    try:
        return Client.connect().job(jid)
    except (DaemonError, OSError):
        return None



def test_a_job_id_slurm_does_not_know_is_unknown(slurm_cluster, monkeypatch):  # noqa: F811
    """squeue answers "Invalid job id", and this cluster has no accounting for sacct to ask."""
    from cosmos_tui.executors.slurm import query

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    assert query(999999).state == "UNKNOWN"


def test_a_node_failure_ends_interrupted_with_the_reason(slurm_daemon, slurm_cluster, wait_until):  # noqa: F811
    """The node goes DOWN under a running job (as slurmctld does when a node stops answering):
    Slurm ends the job NODE_FAIL, the daemon says so."""
    client, spec = slurm_daemon
    jid = client.submit({**spec, "num_steps": 1000})
    slurm_id = _slurm_id(client, jid, wait_until)
    _first_step(client, jid, wait_until)
    node = ["scontrol", "update", f"nodename={slurm_cluster.node}"]
    subprocess.run([*node, "state=down", "reason=test"], check=True, env=os.environ)
    try:
        job = _ended(client, jid, wait_until)
    finally:
        # back for the next test (ReturnToService=2 may have brought it back already: then resume refuses)
        subprocess.run([*node, "state=resume"], capture_output=True, env=os.environ)
        wait_until(lambda: slurm_cluster._node_idle(), 60, what="the node to be idle again")
    assert (job["state"], job["reason"]) == ("interrupted", "node failure"), job["error"]
    assert job["error"].startswith(f"Slurm job {slurm_id} ended NODE_FAIL: a node it ran on failed; retry it")
