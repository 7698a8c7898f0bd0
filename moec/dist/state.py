"""Weights in and out of a parallelized model (docs/scaling.md, "Running distributed").

Loading: build on ``meta``, parallelize, then :func:`load_full_state_dict`: ``to_empty`` allocates only each
rank's shards, and rank 0's full state dict is broadcast, each rank keeping its shard
(``set_model_state_dict(broadcast_from_rank0=True)``), so only rank 0 ever holds the whole model.
Exporting: :func:`full_state_dict` gathers every parameter to rank 0 under the single-process names.
Tensor-parallel gated FFNs keep their ``[gate | up]`` columns in a per-rank order (moec.dist.tensor_parallel);
both functions translate, so a checkpoint is always in the single-process layout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from moec.dist.tensor_parallel import from_rank_order, gate_up_orders, to_rank_order


def load_full_state_dict(
    model: nn.Module, full: dict[str, torch.Tensor] | None, device: torch.device | str = "cpu"
) -> None:
    """Allocate a parallelized model built on ``meta`` on ``device`` and fill it from ``full``, the
    single-process state dict, which only rank 0 needs to pass (the others pass None). Non-persistent buffers
    (running counts, such as the routers' expert loads) start at zero."""
    if dist.get_rank() == 0 and full is None:
        raise ValueError("rank 0 must pass the full state dict to load_full_state_dict")
    owners = _shared_parameters(model)
    model.to_empty(device=device)
    for group in owners:  # to_empty gives each owner its own new tensor: tie them again (tied embeddings)
        first = getattr(*group[0])
        for module, name in group[1:]:
            if getattr(module, name) is not first:
                setattr(module, name, first)
    with torch.no_grad():
        for m in model.modules():
            for name in m._non_persistent_buffers_set:
                buf = getattr(m, name)
                if buf is not None:
                    buf.zero_()
    sd = {}
    if dist.get_rank() == 0:
        orders = gate_up_orders(model)
        sd = {k: to_rank_order(v, *orders[k]) if k in orders else v for k, v in full.items()}
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def _shared_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """(module, name) of every owner of each parameter that more than one module holds."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((m, name))
    return [group for group in owners.values() if len(group) > 1]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0 (on the CPU, single-process names and layout); {} on the
    other ranks. Every rank must call it (it gathers)."""
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    orders = gate_up_orders(model)
    return {k: from_rank_order(v, *orders[k]) if k in orders else v for k, v in sd.items()}
