"""Jamba (``model_type`` jamba, JambaForCausalLM; AI21 Labs, arXiv 2403.19887): Mamba layers (moec's ``mamba``
mixer with Jamba's RMSNorms on the time step, B and C) and, where ``i % attn_layer_period == attn_layer_offset``,
GQA without any position encoding; MoE where ``i % expert_layer_period == expert_layer_offset`` (softmax over the
experts, top-k, the weights kept as they are) and a dense SwiGLU MLP of the same width elsewhere.

Its checkpoints name the mixer ``mamba``, the FFN block ``feed_forward`` (dense and MoE alike, the router
``feed_forward.router``), the second norm ``pre_ff_layernorm`` and the final one ``final_layernorm``
(:class:`JambaMapper`). The exporter writes a plan whose attention and MoE layers each fall every N layers from a
start back as the two periods and offsets.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, shown
from moec.hf.families._common import activation, aux, base, defaults, gqa, moe_core, router
from moec.hf.families._export_common import dense_plan, export_base, export_moe_common, moe_plan, one
from moec.hf.mapper import Mapper
from moec.mixers.mamba import default_dt_rank
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=65536, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=262144,
                    rms_norm_eps=1e-6, router_aux_loss_coef=0.001, num_experts_per_tok=2, num_experts=16,
                    expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8, attn_layer_offset=4,
                    use_mamba_kernels=True, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto",
                    mamba_conv_bias=True, mamba_proj_bias=False, use_mambapy=False, use_associative_scan=True)
# fmt: on

# How transformers runs the scan (fused kernels when installed, else one of its torch paths): the same values
_SCAN_CHOICES = ("use_mamba_kernels", "use_mambapy", "use_associative_scan")


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Jamba")
    _no_positions(d)
    gqa(c, d, bias=False, out_bias=False, bias_src="JambaAttention has no biases")
    _layer_kinds(c, d)
    _mamba(c, d)
    _ffn(c, d)
    for key in _SCAN_CHOICES:
        c.bool(key)
    _release_fields(c, d)


def _no_positions(d: Draft) -> None:
    """JambaAttention rotates nothing and has no position table: the Mamba layers carry the order."""
    for path in [p for p in d.fields if p.startswith("model.positions.")]:
        del d.fields[path]
    d.put("model.positions.kind", "none", "JambaAttention has no position encoding (the Mamba layers carry order)")


def _period(c: HFConfig, period_key: str, offset_key: str) -> tuple[int, int] | None:
    """A layer pattern's period and offset, which transformers requires to be offset < period."""
    period, offset = c.int(period_key), c.int(offset_key, minimum=0)
    if c.failed(period_key) or c.failed(offset_key):
        return None
    if offset >= period:
        c.bad(offset_key, f"{offset}: must be below {period_key} ({period}), as transformers requires")
        return None
    return period, offset


def _layer_kinds(c: HFConfig, d: Draft) -> None:
    attn = _period(c, "attn_layer_period", "attn_layer_offset")
    if attn is not None:
        d.mixer = ["attention" if i % attn[0] == attn[1] else "mamba" for i in range(d.n_layers)]
        d.mixer_note = f"attention where i % attn_layer_period ({attn[0]}) == attn_layer_offset ({attn[1]})"
    experts = _period(c, "expert_layer_period", "expert_layer_offset")
    n_experts = c.int("num_experts")
    if experts is not None:
        moe = n_experts > 1  # JambaSparseMoeBlock only with more than one expert, else JambaMLP everywhere
        d.ffn = ["moe" if moe and i % experts[0] == experts[1] else "dense" for i in range(d.n_layers)]
        d.ffn_note = f"MoE where i % expert_layer_period ({experts[0]}) == expert_layer_offset ({experts[1]})"
        if not moe:
            d.ffn_note = "num_experts 1: every layer a dense JambaMLP"


def _dt_rank(c: HFConfig) -> tuple[int, str]:
    v = c.value("mamba_dt_rank")
    if v == "auto":
        return default_dt_rank(c.int("hidden_size")), f"{c.src('mamba_dt_rank')} 'auto': ⌈hidden_size / 16⌉"
    return c.int("mamba_dt_rank"), c.src("mamba_dt_rank")


def _mamba(c: HFConfig, d: Draft) -> None:
    if "mamba" not in d.mixer:  # every layer attention: the Mamba fields describe nothing
        for key in (
            "mamba_d_state",
            "mamba_d_conv",
            "mamba_expand",
            "mamba_dt_rank",
            "mamba_conv_bias",
            "mamba_proj_bias",
        ):
            c.value(key)
        return
    rank, rank_src = _dt_rank(c)
    d.section(
        "mixers.mamba",
        state_size=(c.int("mamba_d_state"), c.src("mamba_d_state")),
        conv_kernel=(c.int("mamba_d_conv"), c.src("mamba_d_conv")),
        expand=(c.int("mamba_expand"), c.src("mamba_expand") + " (inner width = expand · hidden_size)"),
        dt_rank=(rank, rank_src),
        conv_bias=(c.bool("mamba_conv_bias"), c.src("mamba_conv_bias")),
        proj_bias=(c.bool("mamba_proj_bias"), c.src("mamba_proj_bias") + " (in_proj and out_proj)"),
        inner_norms=(True, "JambaMambaMixer: RMSNorm on dt, B and C (eps rms_norm_eps = model.norm.eps)"),
    )
    act = c.str("hidden_act")
    if act is not None and act not in ("silu", "swish"):
        d.gap(
            "hidden_act",
            act,
            f"JambaMambaMixer applies hidden_act {act!r} after its convolution; moec's mamba mixer applies silu",
            "mixers.mamba.activation: the convolution's activation (silu today). No count change",
        )


def _ffn(c: HFConfig, d: Draft) -> None:
    width = c.int("intermediate_size")
    if "dense" in d.ffn:
        d.section(
            "ffn",
            d_ff=(width, c.src("intermediate_size")),
            activation=(activation(c, d), c.src("hidden_act") + " (gated)"),
            bias=(False, "JambaMLP has no biases"),
        )
    if "moe" not in d.ffn:
        c.value("num_experts_per_tok")
        c.value("router_aux_loss_coef")
        return
    moe_core(c, d, experts_key="num_experts", width_key="intermediate_size")
    router(d, "JambaTopKRouter: softmax over all experts, top-k, not renormalised", score="softmax",
           softmax_after_topk=False, normalize_topk=False)  # fmt: skip
    aux(c, d)


def _release_fields(c: HFConfig, d: Draft) -> None:
    """Fields Jamba-v0.1's config.json holds that transformers 5 no longer reads: ``num_logits_to_keep`` (which
    positions generation computes logits for) changes no value; ``sliding_window`` null agrees with the full
    attention transformers runs, a window is refused."""
    c.value("num_logits_to_keep")
    window = c.value("sliding_window")
    if window is not None:
        d.gap(
            "sliding_window",
            window,
            f"transformers' Jamba ignores sliding_window ({shown(window)}) and attends to every token: ambiguous",
            "none: remove sliding_window (what transformers runs) or set it to null",
        )


def _period_of(layers: list[int], n_layers: int, what: str) -> tuple[int, int]:
    """The (period, offset) that selects exactly ``layers`` as ``i % period == offset``; none: a period past the
    last layer."""
    if not layers:
        return n_layers + 1, n_layers
    offset = layers[0]
    period = layers[1] - offset if len(layers) > 1 else n_layers
    if layers != list(range(offset, n_layers, period)):
        raise CannotExport(f"puts its {what} where i % period == offset (spec: layers {layers})")
    return period, offset


def _export_mamba(m: ResolvedModel, cfg: dict[str, Any]) -> None:
    plans = [lp.mixer for lp in m.layers if lp.mixer_kind == "mamba"]
    if not plans:
        return
    mp = one(plans, "the Mamba mixer")
    if not mp.inner_norms or mp.norm_eps != m.norm.eps:
        raise CannotExport("norms Mamba's time step, B and C with the model's eps (mixers.mamba.inner_norms)")
    if mp.inner_dim % m.d_model:
        raise CannotExport(f"needs a Mamba inner width a multiple of d_model (spec: {mp.inner_dim})")
    cfg.update(
        mamba_d_state=mp.state_size,
        mamba_d_conv=mp.conv_kernel,
        mamba_expand=mp.inner_dim // m.d_model,
        mamba_dt_rank=mp.dt_rank,
        mamba_conv_bias=mp.conv_bias,
        mamba_proj_bias=mp.proj_bias,
    )


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, FAMILY, nope=True, positions=("none",))
    kinds = [lp.mixer_kind for lp in m.layers]
    if set(kinds) - {"attention", "mamba"}:
        raise CannotExport(f"has Mamba and attention layers only (spec: {sorted(set(kinds))})")
    e, f = moe_plan(m), dense_plan(m)
    if f is not None and f.d_ff != e.d_ff:
        raise CannotExport(f"has one intermediate_size for its MLPs and experts (spec: {f.d_ff} and {e.d_ff})")
    attn = _period_of([i for i, k in enumerate(kinds) if k == "attention"], m.n_layers, "attention layers")
    moe = _period_of([lp.index for lp in m.layers if isinstance(lp.ffn, MoEPlan)], m.n_layers, "MoE layers")
    cfg.update(
        attn_layer_period=attn[0],
        attn_layer_offset=attn[1],
        expert_layer_period=moe[0],
        expert_layer_offset=moe[1],
        intermediate_size=e.d_ff,
        num_experts=e.n_experts,
    )
    _export_mamba(m, cfg)
    export_moe_common(cfg, e)
    return cfg


class JambaMapper(Mapper):
    """Jamba's names: the FFN block ``feed_forward.`` for the dense MLP and the MoE block alike (router
    ``feed_forward.router``), ``pre_ff_layernorm`` before it and ``model.final_layernorm`` at the end. The mixer's,
    ``mamba.*``, are the module's own (the base Mapper's ``mixer``)."""

    final_norm = "model.final_layernorm."
    ffn_norm = "pre_ff_layernorm."
    moe_blocks = ("feed_forward.",)
    routers = ("router.",)

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> Any:
        if part == "ffn" and isinstance(lp.ffn, DenseFFNPlan):
            return self.dense(self.layer(i) + "feed_forward.", leaf)
        return super().block(lp, i, part, leaf)


FAMILY = Family("jamba", "JambaForCausalLM", DEFAULTS, translate, export=export, mapper=JambaMapper)
