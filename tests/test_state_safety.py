"""The state home is trusted only after checks: owner, mode, no symlinks; a deleted jobs.db is noticed."""

from __future__ import annotations

import os
import stat

import pytest

from cosmos_tui import paths
from cosmos_tui.client import Client, DaemonError
from cosmos_tui.store import Store


def mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_a_loose_existing_home_is_tightened_and_jobs_db_is_private(cosmos_home):
    os.chmod(cosmos_home, 0o755)
    paths.ensure_home()
    assert mode(cosmos_home) == 0o700
    Store(paths.db_path()).close()
    assert mode(paths.db_path()) == 0o600
    os.chmod(paths.db_path(), 0o644)
    Store(paths.db_path()).close()
    assert mode(paths.db_path()) == 0o600


def test_a_symlinked_run_dir_is_refused(cosmos_home, tmp_path):
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    (cosmos_home / "run").symlink_to(elsewhere)
    with pytest.raises(paths.UnsafePathError, match="symbolic link"):
        paths.ensure_run_dir()


def test_log_files_do_not_follow_planted_symlinks(cosmos_home, tmp_path):
    paths.ensure_log_dir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    paths.job_log_path(1).symlink_to(victim)
    with pytest.raises(OSError):
        with paths.open_append(paths.job_log_path(1)) as f:
            f.write(b"planted\n")
    assert victim.read_text() == "keep\n"


def test_temp_files_are_exclusive_and_private(cosmos_home):
    paths.ensure_run_dir()
    paths.write_private_atomic(paths.pid_path(), "123\n")
    assert paths.pid_path().read_text() == "123\n" and mode(paths.pid_path()) == 0o600


def test_the_client_refuses_a_socket_behind_a_symlink(cosmos_home, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "daemon.sock").write_text("")
    (cosmos_home / "run").symlink_to(real)
    with pytest.raises(DaemonError, match="symbolic link"):
        Client().ping()


def test_a_deleted_database_is_noticed_and_written_back(tmp_path):
    warnings = []
    s = Store(tmp_path / "jobs.db", on_warning=warnings.append)
    first = s.add_job({"prompt": "kept"})
    os.unlink(tmp_path / "jobs.db")
    second = s.add_job({"prompt": "after"})
    assert len(warnings) == 1 and "was deleted while the daemon ran" in warnings[0]
    s.close()
    again = Store(tmp_path / "jobs.db")
    assert [j["prompt"] for j in again.jobs()] == ["kept", "after"] and {first, second} == {j["id"] for j in again.jobs()}
    again.close()
