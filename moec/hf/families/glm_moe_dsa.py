"""GLM-5 (``model_type`` glm_moe_dsa, GlmMoeDsaForCausalLM): DeepSeek-V3.2's sparse attention on GLM's sizes,
translated by moec/hf/families/deepseek_v32.py's steps. Two differences, both from transformers' GlmMoeDsa
classes: the indexer rotates its first qk_rope_head_dim dims in adjacent pairs (``rope_layout: interleaved``), and
each layer either runs its own indexer (``full``) or reuses the top-k of the last full layer (``shared``:
GLM-5.2's cross-layer sharing, ``layers.*.attention.indexer: shared``), by indexer_types or the schedule
index_topk_pattern / index_topk_freq / index_skip_topk_offset give. The release's MTP layer (``model.layers.78.*``)
is let go as transformers does.
"""

from __future__ import annotations

from typing import Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, shown
from moec.hf.families._common import defaults
from moec.hf.families._indexer_share import shared_indexer_layers
from moec.hf.families.deepseek_v32 import DsaMapper, dsa_model, export_dsa, indexer
from moec.spec.plan import ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=154880, hidden_size=6144, intermediate_size=12288, moe_intermediate_size=2048,
                    num_hidden_layers=78, num_attention_heads=64, num_key_value_heads=64, n_shared_experts=1,
                    n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=2048,
                    qk_rope_head_dim=64, v_head_dim=256, qk_nope_head_dim=192, n_group=1, topk_group=1,
                    num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=202752, rms_norm_eps=1e-5,
                    mlp_layer_types=None, attention_bias=False, index_topk=2048, index_head_dim=128, index_n_heads=32,
                    first_k_dense_replace=3, layer_types=None, mlp_bias=False, hidden_act="silu",
                    indexer_types=None)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    dsa_model(c, d, "GlmMoeDsa")
    indexer(c, d, "GlmMoeDsa", "interleaved")
    _indexer_types(c, d)


def _schedule(c: HFConfig, n: int) -> list[str] | None:
    """GlmMoeDsaConfig's indexer_types when the config leaves them out: index_topk_pattern ('F'/'S' per layer, or a
    list), else 'full' where max(i − offset + 1, 0) is a multiple of index_topk_freq (default 1, offset 2)."""
    pattern = c.value("index_topk_pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            return c.str_list("index_topk_pattern")  # a list: full / shared, checked with indexer_types'
        if set(pattern) <= {"F", "S"}:
            return [{"F": "full", "S": "shared"}[ch] for ch in pattern]
        c.bad("index_topk_pattern", f"{shown(pattern)}: expected 'F' (full) or 'S' (shared) per layer")
        return None
    freq, offset = c.value("index_topk_freq", 1), c.value("index_skip_topk_offset", 2)
    if not (is_int(freq) and is_int(offset)):
        c.bad("index_topk_freq", f"{shown(freq)} / index_skip_topk_offset {shown(offset)}: expected integers")
        return None
    freq = max(freq, 1)
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(n)]


def _indexer_types(c: HFConfig, d: Draft) -> None:
    """Each layer runs its own indexer (``full``) or attends the top-k the last full layer before it chose
    (``shared``: ``layers.*.attention.indexer: shared``, no indexer of its own); the first layer must be full."""
    if not d.layers_known:  # the count is refused: the per-layer choice is read, not judged
        for key in ("indexer_types", "index_topk_pattern", "index_topk_freq", "index_skip_topk_offset"):
            c.value(key)
        return
    schedule = _schedule(c, d.n_layers)  # read also beside indexer_types, which transformers then follows
    if c.value("indexer_types") is not None:
        key, types = "indexer_types", c.str_list("indexer_types")
    else:
        key = "index_topk_pattern" if c.value("index_topk_pattern") is not None else "index_topk_freq"
        types = schedule
    shared_indexer_layers(c, d, key, types, c.src(key), "GlmMoeDsa")


class GlmMoeDsaMapper(DsaMapper):
    release_layers = 78  # GlmMoeDsaPreTrainedModel._keys_to_ignore_on_load_unexpected: model.layers.78.*


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_dsa(m, FAMILY, "interleaved")
    cfg["indexer_types"] = ["shared" if lp.attention.indexer_shared else "full" for lp in m.layers]
    return cfg


FAMILY = Family(
    "glm_moe_dsa",
    "GlmMoeDsaForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
    export=export,
    export_rank=36,
    mapper=GlmMoeDsaMapper,
)
