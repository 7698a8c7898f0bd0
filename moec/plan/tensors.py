"""Every parameter tensor of a moec model, by name and shape, without building it.

The planner needs shapes, not only counts: FSDP2 shards each tensor along its dim 0 and pads that dim up to
a multiple of the shard count, and tensor parallelism splits one chosen dim. The names and shapes are
moec.nn's (tests hold them equal to a model built on the meta device, and the counts equal to the analyzer's
components). Pure Python; never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from moec.analyze.counts import layer_parts, model_edge_parts
from moec.spec.plan import AttentionPlan, DenseFFNPlan, LayerPlan, MoEPlan, NormPlan, ResolvedModel

ROOT = "root"  # the FSDP unit outside the blocks: embedding, final norm, head


@dataclass(frozen=True)
class ParamTensor:
    name: str  # as in moec.nn's named_parameters()
    shape: tuple[int, ...]
    component: str  # moec.analyze.counts.COMPONENTS, or MTP's "projection"
    unit: str  # the FSDP unit that holds it: "layers.{i}", "mtp.{j}" or ROOT
    tp_dim: int | None  # the dim tensor parallelism splits; None: replicated over tp
    expert: bool = False  # a routed expert's tensor: EP splits dim 0 (the expert index) instead of TP

    @property
    def numel(self) -> int:
        return prod(self.shape)


def model_tensors(plan: ResolvedModel) -> list[ParamTensor]:
    """All parameter tensors, each once (a tied head is the embedding's tensor), in moec.nn's order."""
    d, V = plan.d_model, plan.vocab_size
    tensors = [ParamTensor("embed.weight", (V, d), "embedding", ROOT, 0)]  # vocab-parallel under TP
    if plan.positions.kind == "learned":
        tensors.append(ParamTensor("pos_embed.weight", (plan.max_seq_len, d), "embedding", ROOT, None))
    for lp in plan.layers:
        tensors += block_tensors(f"layers.{lp.index}", lp, plan)
    if plan.norm.final_norm:
        tensors += _norm("norm", d, plan.norm, "norms", ROOT)
    if not plan.tie_embeddings:
        tensors.append(ParamTensor("lm_head.weight", (V, d), "head", ROOT, 0))
    if plan.head_bias:
        tensors.append(ParamTensor("lm_head.bias", (V,), "head", ROOT, 0))
    for j, lp in enumerate(plan.mtp):
        tensors += _mtp_tensors(f"mtp.{j}", lp, plan)
    return tensors


def inventory_disagreement(plan: ResolvedModel) -> str | None:
    """None when the tensor list holds exactly the analyzer's parameters, component by component (MTP apart, as
    the analyzer reports it); else what differs. The planner shards and moves these tensors: a block feature
    it does not list yet would silently leave weights out of every figure, so the command refuses instead."""
    from moec.analyze import analyze

    main = plan.replace(mtp=())
    listed: dict[str, int] = {}
    for t in model_tensors(main):
        listed[t.component] = listed.get(t.component, 0) + t.numel
    counted = {c.name: c.params for c in analyze(main).components if c.params}
    listed = {k: v for k, v in listed.items() if v}
    if listed == counted:
        return None
    differ = sorted(set(listed) | set(counted))
    shown = ", ".join(
        f"{k} {listed.get(k, 0):,} vs {counted.get(k, 0):,}" for k in differ if listed.get(k) != counted.get(k)
    )
    return f"the planner's tensor list disagrees with the analyzer's parameters ({shown})"


def frozen_components(plan: ResolvedModel) -> set[str]:
    """The components whose weights get no gradient, as the analyzer decides it (LoRA bases, `frozen`)."""
    parts = [*(layer_parts(lp, plan) for lp in plan.layers), model_edge_parts(plan)]
    return {name for p in parts for name, part in p.items() if part.frozen}


def block_tensors(prefix: str, layer: LayerPlan, plan: ResolvedModel) -> list[ParamTensor]:
    unit = prefix.removesuffix(".block")
    d = plan.d_model
    sandwich = plan.norm.placement == "sandwich"  # a norm after each sublayer too
    moe_norm = isinstance(layer.ffn, MoEPlan) and layer.ffn.output_norm  # the MoE block's own (A.X-K1)
    return [
        *_norm(f"{prefix}.attn_norm", d, plan.norm, "norms", unit),
        *_attention(f"{prefix}.attn", layer.attention, d, plan.norm, unit),
        *(_norm(f"{prefix}.attn_post_norm", d, plan.norm, "norms", unit) if sandwich else []),
        # parallel: the FFN reads attn_norm's output (Cohere2-MoE)
        *(_norm(f"{prefix}.ffn_norm", d, plan.norm, "norms", unit) if plan.norm.placement != "parallel" else []),
        *_ffn(f"{prefix}.ffn", layer.ffn, d, unit),
        *(_norm(f"{prefix}.ffn_post_norm", d, plan.norm, "norms", unit) if sandwich or moe_norm else []),
    ]


def _mtp_tensors(prefix: str, layer: LayerPlan, plan: ResolvedModel) -> list[ParamTensor]:
    d = plan.d_model
    return [
        *_norm(f"{prefix}.enorm", d, plan.norm, "norms", prefix),
        *_norm(f"{prefix}.hnorm", d, plan.norm, "norms", prefix),
        ParamTensor(f"{prefix}.eh_proj.weight", (d, 2 * d), "projection", prefix, None),
        *block_tensors(f"{prefix}.block", layer, plan),
        *_norm(f"{prefix}.norm", d, plan.norm, "norms", prefix),
    ]


def _norm(prefix: str, dim: int, norm: NormPlan, component: str, unit: str) -> list[ParamTensor]:
    names = ("weight", "bias")[: norm.params_per_dim]
    return [ParamTensor(f"{prefix}.{n}", (dim,), component, unit, None) for n in names]


def _linear(prefix: str, n_in: int, n_out: int, bias: bool, unit: str, tp_dim: int | None) -> list[ParamTensor]:
    """nn.Linear: weight (out, in). Column-parallel (tp_dim 0) also splits the bias; row-parallel (tp_dim 1)
    leaves it whole, as Megatron does."""
    out = [ParamTensor(f"{prefix}.weight", (n_out, n_in), "attention", unit, tp_dim)]
    if bias:
        out.append(ParamTensor(f"{prefix}.bias", (n_out,), "attention", unit, 0 if tp_dim == 0 else None))
    return out


def _attention(prefix: str, a: AttentionPlan, d: int, norm: NormPlan, unit: str) -> list[ParamTensor]:
    if a.kind == "mla":
        return _mla(prefix, a, d, norm, unit)
    if a.kind == "moa":
        return _moa(prefix, a, d, unit)
    h, kv, hd, vd = a.n_heads, a.n_kv_heads, a.head_dim, a.v_dim
    out = [
        *_linear(f"{prefix}.q_proj", d, h * hd, a.bias, unit, 0),
        *_linear(f"{prefix}.k_proj", d, kv * hd, a.bias, unit, 0),
        *_linear(f"{prefix}.v_proj", d, kv * vd, a.bias, unit, 0),
        *_linear(f"{prefix}.o_proj", h * vd, d, a.out_bias, unit, 1),
    ]
    if a.gate_width:  # split by heads like q_proj under tensor parallelism
        out += _linear(f"{prefix}.gate_proj", d, a.gate_width, a.output_gate_bias == "qkv" and a.bias, unit, 0)
    if a.gate_width and a.output_gate_bias == "head":  # one bias per head (Beam), split by heads too
        out.append(ParamTensor(f"{prefix}.gate_bias", (h,), "attention", unit, 0))
    if a.qk_norm and a.qk_norm_kind == "model":  # the l2 kind is weightless
        per_head = a.qk_norm_scope == "head"
        out += _norm(f"{prefix}.q_norm", hd if per_head else h * hd, norm, "attention", unit)
        out += _norm(f"{prefix}.k_norm", hd if per_head else kv * hd, norm, "attention", unit)
    return out + _sinks(prefix, a, unit)


def _mla(prefix: str, a: AttentionPlan, d: int, norm: NormPlan, unit: str) -> list[ParamTensor]:
    """MLA under TP: the low-rank down-projections and their norms stay whole, the per-head up-projections
    split by head (docs/scaling.md §4)."""
    assert a.kv_lora_rank and a.qk_nope_head_dim and a.qk_rope_head_dim is not None and a.v_head_dim
    h, rope, nope, dv = a.n_heads, a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim
    out: list[ParamTensor] = []
    if a.q_lora_rank:
        out += _linear(f"{prefix}.q_a_proj", d, a.q_lora_rank, False, unit, None)
        out += _norm(f"{prefix}.q_a_layernorm", a.q_lora_rank, norm, "attention", unit)
        out += _linear(f"{prefix}.q_b_proj", a.q_lora_rank, h * (nope + rope), False, unit, 0)
    else:
        out += _linear(f"{prefix}.q_proj", d, h * (nope + rope), False, unit, 0)
    out += _linear(f"{prefix}.kv_a_proj_with_mqa", d, a.kv_lora_rank + rope, False, unit, None)
    out += _norm(f"{prefix}.kv_a_layernorm", a.kv_lora_rank, norm, "attention", unit)
    out += _linear(f"{prefix}.kv_b_proj", a.kv_lora_rank, h * (nope + dv), False, unit, 0)
    out += _linear(f"{prefix}.o_proj", h * dv, d, False, unit, 1)
    if a.gate_width:  # Ling 3's per-head gate, no bias
        out += _linear(f"{prefix}.gate_proj", d, a.gate_width, False, unit, 0)
    return out + _sinks(prefix, a, unit)


def _moa(prefix: str, a: AttentionPlan, d: int, unit: str) -> list[ParamTensor]:
    """A mixture of attention heads (moec.nn.moa): the router, E experts' stacked query and output projections,
    the shared k/v projections and the output bias; replicated under tensor parallelism (moec.dist does not
    split it)."""
    assert a.moa_n_experts
    E, h, kv, hd = a.moa_n_experts, a.n_heads, a.n_kv_heads, a.head_dim
    shapes = {"router.weight": (E, d), "q_experts": (E, h * hd, d), "o_experts": (E, d, h * hd),
              "k_proj.weight": (kv * hd, d), "v_proj.weight": (kv * hd, d)}  # fmt: skip
    if a.out_bias:
        shapes["out_bias"] = (d,)
    return [ParamTensor(f"{prefix}.{n}", s, "attention", unit, None) for n, s in shapes.items()]


def _sinks(prefix: str, a: AttentionPlan, unit: str) -> list[ParamTensor]:
    return [ParamTensor(f"{prefix}.sinks", (a.n_heads,), "attention", unit, 0)] if a.sinks else []


def _dense(prefix: str, d: int, f: int, gated: bool, bias: bool, component: str, unit: str) -> list[ParamTensor]:
    """moec's DenseFFN stores w_gate_up (d, 2f or f) and w_down (f, d): TP splits the f dim of each."""
    width = 2 * f if gated else f
    out = [
        ParamTensor(f"{prefix}.w_gate_up", (d, width), component, unit, 1),
        ParamTensor(f"{prefix}.w_down", (f, d), component, unit, 0),
    ]
    if bias:
        out.append(ParamTensor(f"{prefix}.b_gate_up", (width,), component, unit, 0))
        out.append(ParamTensor(f"{prefix}.b_down", (d,), component, unit, None))
    return out


def _router(prefix: str, f: MoEPlan, d: int, unit: str) -> list[ParamTensor]:
    """The router's weights: none for hash routing (a fixed token-id hash), one (E, d) matrix, or a router MLP's
    (h, d) and (E, h) (docs/routing.md)."""
    E, hidden = f.n_experts, f.router.mlp_hidden
    if f.router.kind == "hash":
        return []
    if hidden:
        return [
            ParamTensor(f"{prefix}.router.hidden.weight", (hidden, d), "router", unit, None),
            ParamTensor(f"{prefix}.router.weight", (E, hidden), "router", unit, None),
        ]
    return [ParamTensor(f"{prefix}.router.weight", (E, d), "router", unit, None)]


def _ffn(prefix: str, f: DenseFFNPlan | MoEPlan, d: int, unit: str) -> list[ParamTensor]:
    if isinstance(f, DenseFFNPlan):
        return _dense(prefix, d, f.d_ff, f.gated, f.bias, "dense_ffn", unit)
    E = f.n_experts
    out = _router(prefix, f, d, unit)
    if f.router.bias:
        out.append(ParamTensor(f"{prefix}.router.bias", (E,), "router", unit, None))
    if f.router.selection_bias and f.router.selection_bias_parameter:  # ERNIE-4.5: a counted parameter
        out.append(ParamTensor(f"{prefix}.router.expert_bias", (E,), "router", unit, None))
    if f.expert_kind == "lora":
        out += _dense(f"{prefix}.base", d, f.d_ff, f.gated, f.bias, "base_ffn", unit)
        out += _lora_experts(f"{prefix}.experts", f, d, unit)
    else:
        out += _experts(f"{prefix}.experts", f, d, unit)
    if f.n_shared_experts:
        width = f.n_shared_experts * f.d_ff_shared
        out += _dense(f"{prefix}.shared", d, width, f.gated, f.bias, "shared_experts", unit)
    if f.shared_gate:
        out.append(ParamTensor(f"{prefix}.shared_gate.weight", (1, d), "shared_experts", unit, None))
    if f.output_bias:  # one bias on the combined output (JetMoE), counted with the routed experts
        out.append(ParamTensor(f"{prefix}.output_bias", (d,), "routed_experts", unit, None))
    return out


def _experts(prefix: str, f: MoEPlan, d: int, unit: str) -> list[ParamTensor]:
    E, width = f.n_experts, (2 if f.gated else 1) * f.d_ff
    shapes = {"w_gate_up": (E, d, width), "w_down": (E, f.d_ff, d)}
    if f.bias:
        shapes |= {"b_gate_up": (E, width), "b_down": (E, d)}
    return [ParamTensor(f"{prefix}.{n}", s, "routed_experts", unit, None, expert=True) for n, s in shapes.items()]


def _lora_experts(prefix: str, f: MoEPlan, d: int, unit: str) -> list[ParamTensor]:
    assert f.lora_rank is not None
    E, r = f.n_experts, f.lora_rank
    out = []
    for name in ("gate", "up", "down") if f.gated else ("up", "down"):
        n_in, n_out = (f.d_ff, d) if name == "down" else (d, f.d_ff)
        out.append(ParamTensor(f"{prefix}.lora_a_{name}", (E, n_in, r), "routed_experts", unit, None, expert=True))
        out.append(ParamTensor(f"{prefix}.lora_b_{name}", (E, r, n_out), "routed_experts", unit, None, expert=True))
    return out
