"""The Slurm executor's pure parts, no cluster: spec fields and their errors, the scripts it
renders, Slurm's end states mapped to job states, tailing a file another machine appends to."""

from __future__ import annotations

import pytest

from cosmos_tui.executors.slurm import (FileTail, JobFiles, SlurmStatus, outcome, render_batch_script,
                                        render_node_script)
from engine.spec import SpecError, slurm_minutes, spec_from_dict

SLURM = {"executor": "slurm"}


@pytest.mark.parametrize("fields, message", [
    ({"slurm_gpus_per_node": 0},
     'slurm_gpus_per_node: 0 GPUs runs only the tiny profile (on CPUs); set slurm_gpus_per_node to 1 or more, '
     'or model_size = "tiny"'),
    ({"slurm_nodes": 2, "slurm_gpus_per_node": 8},
     "num_gpus: a Slurm job of 2 node(s) x 8 engine rank(s) runs 16 rank(s); set num_gpus = 16"),
    ({"slurm_time_limit": "2h"}, "slurm_time_limit: '2h' is not a Slurm time limit; write minutes (90)"),
    ({"slurm_time_limit": "0"}, "slurm_time_limit: '0' is not a Slurm time limit"),
    ({"slurm_partition": "gpu --wrap=rm"}, "slurm_partition: 'gpu --wrap=rm' is not a Slurm partition name"),
    ({"slurm_account": "a;b"}, "slurm_account: 'a;b' is not a Slurm account name"),
])
def test_bad_slurm_fields_name_the_field_and_the_fix(fields, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict({**SLURM, **fields})
    assert message in str(err.value)


def test_tiny_profile_may_ask_for_no_gpus_and_local_jobs_ignore_slurm_fields():
    spec = spec_from_dict({**SLURM, "model_size": "tiny", "slurm_gpus_per_node": 0, "slurm_nodes": 3, "num_gpus": 3})
    assert spec.slurm_gpus_per_node == 0
    # a local job with a preset's slurm settings left in: nothing to check
    assert spec_from_dict({"slurm_gpus_per_node": 0, "slurm_nodes": 4}).executor == "local"


@pytest.mark.parametrize("limit, minutes", [("90", 90), ("0:05", 1), ("1:30:00", 90), ("1-12", 2160),
                                            ("1-0:0:1", 1441), ("2-3:04", 3064)])
def test_slurm_minutes_rounds_up_like_slurm(limit, minutes):
    assert slurm_minutes(limit) == minutes


def test_batch_script_asks_for_what_the_spec_says(tmp_path):
    spec = spec_from_dict({**SLURM, "slurm_nodes": 2, "slurm_gpus_per_node": 8, "num_gpus": 16,
                           "slurm_partition": "gpu", "slurm_account": "proj-1", "slurm_time_limit": "1-00:00:00"})
    text = render_batch_script(3, spec.model_dump(), JobFiles(tmp_path / "job 3"))
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert directives == ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --time=1-00:00:00",
                          "#SBATCH --no-requeue", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                          "#SBATCH --account=proj-1"]
    assert f"bash '{tmp_path}/job 3/node.sh'" in text  # paths quoted for the shell
    cpu = render_batch_script(3, spec_from_dict({**SLURM, "model_size": "tiny", "slurm_gpus_per_node": 0})
                              .model_dump(), JobFiles(tmp_path))
    assert "--gpus-per-node" not in cpu and "--partition" not in cpu and "--account" not in cpu


def test_node_script_meets_on_the_first_node_and_only_node_0_talks(tmp_path):
    spec = spec_from_dict({**SLURM, "slurm_nodes": 2, "slurm_gpus_per_node": 4, "num_gpus": 8}).model_dump()
    text = render_node_script(spec, JobFiles(tmp_path), python="/opt/venv/bin/python", setup="module load cuda")
    assert "module load cuda" in text
    assert 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert "--nproc-per-node=4 --nnodes=$SLURM_NNODES --node-rank=$SLURM_NODEID --master-addr=$head" in text
    assert f"-m engine.server <&3 >>{tmp_path}/events.jsonl" in text
    assert "exec $launch -m engine.server </dev/null >/dev/null" in text  # other nodes: silent


def _status(state, reason="None"):
    return SlurmStatus(state, reason)


@pytest.mark.parametrize("state, cancelled, expected", [
    ("CANCELLED", True, ("cancelled", "cancelled")),
    ("CANCELLED", False, ("interrupted", "killed")),
    ("TIMEOUT", False, ("interrupted", "time limit")),
    ("NODE_FAIL", False, ("interrupted", "node failure")),
    ("BOOT_FAIL", False, ("interrupted", "node failure")),
    ("PREEMPTED", False, ("interrupted", "preempted")),
    ("DEADLINE", False, ("interrupted", "deadline")),
    ("FAILED", False, ("failed", "crash")),
    ("OUT_OF_MEMORY", False, ("failed", "crash")),
    ("COMPLETED", False, ("failed", "crash")),  # ended, but the engine never said how
    ("UNKNOWN", False, ("interrupted", "lost")),
])
def test_slurm_end_states_map_to_job_states_with_reasons(state, cancelled, expected):
    got = outcome(_status(state), cancelled, {"slurm_time_limit": "30"}, 17)
    assert got[:2] == expected
    assert "17" in got[2] or got[2] == "cancelled on request"


def test_time_limit_error_says_which_limit_and_that_a_long_video_resumes():
    error = outcome(_status("TIMEOUT", "TimeLimit"), False, {"slurm_time_limit": "30"}, 17)[2]
    assert error == ("Slurm job 17 ended TIMEOUT: it reached its time limit (slurm_time_limit = 30); raise "
                     "slurm_time_limit and retry it (a long video resumes from its last finished chunk)")


def test_file_tail_waits_for_the_newline_of_a_half_written_line(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = FileTail(path)
    assert tail.read_lines() == []  # not there yet
    path.write_bytes(b'{"a": 1}\n{"b"')
    assert tail.read_lines() == ['{"a": 1}']
    with open(path, "ab") as f:
        f.write(b': 2}\n\xff\n')
    assert tail.read_lines() == ['{"b": 2}', "\ufffd"]  # not UTF-8: replaced, not fatal
    with open(path, "ab") as f:
        f.write(b"no newline at the end")
    assert tail.read_lines() == []
    assert tail.read_lines(final=True) == ["no newline at the end"]


def test_a_slurm_job_is_refused_at_submit_where_there_is_no_sbatch(monkeypatch, tmp_path):
    from cosmos_tui.queue.resolve import SubmitError, resolve_spec

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SubmitError) as err:
        resolve_spec({**SLURM, "model_size": "tiny"}, None, gpu_count=0)
    assert str(err.value).startswith('executor: "slurm" needs sbatch, which is not on the daemon\'s PATH;')
    # and a local job on the same machine is not affected
    assert resolve_spec({"model_size": "tiny"}, None, gpu_count=1)["executor"] == "local"


def test_a_slurm_job_does_not_count_this_machines_gpus(monkeypatch):
    import shutil

    from cosmos_tui.queue.resolve import resolve_spec

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    spec = resolve_spec({**SLURM, "slurm_nodes": 2, "slurm_gpus_per_node": 8, "num_gpus": 16}, None, gpu_count=0)
    assert spec["num_gpus"] == 16


def test_a_controller_that_does_not_answer_is_no_verdict_on_the_job(monkeypatch):
    """squeue failing to reach slurmctld says nothing about the job: query raises (the follower asks
    again) instead of calling the job lost. (squeue's own wording, as slurm 22.05 prints it.)"""
    import subprocess

    from cosmos_tui.executors import slurm

    answers = {
        "squeue": (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"),
        "sacct": (1, "sacct: error: Problem talking to the database: Connection refused"),
    }

    def run(argv, timeout=30):
        rc, text = answers[argv[0]]
        return subprocess.CompletedProcess(argv, rc, text if rc == 0 else "", "" if rc == 0 else text)

    monkeypatch.setattr(slurm, "_run", run)
    with pytest.raises(slurm.SlurmError, match="squeue failed: slurm_load_jobs error: Unable to contact"):
        slurm.query(5)
    answers["squeue"] = (1, "slurm_load_jobs error: Invalid job id specified")
    assert slurm.query(5).state == "UNKNOWN"
    answers["sacct"] = (0, "CANCELLED by 1000|None|node3\n")
    assert slurm.query(5) == slurm.SlurmStatus("CANCELLED", "None", "node3")
