"""The request handlers as plain functions on a Daemon with no socket, no engine process and no
event loop running: the store is a real sqlite file under the test's home, the GPUs are demo ones."""

from __future__ import annotations

import asyncio

import pytest

from cosmos_tui import paths
from cosmos_tui.daemon import handlers as h
from cosmos_tui.daemon.framing import dispatch
from cosmos_tui.gpu import DemoBackend
from cosmos_tui.queue.resolve import SubmitError
from cosmos_tui.store import Store


@pytest.fixture
def d(tmp_path):
    from cosmos_tui.daemon.service import Daemon

    paths.ensure_home()
    daemon = Daemon(Store(paths.db_path()), gpu=DemoBackend(2))
    daemon.cwd = tmp_path
    yield daemon
    daemon.store.close()


def submit(d, **spec) -> int:
    spec.setdefault("input_path", "in.jpg")
    spec.setdefault("save_path", f"out-{spec.get('prompt', 'x')}.mp4")
    (d.cwd / spec["input_path"]).write_bytes(b"\xff\xd8\xff fake jpeg")
    return h.op_submit(d, {"spec": spec, "cwd": str(d.cwd)})


def queued_ids(d) -> list[int]:
    return [j["id"] for j in h.op_jobs(d, {"states": ["queued"]})]


def test_submit_queues_a_validated_spec_and_wakes_the_scheduler(d):
    jid = submit(d, prompt="a cat", num_steps=3)
    job = h.op_job(d, {"job": jid})
    assert job["state"] == "queued" and job["spec"]["num_steps"] == 3 and job["place"] == 1
    assert d.wake.is_set()
    with pytest.raises(SubmitError, match="num_gpus: 3 GPUs asked for but this machine has 2"):
        submit(d, prompt="big", num_gpus=3)
    with pytest.raises(h.RequestError, match="after: 99 is not the id of a job"):
        h.op_submit(d, {"spec": {"prompt": "x"}, "after": 99})


def test_cancel_of_a_queued_job_needs_no_engine(d):
    jid = submit(d, prompt="a")
    assert h.op_cancel(d, {"job": jid}) == "cancelled"
    job = h.op_job(d, {"job": jid})
    assert job["state"] == "cancelled" and job["reason"] == "cancelled"
    assert [e["event"] for e in h.op_events(d, {"job": jid})] == ["failed"]
    with pytest.raises(h.RequestError, match=f"job {jid} is already cancelled; nothing to cancel"):
        h.op_cancel(d, {"job": jid})


def test_hold_and_release(d):
    a, b = submit(d, prompt="a"), submit(d, prompt="b")
    assert h.op_hold(d, {"job": a}) is True
    job = h.op_job(d, {"job": a})
    assert job["held"] and job["wait_reason"] == "held; release it to run" and job["place"] == 1
    assert h.op_release(d, {"job": a}) is False
    assert not h.op_job(d, {"job": a})["held"]
    h.op_cancel(d, {"job": b})
    with pytest.raises(h.RequestError, match=f"job {b} is cancelled; only a queued job can be held"):
        h.op_hold(d, {"job": b})


def test_move_reorders_the_queue(d):
    a, b, c = (submit(d, prompt=p) for p in "abc")
    assert h.op_move(d, {"job": c, "to": 1}) == 1
    assert queued_ids(d) == [c, a, b]
    assert h.op_move(d, {"job": c, "offset": 1}) == 2
    assert queued_ids(d) == [a, c, b]
    with pytest.raises(h.RequestError, match="offset/to: expected integers"):
        h.op_move(d, {"job": a, "offset": "up"})


def test_retry_of_a_finished_job_queues_a_new_attempt_at_the_front(d):
    a, b = submit(d, prompt="a"), submit(d, prompt="b")
    with pytest.raises(h.RequestError, match=f"job {a} is queued; only finished"):
        h.op_retry(d, {"job": a})
    h.op_cancel(d, {"job": a})
    new = h.op_retry(d, {"job": a})
    job = h.op_job(d, {"job": new})
    assert job["attempt_of"] == a and job["spec"] == h.op_job(d, {"job": a})["spec"]
    assert queued_ids(d) == [new, b]


def test_dispatch_answers_refusals_by_kind():
    class Stub:
        store = None

    async def go():
        return (await dispatch(Stub(), {"op": "nope"}), await dispatch(Stub(), {"op": "job", "job": "x"}))

    unknown, refused = asyncio.run(go())
    assert unknown["kind"] == "unknown_op" and "known: " in unknown["error"] and "submit" in unknown["error"]
    assert refused == {"ok": False, "kind": "refused", "error": "job: expected a job id (an integer), got 'x'"}
