"""Kimi-Linear (``model_type`` kimi_linear, KimiLinearForCausalLM; Moonshot AI, arXiv 2510.26692): Kimi Delta
Attention (moec's ``kda`` mixer, docs/mixers.md) on most layers and multi-head latent attention without any
rotation (NoPE) on the others; a dense SwiGLU MLP before ``first_k_dense_replace``, then DeepSeek-V3's MoE (sigmoid
scores, a selection-only bias, top-2-sum groups, renormalised, scaled) with the shared experts fused into one MLP.

Which layers are KDA: ``layer_types`` when given (``linear_attention``), else ``linear_attn_config``'s
``kda_layers`` and ``full_attn_layers`` (1-based), else full attention on layers 4, 8, … (0-based), as
KimiLinearConfig decides. The KDA sizes come from ``linear_attn_config`` (num_heads, head_dim,
short_conv_kernel_size), else the top-level linear_num_heads, linear_head_dim and linear_conv_kernel_dim.

Release configs spell several fields by the names of Moonshot's code (num_experts, moe_renormalize,
model_max_length, …): transformers' attribute_map names the same fields, and so does :data:`FAMILY`'s aliases.
Their own fields transformers does not read (mla_use_nope, moe_router_activation_func, moe_layer_freq,
use_grouped_topk) are accepted where they say what transformers builds, refused as ambiguous where they do not.

Checkpoints, the releases and what transformers' save_pretrained writes alike, keep Moonshot's names
(:class:`KimiLinearMapper`): the MoE block and layer 0's dense MLP under ``block_sparse_moe.``, the routed experts
as ``experts.{e}.w1/w3/w2``, the KDA decay's parameters directly under ``self_attn.`` (``f_a_proj``, ``f_b_proj``,
``dt_bias``, ``A_log``) and three convolutions ``q_conv1d``, ``k_conv1d``, ``v_conv1d`` (D, 1, K), which moec
stacks into its one ``conv1d`` (3D, 1, K) as transformers does; transformers' in-memory names (``mlp.``,
``forget_gate.``, one ``conv1d``) load too.

The exporter writes a release-style config.json (Moonshot's field names, ``linear_attn_config`` with 1-based
layer lists) for a plan of KDA layers as transformers builds them (ranks head_dim, the softplus decay, the model's
eps, the chunk the import takes) and NoPE MLA, the dense layers first, DeepSeek-V3's router.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, is_int, shown
from moec.hf.families._common import (
    LINEAR_FULL_TYPES,
    PLAIN_ACTIVATIONS,
    base,
    defaults,
    dense_layers_ffn,
    ignored_field_agrees,
    linear_full_layer_types,
    mla,
    mlp_layer_kinds,
    moe_core,
    shared_experts,
)
from moec.hf.families._export_common import dense_plan, export_base, mla_fields, moe_plan, one
from moec.hf.families.dots1 import deepseek_v3_router
from moec.hf.families.glm4_moe import mtp_not_built
from moec.hf.mapper import Mapper
from moec.mixers.kda import KDASection
from moec.mixers.kda import Plan as KDAPlan
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=163840, hidden_size=2304, intermediate_size=9216, moe_intermediate_size=1024,
                    num_hidden_layers=27, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=1,
                    routed_scaling_factor=2.446, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
                    v_head_dim=128, qk_nope_head_dim=128, n_group=1, topk_group=1, num_experts_per_tok=8,
                    norm_topk_prob=True, max_position_embeddings=1048576, rms_norm_eps=1e-5, attention_bias=False,
                    num_local_experts=256, mlp_layer_types=None, layer_types=None, linear_head_dim=128,
                    linear_num_heads=32, linear_conv_kernel_dim=4, first_k_dense_replace=1, head_dim=None)
# fmt: on

_LINEAR, _FULL = LINEAR_FULL_TYPES
# linear_attn_config's keys → the top-level fields transformers falls back to (KimiLinearConfig.__post_init__)
_KDA_SIZES = {"num_heads": "linear_num_heads", "head_dim": "linear_head_dim", "short_conv_kernel_size": "linear_conv_kernel_dim"}  # fmt: skip


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "KimiLinear")
    _no_positions(c, d)
    mla(c, d, "KimiLinear")
    linear = HFConfig(c.mapping("linear_attn_config"), {}, "linear_attn_config.")
    c.children.append(linear)
    _mixers(c, linear, d)
    _kda(c, linear, d)
    moe_block(c, d, "KimiLinear")
    mtp_not_built(c, d)


def _no_positions(c: HFConfig, d: Draft) -> None:
    """KimiLinearAttention rotates nothing (its MLA is NoPE: the rotary key part passes through as it is) and
    the model has no position table; rope_theta and rope_scaling, which release configs carry, reach nothing."""
    for path in [p for p in d.fields if p.startswith("model.positions.")]:
        del d.fields[path]
    d.put("model.positions.kind", "none", "KimiLinearAttention is NoPE MLA: no rotary anywhere (KDA carries order)")
    ignored_field_agrees(
        c,
        d,
        "mla_use_nope",
        True,
        "transformers' KimiLinearAttention never rotates (NoPE), Moonshot's code rotates the MLA rope dims when "
        "mla_use_nope is false: ambiguous",
    )


def _layer_types(c: HFConfig, linear: HFConfig, d: Draft) -> tuple[list[str] | None, str]:
    """Each layer's kind as KimiLinearConfig decides it, and where that came from."""
    if c.value("layer_types") is not None:
        return linear_full_layer_types(c, d)
    kda, full = linear.value("kda_layers"), linear.value("full_attn_layers")
    if (kda is None) != (full is None):
        lone, other = ("kda_layers", "full_attn_layers") if full is None else ("full_attn_layers", "kda_layers")
        linear.bad(lone, f"given without {other}: transformers then ignores it (full attention on layers 4, 8, …), "
                   "Moonshot's code requires both: ambiguous")  # fmt: skip
        return None, ""
    if kda is None or full is None:
        types = [_FULL if i and i % 4 == 0 else _LINEAR for i in range(d.n_layers)]
        return types, "layer_types and linear_attn_config's layer lists unset: full attention on layers 4, 8, …"
    types = _from_lists(linear, d, linear.int_list("kda_layers"), linear.int_list("full_attn_layers"))
    return types, "linear_attn_config.kda_layers / full_attn_layers (1-based)"


def _from_lists(linear: HFConfig, d: Draft, kda: list[int], full: list[int]) -> list[str] | None:
    """The 1-based layer lists of a release config → each layer's kind; every layer in exactly one list."""
    if linear.failed("kda_layers") or linear.failed("full_attn_layers") or not d.layers_known:
        return None
    types: list[str | None] = [None] * d.n_layers
    for key, layers, kind in (("kda_layers", kda, _LINEAR), ("full_attn_layers", full, _FULL)):
        for layer in layers:
            if not is_int(layer) or not 1 <= layer <= d.n_layers:
                linear.bad(key, f"{shown(layer)}: layers are numbered 1 to num_hidden_layers ({d.n_layers})")
            elif types[layer - 1] is not None:
                linear.bad(key, f"layer {layer} is listed twice (kda_layers and full_attn_layers)")
            else:
                types[layer - 1] = kind
    missing = [i + 1 for i, t in enumerate(types) if t is None]
    if missing and not linear.issues:
        linear.bad("kda_layers", f"layers {shown(missing)} are in neither kda_layers nor full_attn_layers")
    return None if linear.issues else [t for t in types if t is not None]


def _mixers(c: HFConfig, linear: HFConfig, d: Draft) -> None:
    types, src = _layer_types(c, linear, d)
    if types is None:  # refused (reported): the release's layer lists, compared with them, are no problem of their own
        linear.value("kda_layers"), linear.value("full_attn_layers")
        return
    d.mixer = ["kda" if t == _LINEAR else "attention" for t in types]
    d.mixer_note = f"{src}: linear_attention is KimiLinearDeltaAttention"
    if c.value("layer_types") is not None and linear.value("kda_layers") is not None:
        given = _from_lists(linear, d, linear.int_list("kda_layers"), linear.int_list("full_attn_layers"))
        if given is not None and given != types:
            linear.bad("kda_layers", "disagrees with layer_types, which transformers reads first: ambiguous")


def _kda_size(c: HFConfig, linear: HFConfig, key: str) -> tuple[Any, str]:
    """A KDA size from linear_attn_config (which transformers reads first), else its top-level field."""
    top = _KDA_SIZES[key]
    if linear.given(key):
        value = linear.int(key)
        if c.given(top) and c.value(top) != value:
            c.bad(
                top,
                f"{shown(c.value(top))} disagrees with linear_attn_config.{key} ({value}), which transformers reads",
            )
        return value, linear.src(key)
    return c.int(top), c.src(top)


def _kda(c: HFConfig, linear: HFConfig, d: Draft) -> None:
    if "kda" not in d.mixer:
        for key, top in _KDA_SIZES.items():
            linear.value(key), c.value(top)
        return
    heads, heads_src = _kda_size(c, linear, "num_heads")
    head_dim, head_dim_src = _kda_size(c, linear, "head_dim")
    kernel, kernel_src = _kda_size(c, linear, "short_conv_kernel_size")
    kda_activation(c, d)
    d.section(
        "mixers.kda",
        n_heads=(heads, heads_src),
        head_dim=(head_dim, head_dim_src),
        conv_kernel=(kernel, kernel_src),
        decay_rank=(head_dim, "KimiLinearForgetGate: f_a_proj d → head_dim → f_b_proj"),
        gate_rank=(head_dim, "KimiLinearDeltaAttention: g_a_proj d → head_dim → g_b_proj"),
        decay=("softplus", "KimiLinearForgetGate: −exp(A_log)·softplus(f + dt_bias)"),
        norm_eps=(d.get("model.norm.eps"), c.src("rms_norm_eps") + " (o_norm's too)"),
    )


def kda_activation(c: HFConfig, d: Draft) -> None:
    """hidden_act, which Kimi-Linear and Ling also apply after KDA's short convolutions: moec's kda applies SiLU."""
    act = c.str("hidden_act")
    if act is not None and PLAIN_ACTIVATIONS.get(act) != "silu":
        d.gap("hidden_act", act, f"{act!r} after KDA's convolution (moec's kda applies SiLU)", "activation")


def moe_block(c: HFConfig, d: Draft, cls: str) -> None:
    """The MLP and MoE layers Kimi-Linear and Ling 3.0 share (``cls``: the modeling classes' prefix): which layers
    are MoE, the dense MLP, the routed and shared experts and DeepSeek-V3's router."""
    _ffn_kinds(c, d, cls)
    dense_layers_ffn(c, d, bias_src=f"{cls}MLP has no biases")
    moe_core(c, d, experts_key="num_local_experts", width_key="moe_intermediate_size")
    shared_experts(c, d, "n_shared_experts", f" ({cls}MoE fuses them into one MLP of n·width)")
    _router(c, d, f"{cls}TopkRouter")


def _ffn_kinds(c: HFConfig, d: Draft, cls: str) -> None:
    """mlp_layer_types when given (dense / sparse), else dense before first_k_dense_replace."""
    given = c.value("mlp_layer_types") is not None
    if given:
        mlp_layer_kinds(c, d, c.str_list("mlp_layer_types"), f"mlp_layer_types: sparse is {cls}MoE")
        c.value("first_k_dense_replace")  # what mlp_layer_types was derived from
    else:
        k_dense = c.int("first_k_dense_replace", minimum=0)
        d.ffn = ["dense" if i < k_dense else "moe" for i in range(d.n_layers)]
        d.ffn_note = f"MoE from layer first_k_dense_replace ({k_dense}) on"
    ignored_field_agrees(
        c,
        d,
        "moe_layer_freq",
        1,
        f"transformers' {cls} makes every layer from first_k_dense_replace on MoE, whatever moe_layer_freq says",
    )


def _router(c: HFConfig, d: Draft, cls: str) -> None:
    """``cls`` is DeepSeek-V3's router; one expert group (Kimi-Linear's releases) is no grouping at all."""
    deepseek_v3_router(c, d, cls)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor"))
    groups, top_groups = c.int("n_group"), c.int("topk_group")
    if groups > 1:
        d.put("moe.router.n_groups", groups, c.src("n_group"))
        d.put("moe.router.topk_groups", top_groups, c.src("topk_group"))
    ignored_field_agrees(
        c,
        d,
        "moe_router_activation_func",
        "sigmoid",
        f"transformers' {cls} always scores with sigmoid: ambiguous",
    )
    grouped = c.value("use_grouped_topk")
    if grouped is not None and grouped is not True and groups > 1:
        d.gap(
            "use_grouped_topk",
            grouped,
            f"transformers' {cls} always limits the choice to topk_group of the {groups} groups",
            "none: remove use_grouped_topk (what transformers runs) or set it to true",
        )


def export(m: ResolvedModel) -> dict[str, Any]:
    kinds = [lp.mixer_kind for lp in m.layers]
    if set(kinds) - {"attention", "kda"}:
        raise CannotExport(f"has KDA and attention layers only (spec: {sorted(set(kinds))})")
    attn = m.layers[kinds.index("attention")].attention if "attention" in kinds else m.layers[0].attention
    if attn.kind != "mla":
        raise CannotExport("has MLA attention only")
    cfg = export_base(m, FAMILY, nope=True, positions=("none",))
    cfg["model_max_length"] = cfg.pop("max_position_embeddings")
    cfg.update(
        **mla_fields(attn),
        mla_use_nope=True,
        linear_attn_config=_export_kda(m, kinds),
    )
    export_moe_block(m, cfg)
    cfg["moe_router_activation_func"] = "sigmoid"
    return cfg


def _export_kda(m: ResolvedModel, kinds: list[str]) -> dict[str, Any]:
    """linear_attn_config: the layer lists (1-based) and the sizes of KDA as KimiLinearDeltaAttention builds it."""
    out: dict[str, Any] = {
        "kda_layers": [i + 1 for i, k in enumerate(kinds) if k == "kda"],
        "full_attn_layers": [i + 1 for i, k in enumerate(kinds) if k == "attention"],
    }
    if "kda" not in kinds:
        return out
    p = export_kda_plan(m)
    if p.decay != "softplus":
        raise CannotExport(f"has KDA's softplus decay only (spec: {p.decay})")
    if p.decay_rank != p.head_dim or p.gate_rank != p.head_dim:
        raise CannotExport("builds KDA's decay and output-gate projections of rank head_dim")
    return out | {"num_heads": p.n_heads, "head_dim": p.head_dim, "short_conv_kernel_size": p.conv_kernel}


def export_kda_plan(m: ResolvedModel) -> KDAPlan:
    """The KDA layers' one plan, where Kimi-Linear's and Ling's configs can say it: its output norm's eps is
    rms_norm_eps, its chunk the one the import takes (neither config has a field for either)."""
    p = one([lp.mixer for lp in m.layers if lp.mixer_kind == "kda"], "the KDA section")
    if p.norm_eps != m.norm.eps:
        raise CannotExport(f"uses rms_norm_eps for KDA's output norm (spec: {p.norm_eps} and {m.norm.eps})")
    if p.chunk != KDASection.model_fields["chunk"].default:
        raise CannotExport("has no field for KDA's chunk (a compute choice: its import takes the default)")
    return p


def export_moe_block(m: ResolvedModel, cfg: dict[str, Any]) -> None:
    """What :func:`moe_block` reads: the dense layers first (first_k_dense_replace), then the MoE block with
    DeepSeek-V3's router (Kimi-Linear's and Ling 3.0's)."""
    e, f = moe_plan(m), dense_plan(m)
    moe = [isinstance(lp.ffn, MoEPlan) for lp in m.layers]
    k_dense = moe.index(True)
    if not all(moe[k_dense:]):
        raise CannotExport("puts dense layers only before the first MoE layer (first_k_dense_replace)")
    r = e.router
    if (r.score, r.softmax_after_topk, r.selection_bias, r.group_score) != ("sigmoid", False, True, "top2_sum"):
        raise CannotExport("routes as DeepSeek-V3 only (sigmoid scores, a selection bias, top-2-sum groups)")
    if e.n_shared_experts and e.d_ff_shared != e.d_ff:
        raise CannotExport("has shared experts as wide as the routed ones")
    cfg.update(
        intermediate_size=f.d_ff if f else DEFAULTS["intermediate_size"],
        moe_intermediate_size=e.d_ff,
        num_experts=e.n_experts,
        num_experts_per_token=r.top_k,
        num_shared_experts=e.n_shared_experts,
        first_k_dense_replace=k_dense,
        moe_renormalize=r.normalize_topk,
        routed_scaling_factor=r.scale,
        num_expert_group=r.n_groups or 1,
        topk_group=r.topk_groups or 1,
    )


class KimiLinearMapper(Mapper):
    moe_blocks = ("block_sparse_moe.", "mlp.")  # Moonshot's name (dense layers too), transformers' in memory

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        if part == "ffn" and isinstance(lp.ffn, DenseFFNPlan):  # layer 0's MLP shares the MoE block's prefix
            p = self.layer(i)
            prefix = self._first([p + b + "gate_proj.weight" for b in self.moe_blocks]).removesuffix("gate_proj.weight")
            return self.dense(prefix, leaf)
        return super().block(lp, i, part, leaf)

    def mixer(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        """moec's KDA names → the checkpoint's: the decay's parameters one level up, the convolution in three."""
        return kda_tensor(self.ck, p + self.attn, leaf)


def kda_tensor(ck: Checkpoint, attn: str, leaf: str) -> torch.Tensor:
    """moec's KDA leaf → the checkpoint's tensor under the mixer prefix ``attn`` (Kimi-Linear's, Ling's): the
    decay's parameters one level up (no forget_gate.), the convolution as q_, k_ and v_conv1d concatenated."""
    import torch

    if leaf.startswith("forget_gate.") and attn + leaf not in ck:
        return ck.get(attn + leaf.removeprefix("forget_gate."))
    if leaf == "conv1d.weight" and attn + leaf not in ck:
        return torch.cat(ck.get_all([f"{attn}{x}_conv1d.weight" for x in "qkv"]), dim=0)  # (3D, 1, K)
    return ck.get(attn + leaf)


# Kimi-Linear's release config.json names (read as transformers' names); Ling's (bailing_hybrid) adds its own
ALIASES = {
    "num_experts": "num_local_experts",
    "num_experts_per_token": "num_experts_per_tok",
    "moe_renormalize": "norm_topk_prob",
    "num_expert_group": "n_group",
    "num_shared_experts": "n_shared_experts",
    "model_max_length": "max_position_embeddings",
}


FAMILY = Family(
    "kimi_linear",
    "KimiLinearForCausalLM",
    DEFAULTS,
    translate,
    aliases=ALIASES,
    export=export,
    mapper=KimiLinearMapper,
)
