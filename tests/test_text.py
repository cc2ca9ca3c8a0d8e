"""T5 text encoder: padding zeroed past EOS, prompt cache, tiny profile built without files."""

from __future__ import annotations

import socket

import pytest
import torch

from engine.models.text import NUM_TOKENS, TINY_D_MODEL, load_t5, tiny_text_encoder, tiny_tokenizer
from tests.tolerance import assert_rounding_close, rel_err, rms_rounding_bound


@pytest.fixture(scope="module")
def enc():
    return tiny_text_encoder(seed=0)


def test_shape_dtype_and_zeros_after_eos(enc):
    prompts = ["a red cube", "a robot arm slowly picks up a red cube on a table"]
    out = enc.encode(prompts)
    assert out.shape == (2, NUM_TOKENS, TINY_D_MODEL) and out.dtype == torch.float32
    lengths = enc.tokenizer(prompts, max_length=NUM_TOKENS, padding="max_length", truncation=True,
                            return_tensors="pt")["attention_mask"].sum(1).tolist()
    assert lengths[0] < lengths[1]
    for row, n in zip(out, lengths):
        nonzero = row.abs().sum(-1) != 0
        # every real token, EOS (position n-1) included, is non-zero; everything after is exactly 0
        assert nonzero[:n].all() and not nonzero[n:].any()


def test_eos_is_last_real_token(enc):
    ids = enc.tokenizer(["a red cube"])["input_ids"][0]
    assert ids[-1] == enc.tokenizer.eos_token_id


def test_long_prompt_truncated_with_eos(enc):
    ids = enc.tokenizer(["x " * 2000], max_length=NUM_TOKENS, truncation=True)["input_ids"][0]
    assert len(ids) == NUM_TOKENS and ids[-1] == enc.tokenizer.eos_token_id
    out = enc.encode(["x " * 2000])
    assert (out[0].abs().sum(-1) != 0).all()


def test_different_prompts_differ_and_batching_does_not_matter():
    enc = tiny_text_encoder(seed=0)
    both = enc.encode(["a red cube", "a blue ball"])
    assert not torch.allclose(both[0], both[1])
    alone = tiny_text_encoder(seed=0).encode(["a blue ball"])
    # batch 1 and a padded batch 2 run other GEMM blockings: rounding apart. Tiny T5 (d_model 32, 2
    # layers): the longest accumulation is attention over 512 tokens; ~8 accumulating stages per layer
    # plus embeddings and the final norm, under 20.
    assert_rounding_close(alone[0], both[1], k=512, depth=20)


def test_cache_hits_and_lru():
    enc = tiny_text_encoder(seed=0, cache_size=2)
    first = enc.encode(["a", "b", "a"])
    assert (enc.misses, enc.hits) == (2, 1)
    torch.testing.assert_close(first[0], first[2], rtol=0, atol=0)
    first.zero_()  # callers own the returned tensor; the cache must not change
    again = enc.encode(["b", "a"])
    assert (enc.misses, enc.hits) == (2, 3)
    assert again.abs().sum() > 0
    enc.encode(["c"])  # evicts the least recently used ("b")
    enc.encode(["a"])
    assert enc.misses == 3
    enc.encode(["b"])
    assert enc.misses == 4


def test_cache_is_per_model():
    a, b = tiny_text_encoder(seed=0), tiny_text_encoder(seed=1)
    assert not torch.allclose(a.encode(["same prompt"]), b.encode(["same prompt"]))


def test_seeded_weights_are_reproducible():
    x = tiny_text_encoder(seed=3).encode(["hello"])
    y = tiny_text_encoder(seed=3).encode(["hello"])
    assert torch.equal(x, y)


def test_tiny_builds_without_files_or_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)

    def no_network(*a, **k):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    tok = tiny_tokenizer()
    enc = tiny_text_encoder(seed=0)
    assert enc.encode(["ok"]).shape == (1, NUM_TOKENS, TINY_D_MODEL)
    assert len(tok) < 200
    assert not (tmp_path / "hf").exists()


def test_offload_round_trip_keeps_cache_valid(enc):
    before = enc.encode(["offload me"])
    enc.to("cpu")
    assert enc.device.type == "cpu"
    assert torch.equal(enc.encode(["offload me"]), before)


def test_load_t5_from_directory_and_downcast(tmp_path):
    """The real loading path (from_pretrained on a local dir) gives the same embeddings."""
    enc = tiny_text_encoder(seed=0)
    enc.model.save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)
    loaded = load_t5(tmp_path, "cpu")
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.encode(["a red cube"]), enc.encode(["a red cube"]))
    half = load_t5(tmp_path, "cpu", torch.bfloat16)
    assert half.dtype == torch.bfloat16
    out = half.encode(["a red cube"])
    assert out.dtype == torch.float32  # embeddings are float32 whatever the weights' dtype
    # bf16 weights and activations: each of the < 20 stages rounds its output (and the weights) to 8
    # significant bits, relative error ~u_bf16 = 2^-8 each, while CPU bf16 GEMMs accumulate in fp32 (so no
    # sqrt(k) term). Normwise bound GAIN*depth*u_bf16 = 0.16; a wrong cast or weight mix-up is O(1).
    assert rel_err(out, enc.encode(["a red cube"])) < rms_rounding_bound(1, 20, u=2.0**-8)


def test_offloaded_encoder_visits_the_gpu_only_on_a_cache_miss(monkeypatch):
    from engine import memory

    enc = tiny_text_encoder(0)
    visits: list[str] = []
    real_visiting = memory.visiting

    def recorded(module, device):
        visits.append(str(device))
        return real_visiting(module, "cpu")  # a copy on the CPU stands in for the GPU's

    monkeypatch.setattr(memory, "visiting", recorded)
    first = enc.encode(["a cup", "bad quality"], run_on="cuda")
    assert visits == ["cuda"]
    again = enc.encode(["a cup", "bad quality"], run_on="cuda")  # both cached: no transfer
    assert visits == ["cuda"] and torch.equal(first, again)
    enc.encode(["a new prompt", "bad quality"], run_on="cuda")
    assert visits == ["cuda", "cuda"]


def test_a_visit_computes_on_the_copies_and_leaves_the_home_weights_in_place():
    from engine import memory

    enc = tiny_text_encoder(0)
    home = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in enc.model.named_parameters()}
    expected = enc.encode(["a red cube"])
    enc.clear_cache()
    seen = {}
    real_run = enc._run

    def run(prompts):
        seen.update({n: p.data_ptr() for n, p in enc.model.named_parameters()})
        return real_run(prompts)

    enc._run = run
    with memory.visiting(enc.model, "cpu"):  # copy=True: a fresh copy even on the same device
        out = enc._run(["a red cube"])[0]
    # every weight was a copy during the visit, and is its own tensor, unchanged, after it
    assert all(seen[n] != ptr for n, (_, ptr, _) in home.items())
    for n, p in enc.model.named_parameters():
        param, ptr, value = home[n]
        assert p is param and p.data_ptr() == ptr and torch.equal(p, value)
    # Same weights, same ops; only the copies' addresses differ, and the CPU GEMM kernels may block their
    # sums differently for other alignments (seen: 1.4e-6 apart). Two fp32 paths over the encoder's
    # stages (2 layers x ~8 accumulating ops, sums of at most d_ff = 64 terms): GAIN·depth·√k·u, ~1e-5.
    # Computing on the wrong (zeroed, stale) weights is O(1).
    assert rel_err(out.detach(), expected[0]) < rms_rounding_bound(64, 20)
    # the tied input embedding stays tied (one tensor, copied once)
    assert enc.model.get_input_embeddings().weight.data_ptr() == enc.model.shared.weight.data_ptr()
