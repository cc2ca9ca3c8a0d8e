"""Frames for the TUI: which terminal image protocol to use, and contact sheets of output videos.

UI-free and torch-free: frames are read with imageio (ffmpeg plugin) into numpy arrays and tiled
with Pillow. The Textual widget class is looked up here but imported lazily, because importing
textual-image queries the terminal (Sixel / Kitty support, cell size) and that query must happen
before `App.run()`: once Textual owns stdin it would swallow the terminal's answer.

COSMOS_TUI_IMAGES=auto|kitty|sixel|halfcell|none forces a mode, because auto-detection uses a
100 ms query that can time out on a slow SSH link and silently fall back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODES = ("auto", "kitty", "sixel", "halfcell", "none")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_mode(choice: str | None = None) -> str:
    """The mode named by `choice`, else $COSMOS_TUI_IMAGES, else auto. Raises ValueError naming
    the setting when the value is unknown."""
    raw = choice if choice is not None else os.environ.get("COSMOS_TUI_IMAGES", "")
    mode = (raw or "auto").strip().lower()
    if mode == "tgp":  # textual-image's own name for the kitty protocol
        mode = "kitty"
    if mode not in MODES:
        raise ValueError(f"COSMOS_TUI_IMAGES={raw!r} is not an image mode; use one of {', '.join(MODES)}")
    return mode


def widget_class(mode: str):
    """The textual-image widget class for `mode`, or None for "none". Importing it runs the
    terminal queries, so call this before App.run() (run_app does)."""
    if mode == "none":
        return None
    from textual_image import widget as ti

    return {
        "auto": ti.Image,
        "kitty": ti.TGPImage,
        "sixel": ti.SixelImage,
        "halfcell": ti.HalfcellImage,
    }[mode]


def mpv_video_output(mode: str) -> list[str]:
    """mpv's terminal video output matching what the TUI uses; mpv does not probe the terminal
    itself, so we pass on our choice. With a display server mpv opens a window instead."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return []
    if mode == "kitty":
        return ["--vo=kitty"]
    if mode == "sixel":
        return ["--vo=sixel"]
    return ["--vo=tct"]


def frame_indices(total: int, count: int) -> list[int]:
    """`count` evenly spaced indices over `total` frames, first and last included."""
    if total <= 0 or count <= 0:
        return []
    if count == 1 or total == 1:
        return [0]
    count = min(count, total)
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def read_frames(path: str | os.PathLike, count: int = 6) -> list[Any]:
    """Up to `count` evenly spaced frames of a video (or the one frame of an image) as HxWx3
    uint8 arrays. Reads sequentially and keeps only the wanted frames, so memory stays small."""
    import imageio.v2 as iio
    import numpy as np

    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [_rgb(np.asarray(iio.imread(path)))]
    reader = iio.get_reader(str(path), format="FFMPEG")
    try:
        try:
            total = reader.count_frames()
        except Exception:
            total = 0
        wanted = set(frame_indices(total, count)) if total else None
        frames = []
        for i, frame in enumerate(reader):
            if wanted is None or i in wanted:
                frames.append(_rgb(np.asarray(frame)))
            if wanted is not None and len(frames) == len(wanted):
                break
        if wanted is None and len(frames) > count:
            frames = [frames[i] for i in frame_indices(len(frames), count)]
        return frames
    finally:
        reader.close()


def _rgb(frame):
    import numpy as np

    if frame.ndim == 2:
        frame = np.stack([frame] * 3, axis=-1)
    if frame.shape[-1] == 4:
        frame = frame[..., :3]
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame


def contact_sheet(frames: list[Any], columns: int = 3, thumb_width: int = 192, gap: int = 2):
    """Tile frames into one Pillow image, left to right, top to bottom, on a dark background."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to tile")
    thumbs = []
    for f in frames:
        im = Image.fromarray(f)
        h = max(1, round(im.height * thumb_width / im.width))
        thumbs.append(im.resize((thumb_width, h)))
    columns = max(1, min(columns, len(thumbs)))
    rows = (len(thumbs) + columns - 1) // columns
    cell_h = max(t.height for t in thumbs)
    sheet = Image.new("RGB", (columns * thumb_width + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap),
                      (16, 16, 16))
    for i, t in enumerate(thumbs):
        r, c = divmod(i, columns)
        sheet.paste(t, (c * (thumb_width + gap), r * (cell_h + gap)))
    return sheet


def contact_sheet_for(path: str | os.PathLike, count: int = 6, columns: int = 3, thumb_width: int = 192):
    """The contact sheet of a video or image file (see read_frames)."""
    return contact_sheet(read_frames(path, count), columns=columns, thumb_width=thumb_width)


def first_video(outputs: list[dict] | None) -> str | None:
    """The first output of kind video that exists on disk, from a job dict's `outputs`."""
    for out in outputs or []:
        p = out.get("path") if isinstance(out, dict) else out
        kind = out.get("kind", "video") if isinstance(out, dict) else "video"
        if p and kind == "video" and str(p).lower().endswith(".mp4") and os.path.isfile(p):
            return str(p)
    return None
