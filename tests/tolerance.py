"""Float tolerances derived from an error analysis, not from what one CPU happened to print.

Where two computations follow the *same* code path on the same inputs (a seeded noise draw, a broadcast
that the model expands before any arithmetic, a state dict copied over) the tests compare exactly. Where
two code paths compute the same maths in fp32 (batch 2 against two batch-1 calls, diffusers against us,
one attention kernel against another), the results differ by rounding alone, and by how much depends on
the BLAS (MKL, OpenBLAS), the CPU's vector width and the thread count, all of which change the order in
which dot products are summed. This module is the one place that bounds that difference.

The model of the error (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., §3.1, and
Higham & Mary, "A New Approach to Probabilistic Rounding Error Analysis", SISC 2019):

- A dot product of length K summed in any order has relative error at most γ_K = K·u/(1 - K·u) of
  Σ|aᵢbᵢ|, with u the unit roundoff (2⁻²⁴ for fp32). Two orders therefore differ by at most 2·γ_K. That
  bound is reached only when every rounding error has the same sign; with errors that behave as
  independent, zero-mean variables the difference is below λ·√K·u with probability
  1 - 2·exp(-λ²(1-u)²/2). For the largest of ~1e5 elements we take λ = 6 (failure probability
  ~3e-8 per element); for a normwise measure (‖a - b‖₂/‖b‖₂, an RMS over thousands of elements, which
  concentrates at its mean) λ = 1.
- A network is a chain of `depth` such stages (matmuls, attention's two products, convolutions,
  normalisations). On our seeded random weights every layer is normalised (RMS/Layer/Group norm,
  softmax), so a stage passes on an incoming relative error with a gain of order 1; the stages' errors
  add (at most linearly; independent errors would add as √depth), giving depth·λ·√K·u. We allow a further
  factor GAIN = 2 for the gains above 1 that a normalised layer can still have (a norm dividing by a
  small RMS, a softmax with a sharp peak).
- The error is measured normwise, ‖a - b‖ / ‖b‖ or max|a - b| / scale, never per element: an element
  near zero has no relative accuracy however good the computation, so elementwise rtol is meaningless.

So tol = GAIN · depth · λ · √K · u. For the tiny DiT (K = 512, depth 45, below) that is 7e-4 for the
largest element and 1.2e-4 normwise; a real bug (a wrong permutation, a rotation in the wrong order, a
missing term) changes the output by 1e-3..1, and the parity tests check that their deliberate bugs land
above the bound.
"""

from __future__ import annotations

import math

U_FP32 = 2.0**-24
U_FP64 = 2.0**-53
LAMBDA = 6.0  # largest element of ~1e5
GAIN = 2.0

# The tiny DiT (engine.models.dit, profile "tiny": width 64, MLP 256, 2 blocks, 512 T5 tokens): the
# longest accumulation is cross-attention over the 512 text tokens; the longest chain of accumulating
# stages is patch embedding (1), per block self-attention (norm, qkv, q/k norm, q.k, softmax, p.v, out:
# 7), cross-attention (7) and MLP (norm, two linears: 3), times 2 blocks, the timestep embedding and
# AdaLN modulations feeding the scales (4) and the final layer (norm, modulation, linear: 3) = 42, rounded
# up to 45.
TINY_DIT_K = 512
TINY_DIT_DEPTH = 45


def rounding_bound(k: int, depth: int, u: float = U_FP32) -> float:
    """Normwise relative difference two fp32 code paths may show: GAIN·depth·λ·√k·u (see module doc).

    k: the longest accumulation (dot product / reduction length) of one stage.
    depth: how many accumulating stages the value passes through, one after another.
    """
    return GAIN * depth * LAMBDA * math.sqrt(k) * u


def rms_rounding_bound(k: int, depth: int, u: float = U_FP32) -> float:
    """Bound for rel_err (a normwise RMS measure) between two fp32 code paths: GAIN·depth·√k·u."""
    return GAIN * depth * math.sqrt(k) * u


def rel_err(a, b) -> float:
    """‖a - b‖₂ / ‖b‖₂ over the whole tensor."""
    return float((a - b).double().norm() / b.double().norm())


def assert_rounding_close(actual, expected, *, k: int, depth: int, u: float = U_FP32, scale: float | None = None):
    """Two code paths for the same maths agree to rounding: max|a - b| ≤ rounding_bound · scale.

    scale defaults to max|expected|; pass the largest magnitude the values went through when an
    intermediate was larger than the result (the sampler starts at σ_max = 80 and ends near 1).
    """
    bound = rounding_bound(k, depth, u)
    scale = float(expected.detach().abs().max()) if scale is None else scale
    diff = float((actual.detach().double() - expected.detach().double()).abs().max())
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert diff <= bound * scale, f"max |difference| {diff:.3g} > {bound:.3g} x scale {scale:.3g}"
    return diff
