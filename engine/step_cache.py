"""Experimental fast mode: skip most of the DiT on denoiser calls whose input barely changed.

The idea is first-block caching (as in ParaAttention's FBCache and TeaCache for video DiTs): the
first block's residual (its output minus its input) is cheap and tracks how much the whole network's
output will change from one sampler step to the next. When it moved less than `threshold` (relative
mean absolute change against the last fully computed call), the remaining blocks are skipped and
their residual from that last full call is added instead.

It changes the result, so it is opt-in (GenerationSpec.fast_threshold, 0 = off) and labelled
experimental: quality cannot be judged here without real weights, so bench/bench_e2e.py reports the
drift against the exact path on the same seed. Guards that keep the drift bounded:
  - the first `warmup` calls (high noise: the output moves fast) and the last `tail` calls (they
    set the fine detail, and the final clean pass is the result) always run in full;
  - at most `max_skips` calls in a row are skipped, so the cache is refreshed regularly;
  - the comparison is always against the last *computed* residual, so slow drift accumulates
    until it crosses the threshold and forces a full call.

One forward per denoiser call is assumed (the pipeline's batched CFG, or no guidance); the pipeline
makes a fresh cache per generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepCache:
    threshold: float
    total_calls: int
    warmup: int = 3
    tail: int = 2
    max_skips: int = 3
    calls: int = 0
    skipped: list[int] = field(default_factory=list)  # 0-based indices of the calls that were skipped
    _first_residual: torch.Tensor | None = None
    _rest_residual: torch.Tensor | None = None
    _run_of_skips: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"fast_threshold must be in (0, 1] to enable the step cache, got {self.threshold}")

    def _may_skip(self, first_residual: torch.Tensor) -> bool:
        i = self.calls
        if (self._first_residual is None or self._first_residual.shape != first_residual.shape
                or i < self.warmup or i >= self.total_calls - self.tail or self._run_of_skips >= self.max_skips):
            return False
        prev = self._first_residual
        change = (first_residual.float() - prev.float()).abs().mean() / prev.float().abs().mean().clamp_min(1e-12)
        return bool(change < self.threshold)  # one host sync per denoiser call

    def run(self, blocks, x: torch.Tensor, *args) -> torch.Tensor:
        """Run `blocks` on x (each as block(x, *args)) with the cache; returns the last block's output."""
        first = blocks[0](x, *args)
        residual = first - x
        if self._may_skip(residual):
            self.skipped.append(self.calls)
            self._run_of_skips += 1
            out = first + self._rest_residual
        else:
            out = first
            for block in blocks[1:]:
                out = block(out, *args)
            self._first_residual = residual
            self._rest_residual = out - first
            self._run_of_skips = 0
        self.calls += 1
        return out

    def summary(self) -> str:
        return (f"step cache (experimental fast mode, threshold {self.threshold:g}): skipped "
                f"{len(self.skipped)} of {self.calls} denoiser calls after the first block "
                f"({', '.join(str(i + 1) for i in self.skipped) or 'none'})")
