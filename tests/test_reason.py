import numpy as np
import pytest
import torch

from engine import critic
from engine.models import reason
from engine.spec import InputError
from tests.tolerance import assert_rounding_close


@pytest.fixture(scope="module")
def rm():
    return reason.ReasonModel.tiny(seed=0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    import imageio.v2 as imageio
    from PIL import Image

    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    video = d / "clip.mp4"
    imageio.mimwrite(video, list(frames), fps=16, codec="libx264", macro_block_size=16)
    image = d / "first.png"
    Image.fromarray(frames[0]).save(image)
    return {"video": video, "image": image}


def test_patchify_matches_the_qwen2vl_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    img = np.random.default_rng(1).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    ours, grid = reason.patchify(img[None])
    ref = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 84)(images=[img], return_tensors="np")
    assert list(ref["image_grid_thw"][0]) == list(grid)
    # three elementwise steps (rescale, subtract mean, divide by std), values within |2.2|: a few ulp apart,
    # whichever of float32/float64 each side computes in
    assert_rounding_close(ours, torch.from_numpy(ref["pixel_values"]), k=1, depth=3)


def test_critic_video_budget_matches_the_documented_token_count():
    # 93 frames at 16 fps, 1280x704: 92 frames of 252x476, about 7k visual tokens.
    idx = reason.sample_indices(93, 16.0, reason.CRITIC_FPS, reason.REAL_BUDGET)
    assert len(idx) == 92 and idx[0] == 0 and idx[-1] == 92
    per_frame = max(min(reason.REAL_BUDGET.video_max_pixels, reason.CRITIC_TOTAL_PIXELS / 92 * 2),
                    int(reason.REAL_BUDGET.video_min_pixels * 1.05))
    h, w = reason.smart_resize(704, 1280, reason.REAL_BUDGET.video_min_pixels, int(per_frame))
    assert (h, w) == (252, 476)
    assert 92 // 2 * (h // 28) * (w // 28) == 7038


def test_ascii_only_processor_masks_non_ascii_tokens(rm):
    proc = rm.ascii_only()
    tok = rm.tokenizer
    bad = [tok.convert_tokens_to_ids(t) for t in ("caf\u00e9", "\u65e5\u672c", "\u732b")]
    good = [tok.convert_tokens_to_ids(t) for t in ("camera", "<answer>", "<|im_end|>")]
    scores = torch.zeros(2, rm.model.get_output_embeddings().weight.shape[0])
    scores[:, bad] = 10.0
    out = proc(torch.zeros(2, 1, dtype=torch.long), scores)
    assert torch.isinf(out[:, bad]).all() and (out[:, bad] < 0).all()
    assert (out[:, good] == 0).all()
    assert out.argmax(-1).tolist()[0] not in bad


def test_tiny_refiner_returns_ascii_text(rm, media, monkeypatch):
    monkeypatch.setattr(reason, "refinement_problem", lambda text, min_words=5: None)
    for path in (media["image"], media["video"]):
        out = rm.refine_prompt("a cat walks", path, max_new_tokens=12, seed=3)
        assert isinstance(out, str)
        assert out.isascii()


@pytest.mark.parametrize("bad", [
    "", "   ", "\u732b\u304c\u6b69\u3044\u3066\u3044\u308b\u3001\u30ab\u30e1\u30e9\u304c\u52d5\u304f cat",
    "cat dog", "<answer> , . ; ! ? ' - ( ) : : , , ,", "@@ ## $$ %% ^^ && ** a b c d e",
])
def test_unusable_refinement_falls_back_with_a_log_line(bad, media):
    events = []
    rm = reason.ReasonModel.tiny(seed=0, emit=events.append)
    rm._generate = lambda inputs, **gen: [bad]
    assert rm.refine_prompt("a cat walks", media["image"]) == "a cat walks"
    logs = [e for e in events if e["event"] == "log"]
    assert logs and "keeping the original prompt" in logs[0]["message"]


def test_usable_refinement_is_returned(media):
    events = []
    rm = reason.ReasonModel.tiny(seed=0, emit=events.append)
    good = "A grey cat walks slowly across a sunny room while the camera pans left to follow it."
    rm._generate = lambda inputs, **gen: ["  " + good + "\n"]
    assert rm.refine_prompt("a cat", media["video"]) == good
    assert not events


def test_tiny_critic_returns_n_trials_reproducibly(rm, media):
    a = rm.critique_video(media["video"], trials=3, seed=7, max_new_tokens=10)
    b = rm.critique_video(media["video"], trials=3, seed=7, max_new_tokens=10)
    c = rm.critique_video(media["video"], trials=3, seed=8, max_new_tokens=10)
    assert len(a) == 3 and all(isinstance(t, str) for t in a)
    assert a == b
    assert a != c
    trials = [critic.parse_trial(t) for t in a]
    assert 0.0 <= critic.score(trials) <= 1.0


def test_inputs_mark_visual_tokens(rm, media):
    _, visual = rm._visual(media["video"], fps=16.0)
    msgs = [{"role": "user", "content": [{"type": "video", "video": "x"}, {"type": "text", "text": "a cat"}]}]
    inp = rm.build_inputs(msgs, visual)
    n_tokens = int(visual["video_grid_thw"][0].prod()) // 4
    assert int((inp["mm_token_type_ids"] == 2).sum()) == n_tokens
    assert int((inp["input_ids"] == rm.video_token_id).sum()) == n_tokens
    # 9 frames at 16 fps -> 8 sampled -> 4 temporal groups of one 2x2 merge group each
    assert visual["video_grid_thw"].tolist() == [[4, 4, 4]]


def test_bad_inputs_are_one_sentence_errors(rm, tmp_path):
    with pytest.raises(InputError, match="input_path"):
        rm.refine_prompt("a cat", tmp_path / "missing.png")
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    with pytest.raises(InputError, match="neither an image"):
        rm.refine_prompt("a cat", txt)
    with pytest.raises(FileNotFoundError, match="Cosmos-Reason1"):
        reason.ReasonModel.from_checkpoint(tmp_path / "nope", device="cpu")


def test_fallback_chat_template_renders_chatml():
    tok = reason.tiny_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "system", "content": "be brief"},
         {"role": "user", "content": [{"type": "text", "text": "a cat"}, {"type": "video", "video": "x.mp4"}]}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\na cat<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
