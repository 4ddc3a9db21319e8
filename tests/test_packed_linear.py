"""specdec.engine.packed_linear: compiled steps of three rows or more multiply through a weight
packed for oneDNN, reached through an opaque op that keeps the graph cacheable."""

from __future__ import annotations

import gc

import pytest
import torch
import torch._inductor.config as inductor
from torch._inductor.utils import run_and_get_code

from specdec.engine import packed_linear
from specdec.engine.compiled import CPU_FROZEN_INDUCTOR
from specdec.engine.llama import Proj

pytestmark = pytest.mark.slow  # compiles graphs


def test_steps_of_three_rows_or_more_multiply_through_the_packed_weight():
    """A packed projection compiled for 5 rows calls specdec::packed_linear (oneDNN), for one
    row inductor's own GEMM; both give the matmul's result. Two modules of one weight share one
    packed copy, and it goes with the last of them."""
    proj = Proj(320, 96, bias=True).eval()
    with torch.no_grad():
        proj.weight_t.normal_()
        proj.bias.normal_()
    proj.pack()
    if proj.packed is None:
        pytest.skip("this torch has no oneDNN")
    for rows, through_onednn in ((5, True), (1, False)):
        x = torch.randn(rows, 320)
        torch._dynamo.reset()
        with torch.no_grad(), inductor.patch({**CPU_FROZEN_INDUCTOR, "force_disable_caches": True}):
            out, (code, *_) = run_and_get_code(torch.compile(proj), x)
        assert ("packed_linear" in code) == through_onednn, code
        torch.testing.assert_close(out, x @ proj.weight_t.detach() + proj.bias.detach(), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    twin = Proj(320, 96, bias=True)
    twin.load_state_dict(proj.state_dict())
    twin.pack()
    assert twin.packed is proj.packed
    key = proj.packed.key
    del proj, twin
    gc.collect()
    assert key not in packed_linear._REGISTRY
