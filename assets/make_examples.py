"""Draw the example inputs the inference guide's commands use (our own scenes and prompts).

    python assets/make_examples.py        # rewrites assets/video2world/* and assets/video2world_lvg/*

The scenes are flat shapes drawn with PIL, so the files stay small (tens of kB) and the script is the
source: rerunning it gives the same pictures. They only have to be real inputs of the right kinds
(three images, a clip with motion long enough for 5-frame conditioning, a batch file); what a model
makes of them is not the point. Sizes are 16:9-ish and larger than 720p's frame is not needed:
engine.io resizes to cover the output size and crops the centre, whatever the input size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent
V2W = ROOT / "video2world"
LVG = ROOT / "video2world_lvg"
SIZE = (1280, 704)
CLIP_SIZE = (640, 352)
CLIP_FRAMES = 24  # >= 5 for 5-frame conditioning, and enough for the car to visibly move

PROMPTS = {
    "input0": ("A depot at night: three long buses wait side by side under pale lamps. The middle bus switches "
               "on its headlights and rolls slowly forward out of the row, its lights sweeping across the wet "
               "ground, then stops at the gate while the other two stay parked."),
    "input1": ("Snow falls on a city crossing at dusk. The traffic light turns green and a red bus pulls away "
               "from the stop line, leaving dark tyre tracks in the slush; the cars queued behind it follow "
               "one after the other as the flakes drift through the street lights."),
    "input2": ("On a factory line, glass jars move along a conveyor belt from left to right. A filling nozzle "
               "above the belt pours amber grains into each empty jar as it passes, and the filled jars "
               "continue steadily out of the frame."),
    "input3": ("Seen from a parked car, a quiet sunny street with a stop sign at the corner. A white van crosses "
               "the intersection from left to right and leaves the view; the parked cars and the houses along "
               "the street stay still."),
    "lvg": ("A drone flies low along a winding river through green hills at midday, the water glittering, "
            "trees and fields passing slowly below as the river bends left and right."),
}


def _sky(draw: ImageDraw.ImageDraw, w: int, h: int, top: tuple, bottom: tuple, until: float) -> None:
    for y in range(int(h * until)):
        t = y / max(1, h * until - 1)
        draw.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))


def bus_depot(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), (18, 20, 32))
    d = ImageDraw.Draw(img)
    _sky(d, w, h, (8, 10, 25), (30, 34, 55), 0.45)
    d.rectangle((0, h * 0.45, w, h), fill=(40, 42, 48))
    for i, x in enumerate((0.12, 0.40, 0.68)):
        x0, x1 = w * x, w * (x + 0.22)
        d.rectangle((x0, h * 0.30, x1, h * 0.78), fill=(200, 200, 190) if i == 1 else (150, 60, 50))
        for k in range(4):  # windows
            d.rectangle((x0 + 12 + k * (x1 - x0 - 24) / 4, h * 0.35, x0 + 4 + (k + 1) * (x1 - x0 - 24) / 4,
                         h * 0.48), fill=(60, 80, 110))
        d.ellipse((x0 + 10, h * 0.68, x0 + 40, h * 0.74), fill=(255, 240, 170))
        d.ellipse((x1 - 40, h * 0.68, x1 - 10, h * 0.74), fill=(255, 240, 170))
    for x in np.linspace(0.05, 0.95, 6):  # lamps
        d.line([(w * x, h * 0.05), (w * x, h * 0.25)], fill=(90, 90, 100), width=4)
        d.ellipse((w * x - 14, h * 0.03, w * x + 14, h * 0.09), fill=(255, 250, 210))
    return img.filter(ImageFilter.GaussianBlur(1))


def snowy_crossing(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), (120, 125, 140))
    d = ImageDraw.Draw(img)
    _sky(d, w, h, (70, 80, 110), (150, 150, 165), 0.4)
    d.polygon([(0, h), (w * 0.42, h * 0.4), (w * 0.58, h * 0.4), (w, h)], fill=(90, 92, 100))
    d.rectangle((w * 0.38, h * 0.50, w * 0.62, h * 0.82), fill=(190, 30, 35))  # the bus
    d.rectangle((w * 0.40, h * 0.54, w * 0.60, h * 0.64), fill=(40, 50, 70))
    d.rectangle((w * 0.8, h * 0.15, w * 0.83, h * 0.6), fill=(50, 50, 50))  # traffic light
    d.ellipse((w * 0.79, h * 0.12, w * 0.84, h * 0.2), fill=(230, 40, 30))
    rng = np.random.RandomState(1)
    for x, y in zip(rng.rand(400) * w, rng.rand(400) * h):
        d.ellipse((x, y, x + 4, y + 4), fill=(245, 245, 250))
    return img


def conveyor(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), (200, 205, 210))
    d = ImageDraw.Draw(img)
    d.rectangle((0, h * 0.62, w, h * 0.75), fill=(60, 60, 65))  # belt
    for k in range(7):
        x = w * (0.05 + k * 0.14)
        fill = (210, 150, 40) if k < 3 else (225, 235, 240)
        d.rectangle((x, h * 0.40, x + w * 0.08, h * 0.62), fill=(170, 200, 210), outline=(90, 110, 120), width=3)
        d.rectangle((x + 4, h * 0.48, x + w * 0.08 - 4, h * 0.61), fill=fill)
    d.polygon([(w * 0.45, h * 0.1), (w * 0.55, h * 0.1), (w * 0.52, h * 0.3), (w * 0.48, h * 0.3)],
              fill=(120, 120, 130))
    return img


def street(w: int, h: int, van_x: float) -> Image.Image:
    img = Image.new("RGB", (w, h), (110, 170, 230))
    d = ImageDraw.Draw(img)
    d.rectangle((0, h * 0.55, w, h), fill=(80, 80, 85))
    for k, x in enumerate(np.linspace(0, 1, 6)):  # houses
        d.rectangle((w * x, h * 0.25, w * (x + 0.15), h * 0.55), fill=(200 - 20 * k, 170, 140 + 15 * k))
    d.rectangle((w * 0.70, h * 0.35, w * 0.71, h * 0.58), fill=(90, 90, 90))
    d.regular_polygon((w * 0.705, h * 0.33, 14), 8, fill=(200, 20, 20))  # stop sign
    x = w * van_x
    d.rectangle((x, h * 0.55, x + w * 0.2, h * 0.72), fill=(245, 245, 245))  # the white van
    d.rectangle((x + w * 0.14, h * 0.57, x + w * 0.19, h * 0.63), fill=(60, 80, 100))
    for cx in (x + w * 0.04, x + w * 0.16):
        d.ellipse((cx - 12, h * 0.70, cx + 12, h * 0.76), fill=(20, 20, 20))
    return img


def river(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), (70, 140, 60))
    d = ImageDraw.Draw(img)
    pts = [(w * (0.45 + 0.15 * np.sin(y / h * 6)), y) for y in np.linspace(0, h, 40)]
    d.line(pts, fill=(60, 120, 200), width=int(w * 0.08))
    rng = np.random.RandomState(2)
    for x, y in zip(rng.rand(60) * w, rng.rand(60) * h):
        d.ellipse((x, y, x + 30, y + 30), fill=(30, 90, 40))
    return img


def write_clip(path: Path, frames: list[Image.Image], fps: int = 16) -> None:
    sys.path.insert(0, str(ROOT.parent))
    import torch

    from engine import io

    arr = np.stack([np.asarray(f) for f in frames])  # T, H, W, C
    io.write_video(path, torch.from_numpy(arr).permute(3, 0, 1, 2).contiguous(), fps, quality=5)


def main() -> None:
    V2W.mkdir(parents=True, exist_ok=True)
    LVG.mkdir(parents=True, exist_ok=True)
    w, h = SIZE
    bus_depot(w, h).save(V2W / "input0.jpg", quality=80)
    snowy_crossing(w, h).save(V2W / "input1.jpg", quality=80)
    conveyor(w, h).save(V2W / "input2.jpg", quality=80)
    cw, ch = CLIP_SIZE
    write_clip(V2W / "input3.mp4", [street(cw, ch, -0.2 + 1.2 * i / (CLIP_FRAMES - 1)) for i in range(CLIP_FRAMES)])
    river(w, h).save(LVG / "example_input.jpg", quality=80)
    batch = [
        {"input_video": "assets/video2world/input0.jpg", "prompt": PROMPTS["input0"],
         "output_video": "output/depot-night-bus-leaves.mp4"},
        {"input_video": "assets/video2world/input1.jpg", "prompt": PROMPTS["input1"],
         "output_video": "output/snowy-crossing-bus.mp4"},
        {"input_video": "assets/video2world/input2.jpg", "prompt": PROMPTS["input2"],
         "output_video": "output/conveyor-jar-filling.mp4"},
    ]
    (V2W / "batch_example.json").write_text(json.dumps(batch, indent=2) + "\n")
    (ROOT / "prompts.json").write_text(json.dumps(PROMPTS, indent=2) + "\n")


if __name__ == "__main__":
    main()
