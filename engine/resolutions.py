"""Output sizes and frame counts of Cosmos-Predict2 Video2World (torch-free, so the TUI can use it).

Sizes are (width, height) in pixels, as in the reference's resolution table. The `tiny` profile has
its own small table: the same aspect ratios at sizes a CPU samples in seconds.
"""

from __future__ import annotations

ASPECT_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16")
RESOLUTIONS = ("480", "720")
FPS_CHOICES = (10, 16)

# (width, height); every entry is a multiple of 16 (VAE 8x, DiT patch 2x).
SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "480": {"1:1": (480, 480), "4:3": (640, 480), "3:4": (480, 640), "16:9": (768, 432), "9:16": (432, 768)},
    "720": {"1:1": (960, 960), "4:3": (960, 704), "3:4": (704, 960), "16:9": (1280, 704), "9:16": (704, 1280)},
    # tiny profile: toy sizes, same aspect ratios (rounded to multiples of 16)
    "tiny": {"1:1": (64, 64), "4:3": (64, 48), "3:4": (48, 64), "16:9": (112, 64), "9:16": (64, 112)},
}

# Pixel frames per clip: 16 fps models make 93 frames (24 latent frames), 10 fps models 61 (16).
FRAMES = {16: 93, 10: 61}
# The tiny profile makes short clips, 17 frames (5 latent) and 13 (4): the causal VAE and the DiT cost
# in proportion to frames, and on a 2-core CPU 93 frames made every end-to-end test ~5x slower. Still long
# enough for 5-frame conditioning (2 latent frames) with frames left to generate, so every code path runs.
TINY_FRAMES = {16: 17, 10: 13}
VAE_TEMPORAL = 4
VAE_SPATIAL = 8
DIT_PATCH = 2


def frame_size(resolution: str, aspect_ratio: str, model_size: str = "2B") -> tuple[int, int]:
    """(width, height) of the generated video. The tiny profile ignores `resolution`."""
    table = SIZES["tiny"] if model_size == "tiny" else SIZES.get(resolution)
    if table is None:
        raise ValueError(f"resolution: {resolution!r} is not one of {', '.join(RESOLUTIONS)}")
    if aspect_ratio not in table:
        raise ValueError(f"aspect_ratio: {aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
    return table[aspect_ratio]


def num_frames(fps: int, model_size: str = "2B") -> int:
    if fps not in FRAMES:
        raise ValueError(f"fps: {fps!r} is not one of {', '.join(map(str, FPS_CHOICES))}")
    return (TINY_FRAMES if model_size == "tiny" else FRAMES)[fps]


def latent_frames(pixel_frames: int) -> int:
    """Causal VAE: the first frame alone, then one latent per 4 frames."""
    return 1 + (pixel_frames - 1) // VAE_TEMPORAL


def pixel_frames(latent_t: int) -> int:
    return VAE_TEMPORAL * (latent_t - 1) + 1


def conditional_latent_frames(num_conditional_frames: int) -> int:
    """1 pixel frame -> 1 latent frame, 5 pixel frames -> 2."""
    return latent_frames(num_conditional_frames)


def lvg_total_frames(num_chunks: int, num_conditional_frames: int, fps: int = 16, model_size: str = "2B") -> int:
    """Chunk 0 gives all its frames; each later chunk drops the frames it was conditioned on."""
    n = num_frames(fps, model_size)
    return n + (num_chunks - 1) * (n - num_conditional_frames)
