"""engine/footprint.py: the weights a job puts on its GPU, and the submit check built on them."""

from __future__ import annotations

import pytest
import torch

from engine import footprint
from engine.spec import GenerationSpec

GIB = 2**30


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_are_the_architectures():
    # every entry rebuilt on the meta device from its published hyper-parameters (no weights, no download)
    import warnings

    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              SiglipConfig, SiglipModel, T5Config, T5EncoderModel)

    from engine.models.dit import MiniTrainDIT, dit_config
    from engine.models.retinaface import RetinaFace, retinaface_config
    from engine.models.vae import WanVAE, vae_config

    got = {}
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in ("2B", "14B"):
            got[f"dit-{size}"] = _count(MiniTrainDIT(dit_config(size)))
        got["vae"] = _count(WanVAE(vae_config("wan2.1")))
        got["t5"] = _count(T5EncoderModel(T5Config(d_model=1024, d_ff=65536, num_layers=24, num_heads=128, d_kv=128,
                                                   vocab_size=32128)))  # google-t5/t5-11b
        got["reason"] = _count(Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(  # Qwen2.5-VL-7B-Instruct
            text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                             num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584),
            tie_word_embeddings=False)))
        got["llama_guard"] = _count(LlamaForCausalLM(LlamaConfig(  # Llama-3.1-8B's shape
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)))
        tower = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
        got["siglip"] = _count(SiglipModel(SiglipConfig(
            text_config=dict(tower, vocab_size=32000, max_position_embeddings=64, bos_token_id=1, eos_token_id=1),
            vision_config=dict(tower, image_size=384, patch_size=14))))
        got["retinaface"] = _count(RetinaFace(retinaface_config("resnet50")))
    assert got == footprint.PARAMS
    # the DiT and VAE totals cosmos_predict2.md states
    assert got["dit-2B"] == 1_956_413_440 and got["dit-14B"] == 14_265_285_632 and got["vae"] == 126_892_531


def test_what_is_on_the_gpu_follows_the_offload_flags():
    full = footprint.job_weights(GenerationSpec())
    assert all(w.resident for w in full) and len(full) == 7
    assert footprint.floor_bytes(full) == sum(w.nbytes for w in full)
    off = GenerationSpec(offload_text_encoder=True, offload_guardrail=True, offload_prompt_refiner=True)
    w = footprint.job_weights(off)
    # DiT and VAE stay; the largest visitor (fp32 T5) comes on top of them, the others visit alone
    assert footprint.floor_bytes(w) == 2 * footprint.PARAMS["dit-2B"] + 2 * footprint.PARAMS["vae"] + 4 * footprint.PARAMS["t5"]
    bare = GenerationSpec(disable_guardrail=True, disable_prompt_refiner=True, downcast_text_encoder=True)
    assert [x.what for x in footprint.job_weights(bare)] == ["DiT 2B (bf16)", "Wan2.1 VAE (bf16)", "T5-11B encoder (bf16)"]
    assert footprint.job_weights(GenerationSpec(model_size="tiny")) == []


@pytest.mark.parametrize("kw,gpu_gib,verdict", [
    ({}, 79.2, None),  # an 80 GB H100: the reference's 2B setup fits
    ({}, 44.5, "set offload_prompt_refiner, offload_guardrail"),  # a 48 GB card: two moves are enough
    ({}, 23.6, "set offload_prompt_refiner, offload_guardrail, offload_text_encoder ("),
    ({"disable_guardrail": True, "disable_prompt_refiner": True}, 15.6, "set downcast_text_encoder ("),
    ({"model_size": "14B"}, 44.5, "offload_text_encoder, downcast_text_encoder ("),  # 3 offloads: 44.9 GiB
    ({"model_size": "14B"}, 23.6, "no offload, downcast or refiner setting makes it fit; use model_size=2B"),
])
def test_too_small_names_what_takes_the_memory_and_the_cheapest_fix(kw, gpu_gib, verdict):
    spec = GenerationSpec(**kw)
    msg = footprint.too_small(spec, int(gpu_gib * GIB), "GPU 0")
    if verdict is None:
        assert msg is None
        return
    assert msg.startswith(f"model_size: this {spec.model_size} job needs at least ") and f"GPU 0's {gpu_gib:.1f} GiB" in msg
    assert verdict in msg
    fixes = footprint.cheapest_fit(spec, int(gpu_gib * GIB))
    if fixes:  # the suggestion really fits, and nothing cheaper does
        fixed = spec.model_copy(update=dict.fromkeys(fixes, True))
        assert footprint.floor_bytes(footprint.job_weights(fixed)) <= gpu_gib * GIB
        assert footprint.too_small(fixed, int(gpu_gib * GIB)) is None


def test_submit_refuses_weights_that_cannot_fit_and_edit_too(tmp_path):
    from cosmos_tui import paths
    from cosmos_tui.daemon import handlers as h
    from cosmos_tui.daemon.service import Daemon
    from cosmos_tui.gpu import DemoBackend
    from cosmos_tui.queue.resolve import SubmitError
    from cosmos_tui.store import Store

    paths.ensure_home()
    d = Daemon(Store(paths.db_path()), gpu=DemoBackend(2, mem_total=24 * GIB))
    try:
        (tmp_path / "in.jpg").write_bytes(b"\xff\xd8\xff fake jpeg")
        base = {"input_path": "in.jpg", "prompt": "a kite"}
        with pytest.raises(SubmitError, match=r"needs at least 55\.8 GiB .* more than each GPU here's 24\.0 GiB; set "):
            h.op_submit(d, {"spec": {**base, "model_size": "2B"}, "cwd": str(tmp_path)})
        ok = {**base, "model_size": "2B", "offload_guardrail": True, "offload_prompt_refiner": True,
              "offload_text_encoder": True, "save_path": "ok.mp4"}
        jid = h.op_submit(d, {"spec": ok, "cwd": str(tmp_path)})
        with pytest.raises(SubmitError, match="model_size: this 14B job needs at least"):
            h.op_edit(d, {"job": jid, "set": {"model_size": "14B"}})
        # the tiny profile and Slurm jobs are not this machine's GPUs' business
        h.op_submit(d, {"spec": {**base, "model_size": "tiny", "save_path": "t.mp4"}, "cwd": str(tmp_path)})
    finally:
        d.store.close()


def test_the_engine_refuses_before_loading_on_a_gpu_too_small(monkeypatch, tmp_path):
    # no GPU here: torch.cuda says there is a 16 GiB one; the refusal must come before get_pipeline,
    # which would otherwise start loading (and, here, fail on the missing 2B checkpoints instead)
    import types

    from engine import events, pipeline
    from engine.modes import pipeline_for
    from engine.spec import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: types.SimpleNamespace(total_memory=16 * GIB))
    monkeypatch.setattr(pipeline, "get_pipeline", lambda *a, **k: pytest.fail("loading started"))
    with pytest.raises(InputError, match=r"model_size: this 2B job needs at least 55\.8 GiB .* more than GPU 0's 16\.0 GiB"):
        pipeline_for(GenerationSpec(), events.Emitter(None))


def test_weights_that_fit_with_little_room_get_a_warning_naming_what_leaves_room():
    h100 = int(79.6 * GIB)  # what an 80 GB H100 reports
    msg = footprint.tight(GenerationSpec(model_size="14B"), h100, "GPU 0")
    assert msg.startswith("the model weights of this 14B job take 78.7 of GPU 0's 79.6 GiB, leaving 0.9 GiB")
    assert msg.endswith("; set offload_prompt_refiner, offload_guardrail to leave room")
    assert footprint.tight(GenerationSpec(), h100) is None  # the 2B reference setup: 55.8 GiB
    assert footprint.tight(GenerationSpec(model_size="14B"), int(70 * GIB)) is None  # too small: refused instead
    fixed = GenerationSpec(model_size="14B", offload_prompt_refiner=True, offload_guardrail=True)
    assert footprint.tight(fixed, h100) is None


def test_the_engine_warns_in_the_job_log_before_loading_a_tight_job(monkeypatch):
    import types

    from engine import events, pipeline
    from engine.modes import pipeline_for

    class Loading(Exception):
        pass

    def get_pipeline(*a, **k):
        raise Loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: types.SimpleNamespace(total_memory=int(79.6 * GIB)))
    monkeypatch.setattr(pipeline, "get_pipeline", get_pipeline)
    evs: list[dict] = []
    with pytest.raises(Loading):  # a warning, not a refusal: loading goes ahead
        pipeline_for(GenerationSpec(model_size="14B"), events.Emitter(evs.append))
    (warning,) = [e for e in evs if e["event"] == "log"]
    assert warning["level"] == "warning" and "it will probably run out of GPU memory" in warning["message"]
