"""cosmos_tui/presets.py: shipped presets validate, bad files are named, user presets shadow shipped ones."""

import os
from pathlib import Path

import pytest

from cosmos_tui import presets
from engine.spec import GenerationSpec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "presets").glob("*.toml"))
EXPECTED = {"2b-720p16", "2b-480p10", "14b-720p16-offload", "lvg-6chunks", "bestofn-4x5", "2b-natten", "2b-natten-fast", "tiny-cpu"}


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    cfg = tmp_path / "config"
    monkeypatch.setenv("COSMOS_TUI_CONFIG", str(cfg))
    monkeypatch.delenv("COSMOS_TUI_PRESETS_DIR", raising=False)
    return cfg


def test_the_promised_presets_ship():
    assert EXPECTED <= set(SHIPPED)
    assert presets.shipped_preset_dir().resolve() == (ROOT / "presets").resolve()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_validates(name):
    p = presets.load_preset(name)
    assert p.source == "shipped" and p.error is None
    assert isinstance(p.spec, GenerationSpec) and p.description


def test_shipped_presets_say_what_their_names_say():
    tiny = presets.load_preset("tiny-cpu").spec
    assert (tiny.model_size, tiny.num_steps, tiny.disable_guardrail, tiny.disable_prompt_refiner) == ("tiny", 4, True, True)
    assert tiny.input_path == "assets/demo_input.png"
    lvg = presets.load_preset("lvg-6chunks").spec
    assert (lvg.mode, lvg.num_chunks) == ("lvg", 6)
    best = presets.load_preset("bestofn-4x5").spec
    assert (best.mode, best.num_generations, best.num_critic_trials) == ("bestofn", 4, 5)
    low = presets.load_preset("2b-480p10").spec
    assert (low.resolution, low.fps) == ("480", 10)
    assert presets.load_preset("2b-natten").spec.natten
    big = presets.load_preset("14b-720p16-offload").spec
    assert big.model_size == "14B" and big.offload_text_encoder


def test_list_presets_is_sorted_and_complete():
    listed = presets.list_presets()
    assert [p.name for p in listed] == SHIPPED
    assert all(p.error is None for p in listed)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_unknown_spec_key_is_named_with_the_file(tmp_path):
    f = _write(tmp_path / "typo.toml", 'name = "typo"\n[spec]\npromt = "x"\n')
    with pytest.raises(presets.PresetError) as e:
        presets.load_preset(str(f))
    assert str(e.value).startswith("typo.toml: promt: unknown key")


def test_unknown_top_level_key_is_named(tmp_path):
    f = _write(tmp_path / "flat.toml", 'name = "flat"\nseed = 3\n')
    with pytest.raises(presets.PresetError) as e:
        presets.load_preset(str(f))
    msg = str(e.value)
    assert msg.startswith("flat.toml: seed: unknown top-level key") and "[spec]" in msg


def test_invalid_value_names_field_and_fix(tmp_path):
    f = _write(tmp_path / "bad.toml", 'name = "bad"\n[spec]\naspect_ratio = "2:1"\n')
    with pytest.raises(presets.PresetError) as e:
        presets.load_preset(str(f))
    assert "bad.toml: aspect_ratio:" in str(e.value) and "16:9" in str(e.value)


def test_name_must_match_file(tmp_path):
    f = _write(tmp_path / "one.toml", 'name = "two"\n[spec]\n')
    with pytest.raises(presets.PresetError, match="name: 'two' differs from the file name"):
        presets.load_preset(str(f))


def test_broken_toml_is_named(tmp_path):
    f = _write(tmp_path / "broken.toml", "name = \n")
    with pytest.raises(presets.PresetError, match="^broken.toml: not valid TOML"):
        presets.load_preset(str(f))


def test_unknown_preset_lists_known_ones():
    with pytest.raises(presets.PresetError) as e:
        presets.load_preset("nope")
    assert "'nope' not found" in str(e.value) and "tiny-cpu" in str(e.value)


def test_user_preset_shadows_shipped(config):
    spec = GenerationSpec(model_size="tiny", seed=42)
    path = presets.save_user_preset("tiny-cpu", spec, "my tiny")
    assert path == config / "presets" / "tiny-cpu.toml"
    p = presets.load_preset("tiny-cpu")
    assert (p.source, p.description, p.spec.seed, p.spec.num_steps) == ("user", "my tiny", 42, 35)
    assert presets.preset_paths()["tiny-cpu"] == path
    assert [x.source for x in presets.list_presets() if x.name == "tiny-cpu"] == ["user"]
    assert presets.delete_user_preset("tiny-cpu")
    assert presets.load_preset("tiny-cpu").source == "shipped"


def test_save_load_round_trip():
    spec = GenerationSpec(mode="bestofn", model_size="14B", resolution="480", fps=10, prompt='say "hi"\nnow',
                          guidance=3.5, num_generations=3, natten=False, offload_guardrail=True,
                          batch_input_json=None, save_path="out/dir")
    path = presets.save_user_preset("mine", spec, "round trip")
    assert presets.load_preset("mine").spec == spec
    assert presets.load_preset(str(path)).spec == spec
    text = path.read_text()
    assert "[spec]" in text and "num_chunks" not in text  # defaults are not written
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_save_from_dict_validates():
    with pytest.raises(presets.PresetError, match="fps"):
        presets.save_user_preset("x", {"fps": 12})


@pytest.mark.parametrize("name", ["", "../evil", "a b", "-lead"])
def test_bad_preset_names_are_refused(name):
    with pytest.raises(presets.PresetError, match="^name:"):
        presets.save_user_preset(name, GenerationSpec())


def test_broken_user_file_is_listed_with_its_error(config):
    _write(config / "presets" / "oops.toml", 'name = "oops"\n[spec]\nfps = "fast"\n')
    listed = {p.name: p for p in presets.list_presets()}
    assert listed["oops"].spec is None and "oops.toml: fps:" in listed["oops"].error
    assert listed["2b-720p16"].error is None


def test_a_user_file_that_is_not_utf8_is_listed_broken_not_fatal(config):
    # `presets list` (and the TUI's presets screen) died on UnicodeDecodeError for one stray file
    (config / "presets").mkdir(parents=True, exist_ok=True)
    (config / "presets" / "latin.toml").write_bytes(b'description = "caf\xe9"\n')
    listed = {p.name: p for p in presets.list_presets()}
    assert listed["latin"].spec is None
    assert listed["latin"].error == "latin.toml: is not UTF-8 text (byte 0xe9 at offset 18); save it as UTF-8"
    with pytest.raises(presets.PresetError, match="latin.toml: is not UTF-8"):
        presets.load_preset("latin")


def test_a_user_file_whose_name_is_not_utf8_is_listed_broken_under_a_printable_name(config):
    d = config / "presets"
    d.mkdir(parents=True, exist_ok=True)
    open(os.fsencode(d) + b"/caf\xe9.toml", "wb").close()  # a Latin-1 name
    (broken,) = [p for p in presets.list_presets() if p.source == "user"]
    assert broken.name == "caf\ufffd" and broken.spec is None
    assert broken.error == "caf\ufffd.toml: the file name is not UTF-8; rename the file"
    broken.name.encode("utf-8")  # printable, and JSON-safe for the daemon


def test_presets_dir_override(tmp_path, monkeypatch):
    d = tmp_path / "elsewhere"
    _write(d / "only.toml", 'name = "only"\ndescription = "d"\n[spec]\nseed = 1\n')
    monkeypatch.setenv("COSMOS_TUI_PRESETS_DIR", str(d))
    assert list(presets.preset_paths()) == ["only"]
