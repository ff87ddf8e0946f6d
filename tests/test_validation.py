"""The server's input checks that are arithmetic rather than bookkeeping."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graytune.server.compute.validation import all_finite

SPECIAL = [float("nan"), float("inf"), float("-inf")]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 5000),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    scale=st.sampled_from([1.0, 1e4, 1e30, 3e38]),
    seed=st.integers(0, 2**31 - 1),
    poison=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(SPECIAL)), max_size=3),
)
def test_all_finite_agrees_with_the_exact_check(size, dtype, scale, seed, poison):
    """Sums that overflow from finite values (scale 3e38), NaN and ±inf anywhere, in any number
    (inf and -inf together sum to NaN), every float dtype the wire carries."""
    values = torch.randn(size, generator=torch.Generator().manual_seed(seed)) * scale  # (size,)
    t = values.clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype)
    for where, value in poison if size else ():
        t[int(where * size)] = value
    assert all_finite(t) == bool(torch.isfinite(t).all())
    assert all_finite(t.view(-1, 1).expand(-1, 3).t()) == bool(torch.isfinite(t).all())  # strided too
