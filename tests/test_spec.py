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
    assert "my.toml: promt: unknown key; did you mean prompt?" in str(e.value)
    with pytest.raises(SpecError) as e:
        spec_from_dict({"zzzz": 1})
    assert "zzzz: unknown key; known keys are: aspect_ratio," in str(e.value)  # no guess when nothing is close


def test_a_wrong_type_says_what_was_given_and_what_to_write():
    with pytest.raises(SpecError) as e:
        spec_from_dict({"fp8_linears": "maybe"})
    assert str(e.value) == "fp8_linears: 'maybe' is not a yes/no value; write true or false"
    with pytest.raises(SpecError) as e:
        spec_from_dict({"num_steps": "35x"})
    assert str(e.value).startswith("num_steps: '35x': input should be a valid integer")
    # the user's text is shown escaped and cut, never as raw bytes (an escape sequence would reach the terminal)
    with pytest.raises(SpecError) as e:
        spec_from_dict({"seed": "\x1b[2J" + "9" * 100})
    msg = str(e.value)
    assert "\x1b" not in msg and r"'\x1b[2J99" in msg  # the ESC byte shown as the four characters \x1b
    assert msg.endswith("...: input should be a valid integer, unable to parse string as an integer")


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


# Every GenerationSpec field is either fixed when the pipeline is built (BuildConfig) or the job's own;
# a new field must be put on one side here, on purpose.
JOB_FIELDS = {"mode", "prompt", "input_path", "negative_prompt", "aspect_ratio", "num_conditional_frames",
              "batch_input_json", "guidance", "seed", "num_steps", "save_path", "disable_guardrail",
              "disable_prompt_refiner", "benchmark", "num_chunks", "num_generations", "num_critic_trials",
              "skip_generation", "overwrite", "fast_threshold",
              # where the queue runs the job: the engine it starts builds the same pipeline anywhere
              "executor", "slurm_partition", "slurm_account", "slurm_nodes", "slurm_gpus_per_node",
              "slurm_time_limit"}


def test_build_config_lists_every_build_time_field_and_only_those():
    from engine.spec import BUILD_FIELDS, BuildConfig, GenerationSpec, build_key

    assert set(BUILD_FIELDS) | JOB_FIELDS == set(GenerationSpec.model_fields)
    assert not set(BUILD_FIELDS) & JOB_FIELDS
    base = GenerationSpec(model_size="tiny")
    job = dict(prompt="other", seed=9, guidance=2.0, num_steps=3, aspect_ratio="1:1", save_path="x.mp4",
               negative_prompt="n", disable_guardrail=True)
    assert build_key(base) == build_key(base.model_copy(update=job))
    for name, value in [("fps", 10), ("natten", True), ("offload_text_encoder", True), ("dit_path", "d.pt"),
                        ("downcast_text_encoder", True), ("attention_backend", "math"), ("num_gpus", 2)]:
        assert build_key(base) != build_key(base.model_copy(update={name: value})), name
    assert BuildConfig.from_spec({"model_size": "tiny", "prompt": "p"}) == BuildConfig.from_spec(base)
    assert build_key(BuildConfig.from_spec(base)) == build_key(base)


def test_paths_from_home_are_expanded_as_a_shell_would(monkeypatch, tmp_path):
    # a preset's "~/clips/a.mp4" is not expanded by any shell; the engine must not write into "./~/clips"
    monkeypatch.setenv("HOME", str(tmp_path))
    s = spec_from_dict({"save_path": "~/clips/a", "input_path": "~/in.png", "dit_path": "~/dit.pt",
                        "checkpoint_dir": "~", "batch_input_json": "~/b.json"})
    assert s.save_path == f"{tmp_path}/clips/a.mp4" and s.input_path == f"{tmp_path}/in.png"
    assert (s.dit_path, s.checkpoint_dir, s.batch_input_json) == (f"{tmp_path}/dit.pt", str(tmp_path), f"{tmp_path}/b.json")
    assert spec_from_dict({"save_path": "a~b/x.mp4"}).save_path == "a~b/x.mp4"  # only a leading ~ is home
