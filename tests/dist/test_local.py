"""moec.dist's single-process parts: the rank order of fused [gate | up] columns, and imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from moec.dist.tensor_parallel import from_rank_order, to_rank_order


def test_rank_order_puts_each_ranks_gate_and_up_columns_side_by_side():
    # columns g0 g1 g2 g3 | u0 u1 u2 u3 over 2 ranks: rank 0 holds g0 g1 u0 u1, rank 1 g2 g3 u2 u3
    w = torch.arange(8.0).expand(3, 8)  # gate columns are 0..3, up columns 4..7
    ordered = to_rank_order(w, 1, 2)
    assert ordered[0].tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert torch.equal(from_rank_order(ordered, 1, 2), w)


@pytest.mark.parametrize("parts", [1, 2, 4])
def test_rank_order_round_trips_along_any_dim(parts):
    b = torch.randn(16)
    assert torch.equal(from_rank_order(to_rank_order(b, 0, parts), 0, parts), b)


def test_moec_and_moec_nn_do_not_import_moec_dist():
    code = "import sys, moec, moec.nn, moec.spec; print('moec.dist' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
