"""Encode raw RGB frames to an H.264 mp4 with the ffmpeg that imageio-ffmpeg ships.

Our own small wrapper instead of `imageio_ffmpeg.write_frames`: that generator never looks at
ffmpeg's exit status, so a disk that fills up while the encoder flushes (ENOSPC) leaves a truncated
file that looks finished. Here every failure -- a write into a dead pipe, a non-zero exit -- raises
`VideoWriteError` carrying ffmpeg's own last words, and the caller decides what to do with the file.
The command line is the one imageio-ffmpeg builds for the same arguments (crf from `quality`), so
files are unchanged.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from typing import Iterable


class VideoWriteError(OSError):
    """ffmpeg could not write the video; the message names the file and ffmpeg's error."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def command(path: str, width: int, height: int, fps: float, quality: int) -> list[str]:
    crf = int((1 - quality / 10.0) * 51)
    rate = str(Fraction(fps).limit_denominator())
    return [ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
            "-pix_fmt", "rgb24", "-r", rate, "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
            "-crf", str(crf), "-v", "error",
            # the container is named, not guessed from the (temporary) file name
            "-f", "mp4", path]


def encode(path: str, frames: Iterable[bytes], width: int, height: int, fps: float, quality: int = 7,
           shown_name: str | None = None) -> None:
    """Pipe `frames` (each width*height*3 RGB bytes) into ffmpeg writing `path`; raise VideoWriteError
    unless ffmpeg took every frame and exited 0."""
    name = shown_name or path
    # stderr to a file, not a pipe: a chatty ffmpeg can't block on a full pipe while we write stdin
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(command(path, width, height, fps, quality), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err)
        except OSError as e:
            raise VideoWriteError(f"could not write {name}: ffmpeg did not start ({e.strerror or e})") from None
        broken = None
        try:
            for frame in frames:
                proc.stdin.write(frame)
            proc.stdin.close()
        except OSError as e:  # BrokenPipeError: ffmpeg died; its stderr says why
            broken = e
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
        rc = proc.wait()
        if rc == 0 and broken is None:
            return
        err.seek(0)
        lines = [ln.strip() for ln in err.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        why = lines[-1] if lines else (os.strerror(broken.errno) if broken and broken.errno else "no message")
        raise VideoWriteError(f"could not write {name}: ffmpeg exited with status {rc} ({why}); "
                              f"check free disk space and that the folder is writable")
