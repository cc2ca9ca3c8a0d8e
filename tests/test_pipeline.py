"""End to end on the tiny profile: every mode writes what the seed's guide says it writes.

Tiny DiT/VAE/T5 with seeded random weights, 2 denoising steps, the tiny resolution table. The refiner
and guardrail are off here (they have their own tests); test_modes_aux.py covers them in a pipeline.
"""

from __future__ import annotations

import json
import threading

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from engine import io, resolutions
from engine.modes import run_job
from engine.pipeline import Cancelled, get_pipeline
from engine.spec import InputError
from tests.tiny import small_video, tiny_spec

pytestmark = pytest.mark.slow


def tiny(tmp_path, **kw):
    return tiny_spec(tmp_path, num_steps=2, input_name="in.png", **kw)


def frames_of(path) -> np.ndarray:
    return iio.imread(path)  # [T, H, W, 3]


def test_single_video_writes_mp4_and_sidecars(tmp_path):
    spec = tiny(tmp_path)
    evs: list[dict] = []
    outputs = run_job(spec, emit=evs.append)
    video, txt, js = outputs
    w, h = resolutions.frame_size(spec.resolution, spec.aspect_ratio, "tiny")
    v = frames_of(video)
    assert v.shape == (resolutions.num_frames(16, "tiny"), h, w, 3)
    meta = iio.immeta(video)
    assert meta["fps"] == 16
    assert "[Prompt]\na robot arm picks up a red cup" in open(txt).read()
    record = json.load(open(js))
    assert record["seed"] == 0 and record["spec"]["model_size"] == "tiny"
    assert {"denoise_s", "vae_decode_s"} <= set(record["timings"])
    steps = [e for e in evs if e["event"] == "step"]
    # the 2 steps asked for, then the sampler's final clean pass told apart (never "step 3/2" or "3/3")
    assert [(e["step"], e.get("final", False)) for e in steps] == [(1, False), (2, False), (2, True)]
    assert all(e["total"] == 2 for e in steps)
    assert [e["kind"] for e in evs if e["event"] == "output"] == ["video", "prompt", "spec"]


def test_same_seed_same_video_other_seed_differs(tmp_path):
    a = run_job(tiny(tmp_path, save_path=str(tmp_path / "a.mp4")))[0]
    b = run_job(tiny(tmp_path, save_path=str(tmp_path / "b.mp4")))[0]
    c = run_job(tiny(tmp_path, save_path=str(tmp_path / "c.mp4"), seed=1))[0]
    assert np.array_equal(frames_of(a), frames_of(b))
    assert not np.array_equal(frames_of(a), frames_of(c))


def test_ten_fps_makes_the_shorter_clip_and_aspect_ratio_changes_size(tmp_path):
    spec = tiny(tmp_path, fps=10, aspect_ratio="3:4")
    v = frames_of(run_job(spec)[0])
    w, h = resolutions.frame_size("720", "3:4", "tiny")
    assert v.shape == (resolutions.num_frames(10, "tiny"), h, w, 3)
    assert iio.immeta(spec.save_path)["fps"] == 10


def test_five_conditional_frames_from_a_video(tmp_path):
    spec = tiny(tmp_path, input_path=small_video(tmp_path), num_conditional_frames=5)
    assert frames_of(run_job(spec)[0]).shape[0] == resolutions.num_frames(16, "tiny")


def test_warm_pipeline_is_reused(tmp_path):
    spec = tiny(tmp_path)
    first = get_pipeline(spec)
    dit = first.dit
    second = get_pipeline(tiny(tmp_path, prompt="another prompt", seed=5))
    assert second is first and second.dit is dit
    # 10 and 16 fps (and natten) are different released checkpoints: a new pipeline
    assert get_pipeline(tiny(tmp_path, fps=10)) is not first
    assert get_pipeline(tiny(tmp_path, natten=True)).key != first.key


def test_a_warm_pipeline_takes_each_jobs_own_fields_and_refuses_other_builds(tmp_path):
    a = tiny_spec(tmp_path, num_steps=2)
    b = a.model_copy(update={"num_steps": 1, "prompt": "another", "guidance": 0.0})
    pipe = get_pipeline(a)
    assert not hasattr(pipe, "spec")  # nothing job-specific is stored on a shared pipeline
    totals = {}
    for job in (b, a):  # b first: a pipeline that kept the first job's settings would sample a with b's steps
        evs: list[dict] = []
        pipe.set_emit(evs.append)
        res = pipe.generate(job)
        assert res.prompt == job.prompt
        totals[job.num_steps] = {e["total"] for e in evs if e["event"] == "step"}
    assert len(totals[1]) == len(totals[2]) == 1 and max(totals[1]) < max(totals[2])
    with pytest.raises(ValueError, match="built for other settings"):
        pipe.generate(a.model_copy(update={"fps": 10}))


def test_benchmark_runs_four_times_and_reports_the_mean_of_three(tmp_path):
    spec = tiny(tmp_path, benchmark=True)
    evs: list[dict] = []
    js = run_job(spec, emit=evs.append)[2]
    timings = json.load(open(js))["timings"]
    assert len(timings["benchmark_runs_s"]) == 3
    assert timings["benchmark_mean_s"] == pytest.approx(sum(timings["benchmark_runs_s"]) / 3)
    assert sum(1 for e in evs if e["event"] == "step" and e["step"] == 1) == 4


def test_with_the_guardrail_off_the_mp4_is_encoded_while_the_vae_decodes(tmp_path, monkeypatch):
    """A guardrail-off job feeds each latent frame's pixel frames to ffmpeg as the VAE decodes them (the
    encode overlaps the decode) and writes the file a whole-video write of the same frames writes; with
    --benchmark no frame goes out during a decode (the timed runs are generation alone; the last run's
    video is written whole afterwards)."""
    from engine.models import vae as vae_mod

    feeds: list[tuple[bool, int, torch.Tensor]] = []  # (during a decode, frames, clip)
    real_feed, real_decode = io.VideoStream.feed, vae_mod.WanVAE.decode
    decoding = threading.local()

    def decode(self, *a, **k):
        decoding.on = True
        try:
            return real_decode(self, *a, **k)
        finally:
            decoding.on = False

    def feed(self, clip):
        feeds.append((getattr(decoding, "on", False), clip.shape[1], clip.clone()))
        return real_feed(self, clip)

    monkeypatch.setattr(io.VideoStream, "feed", feed)
    monkeypatch.setattr(vae_mod.WanVAE, "decode", decode)
    video = run_job(tiny(tmp_path))[0]
    frames = resolutions.num_frames(16, "tiny")
    assert [(during, n) for during, n, _ in feeds] == [(True, 1)] + [(True, 4)] * ((frames - 1) // 4)
    clips = [c for _, _, c in feeds]
    feeds.clear()
    whole = io.write_video(tmp_path / "whole.mp4", torch.cat(clips, dim=1), 16)
    assert open(video, "rb").read() == whole.read_bytes()
    feeds.clear()
    run_job(tiny(tmp_path, benchmark=True, save_path=str(tmp_path / "bench.mp4")))
    assert feeds and not any(during for during, _, _ in feeds)


def test_a_stream_is_refused_while_the_guardrail_must_see_the_whole_video(tmp_path):
    spec = tiny(tmp_path, disable_guardrail=False)
    pipe = get_pipeline(spec)
    with pytest.raises(ValueError, match="disable_guardrail"):
        pipe.generate(spec, video_stream=io.VideoStream(tmp_path / "x.mp4", 16))


def test_image_with_five_conditional_frames_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="num_conditional_frames"):
        run_job(tiny(tmp_path, num_conditional_frames=5))


def test_missing_input_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="input_path"):
        run_job(tiny(tmp_path, input_path=str(tmp_path / "nope.jpg")))


def test_cancel_between_steps(tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run_job(tiny(tmp_path), cancel=cancel)


# -- long video ---------------------------------------------------------------------------------


def test_long_video_frame_count_and_chunk_events(tmp_path):
    spec = tiny(tmp_path, mode="lvg", num_chunks=3, num_conditional_frames=1)
    evs: list[dict] = []
    out = run_job(spec, emit=evs.append)[0]
    n = resolutions.num_frames(16, "tiny")
    total = resolutions.lvg_total_frames(3, 1, model_size="tiny")
    assert total == n + 2 * (n - 1)
    assert frames_of(out).shape[0] == total
    chunks = [e for e in evs if e["event"] == "chunk"]
    assert [(c["chunk"], c["frames"]) for c in chunks] == [(1, n), (2, 2 * n - 1), (3, total)]
    assert not (tmp_path / "out" / "video.mp4.lvg").exists()  # state removed once done


def test_long_video_resumes_after_interruption_and_matches_an_uninterrupted_run(tmp_path):
    src = small_video(tmp_path)
    whole = run_job(tiny(tmp_path, mode="lvg", num_chunks=3, num_conditional_frames=5, input_path=src,
                         save_path=str(tmp_path / "whole.mp4")))[0]

    spec = tiny(tmp_path, mode="lvg", num_chunks=3, num_conditional_frames=5, input_path=src,
                save_path=str(tmp_path / "cut.mp4"))
    cancel = threading.Event()

    def stop_after_first_chunk(ev):
        if ev["event"] == "chunk" and ev["chunk"] == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        run_job(spec, emit=stop_after_first_chunk, cancel=cancel)
    state = json.loads((tmp_path / "cut.mp4.lvg" / "state.json").read_text())
    assert state["chunks_done"] == 1
    assert frames_of(tmp_path / "cut.mp4").shape[0] == resolutions.num_frames(16, "tiny")  # partial video on disk

    evs: list[dict] = []
    resumed = run_job(spec, emit=evs.append)[0]
    assert [e["chunk"] for e in evs if e["event"] == "chunk"] == [2, 3]
    assert any("resuming long video at chunk 2/3" in e.get("message", "") for e in evs)
    a, b = frames_of(whole), frames_of(resumed)
    assert a.shape[0] == resolutions.lvg_total_frames(3, 5, model_size="tiny") == b.shape[0]
    assert np.array_equal(a, b)


def test_long_video_refuses_to_splice_a_different_job(tmp_path):
    spec = tiny(tmp_path, mode="lvg", num_chunks=2)
    d = tmp_path / "out" / "video.mp4.lvg"
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"fingerprint": "somethingelse", "chunks_done": 1,
                                              "refined_prompts": []}))
    with pytest.raises(InputError, match="different settings"):
        run_job(spec)


def test_conditioning_frames_survive_into_the_output(tmp_path):
    """Frame 0 of the output reproduces the conditioning image through the VAE round trip: the
    conditioned latent is re-imposed on x0 after every call, so it is exactly the encoded input."""
    spec = tiny(tmp_path)
    pipe = get_pipeline(spec)
    res = pipe.generate(spec, spec.input_path, seed=0)
    w, h = resolutions.frame_size("720", "16:9", "tiny")
    clip = io.to_signed_unit(io.load_conditioning_clip(spec.input_path, 1, w, h, resolutions.num_frames(16, "tiny"))).unsqueeze(0)
    with torch.inference_mode():
        gt = pipe.vae.encode(clip)
    assert torch.equal(res.latent[:, :1], gt[0, :, :1].float())


class RecordingRefiner:
    """Stands in for Cosmos-Reason1: records the picture each refinement was shown."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def refine_prompt(self, prompt, input_path):
        self.seen.append(io.read_image(input_path))
        return f"{prompt}, refined for chunk {len(self.seen) - 1}"


def test_long_video_refines_each_chunk_against_its_own_conditioning_frames(tmp_path):
    spec = tiny_spec(tmp_path, num_steps=1, mode="lvg", num_chunks=2, disable_prompt_refiner=False)
    pipe = get_pipeline(spec)
    refiner = RecordingRefiner()
    pipe._refiner = refiner
    conditioned_on = []  # what generate() was given for each chunk
    real_generate = pipe.generate

    def recording_generate(*args, **kw):
        res = real_generate(*args, **kw)
        conditioned_on.append(kw.get("frames"))
        return res

    pipe.generate = recording_generate
    try:
        outputs = run_job(spec, pipeline=pipe)
    finally:
        pipe._refiner = None
        del pipe.generate
    assert len(refiner.seen) == 2
    w, h = resolutions.frame_size(spec.resolution, spec.aspect_ratio, "tiny")
    first = io.resize_cover_crop(io.read_image(spec.input_path)[None], w, h)[:, 0].permute(1, 2, 0).numpy()
    assert np.array_equal(io.resize_cover_crop(refiner.seen[0][None], w, h)[:, 0].permute(1, 2, 0).numpy(), first)
    for k in (1,):
        # chunk k was refined against the exact (8-bit) frame it continues from, not the original input
        tail = io.to_uint8(conditioned_on[k][:, -1]).permute(1, 2, 0).numpy()
        assert np.array_equal(refiner.seen[k], tail)
        assert not np.array_equal(refiner.seen[k], first)
    text = open(outputs[1]).read()
    assert "[Refined Prompt for chunk 0]\n" + spec.prompt + ", refined for chunk 0\n" in text
    assert "[Refined Prompt for chunk 1]\n" + spec.prompt + ", refined for chunk 1\n" in text
    assert "\n\n" not in text
    assert json.loads(open(outputs[2]).read())["refined_prompts"][1].endswith("refined for chunk 1")
