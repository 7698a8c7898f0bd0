"""EXAONE-MoE (``model_type`` exaone_moe, ExaoneMoeForCausalLM; K-EXAONE): GQA with RMSNorm over each head's q and
k before the rotation and no biases; a hybrid of sliding-window layers, which alone use rotary positions, and
global layers without positions (NoPE); DeepSeek-V3's MoE (sigmoid scores, a selection-only bias, top-2-sum
groups, renormalised and scaled weights, shared experts fused into one MLP) on the ``sparse`` layers of
mlp_layer_types (default: dense before first_k_dense_replace). Checkpoints use transformers' common names,
except that the selection bias is saved beside the router (``mlp.e_score_correction_bias``).

K-EXAONE's multi-token-prediction layer (``mtp.*`` tensors, ``num_nextn_predict_layers``) is not part of the
model transformers builds, which drops those tensors on load; moec leaves it out the same way.
"""

from __future__ import annotations

from moec.hf.draft import Draft, Family, HFConfig, is_int, shown
from moec.hf.families._common import (
    base,
    defaults,
    dense_layers_ffn,
    gqa,
    mlp_layer_kinds,
    moe_core,
    shared_experts,
    typed_windows,
)
from moec.hf.families.dots1 import deepseek_v3_router
from moec.hf.families.glm4_moe import mtp_not_built
from moec.hf.mapper import Mapper

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=102400, hidden_size=4096, intermediate_size=16384, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-5,
                    sliding_window=4096, sliding_window_pattern=4, layer_types=None, mlp_layer_types=None,
                    first_k_dense_replace=1, moe_intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
                    num_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.5, n_group=1, topk_group=1)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "EXAONE-MoE")
    gqa(c, d, bias=False, out_bias=False, bias_src="ExaoneMoeAttention has no biases", qk_norm=True)
    d.put("attention.qk_norm", True, "ExaoneMoeAttention: RMSNorm(head_dim) on q and k, before the rotation")
    _windows(c, d)
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    _router(c, d)
    shared_experts(c, d, "num_shared_experts", " (one MLP of n·moe_intermediate_size)")
    _mlp_layers(c, d)
    if not c.failed("mlp_layer_types"):
        _release_layer_fields(c, d)
    dense_layers_ffn(c, d, bias_src="ExaoneMoeMLP has no biases")
    mtp_not_built(c, d)


def _windows(c: HFConfig, d: Draft) -> None:
    """layer_types, else sliding except every sliding_window_pattern-th layer; rotary on the sliding layers only
    (ExaoneMoeAttention rotates when sliding_window is None or the layer slides, and transformers requires an
    integer sliding_window)."""
    w = c.int("sliding_window")
    pattern = c.value("sliding_window_pattern")
    given = c.value("layer_types") is not None
    if not given and not (isinstance(pattern, int) and not isinstance(pattern, bool) and pattern >= 1):
        c.bad(
            "sliding_window_pattern",
            f"{shown(pattern)}: without layer_types, ExaoneMoeConfig derives them as (i+1) % pattern, which needs "
            "an integer ≥ 1; give layer_types",
        )
        return
    default = ["full_attention" if given or (i + 1) % pattern == 0 else "sliding_attention" for i in range(d.n_layers)]
    typed_windows(c, d, w, default, f"global on every sliding_window_pattern-th ({shown(pattern)}) layer")
    if given:  # transformers derives nothing from the pattern then
        d.window_note += f" (sliding_window_pattern {shown(pattern)}: transformers ignores it given layer_types)"
    d.rope = [win is not None for win in d.window]
    d.rope_note = "ExaoneMoeAttention rotates q and k on the sliding layers only; the global layers are NoPE"


def _router(c: HFConfig, d: Draft) -> None:
    """DeepSeek-V3's router (transformers copies it, as it does into Dots1); ExaoneMoeConfig requires the group
    counts to be integers."""
    deepseek_v3_router(c, d, "ExaoneMoeTopkRouter")
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))


def _mlp_layers(c: HFConfig, d: Draft) -> None:
    """mlp_layer_types ('dense' / 'sparse'), else dense before first_k_dense_replace."""
    k = c.int("first_k_dense_replace", minimum=0)
    types = c.str_list("mlp_layer_types") if c.value("mlp_layer_types") is not None else None
    if types is None:
        if not c.failed("mlp_layer_types"):
            d.ffn = ["dense" if i < k else "moe" for i in range(d.n_layers)]
            d.ffn_note = f"mlp_layer_types unset: dense before first_k_dense_replace ({k})"
        return
    mlp_layer_kinds(c, d, types, "mlp_layer_types (first_k_dense_replace is not used when it is given)")


def _release_layer_fields(c: HFConfig, d: Draft) -> None:
    """is_moe_layer and first_last_k_dense_replace, which K-EXAONE's pre-transformers configs carry and
    transformers does not read: accepted when they describe the layers it builds, refused otherwise."""
    flags, k = c.value("is_moe_layer"), c.value("first_last_k_dense_replace")
    described = {
        "is_moe_layer": ["moe" if f else "dense" for f in flags] if isinstance(flags, list) else None,
        "first_last_k_dense_replace": (
            ["dense"] * k + ["moe"] * (d.n_layers - k) if is_int(k) and 0 <= k <= d.n_layers else None
        ),
    }
    for key, layers in described.items():
        v = c.value(key)
        if v is None:
            continue
        if layers != d.ffn or (key == "is_moe_layer" and not all(isinstance(f, bool) for f in v)):
            d.gap(
                key,
                v,
                "transformers' ExaoneMoe ignores it and builds its MLPs by mlp_layer_types (else "
                "first_k_dense_replace), which say otherwise: ambiguous",
                f"none: remove {key} (what transformers runs) or make it agree",
            )
        else:
            d.ffn_note += f" ({key}: agrees; transformers ignores it)"


class ExaoneMoeMapper(Mapper):
    """The selection bias as save_pretrained writes it (``mlp.e_score_correction_bias``, K-EXAONE's name) or as
    transformers holds it in memory (``mlp.gate.e_score_correction_bias``)."""

    # K-EXAONE's MTP layer: transformers lets these tensors go on load (_keys_to_ignore_on_load_unexpected),
    # and so does moec, whose model leaves the layer out too
    dropped = ("mtp.",)
    expert_biases = ("e_score_correction_bias", "gate.e_score_correction_bias")


FAMILY = Family("exaone_moe", "ExaoneMoeForCausalLM", DEFAULTS, translate, mapper=ExaoneMoeMapper)
