"""Reading conditioning inputs and writing results: images/videos in, mp4 + sidecars out.

Layouts and ranges (what the pipeline gets and gives back):
  * A clip is a uint8 tensor [C, T, H, W] (C = 3, RGB). The pipeline adds the batch axis itself.
  * `to_signed_unit(clip)` maps uint8 to float in [-1, 1] (x / 127.5 - 1), the range the VAE takes.
  * `to_uint8(video)` is the way back for a decoded [-1, 1] float video: map to [0, 1], clamp,
    then floor(x * 255 + 0.5) -- the reference's rounding, so our files match its files bit for bit
    before the encoder.

Sizes are (width, height) everywhere in this module's arguments, as in engine/resolutions.py;
tensors are (..., H, W).

torch is imported inside the functions that need it: the daemon and the CLI import this module for
the torch-free helpers (sidecars, atomic JSON, the demo image) and must stay quick to start.
"""

from __future__ import annotations

import json
import math
import os
import queue
import secrets
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from engine.spec import InputError, input_kind

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

# Where the tiny preset's input lives; `ensure_demo_input` draws it on first use.
DEMO_INPUT_PATH = "assets/demo_input.png"


# --------------------------------------------------------------------------------------------
# reading


_kind = input_kind  # one rule for what counts as an image or a video, in engine/spec.py


def read_image(path: str | os.PathLike) -> "np.ndarray":
    """RGB image as uint8 [H, W, 3]. Alpha is dropped, palettes and greyscale are expanded."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"input_path: {path!r} does not exist; give the path of an image or .mp4 video")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"input_path: {path!r} could not be read as an image ({err}); give a valid image") from None


def probe_video(path: str | os.PathLike) -> dict:
    """ffmpeg's view of a video: {'size': (w, h), 'fps': float, 'frames': int}. Counts by decoding,
    because container frame counts are estimates and a short clip must be caught exactly."""
    import imageio_ffmpeg

    path = str(path)
    gen = imageio_ffmpeg.read_frames(path)
    try:
        meta = next(gen)
        frames = sum(1 for _ in gen)
    except (RuntimeError, OSError, StopIteration) as err:
        raise InputError(f"input_path: {path!r} could not be decoded as a video ({_first_line(err)}); give a valid .mp4") from None
    finally:
        gen.close()
    return {"size": tuple(meta["size"]), "fps": float(meta.get("fps") or 0.0), "frames": frames}


def read_video(path: str | os.PathLike, num_frames: int | None = None, last: bool = True) -> "np.ndarray":
    """Frames of an .mp4 as uint8 [T, H, W, 3]: all of them, or the first/last `num_frames`.

    Raises InputError naming input_path when the file is missing, can't be decoded, or holds fewer
    than `num_frames` frames. The last N are kept in a ring buffer, so a long clip is never held whole.
    """
    import imageio_ffmpeg
    import numpy as np

    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"input_path: {path!r} does not exist; give the path of an image or .mp4 video")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    gen = imageio_ffmpeg.read_frames(path)
    kept: deque | list
    kept = deque(maxlen=num_frames) if (last and num_frames) else []
    seen = 0
    try:
        meta = next(gen)
        w, h = meta["size"]
        for raw in gen:
            seen += 1
            kept.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
            if not last and num_frames and seen >= num_frames:
                break
    except (RuntimeError, OSError, StopIteration, ValueError) as err:
        raise InputError(f"input_path: {path!r} could not be decoded as a video ({_first_line(err)}); give a valid .mp4") from None
    finally:
        gen.close()
    if seen == 0:
        raise InputError(f"input_path: {path!r} holds no video frames; give a valid .mp4")
    if num_frames is not None and seen < num_frames:
        raise InputError(
            f"input_path: {path!r} has {seen} frame{'s' if seen != 1 else ''} but {num_frames} are needed; "
            f"give a video with at least {num_frames} frames"
        )
    return np.stack(list(kept))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# --------------------------------------------------------------------------------------------
# resize + crop


def cover_size(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> tuple[int, int]:
    """(width, height) to resize to so that both sides cover the target: the seed's rule,
    scale = max(W_t/W_o, H_t/H_o), each side rounded up. Computed in floats exactly as the seed does,
    so a product like 1.12 * 100 = 112.00000000000001 rounds up to 113 there and here alike (parity
    over tidiness: the centre crop then drops the extra pixel)."""
    (wo, ho), (wt, ht) = src_wh, dst_wh
    scale = max(wt / wo, ht / ho)
    return max(wt, math.ceil(scale * wo)), max(ht, math.ceil(scale * ho))


def center_crop_box(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> tuple[int, int]:
    """(left, top) of a centred crop, rounded the way torchvision's center_crop rounds."""
    (w, h), (wt, ht) = src_wh, dst_wh
    return int(round((w - wt) / 2.0)), int(round((h - ht) / 2.0))


def resize_cover_crop(frames: "torch.Tensor | np.ndarray", width: int, height: int) -> "torch.Tensor":
    """uint8 frames [T, H, W, 3] (numpy or torch) -> uint8 clip [3, T, height, width].

    Bilinear with antialiasing on a float copy (downscaling without it aliases badly), rounded back
    to uint8, then the centre `width` x `height` is cut out. A frame already at the target size
    passes through untouched.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2)  # T, C, H, W: the layout interpolate resizes over
    h0, w0 = x.shape[-2:]
    if (w0, h0) != (width, height):
        nw, nh = cover_size((w0, h0), (width, height))
        if (nw, nh) != (w0, h0):
            y = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            x = y.round_().clamp_(0, 255).to(torch.uint8)
        left, top = center_crop_box((nw, nh), (width, height))
        x = x[:, :, top : top + height, left : left + width]
    return x.permute(1, 0, 2, 3).contiguous()


# --------------------------------------------------------------------------------------------
# conditioning clip


def load_conditioning_clip(
    path: str | os.PathLike, num_conditional_frames: int, width: int, height: int, total_frames: int
) -> "torch.Tensor":
    """The clip the pipeline encodes, uint8 [3, total_frames, height, width], built like the reference:

    * an image becomes frame 0 and every other frame is black (zeros, not copies);
    * a video gives its LAST `num_conditional_frames` frames (1 or 5), and the frames after them
      repeat the last of those.

    Only the conditioned latents matter downstream, and the VAE's encoder is causal, so the filler
    never reaches them: the pipeline asks for `total_frames = num_conditional_frames` (the frames its
    conditioned latents come from) and encodes just those. A longer clip is the reference's whole one.
    """
    import torch

    path = str(path)
    if num_conditional_frames not in (1, 5):
        raise InputError(f"num_conditional_frames: {num_conditional_frames} is not 1 or 5; use 1 or 5")
    if total_frames < num_conditional_frames:
        raise ValueError(f"total_frames {total_frames} < num_conditional_frames {num_conditional_frames}")
    kind = _kind(path)
    clip = torch.zeros((3, total_frames, height, width), dtype=torch.uint8)
    if kind == "image":
        if num_conditional_frames != 1:
            raise InputError(
                f"num_conditional_frames: {num_conditional_frames} frames were asked for but input_path "
                f"{path!r} is an image (1 frame); use --num_conditional_frames 1 or give an .mp4"
            )
        clip[:, :1] = resize_cover_crop(read_image(path)[None], width, height)
        return clip
    frames = resize_cover_crop(read_video(path, num_conditional_frames, last=True), width, height)
    n = frames.shape[1]
    clip[:, :n] = frames
    clip[:, n:] = frames[:, -1:]
    return clip


def to_signed_unit(clip: "torch.Tensor", dtype=None) -> "torch.Tensor":
    """uint8 -> float in [-1, 1] (x / 127.5 - 1), layout unchanged."""
    import torch

    return clip.to(dtype or torch.float32) / 127.5 - 1.0


def to_uint8(video: "torch.Tensor") -> "torch.Tensor":
    """Float video in [-1, 1] -> uint8, the reference's rule: (x + 1) / 2, clamp to [0, 1],
    floor(x * 255 + 0.5). Computed in float32 whatever the input dtype (bf16 would round twice).

    The same five float32 operations in the same order as the plain expression, so the bytes are the
    same; but on the CPU they run in place on a small buffer, slice by slice. The plain expression made
    five fresh temporaries the size of the video (1 GB each for 93 frames of 1280x704), and faulting in
    that memory, not the arithmetic, was most of its time: 4.8 s here (2 cores), 0.3 s this way."""
    import torch

    x = torch.as_tensor(video)
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    _to_uint8_into(x, out)
    return out


# CPU slice size for to_uint8: 1 MiB of float32, small enough to stay in cache between the operations
_UINT8_SLICE = 1 << 18


def _to_uint8_into(x: "torch.Tensor", out: "torch.Tensor") -> None:
    import torch

    if x.device.type == "cpu" and x.ndim > 1 and not x.is_contiguous():
        # a strided view (one frame of [3, T, H, W]): its rows along the first axis are (nearly) contiguous;
        # flattening it would copy it whole first
        for j in range(x.shape[0]):
            _to_uint8_into(x[j], out[j])
        return
    src, dst = x.reshape(-1), out.view(-1)
    n = src.numel()
    step = _UINT8_SLICE if x.device.type == "cpu" else max(n, 1)  # a GPU does it in one go
    buf = torch.empty(min(step, n), dtype=torch.float32, device=x.device)
    for start in range(0, n, step):
        stop = min(start + step, n)
        b = buf[: stop - start]
        b.copy_(src[start:stop])
        b.add_(1.0).div_(2.0).clamp_(0.0, 1.0).mul_(255.0).add_(0.5).floor_()
        dst[start:stop].copy_(b)


# --------------------------------------------------------------------------------------------
# writing


def write_video(path: str | os.PathLike, video: "torch.Tensor | np.ndarray", fps: int | float, quality: int = 7) -> Path:
    """Write an H.264 mp4 (yuv420p) from a [3, T, H, W] clip: uint8, or float in [-1, 1].

    Width and height must be even (yuv420p halves chroma); every table size is a multiple of 16.
    The file appears under its name only when complete (VideoStream says how); if ffmpeg fails (a full
    disk, say) nothing is renamed and engine.mp4.VideoWriteError says why.
    """
    import torch

    v = torch.as_tensor(video)
    if v.ndim == 5:
        if v.shape[0] != 1:
            raise ValueError(f"write_video takes one video; got a batch of {v.shape[0]}")
        v = v[0]
    with VideoStream(path, fps, quality) as stream:
        stream.feed(v)
        return stream.close()


class VideoStream:
    """An mp4 written while its frames are still being made: `feed` clips as they come (the VAE decodes a
    video 4 frames at a time), `close` when the last has been fed. ffmpeg is its own process and a thread
    here hands it the frames, so the encode runs on the CPU while the GPU decodes the rest; written after
    the decode, it added 3.6-4.3 s to every 720p job on the H200 (bench/RESULTS.md, "mp4 s").

    The file is written beside its name and renamed into place by `close` only when ffmpeg took every frame
    and exited 0, so a watcher never sees half a video; `abort` (or leaving the `with` block on an
    exception) stops ffmpeg and removes the partial file. ffmpeg starts with the first clip, whose size it
    takes. macro_block_size 1: the exact size, never padded by ffmpeg.
    """

    # frames handed over but not yet taken by ffmpeg: 32 at 720p is ~88 MB, and enough for the decoder
    # never to wait on an encoder that keeps pace with it
    MAX_QUEUED = 32
    _END, _ABORT = object(), object()

    def __init__(self, path: str | os.PathLike, fps: int | float, quality: int = 7):
        self.path = Path(path)
        self.fps, self.quality = fps, quality
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) once the first clip came
        # unique per writer: two jobs finishing at once must not share a temporary file
        self._tmp = self.path.with_name(
            f".{self.path.stem}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(3)}.partial{self.path.suffix}")
        self._queue: "queue.Queue[Any]" = queue.Queue(self.MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._done: Path | None = None

    def feed(self, clip: "torch.Tensor") -> None:
        """Append the frames of a [3, k, H, W] clip (uint8, or float in [-1, 1]; on the CPU or a GPU).
        Raises VideoWriteError at once if ffmpeg has already failed (a full disk, say)."""
        import torch

        v = torch.as_tensor(clip).detach()
        if v.ndim != 4 or v.shape[0] != 3:
            raise ValueError(f"expected a video [3, T, H, W], got {tuple(v.shape)}")
        h, w = int(v.shape[2]), int(v.shape[3])
        if self.size is None:
            self._start(w, h)
        elif self.size != (w, h):
            raise ValueError(f"a clip of {w}x{h} fed to a {self.size[0]}x{self.size[1]} video")
        if v.device.type != "cpu":
            # one conversion and one copy to the host per clip: per frame, each copy would wait for the GPU
            v = to_uint8(v).permute(1, 2, 3, 0).contiguous().cpu().numpy()
            frames: Iterable[Any] = (v[i] for i in range(v.shape[0]))
        else:
            frames = iter_frames_uint8(v)
        for frame in frames:
            self._put(frame)
            self.frames += 1

    def close(self) -> Path:
        """Wait for ffmpeg to finish and put the file in place; returns its path. Idempotent."""
        if self._done is not None:
            return self._done
        if self._thread is None:
            raise ValueError(f"{self.path}: no frames were written")
        self._put(self._END)
        self._thread.join()
        if self._error is not None:
            self._tmp.unlink(missing_ok=True)
            raise self._error
        os.replace(self._tmp, self.path)
        self._done = self.path
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file; the video is not written. Safe to call twice."""
        if self._thread is not None and self._thread.is_alive():
            while True:  # frames not yet taken are dropped: only the stop has to reach the writer
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(self._ABORT)
            self._thread.join()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._done is None:
            self.abort()

    # -- the writer thread --

    def _start(self, w: int, h: int) -> None:
        if w % 2 or h % 2:
            raise ValueError(f"video size {w}x{h}: H.264 yuv420p needs even width and height")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (w, h)
        self._thread = threading.Thread(target=self._write, args=(w, h), name=f"mp4 {self.path.name}", daemon=True)
        self._thread.start()

    def _write(self, w: int, h: int) -> None:
        from engine import mp4

        try:
            mp4.encode(str(self._tmp), self._frames(), w, h, self.fps, self.quality, shown_name=str(self.path))
        except BaseException as exc:  # handed to the feeding thread by _put / close
            self._error = exc

    def _frames(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if item is self._ABORT:
                raise _Aborted()  # mp4.encode kills ffmpeg on any exception from its frames
            yield item

    def _put(self, item: Any) -> None:
        while True:
            if self._error is not None and not isinstance(self._error, _Aborted):
                raise self._error
            if not self._thread.is_alive():
                # ffmpeg failed before taking everything, the thread holds its error; an abort ends here too
                if self._error is None:
                    raise RuntimeError(f"{self.path}: the mp4 writer stopped")  # not expected: a bug
                raise self._error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue


class _Aborted(Exception):
    """VideoStream.abort's stop, raised inside the frames ffmpeg is fed."""


def write_image(path: str | os.PathLike, frame: "torch.Tensor | np.ndarray", quality: int = 95) -> Path:
    """One frame [3, H, W] or [3, 1, H, W] (uint8, or float in [-1, 1]) as an image; format by suffix."""
    import torch
    from PIL import Image

    f = torch.as_tensor(frame)
    if f.ndim == 4:
        f = f[:, 0]
    if f.dtype != torch.uint8:
        f = to_uint8(f)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(f.permute(1, 2, 0).contiguous().numpy())
    kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
    img.save(path, **kwargs)
    return path


def sidecar_path(video_path: str | os.PathLike, suffix: str) -> Path:
    """`out/clip.mp4` -> `out/clip.txt` / `out/clip.json`."""
    return Path(video_path).with_suffix(suffix)


def format_prompt_text(
    prompt: str, negative_prompt: str | None = None, refined_prompt: str | Sequence[str | None] | None = None
) -> str:
    """The prompt sidecar's text in the reference's layout: "[Section]" header lines each followed by
    their text, no blank lines between sections (tools that read those files split on the headers).
    A list of refined prompts (one per long-video chunk, chunk numbers from 0 as the reference counts
    them) gets one "[Refined Prompt for chunk N]" section each; a chunk without one is left out."""
    parts = [("Prompt", prompt)]
    if negative_prompt:
        parts.append(("Negative Prompt", negative_prompt))
    if isinstance(refined_prompt, str):
        if refined_prompt:
            parts.append(("Refined Prompt", refined_prompt))
    elif refined_prompt:
        for i, text in enumerate(refined_prompt):
            if text:
                parts.append((f"Refined Prompt for chunk {i}", text))
    return "".join(f"[{title}]\n{(body or '').strip()}\n" for title, body in parts)


def write_prompt_sidecar(
    video_path: str | os.PathLike,
    prompt: str,
    negative_prompt: str | None = None,
    refined_prompt: str | Sequence[str | None] | None = None,
) -> Path:
    """Write `<video stem>.txt` next to the video; returns its path."""
    return write_text_atomic(sidecar_path(video_path, ".txt"), format_prompt_text(prompt, negative_prompt, refined_prompt))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over `path`: a reader sees
    the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with 0o666 (not mkstemp's 0o600) so the result gets the user's umask like any file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_job_record(
    video_path: str | os.PathLike,
    spec: Any,
    seed: int | None = None,
    timings: Mapping[str, float] | None = None,
    **extra: Any,
) -> Path:
    """Write `<video stem>.json`: the full job spec (every field, defaults included, so the file
    alone reproduces the run), the seed actually used, timings in seconds, plus `extra` keys
    (refined prompts, chunk list, ...). `spec` is a GenerationSpec or a plain dict."""
    spec_dict = spec.model_dump(mode="json") if hasattr(spec, "model_dump") else dict(spec)
    record = {
        "video": Path(video_path).name,
        "spec": spec_dict,
        "seed": spec_dict.get("seed") if seed is None else seed,
        "timings": dict(timings or {}),
        **extra,
    }
    return write_json_atomic(sidecar_path(video_path, ".json"), record)


# --------------------------------------------------------------------------------------------
# demo input


def ensure_demo_input(path: str | os.PathLike = DEMO_INPUT_PATH, size: tuple[int, int] = (320, 192)) -> Path:
    """Draw the tiny preset's input image if it is missing (a colour gradient with a few shapes, so
    resize/crop mistakes are visible); leave an existing file alone. Deterministic; PIL only."""
    from PIL import Image, ImageDraw

    path = Path(path)
    if path.is_file():
        return path
    w, h = size
    img = Image.new("RGB", (w, h))
    px = img.load()
    for y in range(h):
        for x in range(w):
            px[x, y] = (int(255 * x / (w - 1)), int(255 * y / (h - 1)), 160)
    d = ImageDraw.Draw(img)
    d.ellipse((w * 0.1, h * 0.2, w * 0.35, h * 0.62), fill=(250, 220, 40))
    d.rectangle((w * 0.55, h * 0.45, w * 0.85, h * 0.85), fill=(30, 40, 200))
    d.polygon([(w * 0.45, h * 0.1), (w * 0.6, h * 0.4), (w * 0.3, h * 0.4)], fill=(220, 30, 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def iter_frames_uint8(video: "torch.Tensor") -> Iterable["np.ndarray"]:
    """[3, T, H, W] (uint8 or [-1, 1] float) -> HWC uint8 numpy frames, each converted when asked for:
    the mp4 writer's input (so the conversion of frame i+1 runs while ffmpeg encodes frame i), and
    thumbnails'.

    A float video on the CPU is converted with numpy, one thread, rather than torch: torch's intra-op
    threads spin while they wait, and beside a running x264 (a thread per core) that cost 3-4x the
    conversion's own CPU time (2 cores here: 1.9-2.5 s of CPU for a 93-frame 1280x704 video instead of
    0.6 s). The same five IEEE float32 operations as `to_uint8`, in the same order: the same bytes."""
    import numpy as np
    import torch

    v = torch.as_tensor(video).detach()
    c, t, h, w = v.shape
    if v.dtype == torch.uint8:
        for i in range(t):
            yield np.ascontiguousarray(v[:, i].cpu().numpy().transpose(1, 2, 0))
        return
    if v.device.type != "cpu":  # a GPU converts there, frame by frame, and hands over bytes
        for i in range(t):
            yield to_uint8(v[:, i]).permute(1, 2, 0).contiguous().cpu().numpy()
        return
    buf = np.empty((h, w, c), dtype=np.float32)
    for i in range(t):
        f = v[:, i] if v.dtype == torch.float32 else v[:, i].float()
        _uint8_rule_np(f.numpy().transpose(1, 2, 0), buf)
        yield buf.astype(np.uint8)


def _uint8_rule_np(src: "np.ndarray", buf: "np.ndarray") -> None:
    """to_uint8's rule from float32 `src` (any strides) into float32 `buf`, which ends holding the
    integral values 0..255."""
    import numpy as np

    np.add(src, 1.0, out=buf)
    np.divide(buf, 2.0, out=buf)
    np.clip(buf, 0.0, 1.0, out=buf)
    np.multiply(buf, 255.0, out=buf)
    np.add(buf, 0.5, out=buf)
    np.floor(buf, out=buf)
