"""Guardrail: text checks before generation, video checks after.

Each check is a small class with `name` and `check(...) -> Verdict`. `Guardrail` runs them in order and
stops at the first block. Checks whose model is not on disk are reported as not run (never silently
skipped): `Guardrail.report()` says which checks ran, which were unavailable and why, so the README and
the job log can state exactly what protected a generation.

Text:  Blocklist (always) -> LlamaGuard3 (checkpoints/meta-llama/Llama-Guard-3-8B).
Video: SafetyClassifier (SigLIP + MLP, Cosmos-Guardrail1/video_content_safety_filter),
       then FaceFilter (pixelates faces): RetinaFace ResNet-50 (engine/models/retinaface.py) when
       Cosmos-Guardrail1/face_blur_filter/Resnet50_Final.pth exists, as the reference does; otherwise
       OpenCV's Haar cascade when `cv2` imports. The job record names the detector that ran.

Like the reference, a generation with the guardrail on needs Llama Guard 3 and the video safety
filter: `Guardrail.require()` refuses (GuardrailUnavailable, one sentence naming the missing
checkpoint and --disable_guardrail) instead of quietly running with fewer checks. The tiny profile's
guardrail is the blocklist alone, on purpose (no checkpoints exist for toy models), and its report
says so.

Torch and transformers are imported only by the model-backed checks, so the blocklist works anywhere.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from engine.spec import InputError, blank_for_guardrail

log = logging.getLogger(__name__)

GUARDRAIL_DIR = Path("nvidia") / "Cosmos-Guardrail1"
RETINAFACE_FILE = GUARDRAIL_DIR / "face_blur_filter" / "Resnet50_Final.pth"
LLAMA_GUARD_DIR = Path("meta-llama") / "Llama-Guard-3-8B"
SIGLIP_REPO = "google/siglip-so400m-patch14-384"

# A deliberately short list of our own: phrases that no generation request has a legitimate reason to
# contain. The real coverage comes from the checkpoint's word lists and the user's own files.
BUILTIN_BLOCKLIST = (
    "child pornography",
    "child sexual abuse",
    "csam",
    "bestiality",
    "snuff film",
    "beheading video",
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    check_name: str
    message: str = ""

    def __bool__(self) -> bool:  # `if verdict:` reads as "allowed"
        return self.ok


# ----------------------------------------------------------------------------- word lists


def default_config_dir() -> Path:
    """The user's config dir for cosmos-tui; $COSMOS_TUI_CONFIG_DIR overrides it."""
    if os.environ.get("COSMOS_TUI_CONFIG_DIR"):
        return Path(os.environ["COSMOS_TUI_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cosmos-tui"


def read_word_files(paths: Iterable[Path]) -> list[str]:
    """One entry per line; blank lines and lines starting with '#' are skipped; lower-cased."""
    words: list[str] = []
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            log.warning("guardrail: cannot read word list %s: %s", p, err)
            continue
        for line in text.splitlines():
            w = " ".join(line.strip().lower().split())
            if w and not w.startswith("#"):
                words.append(w)
    return words


def _files_in(d: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in d.glob(pattern) if p.is_file()) if d.is_dir() else []


def _to_ascii(text: str) -> str:
    # Non-ASCII becomes a space so look-alike letters can't glue two harmless halves into a word or
    # split a listed word unnoticed; whitespace is then collapsed.
    return " ".join("".join(c if ord(c) < 128 else " " for c in text).split())


# ----------------------------------------------------------------------------- text checks


def _word_re(phrase: str) -> re.Pattern:
    # Any run of whitespace in the prompt matches the single spaces of a multi-word entry.
    body = r"\s+".join(re.escape(p) for p in phrase.split())
    return re.compile(r"\b" + body + r"\b", re.IGNORECASE)


class Blocklist:
    """Whole-word match against a word list, plus a near-exact match for long entries.

    Exact: a case-insensitive `\\bentry\\b` regex. Fuzzy (entries of at least `min_chars`): difflib's
    ratio between the entry and every window of the prompt with the same number of words must reach
    (len - tolerance) / len. With the reference's tolerance of 0.4 that threshold is above what any
    one-letter edit reaches, so it only adds matches that differ in spacing or punctuation; raise
    `tolerance` to 1.0 to also catch one-letter typos of long entries.
    Whitelisted words and phrases are cut out of the prompt before matching, so a whitelist entry
    "photo shoot" lets "a photo shoot" through while "shoot" stays blocked elsewhere.
    """

    name = "Blocklist"

    def __init__(self, words: Iterable[str], whitelist: Iterable[str] = (), min_chars: int = 6,
                 tolerance: float = 0.4):
        self.whitelist = {" ".join(w.lower().split()) for w in whitelist if w.strip()}
        self.words = sorted({" ".join(w.lower().split()) for w in words if w.strip()} - self.whitelist)
        self.min_chars = min_chars
        self.tolerance = tolerance
        self._exact = [(w, _word_re(w)) for w in self.words]
        # Longest first so "photo shoot session" is removed before "photo shoot".
        self._white = [_word_re(w) for w in sorted(self.whitelist, key=len, reverse=True)]

    @classmethod
    def from_dirs(cls, checkpoints_root: str | os.PathLike | None, config_dir: str | os.PathLike | None,
                  **kwargs: Any) -> "Blocklist":
        block_files: list[Path] = []
        white_files: list[Path] = []
        if checkpoints_root:
            bl = Path(checkpoints_root) / GUARDRAIL_DIR / "blocklist"
            block_files += _files_in(bl / "custom") + _files_in(bl / "exact_match")
            white_files += _files_in(bl / "whitelist")
        if config_dir:
            g = Path(config_dir) / "guardrail"
            block_files += _files_in(g / "blocklist", "*.txt")
            white_files += _files_in(g / "whitelist", "*.txt")
        words = list(BUILTIN_BLOCKLIST) + read_word_files(block_files)
        bl_obj = cls(words, read_word_files(white_files), **kwargs)
        bl_obj.sources = [str(p) for p in block_files + white_files]
        return bl_obj

    def _fuzzy(self, entry: str, prompt_words: list[str]) -> str | None:
        n = len(entry.split())
        threshold = (len(entry) - self.tolerance) / len(entry)
        for i in range(len(prompt_words) - n + 1):
            window = " ".join(prompt_words[i:i + n])
            # ratio <= 2*min/(a+b): skip windows whose length alone rules a match out.
            la, lb = len(window), len(entry)
            if 2 * min(la, lb) / (la + lb) < threshold:
                continue
            sm = difflib.SequenceMatcher(None, window, entry, autojunk=False)
            if sm.quick_ratio() >= threshold and sm.ratio() >= threshold:
                return window
        return None

    def check(self, prompt: str) -> Verdict:
        text = _to_ascii(prompt or "")
        if blank_for_guardrail(text):  # the rule the submit check uses (engine.spec.empty_prompt_problem)
            return Verdict(False, self.name, "the prompt is empty; write what the video should show")
        for rx in self._white:
            text = rx.sub(" ", text)
        for entry, rx in self._exact:
            if rx.search(text):
                return Verdict(False, self.name, f"the prompt contains the blocked term {entry!r}")
        prompt_words = re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()
        for entry in self.words:
            if len(entry) < self.min_chars:
                continue
            hit = self._fuzzy(entry, prompt_words)
            if hit is not None:
                return Verdict(False, self.name, f"the prompt contains {hit!r}, too close to the blocked term {entry!r}")
        return Verdict(True, self.name)


# Hazard category codes of Llama Guard 3, in our words.
LLAMA_GUARD_CATEGORIES = {
    "S1": "violent crimes", "S2": "non-violent crimes", "S3": "sex-related crimes",
    "S4": "child sexual exploitation", "S5": "defamation", "S6": "specialized advice", "S7": "privacy",
    "S8": "intellectual property", "S9": "indiscriminate weapons", "S10": "hate", "S11": "suicide and self-harm",
    "S12": "sexual content", "S13": "elections", "S14": "code interpreter abuse",
}


def parse_llama_guard(output: str) -> tuple[bool, list[str]]:
    """(safe, category names) from Llama Guard's reply: 'safe' or 'unsafe' then a line of codes."""
    if "unsafe" not in output.lower():
        return True, []
    codes = re.findall(r"\bS(\d{1,2})\b", output, flags=re.IGNORECASE)
    names = [LLAMA_GUARD_CATEGORIES.get(f"S{c}", f"S{c}") for c in codes]
    return False, names


class _Offloadable:
    """Keeps a model on CPU between calls when offload is on; one move each way per call."""

    model: Any = None
    device: str = "cpu"
    offload: bool = False

    def _on_device(self):
        if self.offload and self.device != "cpu":
            self.model.to(self.device)

    def _off_device(self):
        if self.offload and self.device != "cpu":
            self.model.to("cpu")


class LlamaGuard3(_Offloadable):
    name = "LlamaGuard3"

    def __init__(self, path: str | os.PathLike, device: str, offload: bool, warn: Callable[[str], None]):
        self.path, self.device, self.offload, self.warn = Path(path), device, offload, warn
        self.model = self.tokenizer = None

    def _load(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        dtype = torch.bfloat16 if self.device != "cpu" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).eval()
        self.model.to("cpu" if self.offload else self.device)

    def check(self, prompt: str) -> Verdict:
        # The reference lets the prompt through when the model fails; we do the same so a broken guard
        # model can't stop all work, but say so loudly in the job log.
        try:
            import torch

            if self.model is None:
                self._load()
            self._on_device()
            try:
                ids = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], return_tensors="pt", return_dict=True
                ).to(self.device)
                with torch.inference_mode():
                    out = self.model.generate(**ids, max_new_tokens=100, do_sample=False)
                text = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            finally:
                self._off_device()
        except Exception as err:  # noqa: BLE001
            self.warn(f"guardrail: {self.name} errored ({type(err).__name__}: {err}); the prompt was let through")
            return Verdict(True, self.name, "check errored; treated as safe")
        safe, cats = parse_llama_guard(text)
        if safe:
            return Verdict(True, self.name)
        return Verdict(False, self.name, "the prompt was judged unsafe" + (f" ({', '.join(cats)})" if cats else ""))


# ----------------------------------------------------------------------------- video checks

SAFETY_CLASSES = ("Safe", "Sexual_Content", "Violence", "Drugs", "Child_Abuse", "Hate_and_Harassment", "Self-Harm")


def build_safety_head():
    import torch.nn as nn

    return nn.Sequential(
        nn.Linear(1152, 512), nn.BatchNorm1d(512), nn.ReLU(),
        nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(),
        nn.Linear(256, len(SAFETY_CLASSES)),
    )


def load_safety_head(head, state: dict) -> None:
    """Load the released head whatever its module prefix: keys end in '<layer index>.<param>'."""
    renamed = {}
    for k, v in state.items():
        parts = k.split(".")
        if len(parts) >= 2 and parts[-2].isdigit():
            renamed[f"{parts[-2]}.{parts[-1]}"] = v
    try:
        head.load_state_dict(renamed, strict=True)
    except RuntimeError as err:
        raise ValueError(f"safety_filter.pt does not fit the 1152-512-256-7 head: {err}") from None


class SafetyClassifier(_Offloadable):
    """SigLIP image embedding (L2-normalised) -> MLP -> 7 classes; any non-Safe frame blocks."""

    name = "VideoSafetyClassifier"

    def __init__(self, filter_dir: str | os.PathLike, device: str, offload: bool, warn: Callable[[str], None],
                 batch: int = 16):
        self.dir, self.device, self.offload, self.warn, self.batch = Path(filter_dir), device, offload, warn, batch
        self.model = None

    def _load(self):
        import torch
        from transformers import SiglipModel, SiglipProcessor

        src: Any = self.dir if (self.dir / "config.json").exists() else SIGLIP_REPO
        kw = {} if src is self.dir else {"cache_dir": str(self.dir), "local_files_only": True}
        self.processor = SiglipProcessor.from_pretrained(src, **kw)
        siglip = SiglipModel.from_pretrained(src, dtype=torch.float32, **kw)
        head = build_safety_head()
        ckpt = torch.load(self.dir / "safety_filter.pt", map_location="cpu", weights_only=True)
        load_safety_head(head, ckpt["model"] if "model" in ckpt else ckpt)
        self.model = torch.nn.ModuleDict({"siglip": siglip, "head": head}).eval()
        self.model.to("cpu" if self.offload else self.device)

    def classify(self, frames: np.ndarray) -> list[int]:
        import torch

        out: list[int] = []
        for i in range(0, len(frames), self.batch):
            inputs = self.processor(images=list(frames[i:i + self.batch]), return_tensors="pt").to(self.device)
            with torch.inference_mode():
                emb = self.model["siglip"].get_image_features(**inputs)
                emb = getattr(emb, "pooler_output", emb)
                emb = emb / emb.norm(dim=-1, keepdim=True)
                out += self.model["head"](emb.float()).argmax(-1).tolist()
        return out

    def check(self, frames: np.ndarray) -> Verdict:
        # Frames are batched rather than one at a time; a batch that errors is skipped with a warning,
        # like the reference's per-frame fail-open, but never silently.
        try:
            if self.model is None:
                self._load()
        except Exception as err:  # noqa: BLE001
            self.warn(f"guardrail: {self.name} could not load ({type(err).__name__}: {err}); video let through")
            return Verdict(True, self.name, "check errored; treated as safe")
        self._on_device()
        try:
            for i in range(0, len(frames), self.batch):
                try:
                    labels = self.classify(frames[i:i + self.batch])
                except Exception as err:  # noqa: BLE001
                    self.warn(f"guardrail: {self.name} skipped frames {i}..{i + self.batch - 1} ({err})")
                    continue
                for j, lab in enumerate(labels):
                    if lab != 0:
                        return Verdict(False, self.name, f"frame {i + j} was classified as {SAFETY_CLASSES[lab]}")
        finally:
            self._off_device()
        return Verdict(True, self.name)


def pixelate(frame: np.ndarray, box: Sequence[float], cells: int = 5) -> np.ndarray:
    """Pixelate box (x0, y0, x1, y1) in place: down to cells x cells (linear), back up (nearest).

    Coordinates are truncated to integers and clipped to the frame, as NVIDIA's filter does."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return frame
    region = frame[y0:y1, x0:x1]
    try:
        import cv2

        small = cv2.resize(region, (cells, cells), interpolation=cv2.INTER_LINEAR)
        frame[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    except ImportError:
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(region))
        small = img.resize((cells, cells), Image.BILINEAR)
        frame[y0:y1, x0:x1] = np.asarray(small.resize((x1 - x0, y1 - y0), Image.NEAREST))
    return frame


def haar_face_detector() -> Callable[[np.ndarray], list[tuple[int, int, int, int]]] | None:
    """OpenCV's bundled frontal-face cascade as a detector, or None without cv2 or its data files."""
    try:
        import cv2
    except ImportError:
        return None
    path = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""), "haarcascade_frontalface_default.xml")
    if not os.path.isfile(path):
        return None
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        return None

    def detect(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
        return [(int(x), int(y), int(x + fw), int(y + fh)) for x, y, fw, fh in found]

    return detect


class FaceFilter:
    """Post-processor: pixelate every detected face of at least min_size x min_size pixels.

    `detector` maps one frame to boxes (x0, y0, x1, y1, ...); one with a `detect_frames(frames)` method
    (RetinaFace) gets the whole video at once. Boxes are truncated to integers before the size test,
    like the reference. If the detector fails (a broken checkpoint), `fallback` takes over for this
    and later videos, with a warning; without one, the video goes out unpixelated, with a warning."""

    name = "FacePixelation"

    def __init__(self, detector: Callable[[np.ndarray], list], detector_name: str, min_size: int = 20,
                 fallback: tuple[Callable[[np.ndarray], list], str] | None = None,
                 warn: Callable[[str], None] | None = None):
        self.detector, self.detector_name, self.min_size = detector, detector_name, min_size
        self.fallback, self.warn = fallback, warn or log.warning
        self.faces = 0
        self.failed: str | None = None  # why the first detector was given up, if it was

    def _detect(self, frames: np.ndarray) -> list:
        batch = getattr(self.detector, "detect_frames", None)
        if batch is not None:
            return list(batch(frames))
        return [self.detector(f) for f in frames]

    def apply(self, frames: np.ndarray) -> np.ndarray | None:
        """The pixelated copy of frames [T,H,W,C]; None when no detector could run."""
        try:
            per_frame = self._detect(frames)
        except Exception as err:  # noqa: BLE001
            self.failed = f"{self.detector_name} failed ({type(err).__name__}: {err})"
            if self.fallback is None:
                self.warn(f"guardrail: {self.name}: {self.failed}; the faces of this video were not pixelated")
                return None
            self.detector, self.detector_name = self.fallback
            self.fallback = None
            self.warn(f"guardrail: {self.name}: {self.failed}; using {self.detector_name} instead")
            return self.apply(frames)
        out = np.array(frames, copy=True)
        for t, boxes in enumerate(per_frame):
            for box in boxes:
                x0, y0, x1, y1 = (int(v) for v in box[:4])
                if x1 - x0 >= self.min_size and y1 - y0 >= self.min_size:
                    pixelate(out[t], (x0, y0, x1, y1))
                    self.faces += 1
        return out


# ----------------------------------------------------------------------------- runner


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


class GuardrailUnavailable(InputError):
    """A check the guardrail needs has no checkpoint; the message names it and --disable_guardrail."""


# The checks a full guardrail cannot do without, with what to download (the reference refuses to run
# without them too).
REQUIRED = {
    "LlamaGuard3": ("Llama Guard 3", "meta-llama/Llama-Guard-3-8B"),
    "VideoSafetyClassifier": ("video safety filter", "nvidia/Cosmos-Guardrail1"),
}


def required_paths(root: Path | None) -> dict[str, Path | None]:
    """Where each REQUIRED check's checkpoint must be: Llama Guard's directory, the video filter's
    safety_filter.pt (None without a checkpoints root)."""
    if root is None:
        return dict.fromkeys(REQUIRED)
    return {"LlamaGuard3": root / LLAMA_GUARD_DIR,
            "VideoSafetyClassifier": root / GUARDRAIL_DIR / "video_content_safety_filter" / "safety_filter.pt"}


def missing_required(root: Path | None) -> list[str]:
    """The REQUIRED checks whose checkpoint is absent under `root`: what Guardrail(root).require() refuses,
    found without building anything (the queue asks at submit)."""
    where = required_paths(root)
    present = {"LlamaGuard3": lambda p: p.is_dir(), "VideoSafetyClassifier": lambda p: p.is_file()}
    return [name for name in REQUIRED if where[name] is None or not present[name](where[name])]


def missing_message(root: Path | None, missing: list[str]) -> str:
    """The one-sentence refusal for `missing` required checks."""
    base = root or Path("checkpoints")
    what = " and the ".join(f"{REQUIRED[m][0]} checkpoint ({base / REQUIRED[m][1]})" for m in missing)
    return (f"guardrail: the {what} {'is' if len(missing) == 1 else 'are'} missing; download "
            f"{'it' if len(missing) == 1 else 'them'} into the checkpoints folder, or run with "
            f"--disable_guardrail to generate without the guardrail")


TINY_NOTE = "not part of the tiny profile's guardrail (blocklist only: toy models have no guard checkpoints)"


class Guardrail:
    """The runner the pipeline calls: `check_text` before generation, `check_video` after.

    profile "full" (the default) is the reference's set of checks; "tiny" is the blocklist alone."""

    def __init__(self, checkpoints_root: str | os.PathLike | None, offload: bool = False,
                 emit: Callable | None = None, disabled: bool = False,
                 config_dir: str | os.PathLike | None = None, device: str | None = None,
                 face_detector: Callable[[np.ndarray], list] | None = None, profile: str = "full",
                 face_config: Any = None):
        # face_config: the RetinaFaceConfig the face checkpoint holds (ResNet-50 unless a test says tiny)
        if profile not in ("full", "tiny"):
            raise ValueError(f"guardrail profile {profile!r}: use 'full' or 'tiny'")
        self.disabled = disabled
        self.profile = profile
        self.emit = emit
        self.root = Path(checkpoints_root) if checkpoints_root else None
        self._status: dict[str, dict] = {}
        self._ran: list[str] = []
        self.text_checks: list = []
        self.video_checks: list = []
        self.face: FaceFilter | None = None
        if disabled:
            return
        device = device or _default_device()
        cfg = Path(config_dir) if config_dir else default_config_dir()

        bl = Blocklist.from_dirs(self.root, cfg)
        self._add(self.text_checks, bl, "text", f"{len(bl.words)} entries from the built-in list"
                  + (f" and {len(bl.sources)} files" if bl.sources else ""))
        if profile == "tiny":
            for name, stage in (("LlamaGuard3", "text"), ("VideoSafetyClassifier", "video"),
                                ("FacePixelation", "video")):
                self._status[name] = {"stage": stage, "available": False, "required": False, "runs": 0,
                                      "detail": TINY_NOTE}
            return

        where = required_paths(self.root)
        absent = missing_required(self.root)
        lg = where["LlamaGuard3"]
        if "LlamaGuard3" not in absent:
            self._add(self.text_checks, LlamaGuard3(lg, device, offload, self._warn), "text", str(lg))
        else:
            self._unavailable("LlamaGuard3", "text", f"no checkpoint at {lg or LLAMA_GUARD_DIR}")

        vf = where["VideoSafetyClassifier"].parent if self.root else None
        if "VideoSafetyClassifier" not in absent:
            self._add(self.video_checks, SafetyClassifier(vf, device, offload, self._warn), "video", str(vf))
        else:
            self._unavailable("VideoSafetyClassifier", "video",
                              f"no safety_filter.pt under {vf or GUARDRAIL_DIR / 'video_content_safety_filter'}")

        if face_detector is not None:
            self.face = FaceFilter(face_detector, "custom")
            detail = "detector custom"
        else:
            self.face, detail = self._face_filter(device, offload, face_config)
        if self.face is not None:
            self._status[self.face.name] = {"stage": "video", "available": True, "runs": 0, "detail": detail}

    def _face_filter(self, device: str, offload: bool, face_config: Any) -> tuple[FaceFilter | None, str]:
        rf = self.root / RETINAFACE_FILE if self.root else None
        haar = haar_face_detector()
        fallback = (haar, "opencv-haar") if haar is not None else None
        if rf is not None and rf.is_file():
            from engine.models import retinaface

            cfg = face_config or retinaface.RESNET50
            det = retinaface.RetinaFaceDetector(rf, cfg, device=device, offload=offload)
            return (FaceFilter(det, "RetinaFace", fallback=fallback, warn=self._warn),
                    f"detector RetinaFace ({rf})")
        where = rf or RETINAFACE_FILE
        if haar is not None:
            return FaceFilter(haar, "opencv-haar"), f"detector opencv-haar (no RetinaFace checkpoint at {where})"
        self._unavailable("FacePixelation", "video", f"no RetinaFace checkpoint at {where} and no OpenCV "
                          "(install opencv-python-headless for its face cascade)")
        return None, ""

    # -- bookkeeping

    def _add(self, lst: list, check: Any, stage: str, detail: str) -> None:
        lst.append(check)
        self._status[check.name] = {"stage": stage, "available": True, "runs": 0, "detail": detail}

    def _unavailable(self, name: str, stage: str, reason: str) -> None:
        self._status[name] = {"stage": stage, "available": False, "runs": 0, "detail": reason,
                              "required": name in REQUIRED}

    def missing(self) -> list[str]:
        """Names of required checks that cannot run (no checkpoint); [] when disabled or tiny."""
        return [k for k, v in self._status.items() if v.get("required") and not v["available"]]

    def require(self) -> None:
        """Refuse, as the reference does, when a required check has no checkpoint."""
        missing = self.missing()
        if missing:
            raise GuardrailUnavailable(missing_message(self.root, missing))

    def _mark_ran(self, name: str) -> None:
        if name not in self._ran:
            self._ran.append(name)

    def take_ran(self) -> list[str]:
        """The checks that ran since the last call, in order (one generation's worth for the pipeline)."""
        ran, self._ran = self._ran, []
        return ran

    def _log(self, message: str, level: str) -> None:
        from engine import events

        getattr(log, level, log.info)(message)
        events.log_to(self.emit, message, level)

    def _warn(self, message: str) -> None:
        self._log(message, "warning")

    # -- API

    def check_text(self, prompt: str) -> Verdict:
        if self.disabled:
            return Verdict(True, "guardrail", "guardrail disabled")
        for check in self.text_checks:
            verdict = check.check(prompt)
            self._status[check.name]["runs"] += 1
            self._mark_ran(check.name)
            if not verdict.ok:
                return self._blocked(verdict)
        return Verdict(True, "guardrail")

    def check_video(self, frames: np.ndarray) -> tuple[Verdict, np.ndarray]:
        """frames: uint8 [T, H, W, C]. Returns the verdict and the (face-pixelated) frames."""
        if self.disabled:
            return Verdict(True, "guardrail", "guardrail disabled"), frames
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"check_video wants uint8 frames [T,H,W,C], got {frames.dtype} {frames.shape}")
        for check in self.video_checks:
            verdict = check.check(frames)
            self._status[check.name]["runs"] += 1
            self._mark_ran(check.name)
            if not verdict.ok:
                return self._blocked(verdict), frames
        if self.face is not None:
            t0, faces0 = time.perf_counter(), self.face.faces
            self._log(f"guardrail: pixelating faces ({self.face.detector_name}) in {len(frames)} frames", "info")
            out = self.face.apply(frames)
            if out is not None:
                self._log(f"guardrail: {self.face.faces - faces0} face boxes pixelated by {self.face.detector_name} "
                          f"({time.perf_counter() - t0:.1f} s)", "info")
            st = self._status[self.face.name]
            st["faces"] = self.face.faces
            if self.face.failed:
                st["detail"] = f"{self.face.failed}; detector now {self.face.detector_name}"
            if out is not None:
                frames = out
                st["runs"] += 1
                # the record says which detector pixelated this video
                self._mark_ran(f"{self.face.name} ({self.face.detector_name})")
        return Verdict(True, "guardrail"), frames

    def _blocked(self, verdict: Verdict) -> Verdict:
        msg = f"Refused by the guardrail's {verdict.check_name} check: {verdict.message}."
        self._log(f"GUARDRAIL BLOCKED: {verdict.check_name}: {verdict.message}", "error")
        return Verdict(False, verdict.check_name, msg)

    def report(self) -> dict:
        """{"disabled", "checks": {name: {stage, available, runs, detail}}, "ran", "unavailable"}."""
        checks = {k: dict(v) for k, v in self._status.items()}
        return {
            "disabled": self.disabled,
            "profile": self.profile,
            "checks": checks,
            "ran": [k for k, v in checks.items() if v["runs"] > 0],
            "unavailable": [k for k, v in checks.items() if not v["available"]],
        }
