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
