"""RetinaFace (ResNet-50 backbone): the face detector of Cosmos-Guardrail1's face pixelation.

The guardrail's `face_blur_filter/Resnet50_Final.pth` is the checkpoint released with the
biubug6/Pytorch_Retinaface code. The module tree here reproduces that network's parameter names so the
file loads strictly after the `module.` prefix (it was saved from DataParallel) is cut:

  body.*          torchvision's ResNet-50 up to layer4 (conv1, bn1, layer1..layer4; no fc), the outputs
                  of layer2/3/4 (strides 8/16/32) feed the pyramid
  fpn.output1..3  1x1 conv + BN per level to `out_channels`; fpn.merge1/2: 3x3 conv + BN after the
                  top-down nearest-neighbour additions
  ssh1..3         the SSH context module per level (3x3 branch + 5x5 and 7x7 made of stacked 3x3s)
  ClassHead.{i}, BboxHead.{i}, LandmarkHead.{i}   1x1 convs, 2 anchors per location

Each conv + BN pair is an `nn.Sequential` (keys `.0.weight`, `.1.running_mean`, ...), as in the
reference. Activations are leaky ReLUs with slope 0.1 when out_channels <= 64 and plain ReLUs (slope 0)
otherwise, the reference's rule, so the tiny profile exercises the leaky path of the same code.

Detection follows the reference's test script as NVIDIA's filter uses it: BGR input minus the means
(104, 117, 123), no resizing, priors for the frame size, box decoding with variances (0.1, 0.2), scores
strictly above 0.7, the 5000 best, greedy NMS at IoU 0.4 (with the +1 pixel convention of the
reference's CPU NMS), then at most 750 boxes. Boxes are in pixels of the input frame, unclipped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class RetinaFaceConfig:
    # backbone: a torchvision-style ResNet with bottleneck blocks
    stem_width: int = 64
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    expansion: int = 4
    # pyramid / context / heads
    out_channels: int = 256
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)
    clip_priors: bool = False
    # input normalisation (BGR order, 0..255 scale)
    mean_bgr: tuple[float, float, float] = (104.0, 117.0, 123.0)
    # post-processing (NVIDIA's values, from the reference's test script)
    confidence_threshold: float = 0.7
    nms_threshold: float = 0.4
    top_k: int = 5000
    keep_top_k: int = 750

    def __post_init__(self):
        if len(self.blocks) != 4:
            raise ValueError(f"RetinaFaceConfig.blocks needs 4 stages (layer1..layer4), got {self.blocks}")
        if self.out_channels % 4:
            raise ValueError(f"RetinaFaceConfig.out_channels must be a multiple of 4 (SSH splits it), got {self.out_channels}")
        if len(self.min_sizes) != 3 or len(self.steps) != 3:
            raise ValueError("RetinaFaceConfig: min_sizes and steps need one entry per pyramid level (3)")
        if len({len(m) for m in self.min_sizes}) != 1:
            raise ValueError("RetinaFaceConfig: every level needs the same number of anchors")

    @property
    def leaky(self) -> float:
        return 0.1 if self.out_channels <= 64 else 0.0

    @property
    def anchors_per_location(self) -> int:
        return len(self.min_sizes[0])

    @property
    def pyramid_in_channels(self) -> tuple[int, int, int]:
        """Channels of layer2, layer3, layer4 (512, 1024, 2048 for ResNet-50)."""
        return tuple(self.stem_width * 2**i * self.expansion for i in (1, 2, 3))


RESNET50 = RetinaFaceConfig()
# Same code at toy widths (one block per stage, 8 pyramid channels): ~39k parameters, for tests.
TINY = RetinaFaceConfig(stem_width=4, blocks=(1, 1, 1, 1), out_channels=8)


def retinaface_config(profile: str = "resnet50") -> RetinaFaceConfig:
    """"resnet50": the released Resnet50_Final.pth (~27.3M params). "tiny": toy widths for tests."""
    if profile == "resnet50":
        return RESNET50
    if profile == "tiny":
        return TINY
    raise ValueError(f"RetinaFace profile {profile!r}: use 'resnet50' or 'tiny'")


# ----------------------------------------------------------------------------- network


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, slope: float | None = None) -> nn.Sequential:
    # slope None: no activation (the reference's "no_relu" variants)
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if slope is not None:
        layers.append(nn.LeakyReLU(slope, inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 conv)."""

    def __init__(self, cin: int, width: int, stride: int, expansion: int):
        super().__init__()
        cout = width * expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetBody(nn.Module):
    """ResNet stem + layer1..layer4; returns the layer2, layer3 and layer4 feature maps."""

    def __init__(self, cfg: RetinaFaceConfig):
        super().__init__()
        w = cfg.stem_width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        cin = w
        for i, n in enumerate(cfg.blocks):
            width = w * 2**i
            stage = []
            for b in range(n):
                stage.append(Bottleneck(cin, width, 2 if (b == 0 and i > 0) else 1, cfg.expansion))
                cin = width * cfg.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out: int, slope: float):
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out, 1, slope=slope)
        self.output2 = _conv_bn(in_channels[1], out, 1, slope=slope)
        self.output3 = _conv_bn(in_channels[2], out, 1, slope=slope)
        self.merge1 = _conv_bn(out, out, 3, slope=slope)
        self.merge2 = _conv_bn(out, out, 3, slope=slope)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p1, p2, p3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Context module: a 3x3 branch (half the channels) and 5x5 / 7x7 receptive fields (a quarter each)."""

    def __init__(self, cin: int, out: int, slope: float):
        super().__init__()
        self.conv3X3 = _conv_bn(cin, out // 2, 3)
        self.conv5X5_1 = _conv_bn(cin, out // 4, 3, slope=slope)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, 3)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, 3, slope=slope)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, 3)  # lower-case x: the checkpoint's spelling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], dim=1))


class _Head(nn.Module):
    """1x1 conv giving `per_anchor` numbers for each anchor; output [B, H*W*anchors, per_anchor]."""

    def __init__(self, cin: int, anchors: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last before flattening: location-major, then anchor, the order of the priors
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    def __init__(self, cfg: RetinaFaceConfig = RESNET50):
        super().__init__()
        self.cfg = cfg
        out, slope, a = cfg.out_channels, cfg.leaky, cfg.anchors_per_location
        self.body = ResNetBody(cfg)
        self.fpn = FPN(cfg.pyramid_in_channels, out, slope)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out, slope), SSH(out, out, slope), SSH(out, out, slope)
        self.ClassHead = nn.ModuleList(_Head(out, a, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out, a, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out, a, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B,3,H,W] BGR minus the means. Returns box offsets [B,N,4], face probabilities [B,N,2]
        (softmax over background/face) and landmark offsets [B,N,10], N = prior_count(H, W)."""
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1), landm


def build_retinaface(cfg: RetinaFaceConfig = RESNET50, seed: int | None = None) -> RetinaFace:
    """The network in eval mode; with `seed`, its random initialisation is reproducible."""
    if seed is None:
        return RetinaFace(cfg).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RetinaFace(cfg).eval()


# ----------------------------------------------------------------------------- priors, decoding, NMS


def feature_sizes(cfg: RetinaFaceConfig, height: int, width: int) -> list[tuple[int, int]]:
    # A stride-2 conv/pool with "same" padding maps n to ceil(n/2), so level s sees ceil(n/s).
    return [(math.ceil(height / s), math.ceil(width / s)) for s in cfg.steps]


def prior_count(cfg: RetinaFaceConfig, height: int, width: int) -> int:
    return sum(fh * fw for fh, fw in feature_sizes(cfg, height, width)) * cfg.anchors_per_location


def prior_boxes(cfg: RetinaFaceConfig, height: int, width: int) -> torch.Tensor:
    """[N, 4] anchors (cx, cy, w, h) as fractions of the frame, level by level, row-major over each
    level's grid, anchor sizes innermost: the order of the heads' outputs. Computed in float64 and
    rounded once to float32, which is what the reference's Python-float loop does."""
    out = []
    for (fh, fw), step, sizes in zip(feature_sizes(cfg, height, width), cfg.steps, cfg.min_sizes):
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * step / width
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        a = len(sizes)
        sw = torch.tensor([s / width for s in sizes], dtype=torch.float64)
        sh = torch.tensor([s / height for s in sizes], dtype=torch.float64)
        level = torch.stack([
            gx[..., None].expand(fh, fw, a), gy[..., None].expand(fh, fw, a),
            sw.expand(fh, fw, a), sh.expand(fh, fw, a),
        ], dim=-1)
        out.append(level.reshape(-1, 4))
    priors = torch.cat(out).to(torch.float32)
    return priors.clamp_(0, 1) if cfg.clip_priors else priors


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Offsets [..., N, 4] against priors [N, 4] -> corner boxes (x1, y1, x2, y2) in frame fractions."""
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    x1y1 = centre - size / 2
    return torch.cat([x1y1, x1y1 + size], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    Box areas use the reference's inclusive-pixel convention, (x2 - x1 + 1) * (y2 - y1 + 1); a box is
    dropped when its IoU with a kept, better box is above `threshold`. Ties keep the earlier index."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + 1).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + 1).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return torch.stack(keep)


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, cfg: RetinaFaceConfig) -> torch.Tensor:
    """[K, 5] (x1, y1, x2, y2, score), best first: scores above the threshold, the top_k best, NMS,
    then at most keep_top_k."""
    mask = scores > cfg.confidence_threshold
    boxes, scores = boxes[mask], scores[mask]
    order = torch.sort(scores, descending=True, stable=True).indices[: cfg.top_k]
    boxes, scores = boxes[order], scores[order]
    keep = nms(boxes, scores, cfg.nms_threshold)[: cfg.keep_top_k]
    return torch.cat([boxes[keep], scores[keep, None]], dim=1)


# ----------------------------------------------------------------------------- checkpoint


def load_retinaface_state(model: RetinaFace, state: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Load a released state dict: unwraps {"state_dict": ...}, cuts the DataParallel `module.` prefix,
    and requires every parameter and buffer (except BatchNorm's unused batch counters) to be there with
    the right shape. Raises ValueError naming what does not fit."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (want {tuple(v.shape)})" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            problems.append(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    if problems:
        raise ValueError(f"{source} is not a RetinaFace of this configuration: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def load_retinaface(path: str | os.PathLike, cfg: RetinaFaceConfig = RESNET50) -> RetinaFace:
    model = RetinaFace(cfg)
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    load_retinaface_state(model, state, source=str(path))
    return model.eval()


# ----------------------------------------------------------------------------- detector


class RetinaFaceDetector:
    """Frames (uint8 RGB [T,H,W,3]) -> face boxes per frame, the way NVIDIA's face blur filter runs it:
    float32, `batch` frames per forward pass (NVIDIA uses 1), priors built once per frame size.

    The model loads on first use. With `offload`, it sits on the CPU between videos and moves to
    `device` for each one."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, cfg: RetinaFaceConfig = RESNET50,
                 device: str | torch.device = "cpu", offload: bool = False, batch: int = 1,
                 model: RetinaFace | None = None):
        if checkpoint is None and model is None:
            raise ValueError("RetinaFaceDetector needs a checkpoint path or a model")
        self.checkpoint, self.cfg, self.batch = checkpoint, cfg, max(1, int(batch))
        self.device, self.offload = torch.device(device), offload
        self.model = model
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    def load(self) -> RetinaFace:
        if self.model is None:
            self.model = load_retinaface(self.checkpoint, self.cfg)
            self.model.to("cpu" if self.offload else self.device)
        return self.model

    def _priors_for(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._priors:
            self._priors[(h, w)] = prior_boxes(self.cfg, h, w).to(self.device)
        return self._priors[(h, w)]

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device, torch.float32)
        x = x.permute(0, 3, 1, 2)[:, [2, 1, 0]]  # RGB -> BGR, the order the network was trained on
        return x - torch.tensor(self.cfg.mean_bgr, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)

    def detect_frames(self, frames: np.ndarray) -> list[np.ndarray]:
        """Per frame, an array [K, 5] of (x1, y1, x2, y2, score) in pixels, best first."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"RetinaFace wants frames [T,H,W,3], got {frames.shape}")
        model = self.load()  # outside inference mode: the parameters stay ordinary tensors
        with torch.inference_mode():
            return self._detect(model, frames)

    def _detect(self, model: RetinaFace, frames: np.ndarray) -> list[np.ndarray]:
        if self.offload:
            model.to(self.device)
        try:
            t, h, w = frames.shape[:3]
            priors = self._priors_for(h, w)
            scale = torch.tensor([w, h, w, h], device=self.device, dtype=torch.float32)
            out: list[np.ndarray] = []
            for i in range(0, t, self.batch):
                loc, conf, _ = model(self.preprocess(frames[i:i + self.batch]))
                boxes = decode_boxes(loc, priors, self.cfg.variances) * scale
                # selection and NMS on the CPU, like the reference: the greedy loop is many tiny steps
                boxes, scores = boxes.float().cpu(), conf[..., 1].float().cpu()
                for b in range(boxes.shape[0]):
                    out.append(select_detections(boxes[b], scores[b], self.cfg).numpy())
            return out
        finally:
            if self.offload:
                model.to("cpu")

    def __call__(self, frame: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        return [tuple(float(v) for v in d) for d in self.detect_frames(np.asarray(frame)[None])[0]]
