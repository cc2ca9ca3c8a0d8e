"""The job store: SQLite in WAL mode, written by the daemon alone.

Tables: jobs (spec, state, queue position, progress), events (every engine event, in order),
outputs, critic (verdicts), meta (queue-wide flags such as `paused`) and schema_version.
The schema evolves through numbered migrations; each runs once, in order, in its own transaction.

A damaged database is refused, never repaired or replaced: the queue is the user's work, and a
fresh empty file written over it would lose it for good. The check reads the header before SQLite
touches the file, so a garbage or truncated file is left byte-identical.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from cosmos_tui.queue.state import TERMINAL_STATES, JobState, check_transition

STATES = tuple(s.value for s in JobState)
TERMINAL = tuple(s.value for s in JobState if s in TERMINAL_STATES)

SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(RuntimeError):
    """The database cannot be used; the message says why and what to do."""


# -- migrations: append only; never edit one that has shipped --


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would COMMIT the migration's transaction half way; run statement by statement
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m1_initial(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            spec TEXT NOT NULL,
            preset TEXT,
            mode TEXT NOT NULL,
            prompt TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT 'queued',
            priority INTEGER NOT NULL DEFAULT 0,
            position INTEGER NOT NULL DEFAULT 0,
            gpus_wanted INTEGER NOT NULL DEFAULT 1,
            gpus TEXT,
            cwd TEXT,
            created REAL NOT NULL,
            started REAL,
            finished REAL,
            error TEXT,
            reason TEXT,
            attempt_of INTEGER REFERENCES jobs(id),
            peak_mem INTEGER,
            step INTEGER,
            total_steps INTEGER,
            chunk INTEGER,
            num_chunks INTEGER,
            generation INTEGER,
            num_generations INTEGER,
            sec_per_step REAL,
            engine_pid INTEGER
        );
        CREATE INDEX jobs_state ON jobs(state, position);
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job INTEGER NOT NULL REFERENCES jobs(id),
            t REAL NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX events_job ON events(job, seq);
        CREATE TABLE outputs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job INTEGER NOT NULL REFERENCES jobs(id),
            path TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'video',
            t REAL NOT NULL,
            UNIQUE(job, path)
        );
        CREATE TABLE critic (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job INTEGER NOT NULL REFERENCES jobs(id),
            video TEXT,
            trial INTEGER,
            total INTEGER,
            score REAL,
            answers TEXT,
            t REAL NOT NULL
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        """
    )


def _m2_hold_and_after(db: sqlite3.Connection) -> None:
    # a flag, not a state: a held job is still queued (its place, its transitions), only passed over
    _script(db, "ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0; "
                "ALTER TABLE jobs ADD COLUMN after INTEGER REFERENCES jobs(id)")


def _m3_phase_timings(db: sqlite3.Connection) -> None:
    # measured seconds per unit of each phase, per model key, remembered across jobs for the ETA
    # (cosmos_tui/queue/eta.py); and each job's latest phase event (JSON) for its progress and ETA
    _script(db, "CREATE TABLE phase_stats (model_key TEXT NOT NULL, stat TEXT NOT NULL, seconds REAL NOT NULL, "
                "samples INTEGER NOT NULL, updated REAL NOT NULL, PRIMARY KEY (model_key, stat)); "
                "ALTER TABLE jobs ADD COLUMN phase TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m1_initial, _m2_hold_and_after, _m3_phase_timings]
SCHEMA_VERSION = len(MIGRATIONS)


def check_database_file(path: Path) -> None:
    """Raise StoreError if `path` exists and is not a sound SQLite database. Reads only."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(100)

    def bad(detail: str) -> StoreError:
        return StoreError(
            f"the job database {path} is damaged ({detail}); cosmos-tui will not overwrite it. "
            f"Move it aside (mv {path} {path}.bad) to start with an empty queue, or restore a backup."
        )

    if len(header) < 100:
        raise bad(f"only {size} bytes, shorter than a SQLite header")
    if header[:16] != SQLITE_MAGIC:
        raise bad("not a SQLite file: the header is wrong")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise bad(f"invalid page size {page_size}")
    if size % page_size:
        raise bad(f"truncated: {size} bytes is not a whole number of {page_size}-byte pages")
    # the in-header page count is trustworthy only when its version stamp matches the change counter
    pages = int.from_bytes(header[28:32], "big")
    if pages and header[92:96] == header[24:28] and size < pages * page_size:
        raise bad(f"truncated: {size} bytes, the header says {pages * page_size}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise bad(str(e)) from None
    if rows != [("ok",)]:
        raise bad("; ".join(str(r[0]) for r in rows[:3]))


class Store:
    """One connection, one thread (the daemon's event loop). Rows come back as plain dicts."""

    def __init__(self, path: str | os.PathLike, on_warning: Callable[[str], None] | None = None):
        from cosmos_tui import paths

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for p in (self.path, *self._sidecars()):
            # the queue holds prompts and paths: refuse planted links, tighten a 0644 file
            paths.check_private_file(p)
        check_database_file(self.path)
        if not self.path.exists():
            # born 0600 (SQLite gives its -wal/-shm files the database's mode)
            os.close(paths.open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        self.on_warning = on_warning
        self.gone: str | None = None
        self._open()
        self._migrate()

    def _sidecars(self) -> list[Path]:
        return [self.path.with_name(self.path.name + s) for s in ("-wal", "-shm", "-journal")]

    def _open(self) -> None:
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)

    def check_file(self) -> str | None:
        """Notice the database file deleted or replaced under us (writes would go to a file nobody
        will open again). A deleted file is written back from the open copy; a replaced one is left
        alone and reported. Returns the warning, once, else None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == self._ident:
            return None
        if st is None:
            from cosmos_tui import paths

            os.close(paths.open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            dst = sqlite3.connect(str(self.path))
            try:
                self.db.backup(dst)
            finally:
                dst.close()
            self.db.close()
            self._open()
            message = (f"the job database {self.path} was deleted while the daemon ran; it was written back "
                       f"from the daemon's open copy, nothing was lost")
        else:
            self._ident = (st.st_dev, st.st_ino)  # report once
            message = (f"the job database {self.path} was replaced by another file while the daemon ran; the "
                       f"daemon keeps writing the file it opened; stop it (cosmos-tui daemon stop --force) and "
                       f"check which file is the right queue")
        self.gone = message
        if self.on_warning:
            self.on_warning(message)
        return message

    def close(self) -> None:
        self.db.close()

    # -- schema --

    def version(self) -> int:
        has = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
        ).fetchone()
        if not has:
            return 0
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return row[0] or 0

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied REAL)")
        current = self.version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the job database {self.path} has schema version {current}, newer than this "
                f"cosmos-tui understands ({SCHEMA_VERSION}); upgrade cosmos-tui"
            )
        for number in range(current + 1, SCHEMA_VERSION + 1):
            with self._tx():
                MIGRATIONS[number - 1](self.db)
                self.db.execute("INSERT INTO schema_version VALUES (?, ?)", (number, time.time()))

    def _tx(self):
        if not self.db.in_transaction:
            self.check_file()
        return _Transaction(self.db)

    # -- jobs --

    def add_job(
        self,
        spec: dict,
        preset: str | None = None,
        priority: int = 0,
        cwd: str | None = None,
        attempt_of: int | None = None,
        front: bool = False,
        after: int | None = None,
    ) -> int:
        return self.add_jobs([spec], preset, priority, cwd, attempt_of, front, after)[0]

    def add_jobs(
        self,
        specs: Iterable[dict],
        preset: str | None = None,
        priority: int = 0,
        cwd: str | None = None,
        attempt_of: int | None = None,
        front: bool = False,
        after: int | None = None,
    ) -> list[int]:
        """Insert queued jobs in one transaction: all of them or none.

        A new job (not a retry) whose save_path another job already claims gets its own path
        (`video-job7.mp4`, `best-of-n-job7`), so jobs queued from one preset never overwrite each other.
        A retry keeps its attempt's path: a long video resumes from the chunks saved there.
        """
        ids = []
        now = time.time()
        with self._tx():
            taken = None if attempt_of is not None else self._claimed_paths()
            for spec in specs:
                if taken is not None:
                    spec = _distinct_save_path(spec, cwd, taken, self._next_id())
                cur = self.db.execute(
                    "INSERT INTO jobs (spec, preset, mode, prompt, state, priority, gpus_wanted, cwd, "
                    "created, attempt_of, after) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (
                        json.dumps(spec),
                        preset,
                        spec.get("mode", "video2world"),
                        spec.get("prompt", ""),
                        priority,
                        int(spec.get("num_gpus", 1)),
                        cwd,
                        now,
                        attempt_of,
                        after,
                    ),
                )
                ids.append(cur.lastrowid)
                self._place(cur.lastrowid, priority, front)
        return ids

    def claimed_paths(self) -> set[str]:
        """Every save_path a job of the queue has (resolved against its cwd)."""
        return self._claimed_paths()

    def _claimed_paths(self) -> set[str]:
        return {_resolved_save_path(json.loads(spec), cwd)
                for spec, cwd in self.db.execute("SELECT spec, cwd FROM jobs")}

    def _next_id(self) -> int:
        # AUTOINCREMENT never reuses an id, not even a removed job's: the next one is past the highest ever
        # given (sqlite_sequence), not past the highest still in the table
        row = self.db.execute("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0) + 1, "
                              "COALESCE(MAX(id), 0) + 1 FROM jobs").fetchone()
        return max(int(row[0]), int(row[1]))

    def _place(self, job_id: int, priority: int, front: bool) -> None:
        """Queue order is `position` alone; priority only decides where a new job goes in."""
        queued = self.db.execute(
            "SELECT id, priority, position FROM jobs WHERE state='queued' AND id != ? ORDER BY position, id",
            (job_id,),
        ).fetchall()
        if front:
            index = 0
        else:
            index = len(queued)
            while index > 0 and queued[index - 1]["priority"] < priority:
                index -= 1
        if index == len(queued):
            last = queued[-1]["position"] if queued else 0
            self.db.execute("UPDATE jobs SET position=? WHERE id=?", (last + 1, job_id))
            return
        order = [r["id"] for r in queued]
        order.insert(index, job_id)
        self._renumber(order)

    def _renumber(self, order: list[int]) -> None:
        self.db.executemany("UPDATE jobs SET position=? WHERE id=?", [(i + 1, j) for i, j in enumerate(order)])

    def job(self, job_id: int) -> dict | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job_row(row) if row else None

    def jobs(self, states: Iterable[str] | None = None) -> list[dict]:
        """Queued jobs first in queue order, then the rest newest first."""
        sql = "SELECT * FROM jobs"
        args: list[Any] = []
        if states:
            states = list(states)
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = states
        sql += " ORDER BY state != 'queued', CASE WHEN state='queued' THEN position ELSE -id END"
        return [_job_row(r) for r in self.db.execute(sql, args)]

    def queued(self) -> list[dict]:
        return self.jobs(["queued"])

    def update(self, job_id: int, **cols: Any) -> None:
        if not cols:
            return
        if "gpus" in cols and cols["gpus"] is not None and not isinstance(cols["gpus"], str):
            cols["gpus"] = json.dumps(list(cols["gpus"]))
        if "state" in cols and cols["state"] not in STATES:
            raise ValueError(f"unknown job state {cols['state']!r}")
        names = ", ".join(f"{k}=?" for k in cols)
        with self._tx():
            if "state" in cols:
                row = self.db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is not None:
                    check_transition(job_id, row["state"], cols["state"])
            self.db.execute(f"UPDATE jobs SET {names} WHERE id=?", (*cols.values(), job_id))

    def move(self, job_id: int, offset: int = 0, to: int | None = None) -> int:
        """Move a queued job by `offset` places (negative = towards the front) or to 1-based place
        `to`. Returns its new 1-based place."""
        order = [j["id"] for j in self.queued()]
        if job_id not in order:
            raise ValueError(f"job {job_id} is not queued; only queued jobs can be moved")
        old = order.index(job_id)
        new = (to - 1) if to is not None else old + offset
        new = max(0, min(len(order) - 1, new))
        order.pop(old)
        order.insert(new, job_id)
        with self._tx():
            self._renumber(order)
        return new + 1

    def set_spec(self, job_id: int, spec: dict) -> None:
        """A queued job's edited spec, with the columns derived from it."""
        with self._tx():
            row = self.db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] != "queued":
                raise ValueError(f"job {job_id} is not queued; only a queued job's spec can be changed")
            self.db.execute(
                "UPDATE jobs SET spec=?, mode=?, prompt=?, gpus_wanted=? WHERE id=?",
                (json.dumps(spec), spec.get("mode", "video2world"), spec.get("prompt", ""),
                 int(spec.get("num_gpus", 1)), job_id),
            )

    def remove(self, job_ids: Iterable[int]) -> None:
        """Forget finished jobs: their rows, events, outputs and critic answers (not their files).
        A later attempt keeps existing; it just no longer names the removed one."""
        ids = list(job_ids)
        marks = ",".join("?" * len(ids))
        with self._tx():
            states = {r["id"]: r["state"] for r in self.db.execute(f"SELECT id, state FROM jobs WHERE id IN ({marks})", ids)}
            alive = [i for i in ids if states.get(i) not in TERMINAL]
            if alive:
                raise ValueError(f"job {alive[0]} is {states.get(alive[0], 'missing')}; only finished jobs can be removed")
            self.db.execute(f"UPDATE jobs SET attempt_of=NULL WHERE attempt_of IN ({marks})", ids)
            self.db.execute(f"UPDATE jobs SET after=NULL WHERE after IN ({marks})", ids)
            for table in ("events", "outputs", "critic"):
                self.db.execute(f"DELETE FROM {table} WHERE job IN ({marks})", ids)
            self.db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)

    def recover_interrupted(self) -> list[dict]:
        """Jobs left `running` by a daemon that died: mark them interrupted. Returns them (as they
        were, engine_pid included, so the caller can make sure their engines are gone)."""
        rows = self.jobs(["running"])
        now = time.time()
        with self._tx():
            for j in rows:
                self.db.execute(
                    "UPDATE jobs SET state='interrupted', finished=?, reason='interrupted', "
                    "error='the daemon stopped while this job ran; retry it to run it again' WHERE id=?",
                    (now, j["id"]),
                )
        return rows

    # -- events, outputs, critic --

    def add_event(self, job_id: int, event: dict) -> int:
        with self._tx():
            cur = self.db.execute(
                "INSERT INTO events (job, t, kind, data) VALUES (?, ?, ?, ?)",
                (job_id, event.get("t") or time.time(), event.get("event", "?"), json.dumps(event, default=str)),
            )
        return cur.lastrowid

    def events(self, job_id: int, after: int = 0) -> list[dict]:
        rows = self.db.execute(
            "SELECT seq, data FROM events WHERE job=? AND seq>? ORDER BY seq", (job_id, after)
        ).fetchall()
        return [{**json.loads(r["data"]), "seq": r["seq"]} for r in rows]

    def add_output(self, job_id: int, path: str, kind: str = "video") -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR IGNORE INTO outputs (job, path, kind, t) VALUES (?, ?, ?, ?)",
                (job_id, path, kind or "video", time.time()),
            )

    def outputs(self, job_id: int) -> list[dict]:
        rows = self.db.execute("SELECT path, kind FROM outputs WHERE job=? ORDER BY id", (job_id,))
        return [dict(r) for r in rows]

    def add_critic(self, job_id: int, event: dict) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO critic (job, video, trial, total, score, answers, t) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    event.get("video"),
                    event.get("trial"),
                    event.get("total"),
                    event.get("score"),
                    json.dumps(event.get("answers")),
                    event.get("t") or time.time(),
                ),
            )

    def critic(self, job_id: int) -> list[dict]:
        rows = self.db.execute(
            "SELECT video, trial, total, score, answers FROM critic WHERE job=? ORDER BY id", (job_id,)
        )
        return [{**dict(r), "answers": json.loads(r["answers"]) if r["answers"] else None} for r in rows]

    # -- phase timings (the ETA's memory) --

    def add_phase_sample(self, model_key: str, stat: str, seconds: float) -> None:
        """Fold one measured per-unit duration into the model's average (queue/eta.blend)."""
        from cosmos_tui.queue.eta import Stat, blend

        with self._tx():
            row = self.db.execute("SELECT seconds, samples FROM phase_stats WHERE model_key=? AND stat=?",
                                  (model_key, stat)).fetchone()
            new = blend(Stat(row["seconds"], row["samples"]) if row else None, float(seconds))
            self.db.execute("INSERT OR REPLACE INTO phase_stats VALUES (?, ?, ?, ?, ?)",
                            (model_key, stat, new.seconds, new.samples, time.time()))

    def phase_stats(self) -> dict:
        """{model key: {stat: Stat}} for every model measured so far."""
        from cosmos_tui.queue.eta import Stat

        out: dict = {}
        for r in self.db.execute("SELECT model_key, stat, seconds, samples FROM phase_stats"):
            out.setdefault(r["model_key"], {})[r["stat"]] = Stat(r["seconds"], r["samples"])
        return out

    # -- queue-wide flags --

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))


def _job_row(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["spec"] = json.loads(d["spec"])
    d["gpus"] = json.loads(d["gpus"]) if d["gpus"] else []
    d["phase"] = json.loads(d["phase"]) if d.get("phase") else None
    return d


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error; nested uses join the outer one."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.outer = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False


def _resolved_save_path(spec: dict, cwd: str | None) -> str:
    return os.path.normpath(os.path.join(cwd or "", spec.get("save_path") or ""))


def _distinct_save_path(spec: dict, cwd: str | None, taken: set[str], job_id: int) -> dict:
    """`spec` with a save_path no other job claims and no file holds unless overwrite is asked for (adds
    `-job<id>`), recording the claim in `taken`. A file already there is a removed job's video or anyone's:
    kept either way (a path the user named over such a file was refused before it got here)."""
    path = _resolved_save_path(spec, cwd)
    root, ext = os.path.splitext(spec.get("save_path") or "")
    n = 0
    while path in taken or (not spec.get("overwrite") and os.path.isfile(path)):
        n += 1
        candidate = f"{root}-job{job_id}{ext}" if n == 1 else f"{root}-job{job_id}-{n}{ext}"
        spec = {**spec, "save_path": candidate}
        path = _resolved_save_path(spec, cwd)
    taken.add(path)
    return spec
