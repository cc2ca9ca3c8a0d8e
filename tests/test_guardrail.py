import numpy as np
import pytest

from engine import guardrail
from engine.guardrail import Blocklist, Guardrail, pixelate


@pytest.fixture
def runner(tmp_path):
    # Empty checkpoint root and config dir: only the built-in list, no models.
    return Guardrail(tmp_path / "checkpoints", config_dir=tmp_path / "config", device="cpu")


def test_empty_prompt_is_blocked(runner):
    for p in ("", "   ", "\u4e2d\u6587"):  # non-ASCII only becomes empty
        v = runner.check_text(p)
        assert not v.ok and v.check_name == "Blocklist"
        assert "Blocklist" in v.message and "empty" in v.message


def test_exact_whole_word_match_not_substring():
    bl = Blocklist(["gore"])
    assert not bl.check("A scene full of GORE at night").ok
    assert not bl.check("gore.").ok
    assert bl.check("A gorge with a river, Al Gores statue").ok  # "gore" inside other words
    assert bl.check("a quiet forest").ok


def test_multi_word_entries_match_across_spacing_and_non_ascii():
    bl = Blocklist(["snuff film"])
    assert not bl.check("an old snuff   film reel").ok
    assert not bl.check("an old snuff\u00a0film").ok  # non-breaking space becomes a space


def test_fuzzy_match_of_long_entries():
    typo = "the decapitaton scene"  # one letter missing from a 12-letter entry
    # The reference tolerance (0.4) is stricter than any one-letter edit: only exact text matches.
    assert Blocklist(["decapitation"]).check(typo).ok
    assert not Blocklist(["decapitation"], tolerance=1.0).check(typo).ok
    assert not Blocklist(["decapitation"], tolerance=1.0).check("a decapitatoin").ok
    # Short entries never match fuzzily, however tolerant.
    assert Blocklist(["gore"], tolerance=1.0).check("a gory tale").ok
    assert Blocklist(["decapitation"], tolerance=1.0).check("a capital nation").ok


def test_whitelist_cuts_phrases_before_matching():
    bl = Blocklist(["shoot", "gore"], whitelist=["photo shoot", "gore"])
    assert bl.check("a photo shoot in a studio").ok
    assert not bl.check("they shoot at the crowd").ok
    assert bl.check("gore").ok  # an entry on both lists is allowed


def test_user_word_lists_extend_the_builtin_list(tmp_path):
    cfg = tmp_path / "config"
    (cfg / "guardrail" / "blocklist").mkdir(parents=True)
    (cfg / "guardrail" / "blocklist" / "mine.txt").write_text("# my words\nzorblax\n\nFrobnicate Widget\n")
    (cfg / "guardrail" / "whitelist").mkdir(parents=True)
    (cfg / "guardrail" / "whitelist" / "ok.txt").write_text("zorblax city\n")
    ck = tmp_path / "checkpoints" / "nvidia" / "Cosmos-Guardrail1" / "blocklist" / "exact_match"
    ck.mkdir(parents=True)
    (ck / "list").write_text("quuxword\n")
    g = Guardrail(tmp_path / "checkpoints", config_dir=cfg, device="cpu")
    assert not g.check_text("a zorblax in the sky").ok
    assert not g.check_text("frobnicate  widget now").ok
    assert not g.check_text("QUUXWORD").ok
    assert g.check_text("welcome to zorblax city").ok
    assert not g.check_text("bestiality").ok  # built-in entries stay
    bare = Guardrail(tmp_path / "none", config_dir=tmp_path / "nocfg", device="cpu")
    assert bare.check_text("a zorblax in the sky").ok


def test_block_message_names_the_check_and_logs(tmp_path):
    events = []
    g = Guardrail(tmp_path, config_dir=tmp_path, device="cpu", emit=events.append)
    v = g.check_text("a bestiality clip")
    assert not v.ok and v.check_name == "Blocklist"
    assert v.message.startswith("Refused by the guardrail's Blocklist check")
    assert any(e["event"] == "log" and "GUARDRAIL BLOCKED: Blocklist" in e["message"] for e in events)


def test_disabled_runner_passes_everything(tmp_path):
    g = Guardrail(tmp_path, disabled=True)
    assert g.check_text("").ok
    assert g.check_text("bestiality").ok
    frames = np.full((2, 8, 8, 3), 7, np.uint8)
    v, out = g.check_video(frames)
    assert v.ok and out is frames
    assert g.report()["disabled"] is True and g.report()["ran"] == []


def test_report_lists_unavailable_checks(runner):
    runner.check_text("a cat on a sofa")
    rep = runner.report()
    assert "LlamaGuard3" in rep["unavailable"]
    assert "VideoSafetyClassifier" in rep["unavailable"]
    assert "no checkpoint" in rep["checks"]["LlamaGuard3"]["detail"]
    assert rep["ran"] == ["Blocklist"]
    assert "Blocklist" not in rep["unavailable"]


def test_pixelate_changes_only_the_box():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    before = img.copy()
    pixelate(img, (10, 5, 30, 25))
    inside = np.zeros(img.shape[:2], bool)
    inside[5:25, 10:30] = True
    assert np.array_equal(img[~inside], before[~inside])
    assert not np.array_equal(img[inside], before[inside])
    # Nearest upscaling of a 5x5 grid: at most 25 distinct colours in the box.
    assert len({tuple(p) for p in img[5:25, 10:30].reshape(-1, 3)}) <= 25


def test_face_filter_pixelates_detected_boxes_and_skips_tiny_ones(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    boxes = [(4, 4, 34, 34), (40, 40, 50, 46)]  # the second is under 20x20: left alone
    g = Guardrail(tmp_path, config_dir=tmp_path, device="cpu", face_detector=lambda f: boxes)
    v, out = g.check_video(frames)
    assert v.ok
    assert out.shape == frames.shape and out.dtype == np.uint8
    changed = np.any(out != frames, axis=-1).any(axis=0)
    assert changed[4:34, 4:34].any()
    changed[4:34, 4:34] = False
    assert not changed.any()
    assert g.report()["checks"]["FacePixelation"]["faces"] == 3


def test_haar_detector_runs_on_plain_frames_when_cv2_present():
    pytest.importorskip("cv2")
    detect = guardrail.haar_face_detector()
    assert detect is not None
    assert detect(np.zeros((64, 64, 3), np.uint8)) == []


def test_llama_guard_output_parse():
    assert guardrail.parse_llama_guard("\n\nsafe") == (True, [])
    safe, cats = guardrail.parse_llama_guard("unsafe\nS1,S10")
    assert not safe and cats == ["violent crimes", "hate"]


def test_safety_head_loads_any_prefix():
    torch = pytest.importorskip("torch")
    src = guardrail.build_safety_head()
    state = {f"network.{k}": v for k, v in src.state_dict().items()}
    dst = guardrail.build_safety_head()
    guardrail.load_safety_head(dst, state)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError):
        guardrail.load_safety_head(dst, {"net.0.weight": torch.zeros(3, 3)})


def test_model_checks_that_error_let_through_but_warn(tmp_path):
    # Present-but-broken checkpoints: the checks are wired in, fail on load, pass with a warning.
    (tmp_path / "meta-llama" / "Llama-Guard-3-8B").mkdir(parents=True)
    vf = tmp_path / "nvidia" / "Cosmos-Guardrail1" / "video_content_safety_filter"
    vf.mkdir(parents=True)
    (vf / "safety_filter.pt").write_bytes(b"not a checkpoint")
    events = []
    g = Guardrail(tmp_path, config_dir=tmp_path, device="cpu", emit=events.append)
    assert g.report()["unavailable"] == [] or "FacePixelation" in g.report()["unavailable"]
    assert g.check_text("a cat on a sofa").ok
    v, _ = g.check_video(np.zeros((2, 16, 16, 3), np.uint8))
    assert v.ok
    warnings = [e["message"] for e in events if e["event"] == "log" and e["level"] == "warning"]
    assert any("LlamaGuard3 errored" in m for m in warnings)
    assert any("VideoSafetyClassifier could not load" in m for m in warnings)
    assert set(g.report()["ran"]) >= {"Blocklist", "LlamaGuard3", "VideoSafetyClassifier"}


def test_full_guardrail_refuses_without_its_checkpoints(tmp_path):
    # issue #18: missing Llama Guard 3 / video safety filter used to be skipped with no log line
    from engine.guardrail import GuardrailUnavailable
    from engine.spec import InputError

    g = Guardrail(tmp_path / "checkpoints", config_dir=tmp_path / "config", device="cpu")
    assert g.missing() == ["LlamaGuard3", "VideoSafetyClassifier"]
    with pytest.raises(GuardrailUnavailable) as err:
        g.require()
    msg = str(err.value)
    assert isinstance(err.value, InputError) and "\n" not in msg
    assert "Llama Guard 3" in msg and "video safety filter" in msg and "--disable_guardrail" in msg
    (tmp_path / "checkpoints" / "meta-llama" / "Llama-Guard-3-8B").mkdir(parents=True)
    g = Guardrail(tmp_path / "checkpoints", config_dir=tmp_path / "config", device="cpu")
    with pytest.raises(GuardrailUnavailable, match="the video safety filter checkpoint .* is missing") as err:
        g.require()
    assert "Llama Guard" not in str(err.value)


def test_tiny_guardrail_is_the_blocklist_alone_and_says_so(tmp_path):
    g = Guardrail(tmp_path / "checkpoints", config_dir=tmp_path / "config", device="cpu", profile="tiny")
    g.require()  # nothing required
    assert [c.name for c in g.text_checks] == ["Blocklist"] and g.video_checks == [] and g.face is None
    assert g.check_text("a robot arm").ok
    verdict, _ = g.check_video(np.zeros((2, 16, 16, 3), np.uint8))
    assert verdict.ok and g.take_ran() == ["Blocklist"] and g.take_ran() == []
    rep = g.report()
    assert rep["profile"] == "tiny" and "tiny profile" in rep["checks"]["LlamaGuard3"]["detail"]


# ----------------------------------------------------------------------------- face pixelation with RetinaFace


def cv2_pixelated(region):
    """NVIDIA's pixelation, spelled out: 5x5 by linear interpolation, back up by nearest."""
    cv2 = pytest.importorskip("cv2")
    h, w = region.shape[:2]
    small = cv2.resize(region, (5, 5), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def test_pixelation_changes_exactly_the_detected_boxes(tmp_path):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 60, 90, 3), dtype=np.uint8)
    # float boxes as RetinaFace gives them, with scores: truncated like NVIDIA's int() (-5.7 -> -5,
    # 19.9 -> 19), sizes tested before clipping, then clipped to the frame
    boxes = {
        0: [(10.9, 5.2, 40.99, 30.0, 0.99), (-5.7, 38.5, 21.0, 70.0, 0.9)],
        1: [(60.2, 10.0, 80.1, 29.9, 0.95), (50.0, 40.0, 69.9, 59.0, 0.8)],  # 19 high / 19 wide: skipped
    }

    class Stub:
        calls = 0

        def detect_frames(self, fr):
            Stub.calls += 1
            assert np.array_equal(fr, frames)  # the detector sees the untouched video
            return [np.array(boxes[t], np.float32) for t in range(len(fr))]

    g = Guardrail(tmp_path, config_dir=tmp_path, device="cpu", face_detector=Stub())
    verdict, out = g.check_video(frames)
    assert verdict.ok and Stub.calls == 1
    want = frames.copy()
    for t, (y0, y1, x0, x1) in ((0, (5, 30, 10, 40)), (0, (38, 60, 0, 21))):
        want[t, y0:y1, x0:x1] = cv2_pixelated(want[t, y0:y1, x0:x1])
    assert np.array_equal(out, want)  # the boxes' pixels, and nothing else
    assert not np.array_equal(out[0, 5:30, 10:40], frames[0, 5:30, 10:40])
    assert np.array_equal(out[1], frames[1])
    assert g.report()["checks"]["FacePixelation"]["faces"] == 2


def save_tiny_retinaface(root, seed=0):
    """A tiny RetinaFace at the released checkpoint's path, saved with DataParallel's `module.` names.

    Its heads are set so that exactly the 32-pixel anchors of the stride-8 level fire (face logit +30,
    all others -30) with zero box offsets: the boxes are those anchors. A freshly initialised network
    (a loader that ignored the file) detects something else."""
    torch = pytest.importorskip("torch")
    from engine.models import retinaface as rf

    model = rf.build_retinaface(rf.TINY, seed=seed)
    with torch.no_grad():
        for i in range(3):
            cls, box = model.ClassHead[i].conv1x1, model.BboxHead[i].conv1x1
            cls.weight.zero_(), box.weight.zero_(), box.bias.zero_()
            cls.bias.copy_(torch.tensor([30.0, -30.0, 30.0, -30.0]))  # (background, face) per anchor
        model.ClassHead[0].conv1x1.bias.copy_(torch.tensor([30.0, -30.0, -30.0, 30.0]))
    path = root / "nvidia" / "Cosmos-Guardrail1" / "face_blur_filter" / "Resnet50_Final.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def expected_anchor_pixelation(frames):
    """What the saved tiny checkpoint must do, computed without the detector: 32x32 boxes centred on
    the stride-8 grid (exact in binary for 64x128 frames), greedy NMS at 0.4 over equal scores (ties in
    prior order), each kept box pixelated in that order."""
    t, h, w = frames.shape[:3]
    boxes = [((j + 0.5) * 8 - 16, (i + 0.5) * 8 - 16, (j + 0.5) * 8 + 16, (i + 0.5) * 8 + 16)
             for i in range(h // 8) for j in range(w // 8)]

    def iou(a, b):
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        return iw * ih / (2 * 33 * 33 - iw * ih)

    kept = []
    for b in boxes:
        if all(iou(b, k) <= 0.4 for k in kept):
            kept.append(b)
    out = frames.copy()
    for f in range(t):
        for x0, y0, x1, y1 in kept:
            x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
            sl = np.s_[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
            out[f][sl] = cv2_pixelated(out[f][sl])
    return out, len(kept)


def test_retinaface_checkpoint_drives_face_pixelation_end_to_end(tmp_path):
    pytest.importorskip("cv2")
    from engine.models import retinaface as rf

    path = save_tiny_retinaface(tmp_path)
    frames = np.random.default_rng(3).integers(0, 256, (2, 64, 128, 3), dtype=np.uint8)
    events = []
    g = Guardrail(tmp_path, config_dir=tmp_path, device="cpu", face_config=rf.TINY, emit=events.append)
    assert g.face.detector_name == "RetinaFace"
    assert str(path) in g.report()["checks"]["FacePixelation"]["detail"]
    verdict, out = g.check_video(frames)
    want, kept = expected_anchor_pixelation(frames)
    assert verdict.ok and kept > 1
    assert np.array_equal(out, want)
    assert g.take_ran() == ["FacePixelation (RetinaFace)"]
    assert g.report()["checks"]["FacePixelation"]["faces"] == 2 * kept
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert "guardrail: pixelating faces (RetinaFace) in 2 frames" in logs
    assert any(m.startswith(f"guardrail: {2 * kept} face boxes pixelated by RetinaFace (") for m in logs)
    # a network that did not load the file finds other boxes (or none)
    fresh = rf.RetinaFaceDetector(model=rf.build_retinaface(rf.TINY, seed=0), cfg=rf.TINY)
    assert len(fresh.detect_frames(frames)[0]) != kept


def test_without_the_retinaface_checkpoint_the_cascade_runs_and_the_record_says_so(tmp_path):
    pytest.importorskip("cv2")
    g = Guardrail(tmp_path, config_dir=tmp_path, device="cpu")
    detail = g.report()["checks"]["FacePixelation"]["detail"]
    assert "opencv-haar" in detail and "no RetinaFace checkpoint" in detail and "Resnet50_Final.pth" in detail
    g.check_video(np.zeros((1, 32, 32, 3), np.uint8))
    assert g.take_ran() == ["FacePixelation (opencv-haar)"]


def test_broken_retinaface_checkpoint_warns_and_falls_back(tmp_path):
    pytest.importorskip("cv2")
    path = tmp_path / "nvidia" / "Cosmos-Guardrail1" / "face_blur_filter" / "Resnet50_Final.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    events = []
    g = Guardrail(tmp_path, config_dir=tmp_path, device="cpu", emit=events.append)
    verdict, _ = g.check_video(np.zeros((1, 32, 32, 3), np.uint8))
    assert verdict.ok
    warnings = [e["message"] for e in events if e["event"] == "log" and e["level"] == "warning"]
    assert any("RetinaFace failed" in m and "opencv-haar instead" in m for m in warnings)
    assert g.take_ran() == ["FacePixelation (opencv-haar)"]
    assert "RetinaFace failed" in g.report()["checks"]["FacePixelation"]["detail"]
