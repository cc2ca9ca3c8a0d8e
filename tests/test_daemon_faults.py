"""Faults found by the hostile test of issue 15, each reproduced in-process (a Daemon on an asyncio
loop with the fake engine) or against a real daemon. Waits have deadlines; nothing is timed."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAKE_ENGINE, pid_alive
from cosmos_tui import paths
from cosmos_tui.client import Client
from cosmos_tui.daemon.handlers import op_queue, op_submit
from cosmos_tui.store import Store


async def _until(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def _in_process_daemon():
    from cosmos_tui.daemon.service import Daemon

    paths.ensure_home()
    return Daemon(Store(paths.db_path()))


def test_a_failing_event_write_fails_the_job_and_the_next_job_runs(fake_engine_env, monkeypatch, tmp_path):
    monkeypatch.setenv("COSMOS_TUI_GPU", "demo:1")  # one GPU: job b waits for job a's engine
    d = _in_process_daemon()
    real_add_event = d.store.add_event

    def disk_full(job, ev):
        if job == a:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add_event(job, ev)

    monkeypatch.setattr(d.store, "add_event", disk_full)

    async def scenario():
        nonlocal a
        sched = asyncio.create_task(d.schedule_loop())
        try:
            a = op_submit(d, {"spec": {"prompt": "first", "save_path": str(tmp_path / "a.mp4")}})
            b = op_submit(d, {"spec": {"prompt": "second", "save_path": str(tmp_path / "b.mp4")}})
            await _until(lambda: d.store.job(b)["state"] == "done", what="job b to run after job a's failure")
            ja = d.job_wire(d.store.job(a))
            assert ja["state"] == "failed"
            assert ja["reason"] == "crash" and "No space left on device" in ja["error"]
        finally:
            await d.shutdown("test over")
            sched.cancel()

    a = None
    asyncio.run(scenario())


def test_a_failing_state_write_still_frees_the_engine_and_shows_the_failure(fake_engine_env, monkeypatch, tmp_path):
    monkeypatch.setenv("COSMOS_TUI_GPU", "demo:1")
    d = _in_process_daemon()
    real_update = d.store.update

    def disk_full(job, **cols):
        if job == a and cols.get("state") in ("done", "failed"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_update(job, **cols)

    monkeypatch.setattr(d.store, "update", disk_full)

    async def scenario():
        nonlocal a
        sched = asyncio.create_task(d.schedule_loop())
        try:
            a = op_submit(d, {"spec": {"prompt": "first", "save_path": str(tmp_path / "a.mp4")}})
            b = op_submit(d, {"spec": {"prompt": "second", "save_path": str(tmp_path / "b.mp4")}})
            await _until(lambda: d.store.job(b)["state"] == "done", what="job b to run")
            ja = d.jobs_wire()
            ja = next(j for j in ja if j["id"] == a)
            assert ja["state"] in ("done", "failed") and "No space left on device" in (ja["error"] or "")
            assert any("No space left on device" in w for w in op_queue(d, {})["warnings"])
        finally:
            await d.shutdown("test over")
            sched.cancel()

    a = None
    asyncio.run(scenario())


def test_a_request_sent_just_before_the_daemon_died_does_not_run(tmp_path):
    """The engine reads a run request and end-of-stdin together: the job must not start."""
    out = tmp_path / "late.mp4"
    env = {**os.environ, "COSMOS_TUI_ENGINE_OF": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(FAKE_ENGINE)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        proc.stdin.write(b'{"op":"run","job":1,"spec":{"prompt":"sleep:30","save_path":"%s"}}\n' % str(out).encode())
        proc.stdin.close()
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not out.exists()


def test_an_engine_that_ignores_stdin_dies_with_its_daemon(fake_engine_env, monkeypatch, wait_until):
    # never reads its stdin, so only the parent-death signal can stop it
    monkeypatch.setenv("COSMOS_TUI_ENGINE_CMD", f"{sys.executable} -c 'import time; time.sleep(600)'")
    client = Client.connect()
    jid = client.submit({"prompt": "x"})
    job = wait_until(lambda: (j := client.job(jid))["engine_pid"] and j, 30, what="the job to start")
    engine_pid = job["engine_pid"]
    daemon_pid = client.ping()["pid"]
    os.kill(daemon_pid, signal.SIGKILL)
    try:
        wait_until(lambda: not pid_alive(engine_pid), 10, what="the engine to die with its daemon")
    finally:
        if pid_alive(engine_pid):
            os.killpg(engine_pid, signal.SIGKILL)
