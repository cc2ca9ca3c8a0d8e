"""The queue daemon with the fake engine: jobs run to the end, faults stay contained, nothing
queued is lost. Real processes, real sockets; waits are generous and nothing is timed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT, make_default_input, pid_alive, stop_daemon
from cosmos_tui.client import Client, DaemonError, start_daemon
from cosmos_tui.daemon.linger import linger_warning


def wait_state(client, jid, states, wait_until, timeout=60):
    states = (states,) if isinstance(states, str) else states
    return wait_until(lambda: (j := client.job(jid))["state"] in states and j, timeout, what=f"job {jid} to be {states}")


def started_event(client, jid, wait_until):
    return wait_until(
        lambda: next((e for e in client.events(jid) if e["event"] == "started"), None),
        what=f"job {jid} to start",
    )


def raw_request(sock_path, payload: bytes) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(sock_path))
    s.sendall(payload)
    with s.makefile("rb") as f:
        line = f.readline()
    s.close()
    return json.loads(line)


def test_submit_runs_to_done_with_outputs(daemon, tmp_path, wait_until):
    out = tmp_path / "out" / "a.mp4"
    jid = daemon.submit({"prompt": "a red ball", "save_path": str(out), "num_steps": 3})
    job = wait_state(daemon, jid, "done", wait_until)
    assert out.is_file()
    assert [o["path"] for o in job["outputs"]] == [str(out)]
    assert job["peak_mem"] == 1000 * jid  # from the fake engine's memory event
    assert job["step"] == 3 and job["total_steps"] == 3
    assert job["started"] and job["finished"] >= job["started"]
    kinds = [e["event"] for e in daemon.events(jid)]
    assert kinds[-1] == "finished" and kinds.count("step") == 3 and "started" in kinds
    log = Path(daemon.log_path(jid)).read_text()
    assert "step 3/3" in log and "fake engine finished sampling" in log
    assert "job" in log and "starting" in log  # the engine's stderr went to the job log too


def test_relative_save_path_is_relative_to_the_submitting_directory(daemon, tmp_path, monkeypatch, wait_until):
    monkeypatch.chdir(tmp_path)
    make_default_input(tmp_path)
    jid = daemon.submit({"prompt": "x", "save_path": "rel/v.mp4"})
    wait_state(daemon, jid, "done", wait_until)
    assert (tmp_path / "rel" / "v.mp4").is_file()


def test_idle_engine_is_reused_for_the_same_model(daemon, tmp_path, wait_until):
    a = daemon.submit({"prompt": "one", "save_path": str(tmp_path / "1.mp4")})
    wait_state(daemon, a, "done", wait_until)
    b = daemon.submit({"prompt": "two", "save_path": str(tmp_path / "2.mp4")})
    wait_state(daemon, b, "done", wait_until)
    pa = started_event(daemon, a, wait_until)["engine_pid"]
    pb = started_event(daemon, b, wait_until)["engine_pid"]
    assert pa == pb


def test_socket_is_private(daemon, cosmos_home):
    sock = cosmos_home / "run" / "daemon.sock"
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700


def test_bad_requests_get_clear_errors_and_the_daemon_keeps_running(daemon, cosmos_home):
    sock = cosmos_home / "run" / "daemon.sock"
    resp = raw_request(sock, b"{this is not json\n")
    assert resp["ok"] is False and "malformed request" in resp["error"]
    resp = raw_request(sock, b'{"op": "frobnicate"}\n')
    assert resp["ok"] is False and "unknown op 'frobnicate'" in resp["error"]
    with pytest.raises(DaemonError, match="preset 'no-such-preset' not found"):
        daemon.submit({"prompt": "x"}, preset="no-such-preset")
    with pytest.raises(DaemonError, match="colour: unknown key"):
        daemon.submit({"prompt": "x", "colour": "red"})
    with pytest.raises(DaemonError, match="num_steps"):
        daemon.submit({"prompt": "x", "num_steps": 0})
    with pytest.raises(DaemonError, match="num_gpus: 3 GPUs asked for but this machine has 2"):
        daemon.submit({"prompt": "x", "num_gpus": 3})
    with pytest.raises(DaemonError, match="item 2: fps"):
        daemon.submit_batch([{"prompt": "ok"}, {"prompt": "bad", "fps": 12}])
    with pytest.raises(DaemonError, match="job 999 does not exist"):
        daemon.cancel(999)
    assert daemon.jobs() == []  # the half-bad batch inserted nothing
    assert daemon.ping()["pong"] is True


def test_submit_with_a_preset_stores_the_resolved_spec(daemon):
    daemon.pause()
    jid = daemon.submit({"prompt": "a boat", "seed": 3}, preset="tiny-cpu")
    job = daemon.job(jid)
    assert job["preset"] == "tiny-cpu"
    assert job["spec"]["model_size"] == "tiny" and job["spec"]["seed"] == 3
    assert job["prompt"] == "a boat"
    assert job["wait_reason"] == "queue paused"


def test_oom_fails_the_job_and_pauses_the_queue_other_jobs_untouched(daemon, tmp_path, wait_until):
    slow = daemon.submit({"prompt": "sleep:1.5", "save_path": str(tmp_path / "slow.mp4")})
    wait_state(daemon, slow, "running", wait_until)
    oom = daemon.submit({"prompt": "oom"})
    later = daemon.submit({"prompt": "after", "save_path": str(tmp_path / "after.mp4")})
    job = wait_state(daemon, oom, "failed", wait_until)
    assert job["reason"] == "oom" and "out of memory" in job["error"]
    q = daemon.queue()
    assert q["paused"] is True and f"job {oom} ran out of GPU memory" in q["reason"]
    assert wait_state(daemon, slow, "done", wait_until)["outputs"]
    assert daemon.job(later)["state"] == "queued"
    daemon.resume()
    wait_state(daemon, later, "done", wait_until)


def test_engine_crash_fails_only_that_job(daemon, tmp_path, wait_until):
    bad = daemon.submit({"prompt": "crash"})
    job = wait_state(daemon, bad, "failed", wait_until)
    assert job["reason"] == "crash" and "exited with code 3" in job["error"]
    assert "crashing on purpose" in Path(daemon.log_path(bad)).read_text()
    boom = daemon.submit({"prompt": "boom"})
    job = wait_state(daemon, boom, "failed", wait_until)
    assert job["reason"] == "crash" and "ZeroDivisionError" in job["error"]
    inv = daemon.submit({"prompt": "invalid"})
    job = wait_state(daemon, inv, "failed", wait_until)
    assert job["reason"] == "invalid" and job["error"].startswith("input_path:")
    ok = daemon.submit({"prompt": "fine", "save_path": str(tmp_path / "ok.mp4")})
    wait_state(daemon, ok, "done", wait_until)
    assert daemon.queue()["paused"] is False


def test_cancel_kills_every_process_of_the_job(daemon, wait_until):
    jid = daemon.submit({"prompt": "sleep:120 child"})
    ev = started_event(daemon, jid, wait_until)
    engine_pid, child_pid = ev["engine_pid"], ev["child_pid"]
    assert pid_alive(engine_pid) and pid_alive(child_pid)
    assert daemon.cancel(jid) == "cancelled"
    job = wait_state(daemon, jid, "cancelled", wait_until)
    assert job["reason"] == "cancelled"
    wait_until(lambda: not pid_alive(engine_pid) and not pid_alive(child_pid), 30, what="the job's processes to die")
    with pytest.raises(DaemonError, match="already cancelled"):
        daemon.cancel(jid)


def test_cancel_a_queued_job(daemon):
    daemon.pause()
    jid = daemon.submit({"prompt": "never"})
    daemon.cancel(jid)
    assert daemon.job(jid)["state"] == "cancelled"


def test_daemon_killed_mid_job_marks_it_interrupted_and_pauses(daemon, wait_until):
    jid = daemon.submit({"prompt": "sleep:120", "num_gpus": 2})  # both GPUs: the next one must wait
    engine_pid = started_event(daemon, jid, wait_until)["engine_pid"]
    queued = daemon.submit({"prompt": "waiting"})
    daemon_pid = daemon.ping()["pid"]
    os.kill(daemon_pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(daemon_pid), 30, what="the daemon to die")
    # the orphaned engine notices its daemon is gone and takes its process group down
    wait_until(lambda: not pid_alive(engine_pid), 30, what="the orphaned engine to exit")

    client = Client.connect(autostart=True)
    assert client.ping()["pid"] != daemon_pid
    job = client.job(jid)
    assert job["state"] == "interrupted" and "retry" in job["error"]
    q = client.queue()
    assert q["paused"] is True and str(jid) in q["reason"]
    assert client.job(queued)["state"] == "queued"

    new = client.retry(jid)
    again = client.job(new)
    assert again["attempt_of"] == jid and again["state"] == "queued"
    assert again["spec"] == job["spec"]
    assert [j["id"] for j in client.jobs(["queued"])][0] == new  # a retry goes to the front
    with pytest.raises(DaemonError, match="only finished, failed"):
        client.retry(queued)


def test_two_hundred_concurrent_submits_all_stored_exactly_once(daemon):
    daemon.pause()  # store them, don't run them
    got: list[int] = []
    lock = threading.Lock()
    errors = []

    def worker(t):
        c = Client()
        try:
            for i in range(50):
                jid = c.submit({"prompt": f"t{t}-{i}"})
                with lock:
                    got.append(jid)
        except Exception as err:  # surfaced below; a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    jobs = daemon.jobs()
    assert len(got) == len(set(got)) == 200
    assert sorted(j["id"] for j in jobs) == sorted(got)
    assert sorted(j["prompt"] for j in jobs) == sorted(f"t{t}-{i}" for t in range(4) for i in range(50))
    assert [j["place"] for j in jobs] == list(range(1, 201))


def test_move_and_priority_order_the_queue(daemon):
    daemon.pause()
    a, b, c = (daemon.submit({"prompt": p}) for p in "abc")
    urgent = daemon.submit({"prompt": "urgent"}, priority=5)
    order = lambda: [j["id"] for j in daemon.jobs(["queued"])]  # noqa: E731
    assert order() == [urgent, a, b, c]
    assert daemon.move(c, -2) == 2
    assert order() == [urgent, c, a, b]
    assert daemon.move(urgent, to=4) == 4
    assert order() == [c, a, b, urgent]
    assert daemon.move(a, 99) == 4  # clamped
    assert order() == [c, b, urgent, a]


def test_an_engine_built_with_another_offload_flag_is_not_reused(daemon, tmp_path, wait_until):
    a = daemon.submit({"prompt": "one", "save_path": str(tmp_path / "1.mp4"), "offload_text_encoder": True})
    wait_state(daemon, a, "done", wait_until)
    b = daemon.submit({"prompt": "two", "save_path": str(tmp_path / "2.mp4"), "offload_text_encoder": False})
    wait_state(daemon, b, "done", wait_until)
    assert started_event(daemon, a, wait_until)["engine_pid"] != started_event(daemon, b, wait_until)["engine_pid"]


def test_gpus_report_demo_inventory_and_holders(daemon, wait_until):
    jid = daemon.submit({"prompt": "sleep:60"})
    wait_state(daemon, jid, "running", wait_until)
    gpus = daemon.gpus()
    assert [g["index"] for g in gpus] == [0, 1]
    assert {g["job"] for g in gpus} == {jid, None}
    assert all(g["mem_total"] > 0 for g in gpus)
    daemon.cancel(jid)


def test_a_second_start_finds_the_running_daemon(daemon):
    pid = daemon.ping()["pid"]
    start_daemon()
    assert daemon.ping()["pid"] == pid


def test_damaged_database_is_refused_and_left_untouched(fake_engine_env):
    db = fake_engine_env / "jobs.db"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(5000))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(DaemonError, match="damaged"):
        start_daemon()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not (fake_engine_env / "run" / "daemon.sock").exists()


def test_shutdown_refuses_while_jobs_run_unless_forced(daemon, wait_until):
    jid = daemon.submit({"prompt": "sleep:60"})
    wait_state(daemon, jid, "running", wait_until)
    with pytest.raises(DaemonError, match="are running"):
        daemon.shutdown()
    daemon.shutdown(force=True)
    wait_until(lambda: not (Path(os.environ["COSMOS_TUI_HOME"]) / "run" / "daemon.sock").exists(), 30,
               what="the socket to go")
    client = Client.connect()
    assert client.job(jid)["state"] == "interrupted"


def test_linger_warning(tmp_path):
    conf = tmp_path / "logind.conf"
    conf.write_text("[Login]\n#KillUserProcesses=yes\n")
    assert linger_warning("alice", [str(conf)], linger="no") is None
    conf.write_text("[Login]\nKillUserProcesses=yes\n")
    msg = linger_warning("alice", [str(conf)], linger="no")
    assert "loginctl enable-linger alice" in msg
    assert linger_warning("alice", [str(conf)], linger="yes") is None
    conf.write_text("[Login]\nKillUserProcesses=yes\nKillExcludeUsers=root alice\n")
    assert linger_warning("alice", [str(conf)], linger="no") is None


@pytest.mark.tmux
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_job_survives_the_tmux_session_that_started_it(fake_engine_env, tmp_path, wait_until):
    out = tmp_path / "tmux.mp4"
    sock_name = f"ct-test-{os.getpid()}"
    env = " ".join(f"{k}={v!r}" for k, v in os.environ.items() if k.startswith("COSMOS_TUI_"))
    # from the work directory (it has the default input the submit checks for)
    cmd = (f"cd {os.getcwd()} && env PYTHONPATH={ROOT} {env} {sys.executable} -m cosmos_tui.cli submit --set prompt=sleep:4 "
           f"--set save_path={out} > {tmp_path}/submit.out 2>&1; sleep 600")
    subprocess.run(["tmux", "-L", sock_name, "new-session", "-d", "-s", "job", cmd], check=True)
    try:
        client = Client()
        running = wait_until(
            lambda: (js := _jobs_or_empty(client)) and js[0]["state"] == "running" and js[0], 60,
            what="the job submitted from tmux to run",
        )
        subprocess.run(["tmux", "-L", sock_name, "kill-server"], check=True)
        job = wait_until(lambda: client.job(running["id"])["state"] in ("done", "failed") and client.job(running["id"]),
                         60, what="the job to end")
        assert job["state"] == "done", job
        assert out.is_file()
    finally:
        subprocess.run(["tmux", "-L", sock_name, "kill-server"], capture_output=True)
        stop_daemon(fake_engine_env)


def _jobs_or_empty(client):
    try:
        return client.jobs()
    except DaemonError:
        return []


def _tiny_image(path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (64, 48))
    for x in range(64):
        for y in range(48):
            img.putpixel((x, y), (x * 4, y * 5, (x + y) * 2))
    img.save(path)


@pytest.mark.slow
def test_end_to_end_with_the_real_engine_server(cosmos_home, monkeypatch, tmp_path, wait_until):
    monkeypatch.delenv("COSMOS_TUI_ENGINE_CMD", raising=False)
    monkeypatch.setenv("COSMOS_TUI_GPU", "demo:1")
    image = tmp_path / "in.png"
    _tiny_image(image)
    out = tmp_path / "tiny.mp4"
    client = Client.connect()
    try:
        jid = client.submit({
            "model_size": "tiny", "num_steps": 2, "disable_guardrail": True, "disable_prompt_refiner": True,
            "input_path": str(image), "save_path": str(out), "prompt": "a gradient drifts",
        })
        job = wait_until(lambda: (j := client.job(jid))["state"] not in ("queued", "running") and j, 280,
                         what="the tiny job to end")
        assert job["state"] == "done", (job["error"], Path(client.log_path(jid)).read_text()[-3000:])
        assert out.is_file() and out.stat().st_size > 0
        # the steps asked for (the sampler's final clean pass is reported apart, not as step 3/3)
        assert job["total_steps"] == 2 and job["step"] == job["total_steps"]
        assert any(e["event"] == "started" for e in client.events(jid))
        assert str(out) in [o["path"] for o in job["outputs"]]
    finally:
        stop_daemon(cosmos_home)


@pytest.mark.slow
def test_two_gpu_job_runs_under_torchrun(cosmos_home, monkeypatch, tmp_path, wait_until):
    """num_gpus 2: the daemon starts torchrun with two engine ranks (gloo on CPU, demo GPUs), rank 0
    talks, and the job finishes with the same outputs a one-GPU job writes."""
    monkeypatch.delenv("COSMOS_TUI_ENGINE_CMD", raising=False)
    monkeypatch.setenv("COSMOS_TUI_GPU", "demo:2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    image = tmp_path / "in.png"
    _tiny_image(image)
    out = tmp_path / "cp.mp4"
    client = Client.connect()
    try:
        jid = client.submit({
            "model_size": "tiny", "num_steps": 2, "disable_guardrail": True, "disable_prompt_refiner": True,
            "input_path": str(image), "save_path": str(out), "prompt": "a gradient drifts", "num_gpus": 2,
        })
        job = wait_until(lambda: (j := client.job(jid))["state"] not in ("queued", "running") and j, 280,
                         what="the two-rank job to end")
        assert job["state"] == "done", (job["error"], Path(client.log_path(jid)).read_text()[-3000:])
        assert out.is_file() and out.with_suffix(".json").is_file()
        assert len(job["gpus"]) == 2
        steps = [e for e in client.events(jid) if e["event"] == "step" and not e.get("final")]
        assert [e["step"] for e in steps] == list(range(1, job["total_steps"] + 1))  # one voice: rank 0
    finally:
        stop_daemon(cosmos_home)


def test_a_daemon_that_hangs_up_without_answering_is_a_typed_error(cosmos_home):
    """The TUI tells "the daemon is gone" from "the daemon said no" by type, not by the sentence."""
    from cosmos_tui.app import _is_transport_error
    from cosmos_tui.client import DaemonGone, DaemonNotRunning

    path = cosmos_home / "hangup.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def hang_up():
        conn, _ = server.accept()
        conn.recv(1024)
        conn.close()

    t = threading.Thread(target=hang_up)
    t.start()
    try:
        with pytest.raises(DaemonGone) as caught:
            Client(path, timeout=30).request("ping")
    finally:
        t.join(10)
        server.close()
    assert isinstance(caught.value, DaemonNotRunning) and caught.value.kind == "gone"
    assert _is_transport_error(caught.value)
    assert not _is_transport_error(DaemonError("job 3 does not exist"))
