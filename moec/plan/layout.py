"""A parallel layout: how many ranks shard the data (FSDP), the experts (EP), the matmuls (TP) and the layers (PP).

The mesh convention is torchtitan's (docs/scaling.md §1): the world is pp × dp_shard × tp ranks, and expert
parallelism borrows ranks from the dp_shard × tp block rather than adding a dimension of its own. The routed
experts then see that block as efsdp × ep: ep ranks split the experts between them, and each expert shard is
FSDP-sharded over the efsdp ranks that hold the same experts. Everything else is FSDP-sharded over dp_shard
(and split by tp). Pure Python; never imports torch (moec.dist imports this module to build its meshes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moec.spec.plan import DenseFFNPlan, MoEPlan, ResolvedModel

AUTO = -1  # dp_shard: every rank left over after tp and pp

# A problem is (field, message): the field is the Layout attribute it concerns, or "world" for the rank count.
FieldProblem = tuple[str, str]


class LayoutError(ValueError):
    """A layout that cannot be placed on the world or the model; the message quotes every problem."""


@dataclass(frozen=True)
class Layout:
    dp_shard: int = AUTO
    ep: int = 1
    tp: int = 1
    pp: int = 1

    def resolved(self, world: int) -> Layout:
        """This layout with dp_shard filled in so that dp_shard·tp·pp == world. Raises LayoutError when the
        world cannot be split that way (see :meth:`problems` for every reason at once)."""
        problems = self._world_problems(world)
        if problems:
            raise LayoutError("; ".join(message for _, message in problems))
        if self.dp_shard != AUTO:
            return self
        return replace(self, dp_shard=world // (self.tp * self.pp))

    @property
    def world(self) -> int:
        """pp·dp_shard·tp, the number of ranks (a resolved layout only)."""
        self._require_resolved("world")
        return self.pp * self.dp_shard * self.tp

    @property
    def efsdp(self) -> int:
        """The FSDP degree of the routed experts: ep·efsdp = dp_shard·tp (torchtitan's convention)."""
        self._require_resolved("efsdp")
        return self.dp_shard * self.tp // self.ep

    def problems(self, plan: ResolvedModel, world: int) -> list[str]:
        """Every reason this layout is invalid for ``plan`` on ``world`` ranks, each quoting the values; [] if
        none."""
        return [message for _, message in self.field_problems(plan, world)]

    def field_problems(self, plan: ResolvedModel, world: int) -> list[FieldProblem]:
        """:meth:`problems`, each with the field it concerns (ep, tp, pp, dp_shard, or world)."""
        problems = self._world_problems(world)
        if problems:  # without a dp_shard, the checks of the model alone still apply
            return problems + _model_problems(plan, self, check_ep_block=False)
        return _model_problems(plan, self.resolved(world), check_ep_block=True)

    def _require_resolved(self, what: str) -> None:
        if self.dp_shard == AUTO:
            raise LayoutError(f"{what} needs a resolved layout (dp_shard is -1); call resolved(world) first")

    def _world_problems(self, world: int) -> list[FieldProblem]:
        problems = [
            (name, f"{name} must be a positive integer, got {value}")
            for name, value in (("ep", self.ep), ("tp", self.tp), ("pp", self.pp))
            if value < 1
        ]
        if self.dp_shard < 1 and self.dp_shard != AUTO:
            problems.append(
                ("dp_shard", f"dp_shard must be a positive integer or -1 (all ranks left over), got {self.dp_shard}")
            )
        if world < 1:
            problems.append(("world", f"the number of ranks must be positive, got {world}"))
        if problems:
            return problems
        tp_pp = self.tp * self.pp
        if self.dp_shard == AUTO and world % tp_pp:
            problems.append(("world", f"{world} ranks do not divide by tp·pp = {self.tp}·{self.pp} = {tp_pp}"))
        elif self.dp_shard != AUTO and self.dp_shard * tp_pp != world:
            product = self.dp_shard * tp_pp
            problems.append(
                ("dp_shard", f"dp_shard·tp·pp = {self.dp_shard}·{self.tp}·{self.pp} = {product}, not the {world} ranks")
            )
        return problems


def _model_problems(plan: ResolvedModel, layout: Layout, *, check_ep_block: bool) -> list[FieldProblem]:
    problems = _expert_problems(plan, layout, check_ep_block) + _tensor_parallel_problems(plan, layout.tp)
    if layout.pp > plan.n_layers:
        problems.append(("pp", f"pp = {layout.pp} exceeds the {plan.n_layers} layers (every stage needs a layer)"))
    return problems


def _expert_problems(plan: ResolvedModel, layout: Layout, check_ep_block: bool) -> list[FieldProblem]:
    ep = layout.ep
    if ep <= 1:  # a non-positive ep is already reported
        return []
    experts = sorted({lp.ffn.n_experts for lp in (*plan.layers, *plan.mtp) if isinstance(lp.ffn, MoEPlan)})
    if not experts:
        return [("ep", f"ep = {ep} needs MoE layers, and {plan.name} has none")]
    problems = [("ep", f"n_experts = {E} does not divide by ep = {ep}") for E in experts if E % ep]
    # EP borrows its ranks from the dp_shard × tp block, so it must tile that block exactly
    if check_ep_block and (layout.dp_shard * layout.tp) % ep:
        block = layout.dp_shard * layout.tp
        problems.append(
            (
                "ep",
                f"dp_shard·tp = {layout.dp_shard}·{layout.tp} = {block} does not divide by ep = {ep} "
                "(EP borrows its ranks from the FSDP and TP ranks)",
            )
        )
    return problems


def _tensor_parallel_problems(plan: ResolvedModel, tp: int) -> list[FieldProblem]:
    """TP splits attention heads and FFN columns across ranks, so each must divide evenly; a norm over a
    whole projection (OLMoE's qk-norm) would need every head on one rank."""
    if tp <= 1:  # a non-positive tp is already reported
        return []
    widths: dict[str, set[int]] = {"n_heads": set(), "n_kv_heads": set(), "d_ff": set(), "shared experts' width": set()}
    projection_norm = False
    for lp in (*plan.layers, *plan.mtp):
        a = lp.attention
        widths["n_heads"].add(a.n_heads)
        widths["n_kv_heads"].add(a.n_kv_heads)
        projection_norm |= a.qk_norm and a.qk_norm_kind == "model" and a.qk_norm_scope == "projection"
        if isinstance(lp.ffn, DenseFFNPlan):
            widths["d_ff"].add(lp.ffn.d_ff)
        elif isinstance(lp.ffn, MoEPlan) and lp.ffn.n_shared_experts:
            widths["shared experts' width"].add(lp.ffn.n_shared_experts * lp.ffn.d_ff_shared)
    problems = [
        ("tp", f"{name} = {value} does not divide by tp = {tp}")
        for name, values in widths.items()
        for value in sorted(values)
        if value % tp
    ]
    if any(getattr(lp.attention, "has_indexer", False) for lp in plan.layers):  # DeepSeek replicates the indexer
        problems.append(("tp", f"tp = {tp} splits the attention heads, not the sparse attention's indexer"))
    mixers = sorted({lp.mixer_kind for lp in plan.layers} - {"attention", "none"})
    if mixers:  # moec.dist splits attention and FFNs only (docs/mixers.md, "Analyzer and commands")
        problems.append(("tp", f"tp = {tp} splits attention and FFNs, not the token mixers {', '.join(mixers)}"))
    if projection_norm:
        problems.append(
            ("tp", f"tp = {tp} splits the heads, but the qk-norm spans the whole projection (scope projection)")
        )
    return problems + _unsplit_attention_parts(plan, tp)


# The per-head attention parts tensor parallelism does not split yet, by the attention module's attribute that holds
# them: moec/dist/tensor_parallel.py refuses such a module by these names, and the planner the layout, alike
UNSPLIT_ATTENTION_PARTS = {
    "sinks": "attention sinks (attention.sinks)",
    "gate_proj": "an attention output gate (attention.output_gate)",
}


def _unsplit_attention_parts(plan: ResolvedModel, tp: int) -> list[FieldProblem]:
    """Per-head attention parts moec.dist's tensor parallelism refuses (moec/dist/tensor_parallel.py): the plan must
    not offer a layout the run would refuse."""
    attns = [lp.attention for lp in (*plan.layers, *plan.mtp) if lp.has_attention]
    used = {"sinks": any(a.sinks for a in attns), "gate_proj": any(a.gate_width for a in attns)}
    return [("tp", f"tp = {tp} splits the heads, not {UNSPLIT_ATTENTION_PARTS[k]}") for k, on in used.items() if on]
