"""What one rank holds: which layers (its pipeline stage), and the local numel of each tensor it shards.

Sharding rules (docs/scaling.md §2), applied to each tensor of moec.plan.tensors in this order:
1. Pipeline: stage s holds a contiguous run of layers, as even as possible (the first L mod pp stages get
   one more); the first stage also holds the embedding, the last the final norm, the head and the MTP modules
   (a tied head: both end stages hold the one tensor).
2. Routed experts: EP splits dim 0 (the expert index) into ep equal parts; FSDP2 then shards the part's dim 0
   over the efsdp ranks that hold the same experts.
3. Everything else: TP splits the tensor's tp_dim (moec.plan.tensors) into tp parts; FSDP2 then shards the
   result's dim 0 over the dp_shard ranks.
Both split like torch.chunk: ⌈n/parts⌉ rows per part, the last parts shorter or empty. FSDP2 allocates the
⌈n/parts⌉ rows on every rank (its padding); ``*_padded`` counts that allocation, the other figures the
unpadded local numel that ``param.to_local().numel()`` reports.

Rank coordinates follow torchtitan's mesh (moec.plan.layout): rank = (stage·dp_shard + dp)·tp + t, and in the
sparse mesh the position j = dp·tp + t within the stage is (efsdp = j // ep, ep = j mod ep).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from moec.plan.layout import Layout
from moec.plan.tensors import ROOT, ParamTensor, frozen_components, model_tensors
from moec.spec.plan import ResolvedModel


@dataclass(frozen=True)
class RankParams:
    """Parameter numel held by one rank."""

    experts: int  # routed-expert tensors, unpadded local numel
    other: int  # every other tensor, unpadded local numel
    experts_padded: int  # what FSDP2 allocates: each tensor's FSDP dim 0 padded to a multiple of its shard count
    other_padded: int
    frozen_experts_padded: int  # the frozen share of experts_padded (no gradient, no optimizer state)
    frozen_other_padded: int  # the frozen share of other_padded

    @property
    def total(self) -> int:
        return self.experts + self.other

    @property
    def total_padded(self) -> int:
        return self.experts_padded + self.other_padded

    @property
    def frozen_padded(self) -> int:
        return self.frozen_experts_padded + self.frozen_other_padded


def chunk_rows(n: int, parts: int, index: int) -> int:
    """Rows of part ``index`` when n rows split like torch.chunk (and FSDP2, DTensor's Shard) split them."""
    size = -(-n // parts)
    return max(0, min(size, n - index * size))


def stage_layers(n_layers: int, pp: int) -> list[range]:
    """The layer indices of each pipeline stage: contiguous, the first L mod pp stages one layer longer."""
    base, extra = divmod(n_layers, pp)
    bounds = [0]
    for s in range(pp):
        bounds.append(bounds[-1] + base + (1 if s < extra else 0))
    return [range(bounds[s], bounds[s + 1]) for s in range(pp)]


def stage_tensors(
    plan: ResolvedModel, pp: int, stage: int, tensors: list[ParamTensor] | None = None
) -> list[ParamTensor]:
    """The tensors the ranks of pipeline ``stage`` hold (rule 1 above)."""
    tensors = model_tensors(plan) if tensors is None else tensors
    layers = {f"layers.{i}" for i in stage_layers(plan.n_layers, pp)[stage]}
    first, last = stage == 0, stage == pp - 1

    def held(t: ParamTensor) -> bool:
        if t.unit.startswith("layers."):
            return t.unit in layers
        if t.unit != ROOT:  # an MTP module runs after the last block
            return last
        if t.component == "embedding":
            return first or (last and plan.tie_embeddings and t.name == "embed.weight")
        return last

    return [t for t in tensors if held(t)]


def local_numel(t: ParamTensor, layout: Layout, dp: int, tp_index: int) -> tuple[int, int]:
    """(unpadded, padded) numel of tensor t on the rank at data-parallel index dp, tensor-parallel index
    tp_index of a resolved layout (rules 2 and 3 above)."""
    shape = list(t.shape)
    if t.expert:
        shape[0] //= layout.ep  # Layout.problems guarantees ep divides the experts
        shards, index = layout.efsdp, (dp * layout.tp + tp_index) // layout.ep
    else:
        if t.tp_dim is not None:
            shape[t.tp_dim] = chunk_rows(shape[t.tp_dim], layout.tp, tp_index)
        shards, index = layout.dp_shard, dp
    rest = prod(shape[1:])
    return chunk_rows(shape[0], shards, index) * rest, -(-shape[0] // shards) * rest


def rank_params(plan: ResolvedModel, layout: Layout, rank: int = 0) -> RankParams:
    """Parameter numel on global ``rank`` of a resolved ``layout`` (dp_shard filled in). Rank 0 holds the
    largest torch.chunk shares of the first stage; with every dim dividing evenly all ranks of a stage agree."""
    if not 0 <= rank < layout.world:
        raise ValueError(f"rank {rank} is outside the {layout.world} ranks of {layout}")
    stage, j = divmod(rank, layout.dp_shard * layout.tp)
    dp, tp_index = divmod(j, layout.tp)
    held = stage_tensors(plan, layout.pp, stage)
    return count_params(held, frozen_components(plan), layout, dp, tp_index)


def count_params(held: list[ParamTensor], frozen: set[str], layout: Layout, dp: int, tp_index: int) -> RankParams:
    """:func:`rank_params` over the tensors ``held`` by one stage, at data-parallel index dp and tensor-parallel
    index tp_index; ``frozen`` names the frozen components."""
    counts = dict.fromkeys(("experts", "other", "experts_padded", "other_padded"), 0)
    counts |= {"frozen_experts_padded": 0, "frozen_other_padded": 0}
    for t in held:
        unpadded, padded = local_numel(t, layout, dp, tp_index)
        group = "experts" if t.expert else "other"
        counts[group] += unpadded
        counts[f"{group}_padded"] += padded
        counts[f"frozen_{group}_padded"] += padded if t.component in frozen else 0
    return RankParams(**counts)
