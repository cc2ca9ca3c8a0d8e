"""engine/io.py: reading inputs, the conditioning clip, writing mp4 and sidecars (small files made here)."""

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from engine import io
from engine.spec import GenerationSpec, InputError


def _numbered_video(path, n, w=64, h=48, fps=16):
    """A clip whose frame i is a flat grey of value 20*i+10, so frames are told apart after lossy coding."""
    v = torch.zeros(3, n, h, w, dtype=torch.uint8)
    for i in range(n):
        v[:, i] = 20 * i + 10
    io.write_video(path, v, fps)
    return path


def _grey_of(frames_thwc):
    return [int(round(float(f.astype(np.float32).mean()))) for f in frames_thwc]


def test_mp4_round_trip_frames_size_fps(tmp_path):
    path = tmp_path / "out" / "clip.mp4"
    video = torch.linspace(-1, 1, 7 * 3 * 32 * 48).reshape(3, 7, 32, 48)
    io.write_video(path, video, fps=10)
    info = io.probe_video(path)
    assert info == {"size": (48, 32), "fps": 10.0, "frames": 7}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no partial file left


def test_mp4_frames_read_back_in_order(tmp_path):
    path = _numbered_video(tmp_path / "n.mp4", 6)
    greys = _grey_of(io.read_video(path))
    assert all(abs(g - (20 * i + 10)) <= 2 for i, g in enumerate(greys)), greys


def test_odd_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        io.write_video(tmp_path / "odd.mp4", torch.zeros(3, 2, 33, 48, dtype=torch.uint8), 16)


def test_to_uint8_is_the_reference_rounding():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, 2 * (0.5 / 255) - 1, 2 * (0.49 / 255) - 1])
    assert io.to_uint8(x).tolist() == [0, 0, 128, 255, 255, 1, 0]
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(io.to_uint8(io.to_signed_unit(u)), u)
    assert io.to_signed_unit(u).min() == -1 and io.to_signed_unit(u).max() == 1


def test_cover_size_and_crop_box():
    # wide source into a 4:3 target: height decides the scale, width overflows and is cropped
    assert io.cover_size((200, 100), (64, 48)) == (96, 48)
    assert io.center_crop_box((96, 48), (64, 48)) == (16, 0)
    # tall source into 16:9: width decides; 112/100*100 is a hair over 112 in floats and the seed's
    # ceil keeps that hair, as we do
    assert io.cover_size((100, 300), (112, 64)) == (113, 337)
    assert io.center_crop_box((113, 337), (112, 64)) == (0, 136)
    assert io.cover_size((640, 360), (1280, 704)) == (1280, 720)


def test_resize_cover_crop_keeps_the_centre():
    # 200x100 source: a red band in the middle third of the width, blue elsewhere. Into a square
    # target the middle half of the width survives, so the red band must sit centred and the edges
    # must be blue.
    frame = np.zeros((1, 100, 200, 3), dtype=np.uint8)
    frame[..., 2] = 255
    frame[:, :, 70:130] = (255, 0, 0)
    out = io.resize_cover_crop(frame, 64, 64)
    assert out.shape == (3, 1, 64, 64) and out.dtype == torch.uint8
    row = out[:, 0, 32]  # [3, W]
    red_cols = (row[0] > 200).nonzero().flatten().tolist()
    assert red_cols, "the centre band was cropped away"
    left, right = red_cols[0], 63 - red_cols[-1]
    assert abs(left - right) <= 1, (left, right)
    # the band is 60/100 of the crop's source width (the crop keeps columns 50..150 of 200)
    assert 36 <= len(red_cols) <= 40
    assert row[2, 0] > 200 and row[2, 63] > 200


def test_resize_tall_source_crops_top_and_bottom():
    frame = np.zeros((1, 300, 100, 3), dtype=np.uint8)
    frame[:, :100] = 255  # white top third: must be gone after covering 112x64 and cropping the middle
    out = io.resize_cover_crop(frame, 112, 64)
    assert out.shape == (3, 1, 64, 112)
    assert out.max() == 0


def test_exact_size_passes_through_untouched():
    frame = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    out = io.resize_cover_crop(frame, 64, 48)
    assert torch.equal(out, torch.from_numpy(frame).permute(3, 0, 1, 2))


def test_image_becomes_frame_zero_then_zeros(tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (128, 96), (200, 100, 50)).save(img)
    clip = io.load_conditioning_clip(img, 1, 64, 48, 93)
    assert clip.shape == (3, 93, 48, 64) and clip.dtype == torch.uint8
    assert clip[:, 0].float().mean(dim=(1, 2)).round().tolist() == [200, 100, 50]
    assert clip[:, 1:].sum() == 0


@pytest.mark.parametrize("ext", [".jpg", ".webp"])
def test_other_image_types(tmp_path, ext):
    img = tmp_path / f"in{ext}"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(img)
    clip = io.load_conditioning_clip(img, 1, 64, 48, 61)
    assert clip.shape == (3, 61, 48, 64) and abs(float(clip[:, 0].float().mean()) - 90) < 3


@pytest.mark.parametrize("n", [1, 5])
def test_video_gives_last_frames_then_repeats(tmp_path, n):
    path = _numbered_video(tmp_path / "v.mp4", 9)  # greys 10, 30, ..., 170
    clip = io.load_conditioning_clip(path, n, 64, 48, 93)
    assert clip.shape == (3, 93, 48, 64)
    greys = [round(float(clip[:, t].float().mean())) for t in range(93)]
    expected_head = [20 * i + 10 for i in range(9 - n, 9)]
    assert all(abs(g - e) <= 2 for g, e in zip(greys[:n], expected_head)), greys[:n]
    assert all(torch.equal(clip[:, t], clip[:, n - 1]) for t in range(n, 93))


def test_too_short_video_names_input_path(tmp_path):
    path = _numbered_video(tmp_path / "short.mp4", 3)
    with pytest.raises(InputError, match=r"^input_path: .*short\.mp4' has 3 frames but 5 are needed"):
        io.load_conditioning_clip(path, 5, 64, 48, 93)


def test_undecodable_video_names_input_path(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match=r"^input_path: .*could not be decoded"):
        io.read_video(bad, 1)


def test_image_with_five_frames_is_refused(tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (64, 48)).save(img)
    with pytest.raises(InputError, match="^num_conditional_frames"):
        io.load_conditioning_clip(img, 5, 64, 48, 93)


def test_first_frames(tmp_path):
    path = _numbered_video(tmp_path / "v.mp4", 6)
    greys = _grey_of(io.read_video(path, 2, last=False))
    assert len(greys) == 2 and abs(greys[0] - 10) <= 2 and abs(greys[1] - 30) <= 2


def test_prompt_sidecar_sections(tmp_path):
    video = tmp_path / "clip.mp4"
    p = io.write_prompt_sidecar(video, "a cat", "blurry", "a fluffy cat walks")
    assert p == tmp_path / "clip.txt"
    # the reference's layout: headers and texts on consecutive lines, no blank line between sections
    assert p.read_text() == "[Prompt]\na cat\n[Negative Prompt]\nblurry\n[Refined Prompt]\na fluffy cat walks\n"
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert p.stat().st_mode == plain.stat().st_mode  # the umask applies, not a private 0600
    p = io.write_prompt_sidecar(video, "a cat")
    assert p.read_text() == "[Prompt]\na cat\n"
    text = io.write_prompt_sidecar(video, "x", "n", ["one", None, "three"]).read_text()
    assert text == ("[Prompt]\nx\n[Negative Prompt]\nn\n"
                    "[Refined Prompt for chunk 0]\none\n[Refined Prompt for chunk 2]\nthree\n")


def test_job_record_holds_full_spec_seed_timings(tmp_path):
    spec = GenerationSpec(prompt="p", seed=3, model_size="tiny")
    p = io.write_job_record(tmp_path / "clip.mp4", spec, seed=4, timings={"total": 1.5}, refined_prompt="rp")
    data = json.loads(p.read_text())
    assert p.name == "clip.json"
    assert data["spec"] == spec.model_dump(mode="json")
    assert data["seed"] == 4 and data["timings"] == {"total": 1.5} and data["refined_prompt"] == "rp"
    assert GenerationSpec.model_validate(data["spec"]) == spec


def test_atomic_json_keeps_old_file_when_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    io.write_json_atomic(target, {"a": 1})

    def fail_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "replace", fail_replace)
    with pytest.raises(OSError):
        io.write_json_atomic(target, {"b": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["r.json"]  # the temporary file was removed


def test_atomic_text_replaces_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "t.txt"
    io.write_text_atomic(target, "old")

    def fail_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "replace", fail_replace)
    with pytest.raises(OSError):
        io.write_text_atomic(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["t.txt"]
    io.write_text_atomic(target, "new")
    assert target.read_text() == "new"


def test_demo_input_is_drawn_once(tmp_path):
    p = io.ensure_demo_input(tmp_path / "assets" / "demo.png")
    im = np.asarray(Image.open(p))
    assert im.shape == (192, 320, 3) and im.std() > 20  # not a flat image
    p.write_bytes(b"user's own file")  # an existing file must be left as is
    assert io.ensure_demo_input(p).read_bytes() == b"user's own file"


def test_save_path_without_extension_gets_mp4_and_writes(tmp_path):
    # issue #18: `--save_path out/noext` used to reach ffmpeg as a name with no container -> broken pipe
    spec = GenerationSpec(save_path=str(tmp_path / "out" / "noext"))
    assert spec.save_path.endswith("noext.mp4")
    assert GenerationSpec(mode="bestofn", save_path=str(tmp_path / "dir")).save_path == str(tmp_path / "dir")
    io.write_video(spec.save_path, torch.zeros(3, 2, 32, 48, dtype=torch.uint8), 16)
    assert io.probe_video(spec.save_path)["frames"] == 2


def _fake_ffmpeg(tmp_path, script: str) -> str:
    exe = tmp_path / "fake-ffmpeg"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.parametrize("script", [
    # ffmpeg takes every frame, writes part of the file, then fails to flush (a full disk)
    'cat > /dev/null; for a; do out="$a"; done; printf partial > "$out"; '
    'echo "Error writing trailer: No space left on device" >&2; exit 1\n',
    # ffmpeg dies at once: our writes hit a closed pipe
    'for a; do out="$a"; done; printf x > "$out"; echo "av_interleaved_write_frame(): No space left on device" >&2; exit 1\n',
])
def test_failed_ffmpeg_leaves_no_video_and_says_why(tmp_path, monkeypatch, script):
    from engine import mp4

    monkeypatch.setattr(mp4, "ffmpeg_exe", lambda: _fake_ffmpeg(tmp_path, script))
    dest = tmp_path / "out" / "clip.mp4"
    big = torch.zeros(3, 40, 128, 128, dtype=torch.uint8)  # > a pipe buffer, so the early death is noticed
    with pytest.raises(mp4.VideoWriteError) as e:
        io.write_video(dest, big, 16)
    msg = str(e.value)
    assert str(dest) in msg and "status 1" in msg and "No space left on device" in msg
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir()]  # the partial file is gone too


def _plain_to_uint8(video):
    """The rule as one expression, as to_uint8 computed it before it went in place."""
    x = (video.float() + 1.0) / 2.0
    return torch.floor(x.clamp_(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def _rounding_edges() -> torch.Tensor:
    """Every value within 4 ulps of a rounding edge of the rule (the x that map to k + 0.5 before the
    floor), the ends of the range and beyond, and a dense spread in between: where a reordered or fused
    formula would round differently."""
    k = torch.arange(-1, 257, dtype=torch.float64)
    edges = (2 * (k + 0.5) / 255 - 1).float()
    near = [edges]
    up, down = edges.clone(), edges.clone()
    for _ in range(4):
        up = torch.nextafter(up, torch.tensor(float("inf")))
        down = torch.nextafter(down, torch.tensor(float("-inf")))
        near += [up, down]
    spread = torch.linspace(-1.25, 1.25, 200_001)
    ends = torch.tensor([-1.0, 1.0, 0.0, -0.0, float("inf"), float("-inf"), 1e30, -1e30])
    return torch.cat(near + [spread, ends])


def test_to_uint8_is_the_plain_rule_bit_for_bit_in_every_layout_and_dtype():
    x = _rounding_edges()
    assert torch.equal(io.to_uint8(x), _plain_to_uint8(x))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        y = x.to(dtype)
        assert torch.equal(io.to_uint8(y), _plain_to_uint8(y)), dtype
    # a video bigger than one CPU slice and not a multiple of it, and the strided views the writer and the
    # guardrail hand over: one frame of [3, T, H, W], a transposed layout
    n = 3 * 5 * 97 * 211
    assert n > io._UINT8_SLICE and n % io._UINT8_SLICE
    v = x[torch.randint(len(x), (n,), generator=torch.Generator().manual_seed(0))].reshape(3, 5, 97, 211)
    for view in (v, v[:, 2], v.permute(1, 2, 3, 0), v[:, :, ::2]):
        assert torch.equal(io.to_uint8(view), _plain_to_uint8(view))
    assert io.to_uint8(torch.tensor(0.0)).item() == 128 and io.to_uint8(torch.zeros(3, 0, 4)).shape == (3, 0, 4)


def test_float_video_is_converted_frame_by_frame_into_the_same_file(tmp_path, monkeypatch):
    """write_video converts a float video one frame at a time, as ffmpeg takes the frames (no whole-video
    temporaries), into the bytes `to_uint8`'s rule gives, and writes the file its uint8 conversion writes."""
    x = _rounding_edges()
    n = 3 * 6 * 32 * 48
    video = x[torch.randint(len(x), (n,), generator=torch.Generator().manual_seed(1))].reshape(3, 6, 32, 48)
    want = _plain_to_uint8(video).permute(1, 2, 3, 0).numpy()
    for v in (video, video.to(torch.bfloat16), video.double()):
        assert np.array_equal(np.stack(list(io.iter_frames_uint8(v))), _plain_to_uint8(v).permute(1, 2, 3, 0).numpy())
    io.write_video(tmp_path / "u8.mp4", _plain_to_uint8(video), 16)
    shapes = []
    real = io._uint8_rule_np
    monkeypatch.setattr(io, "_uint8_rule_np", lambda src, buf: shapes.append(src.shape) or real(src, buf))
    io.write_video(tmp_path / "float.mp4", video, 16)
    assert shapes == [(32, 48, 3)] * 6
    assert (tmp_path / "float.mp4").read_bytes() == (tmp_path / "u8.mp4").read_bytes()
    assert np.array_equal(io.read_video(tmp_path / "float.mp4").shape, want.shape)


def test_a_frame_that_fails_to_convert_mid_video_leaves_no_file(tmp_path, monkeypatch):
    """The conversion now runs while ffmpeg is writing: an error there stops ffmpeg and leaves nothing."""
    calls = []
    real = io._uint8_rule_np

    def failing(src, buf):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("conversion failed on frame 3")
        real(src, buf)

    monkeypatch.setattr(io, "_uint8_rule_np", failing)
    dest = tmp_path / "out" / "clip.mp4"
    with pytest.raises(RuntimeError, match="frame 3"):
        io.write_video(dest, torch.zeros(3, 5, 32, 48), 16)
    assert len(calls) == 3
    assert not [p for p in dest.parent.iterdir()]  # neither the video nor its partial file


def _decoder_clips(video: torch.Tensor) -> list[torch.Tensor]:
    """A [3, T, H, W] video cut as the VAE's decode hands it out: 1 frame, then 4 at a time."""
    return [video[:, :1]] + [video[:, i : i + 4] for i in range(1, video.shape[1], 4)]


def test_a_video_fed_in_decoder_clips_is_the_file_write_video_writes(tmp_path):
    """The stream is the same encode as the whole-video write (same frames, same ffmpeg command), so
    the files are byte for byte equal; and the file is only there after close()."""
    x = _rounding_edges()
    n = 3 * 9 * 32 * 48
    video = x[torch.randint(len(x), (n,), generator=torch.Generator().manual_seed(2))].reshape(3, 9, 32, 48)
    io.write_video(tmp_path / "whole.mp4", video, 16)
    dest = tmp_path / "streamed.mp4"
    with io.VideoStream(dest, 16) as stream:
        for clip in _decoder_clips(video):
            stream.feed(clip)
        assert not dest.exists()
        assert stream.close() == dest
    assert stream.frames == 9 and stream.size == (48, 32)
    assert dest.read_bytes() == (tmp_path / "whole.mp4").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.mp4", "whole.mp4"]


def test_the_stream_hands_frames_to_ffmpeg_before_it_is_closed(tmp_path, monkeypatch):
    """The point of the stream: ffmpeg has the first frames while later ones are still being made. A
    stand-in ffmpeg copies its input to the output file, so the partial file grows as frames arrive. The
    frames are larger than the pipe's 8 KiB write buffer on our side, as every real frame is."""
    from engine import mp4

    monkeypatch.setattr(mp4, "ffmpeg_exe", lambda: _fake_ffmpeg(tmp_path, 'for a; do out="$a"; done; cat > "$out"\n'))
    dest = tmp_path / "out" / "clip.mp4"
    frame_bytes = 64 * 64 * 3
    with io.VideoStream(dest, 16) as stream:
        stream.feed(torch.zeros(3, 2, 64, 64, dtype=torch.uint8))
        deadline = time.monotonic() + 20
        partial: list = []
        while time.monotonic() < deadline:
            partial = [p for p in dest.parent.iterdir() if ".partial" in p.name]
            if partial and partial[0].stat().st_size == 2 * frame_bytes:
                break
            time.sleep(0.02)
        assert partial and partial[0].stat().st_size == 2 * frame_bytes
        assert not dest.exists()
        stream.feed(torch.zeros(3, 1, 64, 64, dtype=torch.uint8))
        stream.close()
    assert dest.stat().st_size == 3 * frame_bytes
    assert [p.name for p in dest.parent.iterdir()] == ["clip.mp4"]


def test_ffmpeg_dying_mid_stream_fails_the_feed_and_leaves_nothing(tmp_path, monkeypatch):
    """ffmpeg dies after its first bytes (a full disk): a later feed raises its error instead of
    waiting on a queue nobody empties, and neither the video nor the partial file is left."""
    from engine import mp4

    script = ('for a; do out="$a"; done; head -c 100 > "$out"; '
              'echo "av_interleaved_write_frame(): No space left on device" >&2; exit 1\n')
    monkeypatch.setattr(mp4, "ffmpeg_exe", lambda: _fake_ffmpeg(tmp_path, script))
    dest = tmp_path / "out" / "clip.mp4"
    clip = torch.zeros(3, 4, 128, 128, dtype=torch.uint8)  # 4 frames of 48 KiB: the pipe fills quickly
    with pytest.raises(mp4.VideoWriteError) as e:
        with io.VideoStream(dest, 16) as stream:
            for _ in range(200):  # 800 frames, far more than the queue and the pipe hold together
                stream.feed(clip)
            stream.close()
    assert "No space left on device" in str(e.value) and str(dest) in str(e.value)
    assert not [p for p in dest.parent.iterdir()]


def test_an_error_while_streaming_stops_ffmpeg_and_leaves_nothing(tmp_path):
    """A job that fails or is cancelled mid-decode leaves the `with` block with an exception: the stream
    is aborted (ffmpeg stopped, the partial removed), and a stream never closed writes nothing."""
    dest = tmp_path / "out" / "clip.mp4"
    with pytest.raises(RuntimeError, match="decode failed"):
        with io.VideoStream(dest, 16) as stream:
            stream.feed(torch.zeros(3, 5, 32, 48))
            raise RuntimeError("decode failed")
    assert not stream._thread.is_alive()
    assert not [p for p in dest.parent.iterdir()]
    with io.VideoStream(tmp_path / "never.mp4", 16) as stream:
        stream.feed(torch.zeros(3, 1, 32, 48))
    assert not [p for p in tmp_path.iterdir() if p.is_file()]
    with pytest.raises(ValueError, match="33x32"):
        with io.VideoStream(tmp_path / "odd.mp4", 16) as stream:
            stream.feed(torch.zeros(3, 1, 32, 33))
