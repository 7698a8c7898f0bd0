"""JetMoE (``model_type`` jetmoe, JetMoeForCausalLM; arXiv 2404.07413): every layer is a mixture of attention
heads (``attention.kind: moa``, moec/spec/moa.py) followed by an MoE FFN. Both use num_local_experts experts
and num_experts_per_tok of them per token, chosen by the same kind of router (JetMoeTopKGating: a bias-free
Linear(d, E), the top k logits, softmax over those k).

- attention: each expert owns a query projection of num_key_value_heads heads of kv_channels
  (``experts.input_linear``, (E, kv·hd, d)) and an output projection (``experts.output_linear``, (E, d, kv·hd));
  the keys and values are one shared ``kv_proj`` (2·kv·hd, d), keys first. transformers' num_attention_heads is
  derived (kv · k): the heads a token's k experts attend with; expert head j reads KV head j. One bias of d
  (``experts.bias``) on the combined output: moec's ``attention.out_bias``.
- MoE: gated experts (``input_linear`` (E, 2f, d), activation on the first half), ``output_linear`` (E, d, f),
  and one bias of d on the combined output (``mlp.bias``): ``moe.output_bias``.
- the decoder layers' two RMSNorms are built without an eps (1e-6); only the final norm reads rms_norm_eps. moec
  has one eps for every norm, so an rms_norm_eps other than 1e-6 is refused by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import activation, base, defaults, derived
from moec.hf.families._export_common import export_base
from moec.hf.mapper import Mapper, Missing
from moec.spec.plan import LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=32000, hidden_size=2048, num_hidden_layers=12, num_key_value_heads=16,
                    kv_channels=128, intermediate_size=5632, max_position_embeddings=4096,
                    activation_function="silu", num_local_experts=8, num_experts_per_tok=2, aux_loss_coef=0.01,
                    tie_word_embeddings=True, rms_norm_eps=1e-6)
# fmt: on

LAYER_NORM_EPS = 1e-6  # JetMoeDecoderLayer's input_layernorm and post_attention_layernorm: RMSNorm's default
ROUTER = "JetMoeTopKGating: top-k of the bias-free router's logits, softmax over the k"


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "JetMoE")
    eps = c.float("rms_norm_eps")
    if eps != LAYER_NORM_EPS and not c.failed("rms_norm_eps"):
        d.gap(
            "rms_norm_eps",
            eps,
            f"JetMoE's decoder-layer norms use eps {LAYER_NORM_EPS} whatever rms_norm_eps says; only the final norm "
            "reads it, and moec has one eps for every norm",
            "model.norm.final_eps: the final norm's own eps. No count change",
        )
    E, k, kv = c.int("num_local_experts"), c.int("num_experts_per_tok"), c.int("num_key_value_heads")
    d.section(
        "attention",
        kind=("moa", "JetMoeAttention: a mixture of attention heads (JetMoeMoA) with a shared kv_proj"),
        n_heads=(kv, c.src("num_key_value_heads") + " (each attention expert's query heads)"),
        n_kv_heads=(kv, c.src("num_key_value_heads") + " (the shared keys and values)"),
        head_dim=(c.int("kv_channels"), c.src("kv_channels")),
        out_bias=(True, "JetMoeMoA.bias: one bias of d on the combined output"),
    )
    d.section(
        "attention.experts",
        n_experts=(E, c.src("num_local_experts")),
        top_k=(k, c.src("num_experts_per_tok")),
        score=("softmax", ROUTER),
        softmax_after_topk=(True, ""),
        normalize_topk=(False, ""),
    )
    if isinstance(k, int) and isinstance(kv, int):
        derived(c, "num_attention_heads", kv * k)
    d.section(
        "moe",
        n_experts=(E, c.src("num_local_experts")),
        d_ff=(c.int("intermediate_size"), c.src("intermediate_size")),
        activation=(activation(c, d, "activation_function"), c.src("activation_function") + " (gated)"),
        output_bias=(True, "JetMoeMoE.bias: one bias of d on the combined output"),
    )
    d.section(
        "moe.router",
        top_k=(k, c.src("num_experts_per_tok")),
        score=("softmax", ROUTER),
        softmax_after_topk=(True, ""),
        normalize_topk=(False, ""),
    )
    coeff = c.float("aux_loss_coef")
    d.put("moe.balance.load_balance_coeff", coeff, c.src("aux_loss_coef") + " (training only)")
    d.ffn_note = "every JetMoE layer is MoE"


def _jetmoe_layer(lp: LayerPlan) -> MoEPlan:
    """The layer's MoE plan when the layer is what JetMoE builds, else CannotExport naming the difference."""
    a, f = lp.attention, lp.ffn
    if a.kind != "moa" or not isinstance(f, MoEPlan):
        raise CannotExport("every JetMoE layer is a mixture of attention heads and an MoE FFN")
    r = f.router
    same = (a.moa_n_experts, a.moa_top_k) == (f.n_experts, r.top_k)
    jet_router = a.moa_softmax_after_topk and r.softmax_after_topk and not (r.normalize_topk or r.bias)
    if not (same and jet_router and a.out_bias and f.output_bias and a.n_heads == a.n_kv_heads):
        raise CannotExport(
            "JetMoE's attention and MoE share E and k, both route softmax-after-top-k, both have an output bias, "
            "and each attention expert has one query head per KV head"
        )
    plain = (f.n_shared_experts, f.n_zero_experts, f.bias, f.output_norm, f.capacity_factor, r.scale) == (
        0, 0, False, False, None, 1.0
    )  # fmt: skip
    if not plain or a.window is not None or a.scale is not None or r.kind != "topk":
        raise CannotExport("JetMoE has no shared or zero experts, expert biases, capacity, window or scales")
    return f


def export(m: ResolvedModel) -> dict[str, Any]:
    moes = [_jetmoe_layer(lp) for lp in m.layers]
    if len(set(moes)) != 1 or len({lp.attention for lp in m.layers}) != 1 or m.norm.eps != LAYER_NORM_EPS:
        raise CannotExport("JetMoE's layers are all alike and its norms use eps 1e-6")
    cfg = export_base(m, FAMILY)
    a, e = m.layers[0].attention, moes[0]
    cfg.update(
        num_key_value_heads=a.n_kv_heads,
        kv_channels=a.head_dim,
        num_local_experts=e.n_experts,
        num_experts_per_tok=e.router.top_k,
        intermediate_size=e.d_ff,
        aux_loss_coef=e.load_balance_coeff,
    )
    cfg["activation_function"] = cfg.pop("hidden_act")
    cfg.pop("num_attention_heads", None)  # derived by JetMoeConfig (kv · k)
    return cfg


class JetMoeMapper(Mapper):
    """JetMoE's names: the attention under ``self_attention.`` (experts.input_linear / output_linear / router.layer /
    bias, and the fused kv_proj), the MoE under ``mlp.`` with the router at ``router.layer.``."""

    routers = ("router.layer.", "router.")

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        at = p + "self_attention."
        names = {
            "router.weight": "experts.router.layer.weight",
            "q_experts": "experts.input_linear.weight",
            "o_experts": "experts.output_linear.weight",
            "out_bias": "experts.bias",
        }
        if leaf in names:
            return self.ck.get(at + names[leaf])
        if leaf in ("k_proj.weight", "v_proj.weight"):  # kv_proj (2·kv·hd, d): the keys' rows, then the values'
            kv = self.ck.get(at + "kv_proj.weight")
            half = kv.shape[0] // 2
            return kv[:half] if leaf.startswith("k") else kv[half:]
        raise Missing([f"<no checkpoint name known for moec's attention {leaf}>"])

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        if leaf == "output_bias":
            return self.ck.get(p + "mlp.bias")
        return super().moe(p, plan, leaf)


FAMILY = Family(
    "jetmoe",
    "JetMoeForCausalLM",
    DEFAULTS,
    translate,
    aliases={"head_dim": "kv_channels"},
    export=export,
    export_rank=90,
    mapper=JetMoeMapper,
)
