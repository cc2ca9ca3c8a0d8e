import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.models import retinaface as rf
from tests.tolerance import assert_rounding_close

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def released_keys() -> list[str]:
    """The key set of Resnet50_Final.pth (after its `module.` prefix), written from the reference's
    module tree: RetinaFace(body=IntermediateLayerGetter(torchvision resnet50, layer2..layer4), fpn,
    ssh1..3, ClassHead/BboxHead/LandmarkHead ModuleLists of 3 with 2 anchors). The getter keeps every
    child up to layer4 (conv1, bn1, layer1..layer4) and drops avgpool/fc. The checkpoint was saved by
    PyTorch >= 1.1, so BatchNorms carry num_batches_tracked (a model of the same code loads the sibling
    mobilenet0.25_Final.pth with no missing keys, which it could not without them)."""
    keys = ["body.conv1.weight"] + [f"body.bn1.{p}" for p in BN]
    for layer, blocks in zip((1, 2, 3, 4), (3, 4, 6, 3)):
        for b in range(blocks):
            pre = f"body.layer{layer}.{b}"
            for c in (1, 2, 3):
                keys += [f"{pre}.conv{c}.weight"] + [f"{pre}.bn{c}.{p}" for p in BN]
            if b == 0:  # every stage's first block changes width (layer1: 64 -> 256) or stride
                keys += [f"{pre}.downsample.0.weight"] + [f"{pre}.downsample.1.{p}" for p in BN]

    def conv_bn(pre):
        return [f"{pre}.0.weight"] + [f"{pre}.1.{p}" for p in BN]

    for m in ("output1", "output2", "output3", "merge1", "merge2"):
        keys += conv_bn(f"fpn.{m}")
    for s in (1, 2, 3):
        for m in ("conv3X3", "conv5X5_1", "conv5X5_2", "conv7X7_2", "conv7x7_3"):
            keys += conv_bn(f"ssh{s}.{m}")
    for head in ("ClassHead", "BboxHead", "LandmarkHead"):
        for i in range(3):
            keys += [f"{head}.{i}.conv1x1.weight", f"{head}.{i}.conv1x1.bias"]
    return keys


@pytest.fixture(scope="module")
def full_model():
    return rf.build_retinaface(rf.RESNET50, seed=0)


def test_full_model_has_the_released_checkpoint_names_and_shapes(full_model):
    sd = full_model.state_dict()
    expected = released_keys()
    assert len(expected) == len(set(expected)) == 456
    assert set(sd) == set(expected)
    # 27,293,600 = torchvision's resnet50 (25,557,032) - its fc (2048*1000 + 1000) + FPN 2,099,712
    # + 3 SSH of 553,728 + heads 3 * (256*(4+8+20) + 32)
    assert sum(p.numel() for p in full_model.parameters()) == 27_293_600
    shapes = {
        "body.conv1.weight": (64, 3, 7, 7),
        "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "body.layer2.0.conv2.weight": (128, 128, 3, 3),
        "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "fpn.output1.0.weight": (256, 512, 1, 1),
        "fpn.output3.0.weight": (256, 2048, 1, 1),
        "fpn.merge1.0.weight": (256, 256, 3, 3),
        "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
        "ssh2.conv5X5_1.0.weight": (64, 256, 3, 3),
        "ssh3.conv7x7_3.0.weight": (64, 64, 3, 3),
        "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
        "BboxHead.1.conv1x1.weight": (8, 256, 1, 1),
        "LandmarkHead.2.conv1x1.bias": (20,),
    }
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes


def test_full_model_forward_gives_one_row_per_prior(full_model):
    with torch.inference_mode():
        loc, conf, landm = full_model(torch.randn(1, 3, 72, 40))
    n = rf.prior_count(rf.RESNET50, 72, 40)
    assert loc.shape == (1, n, 4) and conf.shape == (1, n, 2) and landm.shape == (1, n, 10)


def test_prior_count_for_image_sizes():
    # levels of strides 8/16/32, ceil-sized grids, 2 anchors per location
    assert rf.prior_count(rf.RESNET50, 704, 1280) == 2 * (88 * 160 + 44 * 80 + 22 * 40) == 36960
    assert rf.prior_count(rf.RESNET50, 100, 50) == 2 * (13 * 7 + 7 * 4 + 4 * 2) == 254
    assert rf.prior_boxes(rf.RESNET50, 100, 50).shape == (254, 4)


def reference_priors(cfg, h, w):
    """The reference's loop, transcribed: per level, rows, columns, anchor sizes; Python floats."""
    rows = []
    for step, sizes in zip(cfg.steps, cfg.min_sizes):
        for i in range(math.ceil(h / step)):
            for j in range(math.ceil(w / step)):
                for s in sizes:
                    rows.append([(j + 0.5) * step / w, (i + 0.5) * step / h, s / w, s / h])
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("hw", [(64, 64), (100, 50), (37, 129)])
def test_priors_equal_the_reference_loop(hw):
    # same float64 arithmetic rounded once to float32: exact
    assert torch.equal(rf.prior_boxes(rf.RESNET50, *hw), reference_priors(rf.RESNET50, *hw))


def test_decode_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    priors = rf.prior_boxes(rf.RESNET50, 40, 56)
    loc = torch.randn(2, priors.shape[0], 4, generator=g)
    got = rf.decode_boxes(loc, priors, (0.1, 0.2))
    want = torch.empty(got.shape, dtype=torch.float64)
    for b in range(2):
        for n, (cx, cy, pw, ph) in enumerate(priors.double().tolist()):
            dx, dy, dw, dh = loc[b, n].double().tolist()
            x, y = cx + dx * 0.1 * pw, cy + dy * 0.1 * ph
            bw, bh = pw * math.exp(dw * 0.2), ph * math.exp(dh * 0.2)
            want[b, n] = torch.tensor([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], dtype=torch.float64)
    # float32 against float64, no accumulation (k = 1): a chain of 7 roundings (2 mul, add, mul, exp,
    # half, sub/add), each within u of the running magnitude, which is at most max|box|.
    assert_rounding_close(got, want, k=1, depth=7)


def brute_force_nms(boxes, scores, thr):
    """Keep a box iff no better-scored kept box overlaps it by IoU > thr (inclusive-pixel areas)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        ok = True
        for k in kept:
            a, b = boxes[i], boxes[k]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
            inter = iw * ih
            area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
            if inter / (area(a) + area(b) - inter) > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def random_boxes(n, seed):
    # integer corners: areas and intersections are exact in float32, and an IoU p/q (q < 2e4) that is
    # not exactly 0.4 is at least 1e-5 away from it, far beyond float32 rounding, so both sides agree
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 60, (n, 2))
    wh = rng.integers(1, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.permutation(n).astype(np.float32) / n  # distinct scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_brute_force(seed):
    boxes, scores = random_boxes(120, seed)
    keep = rf.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).tolist()
    assert keep == brute_force_nms(boxes.tolist(), scores.tolist(), 0.4)
    assert 0 < len(keep) < 120


def test_nms_of_nothing_and_of_ties():
    assert rf.nms(torch.zeros(0, 4), torch.zeros(0), 0.4).tolist() == []
    same = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert rf.nms(same, torch.ones(3), 0.4).tolist() == [0]  # ties keep the earliest


def test_select_detections_matches_brute_force():
    boxes, scores = random_boxes(200, 3)
    cfg = dataclasses.replace(rf.TINY, confidence_threshold=0.3, top_k=90, keep_top_k=7)
    got = rf.select_detections(torch.from_numpy(boxes), torch.from_numpy(scores), cfg)
    above = [i for i in range(200) if scores[i] > 0.3]
    top = sorted(above, key=lambda i: -scores[i])[:90]
    kept = [top[k] for k in brute_force_nms(boxes[top].tolist(), scores[top].tolist(), 0.4)][:7]
    want = np.concatenate([boxes[kept], scores[kept, None]], 1)
    assert len(kept) == 7 and np.array_equal(got.numpy(), want)
    # the threshold is strict, like the reference's `scores > threshold`
    edge = rf.select_detections(torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([0.7]), rf.RESNET50)
    assert edge.shape == (0, 5)


def functional_forward(sd, cfg, x):
    """The reference network as plain functions over its state dict (from models/retinaface.py and
    net.py): an independent wiring of the same maths, to check the modules' order and connections."""
    def bn(p, y):
        return F.batch_norm(y, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], False, 0.0, 1e-5)

    def cbn(p, y, pad, act=None):
        y = bn(f"{p}.1", F.conv2d(y, sd[f"{p}.0.weight"], padding=pad))
        return F.leaky_relu(y, act) if act is not None else y

    def bottleneck(p, y, stride):
        z = F.relu(bn(f"{p}.bn1", F.conv2d(y, sd[f"{p}.conv1.weight"])))
        z = F.relu(bn(f"{p}.bn2", F.conv2d(z, sd[f"{p}.conv2.weight"], stride=stride, padding=1)))
        z = bn(f"{p}.bn3", F.conv2d(z, sd[f"{p}.conv3.weight"]))
        if f"{p}.downsample.0.weight" in sd:
            y = bn(f"{p}.downsample.1", F.conv2d(y, sd[f"{p}.downsample.0.weight"], stride=stride))
        return F.relu(z + y)

    y = F.relu(bn("body.bn1", F.conv2d(x, sd["body.conv1.weight"], stride=2, padding=3)))
    y = F.max_pool2d(y, 3, 2, 1)
    feats = []
    for layer, n in enumerate(cfg.blocks, start=1):
        for b in range(n):
            y = bottleneck(f"body.layer{layer}.{b}", y, 2 if (b == 0 and layer > 1) else 1)
        if layer > 1:
            feats.append(y)
    a = cfg.leaky
    o1, o2, o3 = (cbn(f"fpn.output{i + 1}", f, 0, a) for i, f in enumerate(feats))
    o2 = cbn("fpn.merge2", o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"), 1, a)
    o1 = cbn("fpn.merge1", o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"), 1, a)
    outs = []
    for s, f in zip((1, 2, 3), (o1, o2, o3)):
        c3 = cbn(f"ssh{s}.conv3X3", f, 1)
        c5_1 = cbn(f"ssh{s}.conv5X5_1", f, 1, a)
        c5 = cbn(f"ssh{s}.conv5X5_2", c5_1, 1)
        c7 = cbn(f"ssh{s}.conv7x7_3", cbn(f"ssh{s}.conv7X7_2", c5_1, 1, a), 1)
        outs.append(F.relu(torch.cat([c3, c5, c7], 1)))

    def head(name, per):
        parts = []
        for i, f in enumerate(outs):
            z = F.conv2d(f, sd[f"{name}.{i}.conv1x1.weight"], sd[f"{name}.{i}.conv1x1.bias"])
            parts.append(z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, per))
        return torch.cat(parts, 1)

    return head("BboxHead", 4), F.softmax(head("ClassHead", 2), -1), head("LandmarkHead", 10)


def randomise_bn_statistics(model, seed):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_tiny_network_matches_a_functional_wiring_of_the_reference():
    model = rf.build_retinaface(rf.TINY, seed=1)
    randomise_bn_statistics(model, 2)
    assert rf.TINY.leaky == 0.1  # the tiny widths take the leaky-ReLU path of the same code
    x = torch.randn(2, 3, 45, 70, generator=torch.Generator().manual_seed(3)) * 50
    with torch.inference_mode():
        got = model(x)
        want = functional_forward(model.state_dict(), rf.TINY, x)
    for g, w in zip(got, want):
        # the same conv / batch-norm kernels on the same inputs in the same order: exact
        assert torch.equal(g, w)
    assert got[0].shape[1] == rf.prior_count(rf.TINY, 45, 70)


def test_checkpoint_with_module_prefix_loads(tmp_path):
    src = rf.build_retinaface(rf.TINY, seed=4)
    randomise_bn_statistics(src, 5)
    # DataParallel-style names, wrapped in {"state_dict": ...}, and without the BatchNorm counters
    state = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": state}, path)
    dst = rf.load_retinaface(path, rf.TINY)
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(dst.state_dict()[k], v), k
    assert not dst.training


def test_checkpoint_that_does_not_fit_is_refused_by_name(tmp_path):
    model = rf.build_retinaface(rf.TINY, seed=0)
    state = dict(model.state_dict())
    state["module.extra.weight"] = torch.zeros(1)
    del state["ssh2.conv7x7_3.0.weight"]
    with pytest.raises(ValueError) as err:
        rf.load_retinaface_state(rf.build_retinaface(rf.TINY), state, source="x.pth")
    msg = str(err.value)
    assert "x.pth" in msg and "ssh2.conv7x7_3.0.weight" in msg and "extra.weight" in msg
    # a ResNet-50 checkpoint offered to the tiny network: every shape is named as wrong
    big = {k: v for k, v in rf.build_retinaface(rf.RESNET50).state_dict().items()}
    with pytest.raises(ValueError, match="wrong shape"):
        rf.load_retinaface_state(rf.build_retinaface(rf.TINY), big)
    (tmp_path / "list.pth").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        rf.load_retinaface(tmp_path / "list.pth", rf.TINY)


def test_detector_preprocesses_bgr_minus_means_and_scales_boxes_to_pixels():
    model = rf.build_retinaface(rf.TINY, seed=6)
    det = rf.RetinaFaceDetector(model=model, cfg=rf.TINY)
    frame = np.random.default_rng(7).integers(0, 256, (1, 33, 48, 3), dtype=np.uint8)
    x = det.preprocess(frame)
    assert torch.equal(x[0, 0], torch.from_numpy(frame[0, :, :, 2]).float() - 104)
    assert torch.equal(x[0, 2], torch.from_numpy(frame[0, :, :, 0]).float() - 123)
    # a permissive threshold so random weights give detections; compare with the steps done by hand
    det.cfg = dataclasses.replace(rf.TINY, confidence_threshold=0.0, keep_top_k=20)
    got = det.detect_frames(frame)[0]
    with torch.inference_mode():
        loc, conf, _ = model(x)
    boxes = rf.decode_boxes(loc[0], rf.prior_boxes(rf.TINY, 33, 48), (0.1, 0.2)) * torch.tensor([48, 33, 48, 33])
    assert np.array_equal(got, rf.select_detections(boxes, conf[0, :, 1], det.cfg).numpy())
    assert got.shape == (20, 5)
    assert det(frame[0]) == [tuple(float(v) for v in row) for row in got]


def test_profiles():
    assert rf.retinaface_config("resnet50") is rf.RESNET50 and rf.retinaface_config("tiny") is rf.TINY
    assert rf.RESNET50.leaky == 0.0 and rf.RESNET50.pyramid_in_channels == (512, 1024, 2048)
    with pytest.raises(ValueError):
        rf.retinaface_config("mobilenet")
    with pytest.raises(ValueError, match="multiple of 4"):
        rf.RetinaFaceConfig(out_channels=10)
