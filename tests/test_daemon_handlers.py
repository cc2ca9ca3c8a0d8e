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

    # an input deleted since is refused now, naming the job and the field, not when the retry's turn comes
    (d.cwd / "in.jpg").unlink()
    with pytest.raises(SubmitError, match=f"^job {a}: input_path: 'in.jpg' does not exist"):
        h.op_retry(d, {"job": a})
    assert queued_ids(d) == [new, b]


def test_dispatch_answers_refusals_by_kind():
    class Stub:
        store = None

    async def go():
        return (await dispatch(Stub(), {"op": "nope"}), await dispatch(Stub(), {"op": "job", "job": "x"}))

    unknown, refused = asyncio.run(go())
    assert unknown["kind"] == "unknown_op" and "known: " in unknown["error"] and "submit" in unknown["error"]
    assert refused == {"ok": False, "kind": "refused", "error": "job: expected a job id (an integer), got 'x'"}


def finished(d, prompt: str, state: str = "done") -> int:
    jid = submit(d, prompt=prompt)
    if state == "cancelled":
        h.op_cancel(d, {"job": jid})
        return jid
    d.store.update(jid, state="running")
    if state == "done":
        d.store.update(jid, state="done")
    else:
        d.fail_job(jid, "boom", "crash")
    return jid


def test_remove_takes_finished_jobs_only_all_or_none(d):
    done, queued = finished(d, "a"), submit(d, prompt="b")
    log = paths.job_log_path(done)
    assert log.exists()
    with pytest.raises(h.RequestError, match=f"job {queued} is queued; only finished jobs can be removed"):
        h.op_remove(d, {"jobs": [done, queued]})
    assert d.store.job(done) is not None  # all or none
    assert h.op_remove(d, {"jobs": [done]}) == [done]
    assert d.store.job(done) is None and not log.exists() and h.op_events(d, {"job": queued}) == []
    with pytest.raises(h.RequestError, match=f"job {done} does not exist"):
        h.op_remove(d, {"jobs": [done]})
    with pytest.raises(h.RequestError, match="jobs: expected a non-empty list"):
        h.op_remove(d, {"jobs": []})


def test_remove_keeps_retries_and_refuses_a_failed_job_a_queued_one_runs_after(d):
    failed = finished(d, "a", "failed")
    retry = h.op_retry(d, {"job": failed})
    dependent = submit(d, prompt="c")
    d.store.update(dependent, after=failed)  # queued while it was running
    with pytest.raises(h.RequestError, match=f"job {dependent} runs after job {failed}, which is failed"):
        h.op_remove(d, {"jobs": [failed]})
    h.op_cancel(d, {"job": dependent})
    assert h.op_remove(d, {"jobs": [failed]}) == [failed]
    assert h.op_job(d, {"job": retry})["attempt_of"] is None


def test_clean_removes_finished_jobs_or_only_failed_ones(d):
    done, failed, cancelled = finished(d, "a"), finished(d, "b", "failed"), finished(d, "c", "cancelled")
    queued = submit(d, prompt="d")
    assert h.op_clean(d, {"failed_only": True}) == [failed]
    assert sorted(h.op_clean(d, {})) == sorted([done, cancelled])
    assert [j["id"] for j in h.op_jobs(d, {})] == [queued]
    assert h.op_clean(d, {}) == []


def test_a_presets_path_over_a_file_no_job_wrote_gets_a_fresh_name_a_named_one_is_refused(d, monkeypatch):
    """Submitting a preset again after its job was removed (its video still on disk) must not dead-end: the
    TUI's form has no save_path to change. Only a path the user named is refused; nothing is overwritten."""
    import cosmos_tui.daemon.handlers as handlers

    real = handlers.resolve_spec
    # a preset whose save_path is out.mp4 (the overrides below do not name one)
    monkeypatch.setattr(handlers, "resolve_spec",
                        lambda overrides, preset, *a: real({"save_path": "out.mp4", **(overrides or {})}, None, *a))
    (d.cwd / "in.jpg").write_bytes(b"\xff\xd8\xff fake jpeg")
    first = h.op_submit(d, {"spec": {"prompt": "a", "input_path": "in.jpg"}, "preset": "p", "cwd": str(d.cwd)})
    assert h.op_job(d, {"job": first})["spec"]["save_path"] == "out.mp4"
    (d.cwd / "out.mp4").write_bytes(b"the first video")
    h.op_cancel(d, {"job": first})
    h.op_remove(d, {"jobs": [first]})
    again = h.op_submit(d, {"spec": {"prompt": "a", "input_path": "in.jpg"}, "preset": "p", "cwd": str(d.cwd)})
    assert h.op_job(d, {"job": again})["spec"]["save_path"] == f"out-job{again}.mp4"
    with pytest.raises(SubmitError, match="save_path: 'out.mp4' already exists and no job wrote it"):
        h.op_submit(d, {"spec": {"prompt": "a", "input_path": "in.jpg", "save_path": "out.mp4"}, "preset": "p",
                        "cwd": str(d.cwd)})
    named = h.op_submit(d, {"spec": {"prompt": "a", "input_path": "in.jpg", "save_path": "out.mp4",
                                     "overwrite": True}, "preset": "p", "cwd": str(d.cwd)})
    assert h.op_job(d, {"job": named})["spec"]["save_path"] == "out.mp4"  # asked to overwrite: its own path
    assert (d.cwd / "out.mp4").read_bytes() == b"the first video"


def test_edit_changes_a_queued_jobs_spec_checked_like_a_submit(d):
    a = submit(d, prompt="a", num_steps=3)
    h.op_hold(d, {"job": a})
    job = h.op_edit(d, {"job": a, "set": {"num_steps": 5, "prompt": "a cat"}})
    assert job["spec"]["num_steps"] == 5 and job["prompt"] == "a cat" and job["held"]
    assert h.op_job(d, {"job": a})["spec"]["num_steps"] == 5
    with pytest.raises(SubmitError, match="num_steps"):
        h.op_edit(d, {"job": a, "set": {"num_steps": 0}})
    with pytest.raises(SubmitError, match="num_gpus: 4 GPUs asked for"):
        h.op_edit(d, {"job": a, "set": {"num_gpus": 4}})
    with pytest.raises(SubmitError, match="input_path: 'gone.jpg' does not exist"):
        h.op_edit(d, {"job": a, "set": {"input_path": "gone.jpg"}})
    b = submit(d, prompt="b")
    with pytest.raises(SubmitError, match="save_path: 'out-b.mp4' is another job's output too"):
        h.op_edit(d, {"job": a, "set": {"save_path": "out-b.mp4"}})
    (d.cwd / "precious.mp4").write_bytes(b"mine")
    with pytest.raises(SubmitError, match="already exists and no job wrote it"):
        h.op_edit(d, {"job": a, "set": {"save_path": "precious.mp4"}})
    assert h.op_job(d, {"job": a})["spec"]["num_steps"] == 5  # refused edits changed nothing
    h.op_cancel(d, {"job": b})
    with pytest.raises(h.RequestError, match=f"job {b} is cancelled; only a queued job can be edited"):
        h.op_edit(d, {"job": b, "set": {"seed": 1}})


def test_submit_and_edit_refuse_a_job_whose_checkpoints_are_missing(d, monkeypatch, tmp_path):
    monkeypatch.setenv("COSMOS_TUI_CHECKPOINTS", str(tmp_path / "empty"))
    with pytest.raises(SubmitError, match="^The DiT checkpoint .*/empty/nvidia/Cosmos-Predict2-2B-Video2World/"):
        submit(d, prompt="a")
    jid = submit(d, prompt="a", model_size="tiny")
    with pytest.raises(SubmitError, match="^The DiT checkpoint .*/empty/nvidia/Cosmos-Predict2-14B-Video2World/"):
        h.op_edit(d, {"job": jid, "set": {"model_size": "14B"}})
