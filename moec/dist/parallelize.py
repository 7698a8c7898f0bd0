"""Apply a layout to a moec model: tensor parallel, expert parallel, then FSDP2 (docs/scaling.md, "Running
distributed"). The model may be built on ``meta``; load its weights afterwards with
:func:`moec.dist.state.load_full_state_dict`.

Gradient convention: every FSDP module *sums* its gradients (divide factor 1) and the loss is divided by the
global token count (:func:`moec.dist.train.lm_loss`). FSDP's default, the mean over its group, would be wrong
for the routed experts: their gradient already sums the tokens of every EP rank (the all-to-all's backward
brings them home), so with efsdp = 1 nothing would divide them and they would come out ep times too large.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from moec.dist.expert_parallel import A2ATraffic, apply_ep
from moec.dist.mesh import Meshes
from moec.dist.parts import blocks, is_routed_experts, routed_experts
from moec.dist.tensor_parallel import apply_tp


class ShardingError(ValueError):
    """A model FSDP cannot shard as moec.dist applies it, naming the feature."""


def parallelize(
    model: nn.Module,
    meshes: Meshes,
    *,
    fsdp: bool = True,
    reshard_after_forward: bool = True,
    mp_policy: MixedPrecisionPolicy | None = None,
) -> nn.Module:
    """TP (tp > 1), EP (ep > 1) and FSDP2 (``fsdp``) in place, in that order; returns the model. ``model`` is a
    moec.nn MoecModel or the Model of a generated model.py (moec.dist.parts finds the parts of either)."""
    blocks(model)  # a TypeError for anything that is not a moec model, before any change
    layout = meshes.layout
    if layout.tp > 1:
        apply_tp(model, meshes.tp)
    if layout.ep > 1:
        apply_ep(model, meshes.ep)
    if fsdp:
        _refuse_sharded_selection_bias(model)
        apply_fsdp(model, meshes, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    return model


def _refuse_sharded_selection_bias(model: nn.Module) -> None:
    """ERNIE-4.5 keeps its selection bias as a parameter (``selection_bias_parameter``). FSDP would shard it,
    and the aux-loss-free step updates it in place from the summed loads, which a shard cannot do. Until it
    is kept replicated, refuse by name rather than train a bias that drifts between ranks."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "expert_bias", None), nn.Parameter):
            raise ShardingError(
                f"{name}.expert_bias: a trainable selection bias (moe.router.selection_bias_parameter, "
                "ERNIE-4.5) is not supported under FSDP yet; run without FSDP (--no-fsdp)"
            )


def apply_fsdp(
    model: nn.Module,
    meshes: Meshes,
    *,
    reshard_after_forward: bool = True,
    mp_policy: MixedPrecisionPolicy | None = None,
) -> list[FSDPModule]:
    """FSDP2 per block and once at the root over the dp mesh; the routed experts get their own FSDP unit over
    the efsdp mesh (the ranks that hold the same experts). Returns every FSDP module."""
    kw = {"reshard_after_forward": reshard_after_forward, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    units: list[nn.Module] = []
    for block in blocks(model):
        for _, m in routed_experts(block):
            # a nested unit, not shard_placement_fn: torch 2.11 cannot place one parameter on another mesh
            units.append(fully_shard(m, mesh=meshes.efsdp, **kw))
        units.append(fully_shard(block, mesh=meshes.dp, **kw))
    units.append(fully_shard(model, mesh=meshes.dp, **kw))
    gloo = dist.get_backend(meshes.dp.get_group()) == "gloo"
    tp = meshes.layout.tp
    for unit in units:
        # the efsdp ranks of an expert unit include the tp ranks, which all compute the same tokens' gradient
        # (routed experts are not tensor-parallel): their sum is tp copies of it
        unit.set_gradient_divide_factor(float(tp) if is_routed_experts(unit) else 1.0)
        if gloo:  # a factor other than the group size becomes PREMUL_SUM, which gloo lacks: SUM, then divide
            unit.set_force_sum_reduction_for_comms(True)
    return units


def sync_gradients(model: nn.Module, meshes: Meshes) -> None:
    """Without FSDP: sum each gradient over the ranks that hold the same parameter with different tokens (the
    dp ranks; for EP-sharded experts, the efsdp ranks). Call after backward, before clipping."""
    ep_mesh = meshes.ep if meshes.layout.ep > 1 else None
    for p in model.parameters():
        if p.grad is None:
            continue
        on_ep = isinstance(p, DTensor) and p.device_mesh == ep_mesh
        mesh = meshes.efsdp if on_ep else meshes.dp
        if mesh.size() > 1:
            grad = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            dist.all_reduce(grad, group=mesh.get_group())


def a2a_traffic(model: nn.Module) -> A2ATraffic:
    """The all-to-all bytes of every expert-parallel layer of ``model``, added up."""
    total = A2ATraffic()
    for _, m in routed_experts(model):
        if m.dispatcher is not None:
            total.add(m.dispatcher.traffic)
    return total


def reset_a2a_traffic(model: nn.Module) -> None:
    for _, m in routed_experts(model):
        if m.dispatcher is not None:
            m.dispatcher.traffic.reset()
