"""Checkpoint paths, file loading (.pt / .safetensors), prefixes, missing-file errors, builders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine import checkpoints as ck
from engine.memory import module_bytes, offload, onload
from engine.models.vae import WanVAE, vae_config
from engine.spec import GenerationSpec


def _tiny_dit():
    from engine.models.dit import MiniTrainDIT, dit_config

    return MiniTrainDIT(dit_config("tiny")).random_init_(7)


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# -- paths and errors -------------------------------------------------------------------------------


def test_layout_under_root(monkeypatch, tmp_path):
    monkeypatch.delenv(ck.ENV_VAR, raising=False)
    spec = GenerationSpec(model_size="14B", resolution="720", fps=10, natten=True)
    p = ck.CheckpointPaths.for_spec(spec, tmp_path)
    repo = tmp_path / "nvidia" / "Cosmos-Predict2-14B-Video2World"
    assert p.dit == repo / "model-720p-10fps-natten.pt"
    assert p.vae == repo / "tokenizer" / "tokenizer.pth"
    assert p.t5 == tmp_path / "google-t5" / "t5-11b"
    assert p.reason1 == tmp_path / "nvidia" / "Cosmos-Reason1-7B"
    assert p.guardrail == tmp_path / "nvidia" / "Cosmos-Guardrail1"
    assert p.llama_guard == tmp_path / "meta-llama" / "Llama-Guard-3-8B"
    p480 = ck.CheckpointPaths.for_spec(GenerationSpec(resolution="480", fps=16), tmp_path)
    assert p480.dit.name == "model-480p-16fps.pt" and "2B" in str(p480.dit)


def test_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(ck.ENV_VAR, raising=False)
    monkeypatch.setattr(ck, "_configured_root", None)
    assert ck.checkpoints_root() == ck.Path("checkpoints")
    ck.set_configured_root(tmp_path / "cfg")
    assert ck.checkpoints_root() == tmp_path / "cfg"
    monkeypatch.setenv(ck.ENV_VAR, str(tmp_path / "env"))
    assert ck.checkpoints_root() == tmp_path / "env"
    assert ck.CheckpointPaths.for_spec(GenerationSpec()).dit.is_relative_to(tmp_path / "env")


def test_missing_checkpoint_is_one_sentence_with_command(monkeypatch, tmp_path):
    monkeypatch.setenv(ck.ENV_VAR, str(tmp_path))
    spec = GenerationSpec(model_size="2B", resolution="480", fps=10, disable_guardrail=True,
                          disable_prompt_refiner=True)
    assert not ck.checkpoints_present(spec)
    with pytest.raises(ck.MissingCheckpointError) as info:
        ck.build_dit(spec, "cpu", torch.float32)
    msg = str(info.value)
    assert "model-480p-10fps.pt" in msg and str(tmp_path) in msg
    assert ("python -m scripts.download_checkpoints --model_types video2world --model_sizes 2B "
            "--resolution 480 --fps 10") in msg
    assert f"--checkpoint_dir {tmp_path}" in msg
    assert "--model_size tiny" in msg
    assert msg.count(". ") == 0 and msg.endswith(".") and "\n" not in msg
    with pytest.raises(ck.MissingCheckpointError, match="tokenizer.pth"):
        ck.build_vae(spec, "cpu", torch.float32)
    with pytest.raises(ck.MissingCheckpointError, match="t5-11b"):
        ck.build_text_encoder(spec, "cpu", torch.float32)


def test_present_when_files_exist(monkeypatch, tmp_path):
    monkeypatch.delenv(ck.ENV_VAR, raising=False)  # the env var wins over the root given here
    spec = GenerationSpec(disable_guardrail=True, disable_prompt_refiner=True)
    paths = ck.CheckpointPaths.for_spec(spec, tmp_path)
    assert [e.what for e in paths.missing(spec)] == ["DiT", "VAE tokenizer", "T5 text encoder"]
    for p in (paths.dit, paths.vae):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    paths.t5.mkdir(parents=True)
    assert ck.checkpoints_present(spec, tmp_path)
    refiner_on = spec.model_copy(update={"disable_prompt_refiner": False})
    assert [e.what for e in paths.missing(refiner_on)] == ["Cosmos-Reason1-7B"]


def test_tiny_needs_no_files(monkeypatch, tmp_path):
    monkeypatch.setenv(ck.ENV_VAR, str(tmp_path / "nothing-here"))
    assert ck.checkpoints_present(GenerationSpec(model_size="tiny"))


def test_missing_dit_path_names_the_flag(tmp_path):
    spec = GenerationSpec(model_size="tiny", dit_path=str(tmp_path / "mine.pt"))
    with pytest.raises(ck.MissingCheckpointError, match="--dit_path") as info:
        ck.build_dit(spec, "cpu", torch.float32)
    assert "mine.pt" in str(info.value)


# -- prefixes ---------------------------------------------------------------------------------------


def test_strip_prefix_selects_regular_or_ema():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    sd = {"net.w": a, "net_ema.w": b, "plain": c}
    assert ck.strip_prefix(sd, ema=False) == {"w": a, "plain": c}
    assert ck.strip_prefix(sd, ema=True) == {"w": b, "plain": c}


def test_strip_prefix_wrong_flag_is_explained():
    with pytest.raises(ValueError, match="drop --load_ema"):
        ck.strip_prefix({"net.w": torch.zeros(1)}, ema=True)
    with pytest.raises(ValueError, match="add --load_ema"):
        ck.strip_prefix({"net_ema.w": torch.zeros(1)}, ema=False)


# -- the real loading path, fed tiny files -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_dit_round_trip_bit_exact(tmp_path, fmt):
    src = _tiny_dit()
    sd = {f"net.{k}": v.clone() for k, v in src.state_dict().items()}
    # the non-weight keys real files carry must be skipped, not rejected
    sd["net.accum_iteration"] = torch.tensor(5, dtype=torch.int64)
    sd["net.pos_embedder.seq"] = torch.arange(128.0)
    path = tmp_path / f"model.{fmt}"
    torch.save(sd, path) if fmt == "pt" else save_file(sd, str(path))
    spec = GenerationSpec(model_size="tiny", dit_path=str(path))
    got = ck.build_dit(spec, "cpu", torch.float32)
    _assert_same(got, src)
    assert not any(p.is_meta for p in got.parameters())


def test_dit_ema_selection(tmp_path):
    reg, ema = _tiny_dit(), _tiny_dit()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    sd = {f"net.{k}": v for k, v in reg.state_dict().items()}
    sd.update({f"net_ema.{k}": v for k, v in ema.state_dict().items()})
    path = tmp_path / "both.pt"
    torch.save(sd, path)
    _assert_same(ck.build_dit(GenerationSpec(model_size="tiny", dit_path=str(path)), "cpu", torch.float32), reg)
    got = ck.build_dit(GenerationSpec(model_size="tiny", dit_path=str(path), load_ema=True), "cpu", torch.float32)
    _assert_same(got, ema)


def test_dit_unexpected_key_is_named(tmp_path):
    sd = {f"net.{k}": v for k, v in _tiny_dit().state_dict().items()}
    sd["net.blocks.0.surprise.weight"] = torch.zeros(3)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match="blocks.0.surprise.weight"):
        ck.build_dit(GenerationSpec(model_size="tiny", dit_path=str(path)), "cpu", torch.float32)


def test_dit_load_casts_dtype(tmp_path):
    src = _tiny_dit()
    path = tmp_path / "m.pt"
    torch.save({f"net.{k}": v for k, v in src.state_dict().items()}, path)
    got = ck.build_dit(GenerationSpec(model_size="tiny", dit_path=str(path)), "cpu", torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in got.parameters())
    k = "x_embedder.proj.1.weight"
    assert torch.equal(got.state_dict()[k], src.state_dict()[k].bfloat16())


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vae_round_trip_bit_exact(tmp_path, fmt):
    src = WanVAE(vae_config("tiny")).random_init_(3)
    sd = {k: v.clone() for k, v in src.state_dict().items()}  # tokenizer.pth has no prefix
    path = tmp_path / f"tokenizer.{fmt}"
    torch.save(sd, path) if fmt == "pth" else save_file(sd, str(path))
    got = ck.load_vae_weights_file(path, "cpu", torch.float32, profile="tiny")
    _assert_same(got, src)


def test_vae_unexpected_key_is_named(tmp_path):
    sd = WanVAE(vae_config("tiny")).state_dict()
    sd["decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "tokenizer.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="decoder.extra.weight"):
        ck.load_vae_weights_file(path, "cpu", torch.float32, profile="tiny")


def test_load_state_dict_file_keeps_integer_dtypes(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.ones(2), "n": torch.tensor(3)}, path)
    sd = ck.load_state_dict_file(path, "cpu", torch.bfloat16)
    assert sd["w"].dtype == torch.bfloat16 and sd["n"].dtype == torch.int64


# -- tiny builders and memory helpers -----------------------------------------------------------------


def test_tiny_builders_are_seeded_and_fileless(monkeypatch, tmp_path):
    monkeypatch.setenv(ck.ENV_VAR, str(tmp_path / "none"))
    spec = GenerationSpec(model_size="tiny")
    d1, d2 = ck.build_dit(spec, "cpu", torch.float32), ck.build_dit(spec, "cpu", torch.float32)
    _assert_same(d1, d2)
    v = ck.build_vae(spec, "cpu", torch.float32)
    assert v.config.base_dim == 8
    te = ck.build_text_encoder(spec, "cpu", torch.bfloat16)
    assert te.dtype == torch.float32  # T5 stays fp32 unless downcast is asked for
    te_bf16 = ck.build_text_encoder(spec.model_copy(update={"downcast_text_encoder": True}), "cpu", torch.bfloat16)
    assert te_bf16.dtype == torch.bfloat16
    assert te.dim == d1.config.crossattn_emb_channels


def test_module_bytes_and_offload_round_trip():
    vae = WanVAE(vae_config("tiny"))
    n = sum(p.numel() * p.element_size() for p in vae.parameters())
    assert module_bytes(vae) == {"cpu": n}
    assert module_bytes(vae.half()) == {"cpu": n // 2}
    assert offload(vae) is vae and onload(vae, "cpu") is vae
    assert module_bytes(vae) == {"cpu": n // 2}
