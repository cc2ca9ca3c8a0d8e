"""Cosmos-Reason1 (a Qwen2.5-VL fine-tune) as prompt refiner and video critic.

The network is transformers' `Qwen2_5_VLForConditionalGeneration`. The preprocessing around it is ours:
this environment has no torchvision (which transformers' Qwen2-VL *video* processor needs) and no
qwen-vl-utils, so frames are read with imageio, sampled and sized here with the same rules as
qwen-vl-utils (even frame count at the requested fps, per-frame pixel budget, sides rounded to
multiples of 28), normalised with the CLIP mean/std and cut into the patch layout that the Qwen2-VL
image processor produces (a test compares the two on an image). Text goes through the tokenizer's
chat template; each `<|image_pad|>` / `<|video_pad|>` placeholder is then repeated once per merged
visual token, and `mm_token_type_ids` marks them so the model builds its 3-D rotary positions.

The real checkpoint and the `tiny` profile take exactly this path. What differs in `tiny`: a random
seeded config (2-layer ViT of width 32, 2-layer LM of width 64), a WordLevel tokenizer over a few
dozen English words (plus a few non-ASCII ones, so the ASCII filter has something to remove) with a
ChatML-style template of our own, and pixel budgets of one 56x56 frame so a video costs a few tokens.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engine.spec import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, InputError

log = logging.getLogger(__name__)

PATCH = 14
MERGE = 2
TEMPORAL_PATCH = 2
FACTOR = PATCH * MERGE  # frame sides are multiples of this
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CRITIC_QUESTION = "Does the video contain any anomalies or artifacts?"

# Our wording of the refiner's instruction: the same requirements as the reference (rewrite into one
# detailed English prompt of about 80-100 words grounded in the picture, keep the meaning, stress
# motion and camera, output the text only), with one example of our own.
REFINER_SYSTEM_PROMPT = """\
You turn short video ideas into detailed prompts for a video generation model. You receive the user's \
prompt and the first frame (an image) or opening clip (a video) that the generated video will continue. \
Rewrite the prompt into a single rich English description that keeps its meaning and agrees with what \
the image or video shows.

Guidelines:
1. If the prompt is short, add plausible details taken from the picture.
2. Describe the main subjects (appearance, clothing, expression, count, pose, actions), the setting, \
the lighting, the visual style, where things are relative to each other, and the camera's viewpoint.
3. Write in English. Keep any quoted text, names and titles exactly as given.
4. If no style is named, infer it from the picture (photograph, animation, 3D render, film still...).
5. Put weight on how things move and how the camera moves: pans, tilts, tracking, zooms, or a still camera.
6. Keep motion natural and describe it with plain verbs.
7. Mention concrete details that are visible in the picture so the video stays consistent with it.
8. Aim for about 80 to 100 words.
9. Answer in English only, whatever the language of the prompt.

Example. Prompt: "a dog on the beach". Rewritten: "A golden retriever with a wet, sandy coat trots \
along the edge of a wide beach at sunset, its ears bouncing with each step as small waves wash over its \
paws. The low orange sun lights the spray and throws a long shadow across the packed sand. Seagulls \
drift above the water in the background. The camera tracks alongside the dog at its eye level, moving \
smoothly from left to right, then slows as the dog stops to look out to sea. Realistic photographic \
style, warm colors, shallow depth of field."

Reply with the rewritten prompt only: no title, no quotes, no remarks."""

# Our wording of the critic's instruction with the tagged template the parser (engine/critic.py) reads.
CRITIC_SYSTEM_PROMPT = """\
You inspect generated videos for defects. Look for anything that a real camera filming the real world \
would not show: objects that appear, vanish or change shape without cause, impossible motion or \
physics, distorted bodies, faces or hands, flicker, warping textures, and other rendering artifacts.

Answer in exactly this form:
<think>
<overview>One or two sentences on what the video shows.</overview>
<component name="a part of the scene, such as a person, an object or the background">
<analysis>How this part looks and moves over the whole video, and whether anything about it is implausible.</analysis>
<anomaly>Yes or No</anomaly>
</component>
(repeat the component block for every part worth checking)
</think>
<answer>Yes or No</answer>

The final answer is Yes when the video contains any anomaly or artifact and No when it contains none."""


# ------------------------------------------------------------------------------------ visual input


@dataclass(frozen=True)
class VisionBudget:
    """Pixel limits for images and videos (the processor's and qwen-vl-utils' rules)."""

    image_min_pixels: int = 256 * FACTOR * FACTOR
    image_max_pixels: int = 1280 * FACTOR * FACTOR
    video_min_pixels: int = 128 * FACTOR * FACTOR
    video_max_pixels: int = 768 * FACTOR * FACTOR
    video_total_pixels: int = int(128000 * FACTOR * FACTOR * 0.9)
    video_fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768


REAL_BUDGET = VisionBudget()
TINY_BUDGET = VisionBudget(
    image_min_pixels=56 * 56, image_max_pixels=56 * 56, video_min_pixels=56 * 56, video_max_pixels=56 * 56,
    video_total_pixels=56 * 56 * 8,
)
CRITIC_FPS = 16.0
CRITIC_TOTAL_PIXELS = 8192 * FACTOR * FACTOR


def smart_resize(h: int, w: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """Nearest size with sides divisible by factor, area within [min, max], aspect kept."""
    if min(h, w) <= 0 or max(h, w) / min(h, w) > 200:
        raise InputError(f"input_path: a {w}x{h} picture is too thin to describe; use a more ordinary aspect ratio")
    nh, nw = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if nh * nw > max_pixels:
        s = math.sqrt(h * w / max_pixels)
        nh, nw = max(factor, math.floor(h / s / factor) * factor), max(factor, math.floor(w / s / factor) * factor)
    elif nh * nw < min_pixels:
        s = math.sqrt(min_pixels / (h * w))
        nh, nw = math.ceil(h * s / factor) * factor, math.ceil(w * s / factor) * factor
    return nh, nw


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))


def patchify(frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 [T,H,W,3] -> (pixel rows [gt*gh*gw, 3*2*14*14] float32, (gt, gh, gw)).

    Rows come in the order the Qwen2-VL processors emit: time, then 2x2 merge groups in raster order,
    then the four patches of a group; each row is channel, time, patch-row, patch-column.
    """
    x = frames.astype(np.float32) / 255.0
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    x = x.transpose(0, 3, 1, 2)  # T, C, H, W
    if x.shape[0] % TEMPORAL_PATCH:
        pad = TEMPORAL_PATCH - x.shape[0] % TEMPORAL_PATCH
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    t, c, h, w = x.shape
    gt, gh, gw = t // TEMPORAL_PATCH, h // PATCH, w // PATCH
    x = x.reshape(gt, TEMPORAL_PATCH, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = x.reshape(gt * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH)
    return torch.from_numpy(np.ascontiguousarray(rows)), (gt, gh, gw)


def image_input(path: str | os.PathLike, budget: VisionBudget) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        frame = np.asarray(im.convert("RGB"))
    h, w = smart_resize(*frame.shape[:2], budget.image_min_pixels, budget.image_max_pixels)
    rows, grid = patchify(_resize(frame, h, w)[None])
    return {"pixel_values": rows, "image_grid_thw": torch.tensor([grid])}


def sample_indices(total: int, video_fps: float, fps: float, budget: VisionBudget) -> list[int]:
    """Evenly spaced frame indices at `fps`, an even count within [min_frames, max_frames]."""
    if total <= TEMPORAL_PATCH:
        return list(range(total))
    want = total / (video_fps or fps) * fps
    lo = math.ceil(budget.min_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH
    hi = math.floor(min(budget.max_frames, total) / TEMPORAL_PATCH) * TEMPORAL_PATCH
    n = int(min(max(want, lo), hi) // TEMPORAL_PATCH * TEMPORAL_PATCH)
    n = max(TEMPORAL_PATCH, n)
    return [int(round(v)) for v in np.linspace(0, total - 1, n)]


def read_video(path: str | os.PathLike) -> tuple[list[np.ndarray], float]:
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(str(path), format="FFMPEG")
    except Exception as err:  # noqa: BLE001 - imageio raises several kinds for unreadable files
        raise InputError(f"input_path: cannot read video {str(path)!r} ({err}); give a readable .mp4") from None
    try:
        fps = float(reader.get_meta_data().get("fps") or 0.0)
        frames = [np.asarray(f) for f in reader]
    finally:
        reader.close()
    if not frames:
        raise InputError(f"input_path: video {str(path)!r} has no frames; give a non-empty .mp4")
    return frames, fps


def video_input(path: str | os.PathLike, budget: VisionBudget, fps: float | None = None,
                total_pixels: int | None = None) -> dict:
    frames, video_fps = read_video(path)
    fps = fps or budget.video_fps
    idx = sample_indices(len(frames), video_fps, fps, budget)
    picked = [frames[i] for i in idx]
    total = total_pixels or budget.video_total_pixels
    per_frame = max(min(budget.video_max_pixels, total / len(picked) * TEMPORAL_PATCH),
                    int(budget.video_min_pixels * 1.05))
    h, w = smart_resize(*picked[0].shape[:2], budget.video_min_pixels, int(per_frame))
    rows, grid = patchify(np.stack([_resize(f, h, w) for f in picked]))
    duration = len(frames) / video_fps if video_fps else len(picked) / fps
    sampled_fps = len(picked) / duration if duration else fps
    return {"pixel_values_videos": rows, "video_grid_thw": torch.tensor([grid]),
            "second_per_grid_ts": torch.tensor([TEMPORAL_PATCH / sampled_fps])}


# ------------------------------------------------------------------------------------ text helpers


class AsciiOnly:
    """Logits processor: only tokens whose text is pure ASCII (and special tokens) may be generated."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
        allowed = torch.zeros(max(vocab_size, n), dtype=torch.bool)
        allowed[:n] = torch.tensor([t.isascii() for t in texts])
        allowed[[i for i in tokenizer.all_special_ids if i is not None and i < len(allowed)]] = True
        self.allowed = allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = self.allowed[: scores.shape[-1]].to(scores.device)
        return scores.masked_fill(~mask, float("-inf"))


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def refinement_problem(text: str, min_words: int = 5) -> str | None:
    """Why a refined prompt can't be used (None when it can): empty, not English, or too few words."""
    t = text.strip()
    if not t:
        return "it is empty"
    letters = [c for c in t if c.isalpha()]
    ascii_letters = sum(1 for c in letters if c.isascii())
    if letters and ascii_letters < 0.9 * len(letters):
        return "it is not English"
    words = [w for w in _WORD.findall(t) if len(w) > 1 or w.lower() in ("a", "i")]
    if len(words) < min_words:
        return f"it has fewer than {min_words} words"
    nonspace = [c for c in t if not c.isspace()]
    if ascii_letters < 0.6 * len(nonspace):
        return "it is mostly symbols"
    return None


def _expand_placeholders(text: str, token: str, counts: Sequence[int]) -> str:
    parts = text.split(token)
    if len(parts) - 1 != len(counts):
        raise ValueError(f"chat template produced {len(parts) - 1} {token} placeholders for {len(counts)} inputs")
    out = [parts[0]]
    for n, rest in zip(counts, parts[1:]):
        out += [token * n, rest]
    return "".join(out)


# A ChatML-style template of our own, used by the tiny tokenizer and when a checkpoint ships none.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
TINY_WORDS = (
    "system user assistant a an the of and in on with at to is are it its this that video image frame "
    "camera pans tilts zooms tracks slowly quickly left right up down cat dog robot arm person car tree "
    "sky water light shadow walks runs moves turns picks places red green blue bright dark street room "
    "table box hand face overview component analysis anomaly yes no Yes No , . : ; ! ? ' \" - ( ) "
    "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c \u732b"
).split()


# ------------------------------------------------------------------------------------ the model


class ReasonModel:
    """Cosmos-Reason1 as refiner and critic; `offload=True` keeps it on CPU between calls."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device = "cpu", offload: bool = False,
                 budget: VisionBudget = REAL_BUDGET, emit: Callable | None = None, profile: str = "real",
                 refine_max_new_tokens: int = 512, critic_max_new_tokens: int = 4096):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device, self.offload, self.budget, self.emit, self.profile = str(device), offload, budget, emit, profile
        self.refine_max_new_tokens, self.critic_max_new_tokens = refine_max_new_tokens, critic_max_new_tokens
        if tokenizer.chat_template is None:
            tokenizer.chat_template = CHAT_TEMPLATE
        self._ascii: AsciiOnly | None = None
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.model.to("cpu" if offload else self.device)

    # -- construction

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cuda", offload: bool = False,
                        dtype: torch.dtype = torch.bfloat16, emit: Callable | None = None, **kwargs: Any) -> "ReasonModel":
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"Cosmos-Reason1 checkpoint not found at {path} (no config.json); download "
                "nvidia/Cosmos-Reason1-7B there, or turn the prompt refiner / critic off"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.chat_template is None:
            tokenizer.chat_template = _checkpoint_chat_template(path)
        # sdpa: the GPU box has no flash_attn. Loaded on CPU; __init__ moves it unless offloading.
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        return cls(model, tokenizer, device=device, offload=offload, emit=emit, **kwargs)

    @classmethod
    def tiny(cls, seed: int = 0, device: str = "cpu", emit: Callable | None = None, **kwargs: Any) -> "ReasonModel":
        tokenizer = tiny_tokenizer()
        model = tiny_model(tokenizer, seed)
        kwargs.setdefault("refine_max_new_tokens", 16)
        kwargs.setdefault("critic_max_new_tokens", 24)
        return cls(model, tokenizer, device=device, budget=TINY_BUDGET, emit=emit, profile="tiny", **kwargs)

    # -- placement

    def to_device(self) -> None:
        self.model.to(self.device)

    def to_cpu(self) -> None:
        self.model.to("cpu")
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # -- building inputs

    def build_inputs(self, messages: list[dict], visual: dict) -> dict:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        merge = MERGE * MERGE
        if "image_grid_thw" in visual:
            text = _expand_placeholders(text, self.image_token,
                                        [int(g.prod()) // merge for g in visual["image_grid_thw"]])
        if "video_grid_thw" in visual:
            text = _expand_placeholders(text, self.video_token,
                                        [int(g.prod()) // merge for g in visual["video_grid_thw"]])
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        types = torch.zeros_like(ids)
        types[ids == self.image_token_id] = 1
        types[ids == self.video_token_id] = 2
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types, **visual}

    def _visual(self, path: str | os.PathLike, fps: float | None = None, total_pixels: int | None = None) -> tuple[str, dict]:
        p = str(path)
        low = p.lower()
        if not os.path.isfile(p):
            raise InputError(f"input_path: {p!r} does not exist; give the path of an image or .mp4 video")
        if low.endswith(IMAGE_EXTENSIONS):
            return "image", image_input(p, self.budget)
        if low.endswith(VIDEO_EXTENSIONS):
            return "video", video_input(p, self.budget, fps=fps, total_pixels=total_pixels)
        raise InputError(f"input_path: {p!r} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor an .mp4 video")

    def _generate(self, inputs: dict, **gen: Any) -> list[str]:
        if self.offload:
            self.to_device()
        try:
            dev = self.device
            inputs = {k: v.to(dev) for k, v in inputs.items()}
            with torch.inference_mode():
                out = self.model.generate(**inputs, **gen)
            new = out[:, inputs["input_ids"].shape[1]:]
            return self.tokenizer.batch_decode(new, skip_special_tokens=True)
        finally:
            if self.offload:
                self.to_cpu()

    def _log(self, message: str, level: str = "info") -> None:
        from engine import events

        getattr(log, level, log.info)(message)
        events.log_to(self.emit, message, level)

    # -- the two jobs

    def ascii_only(self) -> AsciiOnly:
        if self._ascii is None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._ascii = AsciiOnly(self.tokenizer, vocab)
        return self._ascii

    def refine_prompt(self, prompt: str, input_path: str | os.PathLike, max_new_tokens: int | None = None,
                      seed: int | None = None, min_words: int = 5) -> str:
        """The refined prompt, or `prompt` itself (with a log line) when the refinement is unusable."""
        from transformers import LogitsProcessorList, set_seed

        kind, visual = self._visual(input_path)
        messages = [
            {"role": "system", "content": REFINER_SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "text", "text": prompt}, {"type": kind, kind: str(input_path)}]},
        ]
        inputs = self.build_inputs(messages, visual)
        if seed is not None:
            set_seed(seed)
        text = self._generate(inputs, max_new_tokens=max_new_tokens or self.refine_max_new_tokens,
                              logits_processor=LogitsProcessorList([self.ascii_only()]))[0].strip()
        problem = refinement_problem(text, min_words=min_words)
        if problem is not None:
            self._log(f"prompt refiner: output not used because {problem}; keeping the original prompt "
                      f"(output was {text[:80]!r})", "warning")
            return prompt
        return text

    def critique_video(self, video_path: str | os.PathLike, trials: int = 5, seed: int = 0,
                       max_new_tokens: int | None = None, fps: float = CRITIC_FPS,
                       total_pixels: int | None = None) -> list[str]:
        """`trials` sampled critic responses for one video (raw text, parse with engine.critic)."""
        from transformers import set_seed

        if not str(video_path).lower().endswith(VIDEO_EXTENSIONS):
            raise InputError(f"video: the critic reads .mp4 videos; {str(video_path)!r} is not one")
        # The critic budget is the real one scaled to this profile: 8192 tokens' worth of pixels normally.
        if total_pixels is None:
            total_pixels = CRITIC_TOTAL_PIXELS if self.profile == "real" else self.budget.video_total_pixels
        _, visual = self._visual(video_path, fps=fps, total_pixels=total_pixels)
        messages = [
            {"role": "system", "content": CRITIC_SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "video", "video": str(video_path)},
                                         {"type": "text", "text": CRITIC_QUESTION}]},
        ]
        inputs = self.build_inputs(messages, visual)
        set_seed(seed)
        return self._generate(
            inputs, do_sample=True, temperature=0.6, top_p=0.95, top_k=50, repetition_penalty=1.05,
            max_new_tokens=max_new_tokens or self.critic_max_new_tokens, num_return_sequences=trials,
        )


def _checkpoint_chat_template(path: Path) -> str:
    for name in ("chat_template.jinja", "chat_template.json"):
        f = path / name
        if f.is_file():
            text = f.read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return CHAT_TEMPLATE


def tiny_tokenizer() -> Any:
    """WordLevel tokenizer built in code: the words above, answer tags kept whole, Qwen's special tokens."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", *dict.fromkeys(TINY_WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tags = ["<think>", "</think>", "<overview>", "</overview>", '<component name="', '">', "</component>",
            "<analysis>", "</analysis>", "<anomaly>", "</anomaly>", "<answer>", "</answer>"]
    tok.add_tokens([AddedToken(t) for t in tags])
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(tokenizer: Any, seed: int = 0) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE,
            temporal_patch_size=TEMPORAL_PATCH, window_size=112, out_hidden_size=64, fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model.eval()


def tiny_reason_model(seed: int = 0, **kwargs: Any) -> ReasonModel:
    return ReasonModel.tiny(seed=seed, **kwargs)


def build_reason(spec, path: str | os.PathLike, device, offload: bool = False, emit: Callable | None = None) -> ReasonModel:
    """The refiner/critic for a job: the tiny random model for `--model_size tiny`, else the checkpoint."""
    if spec.model_size == "tiny":
        return ReasonModel.tiny(seed=0, device=str(device), emit=emit)
    return ReasonModel.from_checkpoint(path, device=str(device), offload=offload, emit=emit)
