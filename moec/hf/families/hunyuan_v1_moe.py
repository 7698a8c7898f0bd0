"""HunYuan-MoE V1 (``model_type`` hunyuan_v1_moe, HunYuanMoEV1ForCausalLM; Hunyuan-A13B): GQA whose q and k are
RMS-normalised per head *after* the rotation (query_layernorm, key_layernorm), every layer MoE: softmax over all
experts, top-k, renormalised, experts and one ungated shared MLP all intermediate_size wide. Rotary "dynamic"
with an ``alpha`` is NTK-alpha: a fixed base θ·α^(d/(d−2)) (HunYuanMoEV1RotaryEmbedding's ntk_alpha, moec's
rope scaling kind ntk_alpha). Checkpoints name the router ``mlp.gate.wg``, the shared MLP ``mlp.shared_mlp`` and
the q/k norms ``self_attn.query_layernorm`` / ``key_layernorm``.

A learned per-dimension norm weight does not commute with the rotation, so the order matters: the spec says it
with ``attention.qk_norm_after_rope: true`` (Qwen3 and OLMoE normalise before the rotation).
Hunyuan-A13B's release carries fields of Tencent's own code transformers does not read (use_qk_norm,
use_mixed_mlp_moe, num_shared_expert, moe_intermediate_size lists, ...): each is accepted when it says what
transformers builds, and refused as ambiguous when it does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, is_number, shown
from moec.hf.families._common import activation, base, defaults, gqa, moe_core, router
from moec.hf.families.hy_v3 import equals, ignored
from moec.hf.mapper import Mapper
from moec.hf.rope import rope_field
from moec.spec.plan import LayerPlan

if TYPE_CHECKING:
    import torch

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=290943, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-5,
                    eod_token_id=3, attention_bias=False, num_experts=1, moe_topk=1, head_dim=None)
# fmt: on

FAMILY_NAME = "HunYuan-MoE-V1"


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, FAMILY_NAME)
    if c.value("head_dim") is None:
        c.bad("head_dim", "null: HunYuanMoEV1Attention and its rotary read head_dim and do not derive it")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "HunYuanMoEV1Attention: query_layernorm, key_layernorm (RMSNorm(head_dim))")
    d.put("attention.qk_norm_after_rope", True, "HunYuanMoEV1Attention: the q/k norms act after the rotation")
    _ntk_alpha(c, d)
    _experts(c, d)
    router(
        d,
        "HunYuanMoEV1Gate: softmax over all experts, top-k, renormalised",
        score="softmax",
        softmax_after_topk=False,
        normalize_topk=True,
    )
    d.section(
        "moe",
        n_shared_experts=(1, "HunYuanMoEV1Moe.shared_mlp (always on, no gate)"),
        d_ff_shared=(d.get("moe.d_ff"), c.src("intermediate_size")),
    )
    d.ffn_note = f"every {FAMILY_NAME} layer is MoE"
    c.value("eod_token_id")  # a token id
    _release_fields(c, d)


def _ntk_alpha(c: HFConfig, d: Draft) -> None:
    """rope type "dynamic" with an alpha: HunYuanMoEV1RotaryEmbedding's ntk_alpha, a fixed base θ·α^(d/(d−2))
    whatever the sequence length (its dynamic update applies to "dynamic" only), which is moec's ntk_alpha."""
    where = rope_field(c)
    params = c.value(where)
    if not isinstance(params, dict) or (params.get("rope_type") or params.get("type")) != "dynamic":
        return
    alpha = params.get("alpha")
    if not alpha:
        return
    # what read_rope made of the dynamic type (its factor, and the alpha it does not know) gives way to ntk_alpha
    d.gaps = [g for g in d.gaps if g.field != f"{where}.alpha"]
    for k in [k for k in d.fields if k.startswith("model.positions.scaling.")]:
        del d.fields[k]
    if not is_number(alpha):
        c.bad(f"{where}.alpha", f"{shown(alpha)}: expected a number")
        return
    factor = f"; its factor {shown(params['factor'])} unused" if "factor" in params else ""
    d.put("model.positions.scaling.kind", "ntk_alpha", f"{where}: type dynamic with an alpha (ntk_alpha{factor})")
    d.put("model.positions.scaling.alpha", float(alpha), f"{where}.alpha")


def _experts(c: HFConfig, d: Draft) -> None:
    """Experts intermediate_size wide; moe_topk one int, or one per layer (HunYuanMoEV1Gate takes
    moe_topk[layer]), which moec's single top_k can say only when they are all equal."""
    k = c.value("moe_topk")
    if not isinstance(k, list):
        moe_core(c, d, experts_key="num_experts", width_key="intermediate_size", top_k_key="moe_topk")
        return
    d.section(
        "moe",
        n_experts=(c.int("num_experts"), c.src("num_experts")),
        d_ff=(c.int("intermediate_size"), c.src("intermediate_size")),
        activation=(activation(c, d), c.src("hidden_act") + " (gated)"),
    )
    if not k or not all(is_int(x) and x >= 1 for x in k):
        c.bad("moe_topk", f"{shown(k)}: expected an integer ≥ 1 or a list of them, one per layer")
    elif d.layers_known and len(k) != d.n_layers:
        c.bad("moe_topk", f"{len(k)} entries for {d.n_layers} layers")
    elif len(set(k)) > 1:
        d.gap("moe_topk", k, "a different top-k per layer", "moe.router.top_k per layer (in layers.overrides)")
    d.put("moe.router.top_k", k[0] if k and is_int(k[0]) else 1, "moe_topk (one per layer, all equal)")


def _release_fields(c: HFConfig, d: Draft) -> None:
    """Fields of Tencent's Hunyuan code transformers does not read: each must say what transformers builds (one
    ungated shared MLP and q/k norms in every layer, every width intermediate_size, no cross-layer attention)."""
    f, hd = d.get("moe.d_ff"), d.get("attention.head_dim")
    agree = {
        "use_qk_norm": (True, "attention.qk_norm"),
        "use_mixed_mlp_moe": (True, "moe.n_shared_experts"),
        "use_cla": (False, "attention.kind"),
        "attention_head_dim": (hd, "attention.head_dim"),
    }
    for key, (want, path) in agree.items():
        ignored(c, d, FAMILY_NAME, key, equals(want), path)
    ignored(c, d, FAMILY_NAME, "moe_intermediate_size", lambda v: _each(v, lambda x: x == f), "moe.d_ff")
    ignored(c, d, FAMILY_NAME, "num_shared_expert", lambda v: _each(v, lambda x: x == 1), "moe.n_shared_experts")
    c.value("cla_share_factor")  # how many layers share a KV cache under use_cla (refused above when on)


def _each(v: Any, ok: Callable[[int], bool]) -> bool:
    """An int, or a per-layer list of them, every one ``ok``."""
    values = v if isinstance(v, list) and v else [v]
    return all(is_int(x) and ok(x) for x in values)


class HunYuanMoEV1Mapper(Mapper):
    """HunYuan's names: the router ``mlp.gate.wg``, the shared MLP ``mlp.shared_mlp``, the q/k norms
    ``query_layernorm`` / ``key_layernorm``."""

    routers = ("gate.wg.",)
    shared = "shared_mlp."

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        names = {"q_norm.weight": "query_layernorm.weight", "k_norm.weight": "key_layernorm.weight"}
        return super().attention(p, lp, names.get(leaf, leaf))


FAMILY = Family(
    "hunyuan_v1_moe",
    "HunYuanMoEV1ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts_per_tok": "moe_topk", "num_local_experts": "num_experts"},
    mapper=HunYuanMoEV1Mapper,
)
