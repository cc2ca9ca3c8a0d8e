"""The seed-compatible command line: flags, defaults, one-line errors with exit status 2, batch files,
and the hand-over to engine.modes.run_job (faked here: these tests check the CLI, not generation)."""

import io as stdio
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from engine import cli_args
from engine.io import DEMO_INPUT_PATH
from engine.progress import PlainRenderer, RichRenderer, describe, make_renderer
from engine.spec import DEFAULT_NEGATIVE_PROMPT, GenerationSpec, InputError

ROOT = Path(__file__).resolve().parents[1]

SEED_FLAGS = """--model_size --input_path --prompt --num_conditional_frames --save_path --batch_input_json
--guidance --seed --fps --resolution --aspect_ratio --negative_prompt --num_gpus --natten --use_cuda_graphs
--benchmark --disable_guardrail --disable_prompt_refiner --offload_guardrail --offload_prompt_refiner
--offload_text_encoder --downcast_text_encoder --dit_path --load_ema --num_chunks --num_generations
--num_critic_trials --skip_generation --num_steps --attention_backend --checkpoint_dir""".split()

# examples/video2world.py's defaults (spec Part 2 §10.2), plus lvg/best-of-N's and ours.
SEED_DEFAULTS = {
    "model_size": "2B", "resolution": "720", "fps": 16, "dit_path": "", "load_ema": False, "prompt": "",
    "input_path": "assets/video2world/input0.jpg", "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
    "aspect_ratio": "16:9", "num_conditional_frames": 1, "batch_input_json": None, "guidance": 7.0, "seed": 0,
    "save_path": "output/generated_video.mp4", "num_gpus": 1, "disable_guardrail": False,
    "offload_guardrail": False, "disable_prompt_refiner": False, "offload_prompt_refiner": False,
    "offload_text_encoder": False, "downcast_text_encoder": False, "benchmark": False,
    "use_cuda_graphs": False, "natten": False, "num_chunks": 6, "num_generations": 2, "num_critic_trials": 5,
    "compile_dit": True,  # ours, not a seed flag: compile on CUDA by default
    "skip_generation": False, "checkpoint_dir": "", "num_steps": 35, "attention_backend": "auto",
    "overwrite": False,  # ours: refuse to replace a file no job wrote
    "fast_threshold": 0.0,  # ours: the experimental step cache is off unless asked for
    "fp8_linears": False,  # ours: the experimental FP8 linears likewise
    # ours: where the queue runs the job (cosmos_tui/executors/slurm.py)
    "executor": "local", "slurm_partition": "", "slurm_account": "", "slurm_nodes": 1, "slurm_gpus_per_node": 1,
    "slurm_time_limit": "4:00:00",
}
MODULES = {"video2world": "engine.video2world", "lvg": "engine.video2world_lvg", "bestofn": "engine.video2world_bestofn"}


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(p)
    return p


@pytest.fixture
def fake_run_job(monkeypatch):
    """Replace engine.modes with a module whose run_job records specs and returns the save path."""
    calls = []

    def run_job(spec, emit, pipeline=None, cancel=None):
        calls.append(spec)
        emit({"event": "step", "job": None, "t": 0.0, "step": 1, "total": spec.num_steps, "seconds": 0.5})
        return [spec.save_path]

    fake = types.ModuleType("engine.modes")
    fake.run_job = run_job
    monkeypatch.setitem(sys.modules, "engine.modes", fake)
    return calls


# ---- flags and defaults ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODULES))
def test_help_lists_every_seed_flag(mode):
    text = cli_args.build_parser(mode).format_help()
    missing = [f for f in SEED_FLAGS if f not in text]
    assert missing == []
    assert "examples:" in text


def test_help_subprocess_for_each_entry_point():
    for mode, module in MODULES.items():
        out = _cli(module, "--help")
        assert out.returncode == 0, out.stderr
        assert all(f in out.stdout for f in SEED_FLAGS), mode
        assert f"python -m {module}" in out.stdout


def test_groups_cover_every_spec_field_once():
    listed = [name for _, names in cli_args.GROUPS for name in names]
    assert sorted(listed) == sorted(set(GenerationSpec.model_fields) - {"mode"})
    assert set(cli_args.HELP) == set(listed)


@pytest.mark.parametrize("mode", list(MODULES))
def test_defaults_equal_the_seeds(mode):
    spec = cli_args.parse_spec(mode, [])
    expected = dict(SEED_DEFAULTS, mode=mode)
    if mode == "bestofn":
        expected["save_path"] = "output/best-of-n"
    assert spec.model_dump() == expected


def test_flags_reach_the_spec():
    spec = cli_args.parse_spec("lvg", ["--model_size", "tiny", "--fps", "16", "--num_chunks", "3", "--guidance", "4.5",
                                       "--num_conditional_frames", "5", "--natten", "--disable_guardrail",
                                       "--aspect_ratio", "9:16", "--num_steps", "4"])
    assert (spec.mode, spec.model_size, spec.num_chunks, spec.guidance) == ("lvg", "tiny", 3, 4.5)
    assert (spec.num_conditional_frames, spec.natten, spec.disable_guardrail) == (5, True, True)
    assert (spec.aspect_ratio, spec.num_steps, spec.fps) == ("9:16", 4, 16)


# ---- one-line errors, exit status 2 --------------------------------------------------------------


def _one_line_error(out, field):
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1, out.stderr
    assert field in lines[0], lines[0]
    return lines[0]


def test_missing_input_file_exits_2(tmp_path):
    out = _cli("engine.video2world", "--input_path", str(tmp_path / "nope.png"), "--prompt", "x")
    assert "does not exist" in _one_line_error(out, "input_path")


def test_image_with_five_frames_exits_2(image):
    out = _cli("engine.video2world", "--input_path", str(image), "--num_conditional_frames", "5")
    _one_line_error(out, "num_conditional_frames")


def test_unknown_extension_exits_2(tmp_path):
    f = tmp_path / "in.gif"
    f.write_bytes(b"GIF89a")
    out = _cli("engine.video2world_lvg", "--input_path", str(f))
    assert "neither an image" in _one_line_error(out, "input_path")


@pytest.mark.parametrize("args,field", [
    (["--aspect_ratio", "2:1"], "aspect_ratio"),
    (["--fps", "12"], "fps"),
    (["--model_size", "7B"], "model_size"),
    (["--guidance", "500"], "guidance"),
    (["--num_steps", "0"], "num_steps"),
    (["--seed", "abc"], "seed"),
    (["--promt", "typo"], "--promt"),
])
def test_bad_values_exit_2_naming_the_field(args, field, capsys):
    with pytest.raises(SystemExit) as e:
        code = cli_args.main("video2world", args)
        raise SystemExit(code)
    assert e.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], lines


def test_bad_combination_subprocess():
    out = _cli("engine.video2world_lvg", "--fps", "10")
    _one_line_error(out, "fps")


# ---- running -----------------------------------------------------------------------------------


def test_single_job_goes_to_run_job(image, fake_run_job, capsys):
    code = cli_args.main("video2world", ["--input_path", str(image), "--prompt", "a cat", "--seed", "7"])
    assert code == 0
    assert len(fake_run_job) == 1
    spec = fake_run_job[0]
    assert (spec.mode, spec.prompt, spec.seed, spec.input_path) == ("video2world", "a cat", 7, str(image))
    captured = capsys.readouterr()
    assert captured.out.strip() == "output/generated_video.mp4"  # stdout carries the result paths only
    assert "step 1/35" in captured.err  # plain progress on a non-terminal stderr


def test_missing_pipeline_is_one_line_exit_1(image, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "engine.modes", types.ModuleType("engine.modes"))
    code = cli_args.main("video2world", ["--input_path", str(image), "--prompt", "a kite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "the pipeline is not available in this build" in err[0]


def test_run_job_input_error_exits_2_and_crash_exits_1(image, monkeypatch, capsys):
    fake = types.ModuleType("engine.modes")
    monkeypatch.setitem(sys.modules, "engine.modes", fake)

    def input_error(spec, emit, **_):
        raise InputError("input_path: the video is too short; give a longer one")

    fake.run_job = input_error
    assert cli_args.main("video2world", ["--input_path", str(image), "--prompt", "a kite"]) == 2
    assert "input_path: the video is too short" in capsys.readouterr().err

    def crash(spec, emit, **_):
        raise RuntimeError("CUDA fell over")

    fake.run_job = crash
    assert cli_args.main("video2world", ["--input_path", str(image), "--prompt", "a kite"]) == 1
    assert "CUDA fell over" in capsys.readouterr().err


def test_demo_input_is_drawn_for_the_tiny_preset(tmp_path, monkeypatch, fake_run_job):
    monkeypatch.chdir(tmp_path)
    code = cli_args.main("video2world", ["--model_size", "tiny", "--input_path", DEMO_INPUT_PATH, "--prompt", "x"])
    assert code == 0 and (tmp_path / DEMO_INPUT_PATH).is_file()


def test_skip_generation_needs_no_input(fake_run_job, tmp_path):
    code = cli_args.main("bestofn", ["--skip_generation", "--save_path", str(tmp_path), "--input_path", "nope.png"])
    assert code == 0 and fake_run_job[0].skip_generation


# ---- batch files -------------------------------------------------------------------------------


def test_batch_with_bad_entries_still_runs_the_others(tmp_path, image, fake_run_job, capsys):
    batch = tmp_path / "jobs.json"
    batch.write_text(json.dumps([
        {"input_video": str(image), "prompt": "first", "output_video": str(tmp_path / "a.mp4")},
        {"input_video": str(image)},
        {"input_video": str(tmp_path / "gone.mp4"), "prompt": "third"},
        {"input_video": str(image), "prompt": "fourth"},
    ]))
    code = cli_args.main("video2world", ["--batch_input_json", str(batch), "--seed", "3"])
    assert code == 2
    assert [s.prompt for s in fake_run_job] == ["first", "fourth"]
    assert [s.save_path for s in fake_run_job] == [str(tmp_path / "a.mp4"), "output_3.mp4"]
    assert all(s.seed == 3 and s.batch_input_json is None for s in fake_run_job)
    err = capsys.readouterr().err
    assert "entry 1: prompt: missing" in err
    assert "entry 2: input_video:" in err and "gone.mp4" in err
    assert "entry 0" not in err and "entry 3" not in err


def test_good_batch_exits_0(tmp_path, image, fake_run_job):
    batch = tmp_path / "jobs.json"
    batch.write_text(json.dumps([{"input_video": str(image), "prompt": "p"}]))
    assert cli_args.main("lvg", ["--batch_input_json", str(batch)]) == 0
    assert fake_run_job[0].mode == "lvg" and fake_run_job[0].save_path == "output_0.mp4"


@pytest.mark.parametrize("content,needle", [
    ('{"input_video": "a.png", "prompt": "p"}', "not a list"),
    ("[{", "not valid JSON"),
    (None, "does not exist"),
    (b'[{"input_video": "a.png", "prompt": "caf\xe9"}]', "is not UTF-8 text (byte 0xe9 at offset 40)"),
])
def test_bad_batch_file_is_one_line_exit_2(tmp_path, content, needle):
    batch = tmp_path / "jobs.json"
    if isinstance(content, bytes):
        batch.write_bytes(content)
    elif content is not None:
        batch.write_text(content)
    out = _cli("engine.video2world", "--batch_input_json", str(batch))
    assert needle in _one_line_error(out, "batch_input_json")


# ---- progress rendering ------------------------------------------------------------------------


def test_plain_renderer_writes_one_line_per_event():
    buf = stdio.StringIO()
    r = make_renderer(buf)
    assert isinstance(r, PlainRenderer)
    r({"event": "started", "mode": "lvg", "spec": {"model_size": "2B", "resolution": "720", "fps": 16}})
    r({"event": "step", "step": 2, "total": 35, "seconds": 1.25, "chunk": 3})
    r({"event": "memory", "peak": 3 * 1024**3, "reserved": 4 * 1024**3, "device": "cuda:0"})
    r({"event": "failed", "error": "out of memory", "reason": "oom"})
    assert buf.getvalue().splitlines() == [
        "started lvg (2B, 720p, 16 fps)",
        "step 2/35  1.25 s/step  chunk 3",
        "memory on cuda:0: peak 3.0 GiB, reserved 4.0 GiB",
        "failed (oom): out of memory",
    ]


def test_describe_critic_and_generation():
    assert describe({"event": "generation", "generation": 1, "total": 4, "seed": 5, "path": "o.mp4"}) == \
        "generation 1/4 done (seed 5) -> o.mp4"
    assert describe({"event": "critic", "video": "o.mp4", "trial": 2, "total": 5, "score": 1.0}) == \
        "critic o.mp4 trial 2/5: score 1.00"


def test_rich_renderer_tracks_bars():
    buf = stdio.StringIO()
    r = make_renderer(buf, tty=True)
    assert isinstance(r, RichRenderer)
    with r:
        r({"event": "step", "step": 3, "total": 4, "seconds": 0.5})
        r({"event": "memory", "peak": 2 * 1024**3})
        r({"event": "generation", "generation": 1, "total": 2})
        r({"event": "log", "level": "warning", "message": "hello there"})
    steps = r.progress.tasks[r.tasks["steps"]]
    assert (steps.completed, steps.total) == (3, 4)
    assert "generations" in r.tasks and "peak 2.0 GiB" in steps.fields["info"]
    assert "hello there" in buf.getvalue()


def test_batch_entry_overrides_spec_fields_and_ignores_unknown_keys(tmp_path, image, fake_run_job, capsys):
    # issue #18: the reference ignores keys it does not know; ours rejected the entry
    batch = tmp_path / "jobs.json"
    batch.write_text(json.dumps([
        {"input_video": str(image), "prompt": "a", "seed": 9, "guidance": 3.5, "negative_prompt": "blur",
         "colour": "red", "output_video": str(tmp_path / "a")},
        {"input_video": str(image), "prompt": "b"},
        {"input_video": str(image), "prompt": "c", "seed": "nine"},
        {"input_video": str(image), "prompt": "d", "num_gpus": 2},
    ]))
    code = cli_args.main("video2world", ["--batch_input_json", str(batch), "--seed", "3"])
    assert code == 2  # entries 2 and 3 are mistakes
    a, b = fake_run_job
    assert (a.seed, a.guidance, a.negative_prompt, a.save_path) == (9, 3.5, "blur", str(tmp_path / "a.mp4"))
    assert (b.seed, b.guidance) == (3, 7.0)  # an entry's override does not leak into the next
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "entry 0: colour: unknown key, ignored" in warnings[0]
    assert "entry 2: seed:" in err and "entry 3: num_gpus:" in err


def test_batch_help_says_entries_may_override_fields():
    text = " ".join(cli_args.build_parser("video2world").format_help().split())
    assert "unknown keys are ignored" in text and "seed, guidance" in text


def test_a_cli_run_leaves_its_process_group_before_the_interpreter_exits(monkeypatch, tmp_path):
    """A torchrun rank that exits with gloo's group still up can SIGABRT in teardown after the job
    finished (CI saw rank 1 die that way), so entry_point leaves the group on every way out: here a
    usage error. A real one-member gloo group stands in for torchrun's."""
    import torch.distributed as dist

    from engine import parallel

    monkeypatch.setattr(sys, "argv", ["video2world", "--num_steps", "0"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli_args.entry_point("video2world")
        assert exit_.value.code == 2
        assert not dist.is_initialized()
        assert parallel.state() is None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
