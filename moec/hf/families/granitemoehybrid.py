"""Granite-4.0-H (``model_type`` granitemoehybrid, GraniteMoeHybridForCausalLM): Granite-MoE with a shared MLP
(``granitemoeshared.py``: top-k of the router logits, softmax over the k, the μP multipliers) whose token mixer is
Mamba2 (moec's ``mamba2`` mixer, docs/mixers.md) on the layers ``layer_types`` calls ``mamba`` and GQA on those it
calls ``attention``; attention rotates nothing unless ``position_embedding_type`` is ``rope``. With
``num_local_experts`` 0 the shared MLP alone is each layer's FFN (Granite-4.0-H-Micro).

Checkpoints name the mixer ``mamba.*`` with the module's own names (in_proj, conv1d, dt_bias, A_log, D,
norm.weight, out_proj: moec's are the same, :class:`GraniteMoeHybridMapper`). The exporter writes a spec of Mamba2
and attention layers whose inner width is a multiple of d_model; export_hf_config re-imports it to check.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, shown
from moec.hf.families import granitemoe, granitemoeshared
from moec.hf.families._common import all_known
from moec.hf.families._export_common import dense_plan, export_base, export_moe_common, moe_plan, one
from moec.hf.mapper import Missing
from moec.spec.plan import DenseFFNPlan, LayerPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

# GraniteMoeHybridConfig's defaults of the fields the translator reads (transformers 5.24)
DEFAULTS = {
    **granitemoeshared.DEFAULTS,
    "shared_intermediate_size": 1024,
    "position_embedding_type": None,
    "layer_types": None,
    "mamba_n_heads": 128,
    "mamba_n_groups": 1,
    "mamba_d_state": 256,
    "mamba_d_head": "auto",
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_chunk_size": 256,
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "hidden_act": "silu",
}

# GraniteMoeHybridConfig's time_step_limit default, (0, ∞): no clamp. Not in DEFAULTS, whose values the registry
# tests compare with the class defaults as JSON would hold them, which has no infinity.
STEP_LIMITS = [0.0, math.inf]

# transformers' names of a layer's mixer (it also reads the legacy spellings, moec too)
MIXER_OF = {"mamba": "mamba2", "linear_attention": "mamba2", "attention": "attention", "full_attention": "attention"}


def translate(c: HFConfig, d: Draft) -> None:
    granitemoe.translate(c, d)
    _positions(c, d)
    _layer_types(c, d)
    _mamba2(c, d)
    _ffn(c, d)


def _positions(c: HFConfig, d: Draft) -> None:
    """GraniteMoeHybridModel builds rotary embeddings only for position_embedding_type 'rope'; anything else
    (None, 'nope' in the releases) gives its attention no positions at all."""
    kind = c.value("position_embedding_type")
    if kind == "rope":
        return
    for path in [p for p in d.fields if p.startswith("model.positions.")]:
        del d.fields[path]
    d.put("model.positions.kind", "none", f"{c.src('position_embedding_type')} {shown(kind)}: no rotary embedding")


def _layer_types(c: HFConfig, d: Draft) -> None:
    if c.value("layer_types") is None:  # GraniteMoeHybridConfig: every layer Mamba
        d.mixer = ["mamba2"] * d.n_layers
        d.mixer_note = "layer_types unset: every layer Mamba2 (GraniteMoeHybridConfig)"
        return
    types = c.str_list("layer_types")
    if not d.fits_layers(c, "layer_types", types) or not all_known(c, "layer_types", types, tuple(MIXER_OF)):
        return
    d.mixer = [MIXER_OF[t] for t in types]
    d.mixer_note = "layer_types: mamba → mamba2, attention → GQA"


def _mamba2(c: HFConfig, d: Draft) -> None:
    keys = ("mamba_n_heads", "mamba_n_groups", "mamba_d_state", "mamba_d_head", "mamba_d_conv", "mamba_expand",
            "mamba_chunk_size", "mamba_conv_bias", "mamba_proj_bias", "time_step_limit")  # fmt: skip
    if "mamba2" not in d.mixer:
        for key in keys:
            c.value(key)
        return
    heads, head_dim = c.int("mamba_n_heads"), _head_dim(c, d)
    low, high = _step_limits(c, d)
    d.section(
        "mixers.mamba2",
        n_heads=(heads, c.src("mamba_n_heads")),
        head_dim=(head_dim, c.src("mamba_d_head")),
        state_dim=(c.int("mamba_d_state"), c.src("mamba_d_state")),
        n_groups=(c.int("mamba_n_groups"), c.src("mamba_n_groups") + " (B and C groups; the gated norm's groups)"),
        conv_kernel=(c.int("mamba_d_conv"), c.src("mamba_d_conv")),
        conv_bias=(c.bool("mamba_conv_bias"), c.src("mamba_conv_bias")),
        bias=(c.bool("mamba_proj_bias"), c.src("mamba_proj_bias") + " (in_proj and out_proj)"),
        chunk=(c.int("mamba_chunk_size"), c.src("mamba_chunk_size")),
        step_min=(low, c.src("time_step_limit") + " (lower clamp of Δ)"),
    )
    if high is not None:
        d.put("mixers.mamba2.step_max", high, c.src("time_step_limit") + " (upper clamp of Δ)")
    act = c.str("hidden_act")
    if act not in (
        None,
        "silu",
        "swish",
    ):  # the MLPs' activation is also the convolution's (GraniteMoeHybridMambaLayer)
        d.gap("hidden_act", act, f"GraniteMoeHybridMambaLayer applies hidden_act {act!r} after its convolution; "
              "moec's mamba2 applies silu", "mixers.mamba2.activation: the convolution's activation (silu today)")  # fmt: skip


def _head_dim(c: HFConfig, d: Draft) -> int:
    """mamba_d_head, or 'auto': mamba_expand · hidden_size / mamba_n_heads; transformers requires their product
    to be mamba_expand · hidden_size."""
    inner = c.int("mamba_expand") * d.get("model.d_model")
    heads = c.int("mamba_n_heads")
    raw = c.value("mamba_d_head")
    head_dim = inner // heads if raw == "auto" else c.int("mamba_d_head")
    if heads * head_dim != inner and not c.failed("mamba_d_head"):
        c.bad(
            "mamba_d_head", f"{shown(raw)}: mamba_n_heads × mamba_d_head must be mamba_expand × hidden_size ({inner})"
        )
    return head_dim


def _step_limits(c: HFConfig, d: Draft) -> tuple[float, float | None]:
    """time_step_limit [low, high] → (step_min, step_max); an infinite high (which save_pretrained writes as
    ``{"__float__": "Infinity"}``, JSON having no infinity) is no upper clamp."""
    raw = c.value("time_step_limit", STEP_LIMITS)
    limits = [_limit(v) for v in raw] if isinstance(raw, list | tuple) and len(raw) == 2 else []
    if len(limits) != 2 or None in limits or not 0 <= limits[0] < limits[1] or math.isinf(limits[0]):
        c.bad("time_step_limit", f"{shown(raw)}: expected [low, high] with 0 ≤ low < high")
        return 0.0, None
    low, high = limits
    return low, (None if math.isinf(high) else high)


def _limit(v: Any) -> float | None:
    if isinstance(v, dict) and v == {"__float__": "Infinity"}:
        return math.inf
    if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v):
        return float(v)
    return None


def _ffn(c: HFConfig, d: Draft) -> None:
    """Every layer MoE with the shared MLP beside it; with no experts, the shared MLP alone (a dense FFN)."""
    if d.get("moe.n_experts") > 0:
        granitemoeshared.shared_mlp(c, d)
        return
    for path in [p for p in d.fields if p.startswith("moe.")]:
        del d.fields[path]
    d.ffn = ["dense"] * d.n_layers
    d.ffn_note = "num_local_experts 0: the shared MLP is every layer's FFN"
    d.section(
        "ffn",
        d_ff=(c.int("shared_intermediate_size"), c.src("shared_intermediate_size")),
        activation=("swiglu", c.src("hidden_act") + " (gated)"),
        bias=(False, "GraniteMoeHybridMLP has no biases"),
    )
    for key in ("intermediate_size", "num_experts_per_tok", "router_aux_loss_coef"):
        c.value(key)


def export(m: ResolvedModel) -> dict[str, Any]:
    kinds = [lp.mixer_kind for lp in m.layers]
    if set(kinds) - {"attention", "mamba2"}:
        raise CannotExport(f"has Mamba2 and attention layers only (spec: {sorted(set(kinds))})")
    rope = m.positions.kind == "rope"
    cfg = export_base(m, FAMILY, nope=not rope, positions=("rope", "none"))
    a = one([lp.attention for lp in m.layers if lp.has_attention] or [m.layers[0].attention], "the attention")
    cfg.update(
        position_embedding_type="rope" if rope else "nope",
        layer_types=["mamba" if k == "mamba2" else "attention" for k in kinds],
        attention_bias=a.bias,
        embedding_multiplier=m.embedding_multiplier,
        residual_multiplier=m.residual_multiplier,
        logits_scaling=m.logits_scaling,
        attention_multiplier=a.scale if a.scale is not None else 1.0 / a.head_dim**0.5,
    )
    _export_ffn(m, cfg)
    _export_mamba2(m, cfg)
    return cfg


def _export_ffn(m: ResolvedModel, cfg: dict[str, Any]) -> None:
    """Every layer MoE with one shared MLP, or every layer the shared MLP alone (num_local_experts 0)."""
    f = dense_plan(m)
    if f is not None:
        if any(not isinstance(lp.ffn, DenseFFNPlan) for lp in m.layers):
            raise CannotExport("makes every layer MoE, or none (the spec mixes dense and MoE layers)")
        cfg.update(num_local_experts=0, shared_intermediate_size=f.d_ff)
        return
    e = moe_plan(m, all_layers=True)
    if e.n_shared_experts != 1:
        raise CannotExport(f"has one shared MLP beside the experts (spec: {e.n_shared_experts} shared experts)")
    cfg.update(intermediate_size=e.d_ff, num_local_experts=e.n_experts, shared_intermediate_size=e.d_ff_shared)
    export_moe_common(cfg, e)


def _export_mamba2(m: ResolvedModel, cfg: dict[str, Any]) -> None:
    plans = [lp.mixer for lp in m.layers if lp.mixer_kind == "mamba2"]
    if not plans:
        return
    mp = one(plans, "the Mamba2 mixer")
    inner = mp.n_heads * mp.head_dim
    if inner % m.d_model:
        raise CannotExport(f"needs a Mamba2 inner width (n_heads × head_dim) a multiple of d_model (spec: {inner})")
    if mp.norm_eps != m.norm.eps:
        raise CannotExport("norms the Mamba2 output with the model's eps (mixers.mamba2.norm_eps)")
    if mp.step_max is None and mp.step_min:
        raise CannotExport("clamps Δ from below only with an upper clamp too (JSON has no infinity)")
    cfg.update(
        mamba_n_heads=mp.n_heads,
        mamba_d_head=mp.head_dim,
        mamba_d_state=mp.state_dim,
        mamba_n_groups=mp.n_groups,
        mamba_d_conv=mp.conv_kernel,
        mamba_expand=inner // m.d_model,
        mamba_chunk_size=mp.chunk,
        mamba_conv_bias=mp.conv_bias,
        mamba_proj_bias=mp.bias,
    )
    if mp.step_max is not None:
        cfg["time_step_limit"] = [mp.step_min, mp.step_max]


class GraniteMoeHybridMapper(granitemoeshared.GraniteMoeSharedMapper):
    """Granite-MoE's names with the shared MLP (the mixer's, ``mamba.*``, are the module's own: the base Mapper's
    ``mixer``); without experts the dense FFN is the ``shared_mlp`` (input_linear [gate | up], output_linear)."""

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> Any:
        if part == "ffn" and isinstance(lp.ffn, DenseFFNPlan):
            return self._shared_mlp(self.layer(i), leaf)
        return super().block(lp, i, part, leaf)

    def _shared_mlp(self, p: str, leaf: str) -> torch.Tensor:
        name = {"w_gate_up": "input_linear.weight", "w_down": "output_linear.weight"}.get(leaf)
        if name is None:
            raise Missing([f"{p}shared_mlp.{leaf}"])
        return self.ck.get(f"{p}shared_mlp.{name}").T  # (d, 2f) [gate | up], (f, d)


FAMILY = Family(
    "granitemoehybrid",
    "GraniteMoeHybridForCausalLM",
    DEFAULTS,
    translate,
    aliases={"layers_block_type": "layer_types"},
    export=export,
    export_rank=70,
    mapper=GraniteMoeHybridMapper,
)
