"""Tensor parallelism (Megatron-style) for attention and the dense FFNs (docs/scaling.md, "Running
distributed").

Attention: q/k/v column-parallel (each rank computes its own heads; the modules read their local head count
from the tensor shapes), o row-parallel (the partial outputs are summed). A per-head qk-norm runs on each
rank's heads, its weight replicated. MLA: the query and key/value up-projections column-parallel, the latent
down-projections replicated (every head needs the whole latent).

Dense FFNs (the dense layers and the shared experts): ``w_gate_up`` column-parallel, ``w_down`` row-parallel.
For gated activations the fused ``[gate | up]`` columns cannot simply be cut in tp pieces (rank 0 would get
only gate columns): they are stored in *rank order* ``[gate_0 | up_0 | gate_1 | up_1 | …]``, so each rank's
shard is its own ``[gate_r | up_r]``. moec.dist.state translates to and from the single-process order.

Routed experts are not tensor-parallel here: with tp > 1 they are replicated over the tp ranks.

The modules are found by attribute names (moec.dist.parts), and the numbers read from their attributes and
shapes, so a generated model.py splits as a moec.nn model does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from moec.dist.mesh import local
from moec.dist.parts import attention_heads, attention_kind, is_dense_ffn
from moec.kernels.activations import activate
from moec.plan.layout import UNSPLIT_ATTENTION_PARTS
from moec.vocab import GATED


class TensorParallelError(ValueError):
    """A module tensor parallelism cannot split, naming the feature."""


def to_rank_order(t: torch.Tensor, dim: int, parts: int) -> torch.Tensor:
    """[gate | up] along ``dim`` → [gate_0 | up_0 | … | gate_{p-1} | up_{p-1}] (each half cut in ``parts``)."""
    gate, up = t.chunk(2, dim)
    pieces = [c for pair in zip(gate.chunk(parts, dim), up.chunk(parts, dim), strict=True) for c in pair]
    return torch.cat(pieces, dim)


def from_rank_order(t: torch.Tensor, dim: int, parts: int) -> torch.Tensor:
    """The inverse of :func:`to_rank_order`."""
    pieces = t.chunk(2 * parts, dim)
    return torch.cat([*pieces[0::2], *pieces[1::2]], dim)


def sum_grad(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Identity forward; the backward sums the gradient over ``mesh`` (Megatron's "f"): for a replicated
    activation that each rank feeds only to its own heads or columns, so each rank holds one part of its
    gradient."""
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


class TensorParallelFFN(nn.Module):
    """A dense FFN (:class:`moec.nn.ffn.DenseFFN` or a generated model.py's) split over a TP mesh, with the same
    parameter names and full shapes.

    x (…, d), replicated → (…, d), replicated: the local columns, the activation on them, the local rows of
    ``w_down``, then one all-reduce of the partial sums (and its mirror on the input gradient)."""

    def __init__(self, ffn: nn.Module, mesh: DeviceMesh):
        super().__init__()
        self.d_ff, self.d_model = ffn.w_down.shape  # (f, d)
        self.mesh, self.activation = mesh, ffn.activation
        # the limited activations only (moec.vocab LIMITED); a generated FFN without one has neither attribute
        self.alpha, self.limit = getattr(ffn, "alpha", None), getattr(ffn, "limit", None)
        tp = mesh.size()
        if self.d_ff % tp:
            raise TensorParallelError(f"d_ff = {self.d_ff} does not divide by tp = {tp}")
        # columns kept in rank order for gated activations (parts = tp); 1 = the plain order
        self.gate_up_parts = tp if ffn.activation in GATED else 1

        def shard(p: torch.Tensor | None, dim: int | None, reorder: bool = False) -> nn.Parameter | None:
            if p is None:
                return None
            data = to_rank_order(p.data, dim, tp) if reorder and self.gate_up_parts > 1 else p.data
            placement = Replicate() if dim is None else Shard(dim)
            return nn.Parameter(distribute_tensor(data, mesh, [placement]), requires_grad=p.requires_grad)

        self.w_gate_up = shard(ffn.w_gate_up, 1, reorder=True)  # (d, 2f): shard (d, 2f/tp)
        self.w_down = shard(ffn.w_down, 0)  # (f, d): shard (f/tp, d)
        self.b_gate_up = shard(ffn.b_gate_up, 0, reorder=True)
        self.b_down = shard(ffn.b_down, None)  # added once, after the sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = sum_grad(x, self.mesh)
        h = x @ local(self.w_gate_up)  # (…, 2f/tp): this rank's [gate_r | up_r]
        if self.b_gate_up is not None:
            h = h + local(self.b_gate_up)
        y = activate(h, self.activation, alpha=self.alpha, limit=self.limit) @ local(self.w_down)  # (…, d) partial
        y = DTensor.from_local(y, self.mesh, [Partial()], run_check=False).redistribute(self.mesh, [Replicate()])
        y = y.to_local()
        return y if self.b_down is None else y + local(self.b_down)


def gate_up_orders(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{state-dict name: (dim, parts)} of every parameter kept in rank order."""
    orders = {}
    for name, m in model.named_modules():
        if isinstance(m, TensorParallelFFN) and m.gate_up_parts > 1:
            prefix = _fqn(name)
            orders[f"{prefix}w_gate_up"] = (1, m.gate_up_parts)
            if m.b_gate_up is not None:
                orders[f"{prefix}b_gate_up"] = (0, m.gate_up_parts)
    return orders


def _fqn(module_name: str) -> str:
    """The state-dict prefix of a submodule: FSDP and checkpoint wrappers add no names of their own here."""
    return f"{module_name}." if module_name else ""


def _head_norm() -> SequenceParallel:
    """A norm over head_dim on (B, S, heads, head_dim) whose dim 2 holds this rank's heads: the weight stays
    whole on every rank and its gradient is summed over the ranks (SequenceParallel on the heads dim)."""
    return SequenceParallel(sequence_dim=2, use_local_output=True)


def _attention_plan(name: str, attn: nn.Module) -> dict[str, object]:
    for attribute, part in UNSPLIT_ATTENTION_PARTS.items():  # their heads (a gate's bias too) would need splitting
        if getattr(attn, attribute, None) is not None:
            raise TensorParallelError(f"{name}: {part}: not split by tensor parallelism yet")
    if attention_kind(attn) == "mla":
        up = {"q_proj": ColwiseParallel()} if attn.q_proj is not None else {"q_b_proj": ColwiseParallel()}
        return up | {"kv_b_proj": ColwiseParallel(), "o_proj": RowwiseParallel()}
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None and q_norm.weight.shape[-1] != getattr(attn, "plan", attn).head_dim:
        raise TensorParallelError(
            f"{name}: a qk-norm over the whole projection (qk_norm_scope: projection) spans every head"
        )
    plan: dict[str, object] = {name: ColwiseParallel() for name in ("q_proj", "k_proj", "v_proj")}
    plan["o_proj"] = RowwiseParallel()
    if q_norm is not None:  # per head, on (B, S, heads, head_dim): this rank's heads are dim 2
        plan |= {"q_norm": _head_norm(), "k_norm": _head_norm()}
    return plan


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Split the embedding and head by vocabulary, and every attention module and dense FFN of ``model`` (a moec.nn
    MoecModel or a generated model.py's Model), over ``tp_mesh`` in place (works on ``meta``)."""
    _check_heads(model, tp_mesh.size())
    _split_vocabulary(model, tp_mesh)
    for name, m in list(model.named_modules()):
        if isinstance(getattr(m, "base", None), nn.Module):  # the frozen FFN under LoRA experts
            raise TensorParallelError(f"{name}: LoRA experts (expert_kind: lora) are not split by TP yet")
        kind = attention_kind(m)
        if kind is not None:
            parallelize_module(m, tp_mesh, _attention_plan(name, m))
        if kind == "mla":  # kv_b_proj's input is the latent
            m.kv_a_proj_with_mqa.register_forward_hook(_RotaryKeyGrad(m.kv_b_proj.in_features, tp_mesh))
        for child_name, child in list(m.named_children()):
            if is_dense_ffn(child):
                setattr(m, child_name, TensorParallelFFN(child, tp_mesh))


def _split_vocabulary(model: nn.Module, mesh: DeviceMesh) -> None:
    """Embedding rows and head rows by vocabulary (both (V, d), Shard(0)): the embedding's per-rank lookups are
    summed, the head's logits gathered whole (the loss needs every logit). A tied head is the same tensor with
    the same placement, so it is tied again to the embedding's shard."""
    tied = model.lm_head.weight is model.embed.weight
    plan = {"embed": RowwiseParallel(input_layouts=Replicate()), "lm_head": ColwiseParallel(output_layouts=Replicate())}
    parallelize_module(model, mesh, plan)
    if tied:
        model.lm_head.weight = model.embed.weight


class _RotaryKeyGrad:
    """A forward hook on MLA's kv_a_proj_with_mqa. Its latent columns reach every head through the column-
    parallel kv_b_proj, whose backward already sums their gradient; the rotary key columns go straight to this
    rank's heads, so their gradient is summed here."""

    def __init__(self, kv_lora_rank: int, mesh: DeviceMesh):
        self.kv_lora_rank, self.mesh = kv_lora_rank, mesh

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        latent, k_rot = out.split([self.kv_lora_rank, out.shape[-1] - self.kv_lora_rank], dim=-1)
        return torch.cat((latent, sum_grad(k_rot, self.mesh)), dim=-1)


def _check_heads(model: nn.Module, tp: int) -> None:
    for name, m in model.named_modules():
        if attention_kind(m) is not None:
            heads = attention_heads(m)
            if any(h % tp for h in heads):
                raise TensorParallelError(f"{name}: head counts {heads} do not divide by tp = {tp}")
