"""The experimental fast mode (engine/step_cache.py): off means exact, on skips only where allowed."""

from __future__ import annotations

import pytest
import torch

from engine.pipeline import Video2WorldPipeline
from engine.spec import GenerationSpec
from engine.step_cache import StepCache
from tests.tiny import tiny_spec


class AddBlock(torch.nn.Module):
    def __init__(self, v: float):
        super().__init__()
        self.v = v
        self.calls = 0

    def forward(self, x, scale):
        self.calls += 1
        return x + self.v * scale


def test_skipped_call_adds_the_last_computed_residual_of_the_other_blocks():
    blocks = torch.nn.ModuleList([AddBlock(1.0), AddBlock(2.0), AddBlock(3.0)])
    cache = StepCache(threshold=0.5, total_calls=10, warmup=1, tail=1, max_skips=2)
    x = torch.zeros(4)
    out0 = cache.run(blocks, x, 1.0)  # warm-up: computed
    assert torch.equal(out0, torch.full((4,), 6.0))
    # the first block's residual changes by 10% (< 0.5): skip, add the cached 2 + 3 to the new first output
    out1 = cache.run(blocks, x + 100.0, 1.1)
    assert cache.skipped == [1]
    assert torch.equal(out1, (x + 100.0 + 1.1) + 5.0)
    assert blocks[1].calls == 1 and blocks[2].calls == 1
    cache.run(blocks, x, 1.0)  # second skip in a row: still allowed
    cache.run(blocks, x, 1.0)  # max_skips reached: computed
    assert cache.skipped == [1, 2] and blocks[1].calls == 2
    # a large change of the first residual forces a full call
    cache.run(blocks, x, 5.0)
    assert cache.skipped == [1, 2] and blocks[1].calls == 3


def test_threshold_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="fast_threshold"):
        StepCache(threshold=0.0, total_calls=5)


def test_fast_mode_refuses_cuda_graphs_and_several_gpus_at_submit():
    with pytest.raises(ValueError, match="fast_threshold.*use_cuda_graphs"):
        GenerationSpec(model_size="tiny", fast_threshold=0.1, use_cuda_graphs=True)
    with pytest.raises(ValueError, match="fast_threshold.*num_gpus"):
        GenerationSpec(model_size="tiny", fast_threshold=0.1, num_gpus=2)


@pytest.fixture(scope="module")
def pipe():
    return Video2WorldPipeline(GenerationSpec(model_size="tiny"), device=torch.device("cpu")).load()


def _run(pipe, spec):
    logs = []
    pipe.set_emit(logs.append)
    res = pipe.generate(spec, spec.input_path, seed=3)
    return res, [e.get("message", "") for e in logs if e.get("event") == "log"]


def test_fast_mode_that_never_skips_is_the_exact_path_bit_for_bit(pipe, tmp_path):
    # a threshold no real change is below: the cached path runs every block in the same order, so the
    # same kernels see the same inputs and the result must be identical, not merely close
    exact, _ = _run(pipe, tiny_spec(tmp_path, num_steps=8))
    fast, logs = _run(pipe, tiny_spec(tmp_path, num_steps=8, fast_threshold=1e-12))
    assert torch.equal(exact.latent, fast.latent)
    assert any("skipped 0 of 9" in m for m in logs)


def test_fast_mode_skips_only_between_warmup_and_tail_and_resets_after_the_job(pipe, tmp_path):
    exact, _ = _run(pipe, tiny_spec(tmp_path, num_steps=12))
    fast, logs = _run(pipe, tiny_spec(tmp_path, num_steps=12, fast_threshold=1.0))
    summary = next(m for m in logs if "skipped" in m)
    skipped = [int(s) for s in summary.rsplit("(", 1)[1].rstrip(")").split(", ")]
    total = 13
    # threshold 1 skips wherever the guards allow: calls 4..11 (1-based), never more than 3 in a row
    assert skipped == [4, 5, 6, 8, 9, 10]
    assert all(3 < i <= total - 2 for i in skipped)
    assert fast.timings["skipped_calls"] == len(skipped)
    assert torch.isfinite(fast.latent).all()
    assert not torch.equal(exact.latent, fast.latent)  # skipping changes the result, as documented
    # the next job without fast mode is exact again (the warm pipeline dropped the cache)
    again, _ = _run(pipe, tiny_spec(tmp_path, num_steps=12))
    assert torch.equal(exact.latent, again.latent)
