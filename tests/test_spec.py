import pytest

from engine.spec import GenerationSpec, SpecError, spec_from_dict


def test_defaults_are_the_seeds():
    s = GenerationSpec()
    assert (s.model_size, s.resolution, s.fps, s.aspect_ratio) == ("2B", "720", 16, "16:9")
    assert (s.guidance, s.seed, s.num_conditional_frames, s.num_steps) == (7.0, 0, 1, 35)
    assert s.save_path == "output/generated_video.mp4"
    assert s.num_chunks == 6 and s.num_generations == 2 and s.num_critic_trials == 5


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(SpecError) as e:
        spec_from_dict({"promt": "x"}, source="my.toml")
    assert "my.toml: promt: unknown key" in str(e.value)


def test_unknown_aspect_ratio_names_field_and_choices():
    with pytest.raises(SpecError) as e:
        spec_from_dict({"aspect_ratio": "2:1"})
    msg = str(e.value)
    assert msg.startswith("aspect_ratio:") and "16:9" in msg


def test_image_with_five_conditional_frames(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    s = GenerationSpec(input_path=str(img), num_conditional_frames=5)
    with pytest.raises(ValueError, match="num_conditional_frames"):
        s.check_input()


def test_missing_input(tmp_path):
    s = GenerationSpec(input_path=str(tmp_path / "nope.mp4"))
    with pytest.raises(ValueError, match="input_path: .* does not exist"):
        s.check_input()
