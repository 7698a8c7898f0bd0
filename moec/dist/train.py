"""The pieces of a distributed training step that differ from one process (docs/scaling.md, "Running
distributed"): the loss scaled by the global token count, gradient clipping over parameters on several
meshes, and the aux-loss-free bias step on loads summed over the data-parallel ranks."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from moec.dist.parts import routers
from moec.nn.loss import LossParts
from moec.nn.loss import lm_loss as local_lm_loss
from moec.nn.model import ModelAux


def lm_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    aux: ModelAux,
    group: dist.ProcessGroup,
    *,
    mtp_weight: float = 0.3,
) -> tuple[torch.Tensor, LossParts]:
    """:func:`moec.nn.lm_loss` of this rank's batch, weighted by its share of the predicted tokens of the
    whole data-parallel ``group``: (scaled total to backpropagate, this rank's unscaled parts). With gradients
    *summed* over the group (moec.dist.parallelize), the result is the gradient of the global mean. ``aux``:
    a moec.nn model's ModelAux, or the generated model.py's (the same fields: ``loss``, ``mtp_logits``).

    The cross-entropy comes out exactly the global token mean. The aux losses are per local batch (capacity and
    the batch balance loss count this rank's tokens, GShard's groups), weighted by the same share."""
    total, parts = local_lm_loss(logits, tokens, aux, mtp_weight=mtp_weight)
    predicted = tokens.shape[0] * (tokens.shape[1] - 1)
    count = torch.tensor(predicted, dtype=torch.float64, device=tokens.device)
    dist.all_reduce(count, group=group)
    return total * (predicted / count.item()), parts


def clip_grad_norm_(
    parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0, *, foreach: bool | None = None
) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters that live on different meshes (experts on the EP mesh,
    the rest on the dp mesh), where the stock one fails mixing meshes in one op: the norm of each mesh's
    gradients, made whole with ``full_tensor()``, combined, then each group scaled by itself. Returns the total
    norm (a plain tensor, equal on every rank)."""
    groups: dict[object, list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            groups.setdefault(p.device_mesh if isinstance(p, DTensor) else None, []).append(p)
    norms = []
    for params in groups.values():
        n = get_total_norm([p.grad for p in params], norm_type, foreach=foreach)
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    if not norms:
        return torch.zeros(())
    stacked = torch.stack(norms)
    total = stacked.max() if math.isinf(norm_type) else stacked.pow(norm_type).sum().pow(1.0 / norm_type)
    for params in groups.values():
        clip_grads_with_norm_(params, max_norm, total, foreach=foreach)
    return total


@torch.no_grad()
def update_bias(model: torch.nn.Module, group: dist.ProcessGroup) -> None:
    """Aux-loss-free balancing for every MoE layer, on expert loads summed over ``group`` (the data-parallel
    ranks) so that every rank takes the same step: call once per optimizer step."""
    for router in routers(model):
        router.update_bias(group)
