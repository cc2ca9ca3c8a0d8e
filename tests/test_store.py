"""The job store: migrations, queue order, recovery, events, and refusing damaged files."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pytest

from cosmos_tui.store import SCHEMA_VERSION, Store, StoreError


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "jobs.db")
    yield s
    s.close()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_database_is_migrated_once(tmp_path):
    s = Store(tmp_path / "jobs.db")
    assert s.version() == SCHEMA_VERSION >= 1
    jid = s.add_job({"prompt": "kept"})
    s.close()
    s = Store(tmp_path / "jobs.db")  # reopening runs no migration again and keeps the data
    rows = s.db.execute("SELECT version FROM schema_version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert s.job(jid)["prompt"] == "kept"
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_a_newer_schema_is_refused(tmp_path):
    Store(tmp_path / "jobs.db").close()
    con = sqlite3.connect(tmp_path / "jobs.db")
    con.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer than this cosmos-tui understands"):
        Store(tmp_path / "jobs.db")


def test_job_round_trip_and_states(store):
    spec = {"prompt": "a cat", "mode": "lvg", "num_gpus": 2}
    jid = store.add_job(spec, preset="lvg-6chunks", cwd="/somewhere")
    job = store.job(jid)
    assert job["spec"] == spec and job["state"] == "queued" and job["mode"] == "lvg"
    assert job["gpus_wanted"] == 2 and job["preset"] == "lvg-6chunks" and job["cwd"] == "/somewhere"
    store.update(jid, state="running", gpus=[0, 1], step=3, total_steps=35)
    job = store.job(jid)
    assert job["gpus"] == [0, 1] and job["step"] == 3 and job["state"] == "running"
    with pytest.raises(ValueError, match="unknown job state"):
        store.update(jid, state="exploded")
    assert store.job(12345) is None


def test_priority_decides_where_a_job_goes_in_and_move_reorders(store):
    a = store.add_job({"prompt": "a"})
    b = store.add_job({"prompt": "b"})
    hi = store.add_job({"prompt": "hi"}, priority=3)
    hi2 = store.add_job({"prompt": "hi2"}, priority=3)
    front = store.add_job({"prompt": "front"}, front=True)
    order = lambda: [j["id"] for j in store.queued()]  # noqa: E731
    assert order() == [front, hi, hi2, a, b]
    assert store.move(b, -10) == 1
    assert order() == [b, front, hi, hi2, a]
    assert store.move(front, to=5) == 5
    assert order() == [b, hi, hi2, a, front]
    store.update(a, state="running")  # queued -> done directly is not an allowed transition
    store.update(a, state="done")
    with pytest.raises(ValueError, match="not queued"):
        store.move(a, 1)


def test_recover_marks_running_jobs_interrupted(store):
    run = store.add_job({"prompt": "r"})
    q = store.add_job({"prompt": "q"})
    store.update(run, state="running", engine_pid=4242)
    got = store.recover_interrupted()
    assert [j["id"] for j in got] == [run] and got[0]["engine_pid"] == 4242
    assert store.job(run)["state"] == "interrupted" and store.job(run)["reason"] == "interrupted"
    assert store.job(q)["state"] == "queued"
    assert store.recover_interrupted() == []


def test_add_jobs_is_all_or_nothing(store):
    with pytest.raises(AttributeError):
        store.add_jobs([{"prompt": "fine"}, "not a dict"])
    assert store.jobs() == []


def test_events_outputs_critic_and_meta(store):
    jid = store.add_job({"prompt": "x"})
    s1 = store.add_event(jid, {"event": "step", "step": 1, "total": 2, "t": 1.0})
    s2 = store.add_event(jid, {"event": "step", "step": 2, "total": 2, "t": 2.0})
    assert [e["step"] for e in store.events(jid)] == [1, 2]
    assert [e["seq"] for e in store.events(jid, after=s1)] == [s2]
    store.add_output(jid, "/o/a.mp4")
    store.add_output(jid, "/o/a.mp4")  # the output event and the finished list both name it
    store.add_output(jid, "/o/a.json", "report")
    assert store.outputs(jid) == [{"path": "/o/a.mp4", "kind": "video"}, {"path": "/o/a.json", "kind": "report"}]
    store.add_critic(jid, {"video": "/o/a.mp4", "trial": 1, "total": 5, "score": 0.8, "answers": ["No"]})
    assert store.critic(jid) == [{"video": "/o/a.mp4", "trial": 1, "total": 5, "score": 0.8, "answers": ["No"]}]
    assert store.get_meta("paused", False) is False
    store.set_meta("paused", True)
    assert store.get_meta("paused") is True


def test_truncated_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "jobs.db"
    s = Store(path)
    for i in range(300):
        s.add_event(s.add_job({"prompt": f"p{i}"}), {"event": "log", "message": "x" * 500})
    s.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = _digest(path)
    with pytest.raises(StoreError, match="damaged.*truncated"):
        Store(path)
    assert _digest(path) == before
    assert not os.path.exists(str(path) + "-wal")


def test_garbage_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "jobs.db"
    path.write_bytes(os.urandom(8192))
    before = _digest(path)
    with pytest.raises(StoreError, match="not a SQLite file"):
        Store(path)
    assert _digest(path) == before


def test_corrupt_pages_are_found_by_the_integrity_check(tmp_path):
    path = tmp_path / "jobs.db"
    s = Store(path)
    for i in range(200):
        s.add_job({"prompt": f"p{i}" * 50})
    s.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    # scribble over the middle of page 3 (a table page) but keep the header and the size
    data[2 * page + 8: 2 * page + 600] = b"\xff" * 592
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(StoreError, match="damaged"):
        Store(path)
    assert _digest(path) == before


def test_jobs_sharing_a_save_path_get_their_own_and_retries_keep_theirs(tmp_path):
    from cosmos_tui.store import Store

    store = Store(tmp_path / "jobs.db")
    spec = {"prompt": "a", "save_path": "output/tiny.mp4"}
    a = store.add_job(spec, cwd="/work")
    b, c = store.add_jobs([spec, spec], cwd="/work")
    d = store.add_job({**spec, "save_path": "output/other.mp4"}, cwd="/work")
    e = store.add_job(spec, cwd="/elsewhere")  # another folder: no clash
    paths = [store.job(j)["spec"]["save_path"] for j in (a, b, c, d, e)]
    assert paths[0] == "output/tiny.mp4" and paths[3] == "output/other.mp4" and paths[4] == "output/tiny.mp4"
    assert len({paths[0], paths[1], paths[2]}) == 3 and all(p.endswith(".mp4") for p in paths)
    retry = store.add_job(store.job(b)["spec"], cwd="/work", attempt_of=b)
    assert store.job(retry)["spec"]["save_path"] == paths[1]
