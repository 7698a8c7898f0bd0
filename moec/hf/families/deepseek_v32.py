"""DeepSeek-V3.2-Exp (``model_type`` deepseek_v32, DeepseekV32ForCausalLM): DeepSeek-V3 with DeepSeek Sparse
Attention. Every layer's MLA gets a lightning indexer (``attention.indexer``, moec/spec/indexer.py) of index_n_heads
heads of index_head_dim reading the query latent, which keeps the index_topk best keys per query; the indexer rotates
the first qk_rope_head_dim dims of its heads in halves (rotate_half), while MLA's own rotary dims stay DeepSeek's
adjacent pairs. The rest is GLM-4.7-Flash's layout, which transformers' class inherits: DeepSeek-V3's router and
fused shared experts on the ``sparse`` layers of mlp_layer_types (default: dense before first_k_dense_replace, 3).
Checkpoints use transformers' names (the base Mapper, ``self_attn.indexer.{wq_b,wk,k_norm,weights_proj}``); the
release's MTP layer (``model.layers.61.*``), which transformers lets go on load, is let go as well.

GLM-5 (moec/hf/families/glm_moe_dsa.py) shares every step here but the indexer's rotary layout and its per-layer
indexer_types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, is_int
from moec.hf.families._common import all_known, base, defaults, dense_layers_ffn, mla, mlp_layer_types
from moec.hf.families._export_common import deepseek_mla_fields, dense_plan, export_base, moe_plan
from moec.hf.families.glm4_moe import glm4_moe_block, mtp_not_built
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                    num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                    n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536,
                    qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4,
                    num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=163840, rms_norm_eps=1e-6,
                    mlp_layer_types=None, attention_bias=False, index_topk=2048, index_head_dim=128, index_n_heads=64,
                    first_k_dense_replace=3, layer_types=None, mlp_bias=False, hidden_act="silu")
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    dsa_model(c, d, "DeepseekV32")
    indexer(c, d, "DeepseekV32", "halves")


def dsa_model(c: HFConfig, d: Draft, cls: str) -> None:
    """Everything of DeepseekV32 (and GlmMoeDsa) but the indexer: MLA (interleaved rotary pairs, latent norms at
    1e-6), GLM-4.7-Flash's MoE block on mlp_layer_types' sparse layers, dense MLPs on the rest."""
    base(c, d, cls)
    mla(c, d, cls)
    _always_interleaved(c, cls)
    if c.value("mlp_bias"):
        d.gap("mlp_bias", True, f"{cls}MLP is built without biases whatever mlp_bias says: ambiguous", "none")
    glm4_moe_block(c, d, cls)
    _mlp_layers(c, d)
    dense_layers_ffn(c, d, bias_src=f"{cls}MLP has no biases")
    mtp_not_built(c, d)
    _deepseek_release_fields(c, d)
    types = c.str_list("layer_types") if c.value("layer_types") is not None else None
    if types is not None and d.fits_layers(c, "layer_types", types):
        all_known(c, "layer_types", types, ("indexed_attention",))


def _deepseek_release_fields(c: HFConfig, d: Draft) -> None:
    """DeepSeek's own fields that the V3.2-Exp release keeps from V3 and transformers' class does not have: the
    balancing loss (training only), the expert-parallel degree (a deployment choice), moe_layer_freq (1: what
    mlp_layer_types builds; another value is ambiguous)."""
    alpha = c.float("aux_loss_alpha", optional=True)
    if alpha is not None:
        d.put("moe.balance.load_balance_coeff", alpha, c.src("aux_loss_alpha") + " (training only)")
        seq = c.bool("seq_aux", default=True)
        d.put("moe.balance.load_balance_granularity", "sequence" if seq else "batch", c.src("seq_aux"))
    c.value("ep_size")
    freq = c.value("moe_layer_freq", 1)
    if freq != 1:
        d.gap("moe_layer_freq", freq, "transformers ignores it and builds MLPs by mlp_layer_types: ambiguous", "none")


def _always_interleaved(c: HFConfig, cls: str) -> None:
    """rope_interleave: transformers' class has no such field (MLA always rotates adjacent pairs, as moec's MLA);
    a config.json saying false would describe another model than the one transformers builds."""
    if c.value("rope_interleave") is False:
        c.bad("rope_interleave", f"false, but {cls}Attention always rotates adjacent pairs: ambiguous")


def _mlp_layers(c: HFConfig, d: Draft) -> None:
    """mlp_layer_types ('dense' / 'sparse'), else the config class's default: dense before first_k_dense_replace."""
    k = c.int("first_k_dense_replace", minimum=0)
    given = c.value("mlp_layer_types") is not None
    if not given and not (is_int(k) and d.layers_known):
        return
    n_dense = min(k, d.n_layers) if is_int(k) and d.layers_known else 0
    unset = ["dense"] * n_dense + ["sparse"] * (d.n_layers - n_dense)
    if mlp_layer_types(c, d, unset, f"mlp_layer_types unset: dense before first_k_dense_replace ({k})") and given:
        d.ffn_note += " (first_k_dense_replace is read only when they are unset)"


def indexer(c: HFConfig, d: Draft, cls: str, layout: str) -> None:
    """The lightning indexer of every layer (``{cls}Indexer``): heads, width, top-k; its key's LayerNorm at
    transformers' fixed eps 1e-6; the rotary layout the class fixes (``indexer_rope_interleave``, which some
    releases write, must agree with it)."""
    d.section(
        "attention.indexer",
        n_heads=(c.int("index_n_heads"), c.src("index_n_heads")),
        head_dim=(c.int("index_head_dim"), c.src("index_head_dim")),
        top_k=(c.int("index_topk"), c.src("index_topk")),
        rope_layout=(layout, f"{cls}Indexer rotates its first qk_rope_head_dim dims in {layout}"),
        key_norm_eps=(1e-6, f"{cls}Indexer's k_norm: nn.LayerNorm(index_head_dim, eps=1e-6)"),
    )
    said = c.value("indexer_rope_interleave")
    if said is not None and said != (layout == "interleaved"):
        c.bad("indexer_rope_interleave", f"{said}, but {cls}Indexer always rotates in {layout}: ambiguous")
    head_dim, rope = c.value("index_head_dim"), c.value("qk_rope_head_dim")
    refused = c.failed("index_head_dim") or c.failed("qk_rope_head_dim")  # said by their readers
    if is_int(head_dim) and is_int(rope) and rope > head_dim and not refused:
        c.bad("index_head_dim", f"{head_dim} < qk_rope_head_dim ({rope}): the indexer rotates that many of its dims")


class DsaMapper(Mapper):
    """The base names, and the release's MTP layer (the layer after the last, which transformers'
    ``_keys_to_ignore_on_load_unexpected`` names for the release's depth) let go as transformers does."""

    release_layers = 61

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        if len(plan.layers) <= self.release_layers:
            mtp = f"model.layers.{self.release_layers}."
            ck.used.update(n for n in ck.file_of if n.startswith(mtp))


def export_dsa(m: ResolvedModel, family: Family, layout: str) -> dict[str, Any]:
    """A plan → deepseek_v32's (or glm_moe_dsa's) config.json: DeepSeek-V3's exporter's fields, mlp_layer_types
    and the indexer's; every layer with the same indexer of the given rotary layout."""
    cfg = export_base(m, family, mtp=False)
    a, e, f = m.layers[0].attention, moe_plan(m), dense_plan(m)
    if a.kind != "mla" or not a.q_lora_rank or not a.has_indexer:
        raise CannotExport("needs MLA with q_lora_rank and attention.indexer")
    if a.indexer_rope_layout != layout or a.indexer_key_norm_eps != 1e-6:
        raise CannotExport(f"rotates the indexer in {layout} with a key norm eps of 1e-6")
    r = e.router  # what this config.json cannot say, the import of it shows (export_hf_config's round trip)
    cfg.update(
        deepseek_mla_fields(a, e, f),
        routed_scaling_factor=r.scale,
        n_group=r.n_groups or 1,
        topk_group=r.topk_groups or 1,
        norm_topk_prob=r.normalize_topk,
        mlp_layer_types=["sparse" if lp.ffn.kind == "moe" else "dense" for lp in m.layers],
        index_n_heads=a.indexer_n_heads,
        index_head_dim=a.indexer_head_dim,
        index_topk=a.indexer_top_k,
        aux_loss_alpha=e.load_balance_coeff,  # DeepSeek's own fields, which the import reads back (training only)
        seq_aux=e.load_balance_granularity == "sequence",
    )
    return cfg


def export(m: ResolvedModel) -> dict[str, Any]:
    return export_dsa(m, FAMILY, "halves")


FAMILY = Family(
    "deepseek_v32",
    "DeepseekV32ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
    export=export,
    export_rank=35,
    mapper=DsaMapper,
)
