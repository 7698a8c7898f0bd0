"""Hy3 (``model_type`` hy_v3, HYV3ForCausalLM; Tencent's Hy3-preview): GQA with RMSNorm over each head's q and k
before the rotation; on the ``sparse`` layers of mlp_layer_types (default: all but the first) a sigmoid router
with a selection-only bias, the k weights always renormalised and scaled by router_scaling_factor, and shared
experts fused into one MLP. Checkpoints name the router ``mlp.router.gate``, the selection bias
``mlp.expert_bias`` and the shared experts ``mlp.shared_mlp`` (transformers renames them on load; both
spellings load). The release's multi-token-prediction layer (decoder layer num_hidden_layers) is not part of
the model transformers builds, which drops it on load; moec leaves it out the same way.

Hy3's release config also carries fields of Tencent's own code that transformers does not read (qk_norm,
route_norm, moe_router_use_sigmoid, ...): each is accepted when it says what transformers builds, and named in
the note of the spec field it concerns; a value that says otherwise is refused as ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, spelt
from moec.hf.families._common import base, defaults, dense_layers_ffn, gqa, mlp_layer_types, moe_core, router
from moec.hf.mapper import Mapper
from moec.spec.plan import MoEPlan

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(11158840.0, vocab_size=120832, hidden_size=4096, intermediate_size=13312, num_hidden_layers=80,
                    num_attention_heads=64, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False, num_experts=192, num_experts_per_tok=8,
                    num_shared_experts=1, moe_intermediate_size=1536, router_scaling_factor=2.826,
                    enable_moe_fp32_combine=True, mlp_layer_types=None)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "HYV3")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "HYV3Attention: RMSNorm(head_dim) on q and k, before the rotation")
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(
        d,
        "HYV3TopKRouter: sigmoid, + e_score_correction_bias for selection only, the k weights renormalised",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        normalize_topk=True,
    )
    d.put("moe.router.scale", c.float("router_scaling_factor"), c.src("router_scaling_factor"))
    mlp_layers(c, d)
    _shared(c, d)
    _release_fields(c, d)


def mlp_layers(c: HFConfig, d: Draft) -> None:
    """mlp_layer_types ('dense' / 'sparse'); HYV3Config's default (HY-V4's too): the first layer dense, the rest
    sparse."""
    unset = ["dense"] + ["sparse"] * (d.n_layers - 1)
    mlp_layer_types(c, d, unset, "mlp_layer_types unset: the first layer dense, the rest sparse")


def _shared(c: HFConfig, d: Draft) -> None:
    """The shared experts: one HYV3MLP of num_shared_experts · moe_intermediate_size, with the dense MLP's biases
    (mlp_bias); the routed experts never have biases."""
    n, f, d_model = c.int("num_shared_experts", minimum=0), d.get("moe.d_ff"), d.get("model.d_model")
    fp32 = c.bool("enable_moe_fp32_combine")
    combine = f"enable_moe_fp32_combine {str(fp32).lower()}: a rounding choice, moec adds in the model dtype"
    if n:
        d.put("moe.n_shared_experts", n, f"{c.src('num_shared_experts')} (one MLP of n·width; {combine})")
        d.put("moe.d_ff_shared", f, c.src("moe_intermediate_size"))
    else:  # HYV3MLP's `intermediate_size or config.intermediate_size`: a width of 0 falls back to the dense one
        d.put("moe.n_shared_experts", 1, f"num_shared_experts 0: HYV3MLP(0) falls back to intermediate_size; {combine}")
        d.put("moe.d_ff_shared", c.int("intermediate_size"), c.src("intermediate_size"))
    bias = c.bool("mlp_bias")
    dense_layers_ffn(c, d, bias=bias, bias_src=c.src("mlp_bias") + " (gate, up and down)")
    if bias and "moe" in d.ffn:
        width = d.get("moe.n_shared_experts") * d.get("moe.d_ff_shared")
        d.gap(
            "mlp_bias",
            True,
            "HYV3MLP biases reach the shared experts but not the routed ones (HYV3Experts has none)",
            "moe.shared_bias: bool — biases on the shared experts only",
            param_delta=d.ffn.count("moe") * (2 * width + d_model),
        )


def _release_fields(c: HFConfig, d: Draft) -> None:
    """Fields of Tencent's Hy3 code transformers does not read: each must say what HYV3ForCausalLM builds."""
    router_note = "moe.router.score"
    agree = {
        "qk_norm": (True, "attention.qk_norm"),
        "route_norm": (True, router_note),
        "moe_router_use_sigmoid": (True, router_note),
        "moe_router_enable_expert_bias": (True, router_note),
        "expert_hidden_dim": (d.get("moe.d_ff"), "moe.d_ff"),
    }
    for key, (want, path) in agree.items():
        ignored(c, d, "HYV3", key, equals(want), path)
    k = c.int("first_k_dense_replace", minimum=0, optional=True)
    if k is not None and not c.failed("mlp_layer_types"):  # compared with the layers transformers builds
        want = ["dense"] * k + ["moe"] * (d.n_layers - k) if k <= d.n_layers else None
        ignored(c, d, "HYV3", "first_k_dense_replace", lambda _: d.ffn == want, "layers")
    # no effect on the model transformers builds: its MTP layer (dropped on load), fp32 logits, a kernel choice
    for key, path in (("num_nextn_predict_layers", "model.n_layers"), ("enable_lm_head_fp32", "model.tie_embeddings"),
                      ("use_grouped_mm", "moe.n_experts")):  # fmt: skip
        ignored(c, d, "HYV3", key, lambda _: True, path)


def equals(want: Any) -> Callable[[Any], bool]:
    """Equal to ``want`` and of its JSON type (true is not 1)."""
    return lambda v: v == want and isinstance(v, bool) == isinstance(want, bool)


def ignored(c: HFConfig, d: Draft, family: str, key: str, agrees: Callable[[Any], bool], path: str) -> None:
    """A field of a release config that transformers' ``family`` does not read (Tencent's Hy3 and HunYuan
    releases carry their own code's): named in the note of spec field ``path`` (``layers``: the MoE layers')
    when it ``agrees`` with the model transformers builds, refused as ambiguous when it does not."""
    v = c.value(key)
    if v is None:
        return
    where = c.prefix + key  # a nested config's field by its full name (text_config.use_qk_norm)
    if not agrees(v):
        d.gap(
            where,
            v,
            f"transformers' {family} ignores {key}, and the model it builds disagrees with it: ambiguous",
            f"none: remove {where} (what transformers runs) or make it agree",
        )
        return
    said = f"{where} {spelt(v)}: transformers ignores it"
    if path == "layers":
        d.ffn_note += f" ({said}; agrees)"
        return
    value, note = d.fields[path]
    d.fields[path] = (value, f"{note} ({said})" if note else said)


class HYV3Mapper(Mapper):
    """Hy3's released names beside transformers' in-memory ones: the router ``mlp.router.gate`` (``mlp.gate``),
    the selection bias ``mlp.expert_bias`` (``mlp.e_score_correction_bias``), the shared experts
    ``mlp.shared_mlp`` (``mlp.shared_experts``)."""

    routers = ("router.gate.", "gate.")
    expert_biases = ("expert_bias", "e_score_correction_bias")

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        # the release's MTP layer is decoder layer num_hidden_layers: transformers lets it go on load
        # (_keys_to_ignore_on_load_unexpected), and so does moec, whose model leaves it out too
        mtp = self.layer(plan.n_layers)
        if mtp + "eh_proj.weight" in ck:  # an MTP layer (its projection of [embedding; hidden state]), not a stray one
            ck.used.update(n for n in ck.file_of if n.startswith(mtp))

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        blk = p + "mlp."
        if leaf.startswith("shared."):
            held = blk + "shared_mlp.gate_proj.weight" in self.ck
            return self.dense(blk + ("shared_mlp." if held else "shared_experts."), leaf.removeprefix("shared."))
        return super().moe(p, plan, leaf)


FAMILY = Family(
    "hy_v3",
    "HYV3ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "num_experts"},
    mapper=HYV3Mapper,
)
