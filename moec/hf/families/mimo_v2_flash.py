"""MiMo-V2-Flash (``model_type`` mimo_v2_flash, MiMoV2FlashForCausalLM; Xiaomi): GQA whose query and key heads
are ``head_dim`` wide and value heads ``v_head_dim`` (192 and 128 in the release), the values times
``attention_value_scale`` after v_proj (``attention.value_scale``); sliding-window layers by ``layer_types`` (unset:
full on the first layer and every sixth, sliding elsewhere) with twice the full layers' KV heads and one learned
sink logit per head (``layers.*.attention.n_kv_heads``, ``sinks``); a window of ``sliding_window`` tokens, or
``sliding_window_size`` + 1 when the config gives that (the query and as many earlier tokens, as the config class
computes it); rotary parameters per attention type (``rope_parameters``: base and ``partial_rotary_factor``, 0.334
when a default-type mapping gives none, so 64 of 192 dims), which moec gives a layer as its own ``rope_theta`` and
``rotary_dim``. Dense MLPs on the ``mlp_layer_types`` "dense" layers (unset: the first), else DeepSeek-V3's router
without shared experts: sigmoid scores, a selection-only ``e_score_correction_bias``, top-2-sum groups,
renormalised top-k (sum + 1e-20) scaled by ``routed_scaling_factor`` (null: 1.0).

Xiaomi's release config.json also carries the fields of its own code (``hybrid_layer_pattern``, ``moe_layer_freq``,
``swa_*``, ``add_*_attention_sink_bias``, ``layernorm_epsilon``, ``rope_theta``, ``partial_rotary_factor``, ...),
which transformers 5 does not read: each is named where it agrees with the model transformers builds and refused
as ambiguous where it does not. The release's multi-token-prediction layers (``model.mtp.*``) are built by neither
transformers nor moec and let go on load. Checkpoints otherwise use transformers' common names (sinks:
``self_attn.sinks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, is_int, is_number, shown, spelt
from moec.hf.families._common import defaults, dense_layers_ffn, gqa, moe_core, typed_windows
from moec.hf.families._export_common import dense_plan, export_base, layer_types, moe_plan, one
from moec.hf.families._typed_rope import (
    TypedRope,
    export_typed_rope,
    layer_rope,
    rope_layer_types,
    rope_per_type,
    typed_base,
)
from moec.hf.families.dots1 import deepseek_v3_router
from moec.hf.families.glm4_moe import mtp_not_built
from moec.hf.families.laguna import first_dense_mlp_layers
from moec.hf.mapper import Mapper
from moec.spec.schema import MAX_LAYERS

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import LayerPlan, ResolvedModel

NAME = "MiMoV2Flash"

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=152576, hidden_size=4096, intermediate_size=16384, num_hidden_layers=48,
                    num_attention_heads=64, num_key_value_heads=4, head_dim=192, v_head_dim=128,
                    max_position_embeddings=131072, rms_norm_eps=1e-5, attention_bias=False, sliding_window=129,
                    moe_intermediate_size=2048, num_experts_per_tok=8, n_routed_experts=256,
                    routed_scaling_factor=1.0, n_group=1, topk_group=1, norm_topk_prob=True, layer_types=None,
                    mlp_layer_types=None, attention_value_scale=0.707)
# fmt: on

# MiMoV2FlashConfig.__post_init__ when rope_parameters is unset
DEFAULT_ROPE = {
    "full_attention": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.334},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.334},
}


def _factor_of(mapping: dict[str, Any]) -> float:
    # MiMoV2FlashRotaryEmbedding's own default rope falls back to 0.334; the other rope types are transformers'
    # shared ones, whose fallback is 1.0 (whole heads)
    return 0.334 if mapping.get("rope_type", "default") == "default" else 1.0


MIMO_ROPE = TypedRope(
    NAME,
    DEFAULT_ROPE,
    _factor_of,
)


def default_layer_types(n_layers: int) -> list[str]:
    """MiMoV2FlashConfig.__post_init__: full attention on the first layer and every sixth, sliding elsewhere."""
    return ["full_attention" if i == 0 or (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def translate(c: HFConfig, d: Draft) -> None:
    n = c.value("num_hidden_layers")
    types = _layer_types(c, n if is_int(n) and 0 < n <= MAX_LAYERS else 0)  # else refused by the base
    legacy = {k: c.value(k) for k in ("rope_theta", "swa_rope_theta", "partial_rotary_factor") if c.given(k)}
    for k in legacy:  # Xiaomi's flat rope fields: compared with the per-type mappings below, not read as rope
        del c.raw[k]
    per_type = rope_per_type(c, types, MIMO_ROPE)
    typed_base(c, d, per_type, types, MIMO_ROPE)
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=False, bias_src=c.src("attention_bias") + " (q, k and v; o_proj has none)")
    _values(c, d)
    _windows(c, d)
    if d.layers_known and not c.failed("layer_types") and len(types) == d.n_layers:
        _sliding_layers(c, d, types)
        if per_type is not None:
            layer_rope(c, d, per_type, types, MIMO_ROPE)
            _legacy_rope(c, d, legacy, per_type)
    _moe(c, d)
    first_dense_mlp_layers(c, d, NAME)
    dense_layers_ffn(c, d, bias_src=f"{NAME}MLP has no biases")
    mtp_not_built(c, d)
    _release_fields(c, d, types)


def _layer_types(c: HFConfig, n_layers: int) -> list[str]:
    """layer_types as given (checked by typed_windows; none when not a list of names), or the config class's
    default pattern."""
    return rope_layer_types(c, default_layer_types(n_layers) if c.value("layer_types") is None else [])


def _values(c: HFConfig, d: Draft) -> None:
    """v_head_dim where it differs from the q/k head_dim; attention_value_scale (null: 1.0) on the values."""
    v = c.int("v_head_dim")
    if v != d.get("attention.head_dim"):
        d.put("attention.v_head_dim", v, c.src("v_head_dim") + " (o_proj reads h·v_head_dim)")
    scale = c.value("attention_value_scale")
    if scale is None:
        return  # MiMoV2FlashAttention: v_scale 1.0
    if not is_number(scale) or not 0 < scale <= 1e3:
        c.bad("attention_value_scale", f"{shown(scale)}: expected a number in (0, 1000]")
    elif scale != 1.0:
        d.put("attention.value_scale", float(scale), c.src("attention_value_scale") + " (v_proj(x) · scale)")


def _windows(c: HFConfig, d: Draft) -> None:
    """The sliding layers' window: sliding_window_size + 1 when given (MiMoV2FlashConfig.__post_init__ overrides
    sliding_window with it), else sliding_window."""
    size = c.value("sliding_window_size")
    if size is not None:
        c.value("sliding_window")  # overridden
        w = c.int("sliding_window_size") + 1
        why = "sliding_window_size + 1 (the query and sliding_window_size earlier tokens)"
    else:
        w, why = c.int("sliding_window", optional=True), c.src("sliding_window")
    n = d.n_layers if d.layers_known else 0
    typed_windows(c, d, w, default_layer_types(n), "full on the first layer and every sixth", null_refused=True)
    if any(d.window):
        d.window_note = d.window_note.replace(c.src("sliding_window"), why)


def _sliding_layers(c: HFConfig, d: Draft, types: list[str]) -> None:
    """MiMoV2FlashAttention on sliding layers: twice the KV heads, and a sink logit per query head."""
    sliding = [t == "sliding_attention" for t in types]
    kv = d.get("attention.n_kv_heads")
    if any(sliding):
        d.layer_attention["n_kv_heads"] = (
            [2 * kv if s else kv for s in sliding],
            f"{c.src('num_key_value_heads')} × 2 on sliding layers ({NAME}Attention)",
        )
    d.layer_attention["sinks"] = (sliding, f"{NAME}Attention: one sink logit per query head on sliding layers only")


def _legacy_rope(c: HFConfig, d: Draft, legacy: dict[str, Any], per_type: dict[str, dict[str, Any]]) -> None:
    """Xiaomi's rope_theta (the full layers' base), swa_rope_theta (the sliding layers') and partial_rotary_factor
    (every layer's), which transformers' config class replaces by rope_parameters: named where they agree."""
    wants = {
        "rope_theta": [per_type.get("full_attention", {}).get("rope_theta")],
        "swa_rope_theta": [per_type.get("sliding_attention", {}).get("rope_theta")],
        "partial_rotary_factor": [MIMO_ROPE.factor(p) for p in per_type.values()],
    }
    said = []
    for key, value in legacy.items():
        if all(_same(value, want) for want in wants[key]):
            said.append(f"{key} {spelt(value)}")
        else:
            _ambiguous(d, key, value, wants[key][0])
    if said:
        d.put("model.positions.theta", d.get("model.positions.theta"), _noted(d, "model.positions.theta", said))


def _moe(c: HFConfig, d: Draft) -> None:
    moe_core(c, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    null_scale = c.given("routed_scaling_factor") and c.value("routed_scaling_factor") is None
    if null_scale:
        del c.raw["routed_scaling_factor"]  # MiMoV2FlashConfig: null means 1.0 (the hub config stores null)
    deepseek_v3_router(c, d, f"{NAME}TopkRouter")
    if null_scale:
        d.put("moe.router.scale", 1.0, "routed_scaling_factor null: 1.0 (MiMoV2FlashConfig)")
    d.put("moe.router.n_groups", c.int("n_group"), c.src("n_group"))
    d.put("moe.router.topk_groups", c.int("topk_group"), c.src("topk_group"))


# the transformers fields each of Xiaomi's is compared through (a refused one leaves nothing to compare with)
COMPARED_THROUGH = {
    "hybrid_layer_pattern": ("num_hidden_layers", "layer_types"),
    "swa_num_attention_heads": ("num_attention_heads",),
    "swa_num_key_value_heads": ("num_key_value_heads",),
    "swa_head_dim": ("head_dim",),
    "swa_v_head_dim": ("head_dim", "v_head_dim"),
    "attention_chunk_size": ("num_hidden_layers", "layer_types", "sliding_window", "sliding_window_size"),
    "layernorm_epsilon": ("rms_norm_eps",),
    "moe_layer_freq": ("num_hidden_layers", "mlp_layer_types"),
}


def _release_fields(c: HFConfig, d: Draft, types: list[str]) -> None:
    """The fields of Xiaomi's own code that transformers ignores, against what transformers builds."""
    kv = d.get("attention.n_kv_heads")
    v_dim = d.get("attention.v_head_dim") if "attention.v_head_dim" in d.fields else d.get("attention.head_dim")
    attention = {
        "hybrid_layer_pattern": [0 if t == "full_attention" else 1 for t in types],
        "swa_num_attention_heads": d.get("attention.n_heads"),
        "swa_num_key_value_heads": 2 * kv,
        "swa_head_dim": d.get("attention.head_dim"),
        "swa_v_head_dim": v_dim,
        "add_swa_attention_sink_bias": True,
        "add_full_attention_sink_bias": False,
        # Xiaomi's attention kernel block, given as the sliding window's earlier tokens in the release; any
        # other value could be chunked attention (Llama-4's field of the same name), which transformers lacks
        "attention_chunk_size": (d.window[types.index("sliding_attention")] or 1) - 1
        if "sliding_attention" in types and len(d.window) == len(types)
        else None,
    }
    said = [s for key, want in attention.items() if (s := _release_field(c, d, key, want))]
    if said:
        d.put("attention.kind", "gqa", f"{', '.join(said)}: Xiaomi's fields, which transformers ignores; agree")
    eps = _release_field(c, d, "layernorm_epsilon", d.get("model.norm.eps"))
    if eps:
        d.put("model.norm.eps", d.get("model.norm.eps"), _noted(d, "model.norm.eps", [eps]))
    freq = _release_field(c, d, "moe_layer_freq", [int(f == "moe") for f in d.ffn])
    shared = _release_field(c, d, "n_shared_experts", None)  # MiMoV2FlashMoE has none
    d.ffn_note += "".join(f" ({s}: transformers ignores it; agrees)" for s in (freq, shared) if s)


def _same(v: Any, want: Any) -> bool:
    """Equal as JSON values: numbers by value (1 == 1.0), booleans only to booleans."""
    if isinstance(v, list) and isinstance(want, list):
        return len(v) == len(want) and all(_same(a, b) for a, b in zip(v, want, strict=True))
    return isinstance(v, bool) == isinstance(want, bool) and v == want


def _release_field(c: HFConfig, d: Draft, key: str, want: Any) -> str:
    """A field of Xiaomi's config that transformers ignores: its 'key value' when it says what transformers
    builds, '' when absent or when it does not (refused then, as ambiguous)."""
    if not c.given(key):
        return ""
    v = c.value(key)
    if key in COMPARED_THROUGH and any(c.failed(f) for f in COMPARED_THROUGH[key]):
        return ""  # what transformers builds is unknown: the refused field is said, this one left unjudged
    if _same(v, want):
        return key if isinstance(v, list) else f"{key} {'null' if v is None else spelt(v)}"
    _ambiguous(d, key, v, want)
    return ""


def _ambiguous(d: Draft, key: str, value: Any, want: Any) -> None:
    d.gap(
        key,
        value,
        f"transformers' {NAME} ignores {key} and builds {shown(want)}: ambiguous",
        f"none: remove {key} (what transformers runs) or set it to {shown(want)}",
    )


def _noted(d: Draft, path: str, said: list[str]) -> str:
    note = d.fields[path][1]
    extra = f"{', '.join(said)}: transformers ignores {'it' if len(said) == 1 else 'them'}; agrees"
    return f"{note} ({extra})" if note else extra


def _full_kv_heads(m: ResolvedModel, types: list[str]) -> int:
    """num_key_value_heads: the full layers' KV heads, the sliding layers having twice as many and sinks, the full
    ones none (MiMoV2FlashAttention fixes both in code)."""
    kv = {t: {lp.attention.n_kv_heads for lp, u in zip(m.layers, types, strict=True) if u == t} for t in set(types)}
    if any(len(v) > 1 for v in kv.values()):
        raise CannotExport("gives every layer of an attention type one KV head count")
    full = kv["full_attention"].pop() if "full_attention" in kv else kv["sliding_attention"].pop() // 2
    if "sliding_attention" in kv and kv["sliding_attention"] != {2 * full}:
        raise CannotExport("gives sliding layers twice the full layers' KV heads")
    if any(lp.attention.sinks != (t == "sliding_attention") for lp, t in zip(m.layers, types, strict=True)):
        raise CannotExport("has attention sinks on exactly the sliding-window layers")
    return full


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as a mimo_v2_flash config.json in transformers' spelling (layer_types, mlp_layer_types,
    rope_parameters per type), none of Xiaomi's own fields; what it cannot say comes back changed from the
    re-import and is refused there."""
    cfg = export_base(m, FAMILY)
    a = m.layers[0].attention
    window, types = layer_types(m)
    base_rope = cfg.pop("rope_scaling")
    del cfg["rope_theta"]
    e, f = moe_plan(m), dense_plan(m)
    cfg.update(
        num_attention_heads=one([lp.attention.n_heads for lp in m.layers], "the query head count"),
        num_key_value_heads=_full_kv_heads(m, types),
        v_head_dim=a.v_dim,
        attention_value_scale=a.value_scale,  # null: 1.0 (the class default is 0.707)
        attention_bias=a.bias,
        layer_types=types,
        rope_parameters=export_typed_rope(m, types, base_rope),
        mlp_layer_types=["sparse" if lp.ffn.kind == "moe" else "dense" for lp in m.layers],
        intermediate_size=f.d_ff if f else e.d_ff,
        moe_intermediate_size=e.d_ff,
        n_routed_experts=e.n_experts,
        num_experts_per_tok=e.router.top_k,
        routed_scaling_factor=e.router.scale,
        n_group=e.router.n_groups or 1,
        topk_group=e.router.topk_groups or 1,
        norm_topk_prob=e.router.normalize_topk,
    )
    if window is not None:  # no sliding layer: the class default stands, unused
        cfg["sliding_window"] = window
    return cfg


class MiMoV2FlashMapper(Mapper):
    """transformers' common names but the sinks, which the release and save_pretrained name
    ``self_attn.attention_sink_bias`` (transformers' ``sinks`` also read); the release's multi-token-prediction
    layers ``model.mtp.*`` are let go, as MiMoV2FlashPreTrainedModel does (_keys_to_ignore_on_load_unexpected),
    moec leaving them out too."""

    dropped = ("model.mtp.",)

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        if leaf == "sinks":
            return self.ck.get(self._first([f"{p}{self.attn}attention_sink_bias", f"{p}{self.attn}sinks"]))
        return super().attention(p, lp, leaf)


FAMILY = Family(
    "mimo_v2_flash",
    "MiMoV2FlashForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
    export=export,
    export_rank=346,
    mapper=MiMoV2FlashMapper,
)
