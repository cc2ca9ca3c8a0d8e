"""The pure queue core: state transitions, submit checks. No daemon, no sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from cosmos_tui.queue.resolve import SubmitError, batch_entry_problem, check_inputs, check_save_path, resolve_spec
from cosmos_tui.queue.state import JobState, TransitionError, check_transition
from cosmos_tui.store import Store


def test_the_queue_package_imports_no_asyncio_sockets_textual_or_torch():
    code = ("import sys, cosmos_tui.queue.state, cosmos_tui.queue.resolve, cosmos_tui.queue.core, cosmos_tui.queue.job\n"
            "print(' '.join(m for m in ('asyncio', 'socket', 'textual', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_transitions():
    check_transition(1, "queued", "running")
    check_transition(1, "running", "done")
    with pytest.raises(TransitionError, match="job 1 is done and cannot become running"):
        check_transition(1, "done", "running")
    assert JobState.FAILED.terminal and not JobState.RUNNING.terminal


def test_the_store_refuses_a_transition_out_of_a_terminal_state(tmp_path):
    s = Store(tmp_path / "jobs.db")
    jid = s.add_job({"prompt": "x"})
    s.update(jid, state="running")
    s.update(jid, state="done")
    with pytest.raises(TransitionError):
        s.update(jid, state="running")
    assert s.job(jid)["state"] == "done"
    s.close()


def test_seed_range_and_undecodable_text():
    with pytest.raises(SubmitError, match=r"seed: 4294967296 is outside 0\.\.4294967295"):
        resolve_spec({"seed": 2**32}, None, 1)
    with pytest.raises(SubmitError, match="seed: -1"):
        resolve_spec({"seed": -1}, None, 1)
    spec = resolve_spec({"prompt": "caf\udce9"}, None, 1)  # argv bytes b"caf\xe9"
    assert spec["prompt"] == "caf\ufffd"
    with pytest.raises(SubmitError, match="save_path: .* is not valid UTF-8"):
        resolve_spec({"save_path": "out/\udcff.mp4"}, None, 1)


def test_inputs_are_checked_at_submit(tmp_path):
    with pytest.raises(SubmitError, match="input_path: 'nope.jpg' does not exist"):
        check_inputs(resolve_spec({"input_path": "nope.jpg"}, None, 1), str(tmp_path))
    (tmp_path / "in.jpg").write_bytes(b"jpeg")
    check_inputs(resolve_spec({"input_path": "in.jpg", "prompt": "a kite"}, None, 1), str(tmp_path))
    # the guardrail (on by default) refuses an empty prompt when the job runs: said at submit instead
    with pytest.raises(SubmitError, match=r"^prompt: empty; the guardrail refuses"):
        check_inputs(resolve_spec({"input_path": "in.jpg"}, None, 1), str(tmp_path))
    check_inputs(resolve_spec({"input_path": "in.jpg", "disable_guardrail": True}, None, 1), str(tmp_path))
    with pytest.raises(SubmitError, match="num_conditional_frames: 5 frames .* is an image"):
        check_inputs(resolve_spec({"input_path": "in.jpg", "num_conditional_frames": 5}, None, 1), str(tmp_path))
    # the demo image is drawn when a job first needs it, so it is not on disk to look at: still an image
    # (the tiny-cpu preset with num_conditional_frames=5 was queued, then failed when it ran)
    from engine.io import DEMO_INPUT_PATH

    check_inputs(resolve_spec({"input_path": DEMO_INPUT_PATH, "prompt": "a kite"}, None, 1), str(tmp_path))
    with pytest.raises(SubmitError, match="num_conditional_frames: 5 frames .* is an image"):
        check_inputs(resolve_spec({"input_path": DEMO_INPUT_PATH, "num_conditional_frames": 5}, None, 1), str(tmp_path))
    (tmp_path / "secret.jpg").write_bytes(b"jpeg")
    (tmp_path / "secret.jpg").chmod(0)
    import os

    if os.getuid() != 0:
        with pytest.raises(SubmitError, match="cannot be read"):
            check_inputs(resolve_spec({"input_path": "secret.jpg"}, None, 1), str(tmp_path))


def test_a_short_video_cannot_give_five_frames(tmp_path):
    import imageio_ffmpeg
    import numpy as np

    path = tmp_path / "short.mp4"
    w = imageio_ffmpeg.write_frames(str(path), (64, 48), fps=16, macro_block_size=16)
    w.send(None)
    for _ in range(3):
        w.send(np.zeros((48, 64, 3), np.uint8).tobytes())
    w.close()
    with pytest.raises(SubmitError, match="has 3; set num_conditional_frames=1 or give a longer video"):
        check_inputs(resolve_spec({"input_path": "short.mp4", "num_conditional_frames": 5}, None, 1), str(tmp_path))


def test_an_existing_file_no_job_wrote_is_not_overwritten(tmp_path):
    (tmp_path / "mine.mp4").write_bytes(b"precious")
    spec = resolve_spec({"save_path": "mine.mp4"}, None, 1)
    with pytest.raises(SubmitError, match="--set overwrite=true"):
        check_save_path(spec, str(tmp_path), set())
    check_save_path(spec, str(tmp_path), {str(tmp_path / "mine.mp4")})  # a job of ours wrote it
    check_save_path(resolve_spec({"save_path": "mine.mp4", "overwrite": True}, None, 1), str(tmp_path), set())


def test_batch_entries_need_their_own_prompt_and_input():
    assert batch_entry_problem({"prompt": "a", "input_path": "x.jpg"}) is None
    assert "input_video: missing" in batch_entry_problem({"prompt": "a"})
    assert "prompt and input_video" in batch_entry_problem({"save_path": "o.mp4"})


def test_missing_checkpoints_are_refused_at_submit_where_the_engine_would_look(tmp_path, monkeypatch):
    # a 2B job on a machine without its checkpoints used to queue, then fail as a "crash" when it ran
    from cosmos_tui.queue.resolve import check_checkpoints

    monkeypatch.delenv("COSMOS_TUI_CHECKPOINTS")  # the seed's ./checkpoints, under the job's directory
    spec = resolve_spec({"prompt": "a kite", "disable_prompt_refiner": True}, None, 1)
    with pytest.raises(SubmitError, match=rf"^The DiT checkpoint {tmp_path}/checkpoints/nvidia/Cosmos-Predict2-2B-"
                                          r"Video2World/model-720p-16fps.pt is missing; download it with `python -m "
                                          r"scripts.download_checkpoints --model_types video2world --model_sizes 2B"):
        check_checkpoints(spec, str(tmp_path))
    repo = tmp_path / "checkpoints" / "nvidia" / "Cosmos-Predict2-2B-Video2World"
    (repo / "tokenizer").mkdir(parents=True)
    for f in (repo / "model-720p-16fps.pt", repo / "tokenizer" / "tokenizer.pth"):
        f.touch()
    with pytest.raises(SubmitError, match="The T5 text encoder checkpoint .*/checkpoints/google-t5/t5-11b is missing"):
        check_checkpoints(spec, str(tmp_path))
    (tmp_path / "checkpoints" / "google-t5" / "t5-11b").mkdir(parents=True)
    with pytest.raises(SubmitError, match=r"^guardrail: the Llama Guard 3 checkpoint .* and the video safety filter "
                                          r"checkpoint .* are missing; .* or run with --disable_guardrail"):
        check_checkpoints(spec, str(tmp_path))
    check_checkpoints({**spec, "disable_guardrail": True}, str(tmp_path))
    # the refiner needs Reason1; the tiny profile and Slurm jobs need nothing of this machine
    with pytest.raises(SubmitError, match="The Cosmos-Reason1-7B checkpoint"):
        check_checkpoints({**spec, "disable_guardrail": True, "disable_prompt_refiner": False}, str(tmp_path))
    check_checkpoints(resolve_spec({"model_size": "tiny", "prompt": "a"}, None, 1), str(tmp_path / "elsewhere"))
    # best-of-N scoring existing videos loads the critic alone
    scoring = resolve_spec({"mode": "bestofn", "skip_generation": True, "save_path": "bon"}, None, 1)
    with pytest.raises(SubmitError, match="^The Cosmos-Reason1-7B checkpoint"):
        check_checkpoints(scoring, str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere" / "checkpoints" / "nvidia" / "Cosmos-Reason1-7B").mkdir(parents=True)
    check_checkpoints(scoring, str(tmp_path / "elsewhere"))
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/sbatch")
    slurm = resolve_spec({"prompt": "a", "executor": "slurm", "slurm_gpus_per_node": 1}, None, 1)
    check_checkpoints(slurm, str(tmp_path / "elsewhere"))


def test_a_missing_checkpoint_fails_a_running_job_as_invalid_not_a_crash():
    from engine.checkpoints import MissingCheckpointError
    from engine.server import classify

    reason, error = classify(MissingCheckpointError("DiT", "ck/model.pt", "download it with `x`"))
    assert reason == "invalid" and error.startswith("The DiT checkpoint ck/model.pt is missing; download it with `x`")
