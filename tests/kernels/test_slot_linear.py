"""moec.kernels.reference.slot_linear (the mixture of attention heads' per-slot projections) against a loop over
rows, each through its own expert's matrix, in float64: outputs and the gradients of the rows and of the weights,
with some experts chosen by no row and one row alone; no rows at all give no rows."""

from __future__ import annotations

import pytest
import torch

from moec.kernels.reference import slot_linear

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def naive(rows: torch.Tensor, expert: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return torch.stack([rows[i] @ weights[int(expert[i])] for i in range(rows.shape[0])])


def test_each_row_goes_through_its_own_expert_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    expert = torch.tensor([3, 0, 3, 5, 0, 3, 0])  # experts 1, 2, 4 and 6 idle; expert 5 takes one row
    rows = torch.randn(7, 6, generator=g, dtype=torch.float64)
    weights = torch.randn(7, 6, 4, generator=g, dtype=torch.float64)
    grad_out = torch.randn(7, 4, generator=g, dtype=torch.float64)
    got_rows, got_w = rows.clone().requires_grad_(), weights.clone().requires_grad_()
    want_rows, want_w = rows.clone().requires_grad_(), weights.clone().requires_grad_()
    got, want = slot_linear(got_rows, expert, got_w), naive(want_rows, expert, want_w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (got * grad_out).sum().backward()
    (want * grad_out).sum().backward()
    torch.testing.assert_close(got_rows.grad, want_rows.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_w.grad, want_w.grad, rtol=1e-12, atol=1e-12)
    assert got_w.grad[[1, 2, 4, 6]].abs().sum() == 0


def test_no_rows_give_no_rows_and_mismatched_shapes_are_refused():
    weights = torch.zeros(3, 5, 2)
    assert slot_linear(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), weights).shape == (0, 2)
    with pytest.raises(ValueError, match="expected rows"):
        slot_linear(torch.zeros(4, 6), torch.zeros(4, dtype=torch.long), weights)
