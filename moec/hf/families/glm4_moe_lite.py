"""GLM-4.7-Flash (``model_type`` glm4_moe_lite, Glm4MoeLiteForCausalLM): DeepSeek-V3's multi-head latent attention
(interleaved rotary pairs on qk_rope_head_dim dims, latent norms at RMSNorm's default eps 1e-6) around GLM-4.5's
MoE (DeepSeek-V3's router, shared experts fused into one MLP) on the ``sparse`` layers of mlp_layer_types
(default: the first layer dense, the rest sparse). Checkpoints use transformers' common names (the base Mapper),
plus the multi-token-prediction layer the release stores as ``model.layers.47.*``, which transformers lets go on
load, as moec does.

Fields of the release that Glm4MoeLiteConfig does not have: first_k_dense_replace (accepted when it describes the
layers mlp_layer_types builds, refused as ambiguous otherwise) and num_nextn_predict_layers (transformers builds
no MTP layer; named beside the layer count).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, is_int
from moec.hf.families._common import all_known, base, defaults, dense_layers_ffn, mla, mla_rope_interleave
from moec.hf.families.glm4_moe import glm4_moe_block, mtp_not_built
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=154880, hidden_size=2048, intermediate_size=10240, moe_intermediate_size=1536,
                    num_hidden_layers=47, num_attention_heads=20, num_key_value_heads=20, n_shared_experts=1,
                    n_routed_experts=64, routed_scaling_factor=1.8, kv_lora_rank=512, q_lora_rank=768,
                    qk_rope_head_dim=64, v_head_dim=256, qk_nope_head_dim=192, n_group=1, topk_group=1,
                    num_experts_per_tok=4, norm_topk_prob=True, max_position_embeddings=202752, rms_norm_eps=1e-5,
                    rope_interleave=True, mlp_layer_types=None, attention_bias=False)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Glm4MoeLite")
    _mla(c, d)
    glm4_moe_block(c, d, "Glm4MoeLite")
    _mlp_layers(c, d)
    dense_layers_ffn(c, d, bias_src="Glm4MoeLiteMLP has no biases")
    mtp_not_built(c, d)


def _mla(c: HFConfig, d: Draft) -> None:
    """Glm4MoeLiteAttention: DeepSeek-V3's MLA, its rotary dims interleaved when rope_interleave says so."""
    mla(c, d, "Glm4MoeLite")
    mla_rope_interleave(c, d)


def _mlp_layers(c: HFConfig, d: Draft) -> None:
    """mlp_layer_types ('dense' / 'sparse'), else Glm4MoeLiteConfig's default: the first layer dense; a
    first_k_dense_replace (GLM's spelling, which the config class does not have) must say the same."""
    k = c.value("first_k_dense_replace")  # read first: judged only against valid layer types
    types = c.str_list("mlp_layer_types") if c.value("mlp_layer_types") is not None else None
    if types is None:
        if c.failed("mlp_layer_types"):
            return
        types = ["dense"] + ["sparse"] * (d.n_layers - 1)
        d.ffn_note = "mlp_layer_types unset: Glm4MoeLiteConfig's default, the first layer dense"
    else:
        d.ffn_note = "mlp_layer_types"
    if not (d.fits_layers(c, "mlp_layer_types", types) and all_known(c, "mlp_layer_types", types, ("dense", "sparse"))):
        return
    d.ffn = ["moe" if t == "sparse" else "dense" for t in types]
    if k is None:
        return
    if not (is_int(k) and 0 <= k <= d.n_layers and d.ffn == ["dense"] * k + ["moe"] * (d.n_layers - k)):
        d.gap(
            "first_k_dense_replace",
            k,
            "transformers' Glm4MoeLite ignores first_k_dense_replace and builds its MLPs by mlp_layer_types, "
            "which say otherwise: ambiguous",
            "none: remove first_k_dense_replace (what transformers runs) or make it agree",
        )
    else:
        d.ffn_note += f" (first_k_dense_replace {k}: agrees; transformers ignores it)"


class Glm4MoeLiteMapper(Mapper):
    """The base names, and the release's MTP layer let go as transformers does
    (Glm4MoeLitePreTrainedModel._keys_to_ignore_on_load_unexpected: ``model.layers.47.*``, the layer after the
    last of GLM-4.7-Flash)."""

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        if len(plan.layers) <= 47:
            ck.used.update(n for n in ck.file_of if n.startswith("model.layers.47."))


FAMILY = Family(
    "glm4_moe_lite",
    "Glm4MoeLiteForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts", "head_dim": "qk_rope_head_dim"},
    mapper=Glm4MoeLiteMapper,
)
