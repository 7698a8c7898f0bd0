"""Step-3.7 (``model_type`` step3p7, Step3p7ForConditionalGeneration; StepFun's Step-3.7-Flash): the multimodal
wrapper; moec imports its ``text_config`` (``model_type`` step3p5: Step3p7TextModel and the LM head, the Step-3.5
text architecture) and leaves out the vision tower (Step3p7VisionModel: patch embedding, ViT blocks with layer
scales, two strided convolutions) and its projector, whose parameters the spec's notes count.

The text model: GQA with an RMSNorm(head_dim) on q and k before the rotation and a sigmoid output gate per head
(``gating`` true or "per-head"; "per-element": one per element) from its own projection ``g_proj``; the sliding
layers (``layer_types``) have their own query-head count (``per_layer_config``, else ``num_sliding_attention_heads``,
else the release's ``attention_other_setting``); rotary parameters per attention type (``rope_parameters`` per type,
or the release's per-layer ``rope_theta`` and ``partial_rotary_factors`` lists, one value per type) become each
layer's own base and rotary width. Every RMSNorm is Gemma's, 1 + w (``model.norm.unit_offset``). Dense MLPs on the
``mlp_layer_types`` "dense" layers (the release: ``moe_layers_enum``; unset, the first three), else MoE: sigmoid
scores, a selection-only ``e_score_correction_bias`` buffer, the top-k renormalised by their bare sum and scaled by
``moe_router_scaling_factor``, plus one shared MLP of ``share_expert_dim``.

The SwiGLU clamps (``swiglu_limits``, ``swiglu_limits_shared``: one limit per layer, routed experts and shared MLP
apart) become the clamped layers' own moe overrides with swiglu_limit_after, min(silu(gate), L) · clamp(up, ±L).
Each layer rotates with its type's rope scaling (layers.*.attention.rope_scaling: the release's llama3 scaling is
its full-attention layers' only). Refused by name: a clamp on a dense layer's MLP, bidirectional attention. The
release's multi-token-prediction layers (``num_nextn_predict_layers``) are not built by transformers and are not
imported; the per-layer lists the release pads with their entries are cut to the decoder layers, as transformers
does.

Checkpoints (what save_pretrained writes: transformers' conversion mapping for step3p7, inverted) hold the text
model under ``model.``: the experts ``moe.{gate,up,down}_proj.weight`` stacked (E, f, d) and (E, d, f), the router
``moe.gate``, its selection bias ``moe.router_bias``, the shared MLP ``share_expert.``; the tower
(``vision_model.``) and projector (``vit_large_projector.``) are let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, is_int, is_number, shown
from moec.hf.families._common import (
    defaults,
    dense_layers_ffn,
    gqa,
    mlp_layer_types,
    moe_core,
    router,
    text_config,
    text_tie_note,
    typed_windows,
)
from moec.hf.families._step3p5 import STEP_ROPE, heads_per_layer, layer_rope, rope_per_type
from moec.hf.families._typed_rope import ROPE_TYPES, rope_layer_types, typed_base
from moec.hf.families.hy_v3 import ignored
from moec.hf.families.laguna import GProjGateMapper
from moec.spec.moe_override import MAX_LIMIT
from moec.spec.schema import MAX_LAYERS

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import MoEPlan, ResolvedModel

# Step3p7Config (the wrapper: no tie_word_embeddings field, so the head is untied unless it says otherwise),
# Step3p7TextConfig and Step3p7VisionConfig
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "projector_bias": False, "image_token_id": 151679}  # fmt: skip
# fmt: off
TEXT_DEFAULTS = defaults(10000.0, vocab_size=128815, hidden_size=4096, intermediate_size=11264, num_hidden_layers=45,
                         num_attention_heads=64, num_key_value_heads=8, head_dim=128, max_position_embeddings=128000,
                         rms_norm_eps=1e-5, num_experts_per_tok=8, n_routed_experts=288, moe_intermediate_size=1280,
                         share_expert_dim=1280, sliding_window=None, num_sliding_attention_heads=None,
                         attention_bias=False, query_pre_attn_scalar=None, moe_router_scaling_factor=1.0,
                         mlp_bias=False, layer_types=None, mlp_layer_types=None, swiglu_limits=None,
                         swiglu_limits_shared=None, mtp_layer_types=None, mtp_mlp_layer_types=None, gating=True,
                         use_bidirectional_attention=False, num_nextn_predict_layers=0)
VISION_DEFAULTS = {"hidden_size": 1536, "num_hidden_layers": 47, "num_channels": 3, "image_size": 728,
                   "patch_size": 14, "mlp_ratio": 8960 / 1536}
# fmt: on
# Step3p7TextConfig.attribute_map: alias → field
TEXT_ALIASES = {
    "num_local_experts": "n_routed_experts",
    "num_attention_groups": "num_key_value_heads",
    "moe_num_experts": "n_routed_experts",
    "moe_top_k": "num_experts_per_tok",
    "share_expert_dims": "share_expert_dim",
    "num_mtp_layers": "num_nextn_predict_layers",
}  # fmt: skip
# Step3p7VisionConfig.__post_init__: the release's names of its sizes
VISION_ALIASES = {"width": "hidden_size", "layers": "num_hidden_layers", "heads": "num_attention_heads"}
VISION_SIZES = ("hidden_size", "num_hidden_layers", "num_channels", "image_size", "patch_size")  # the count reads
# the per-layer lists Step3p7TextConfig cuts to num_hidden_layers when the release pads them with MTP entries
PADDED = ("layer_types", "mlp_layer_types", "swiglu_limits", "swiglu_limits_shared", "rope_theta",
          "partial_rotary_factors")  # fmt: skip
GATES = {True: "head", "per-head": "head"}
FIRST_DENSE = 3  # Step3p7TextConfig: without mlp_layer_types or moe_layers_enum, MoE from layer 3 on


def translate(c: HFConfig, d: Draft) -> None:
    t = text_config(c, TEXT_DEFAULTS, "step3p5", aliases=TEXT_ALIASES)
    n_mtp = _cut_mtp_padding(t)
    types = _layer_types(t)
    per_type = rope_per_type(t, types)
    typed_base(t, d, per_type, types, STEP_ROPE)
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings") + text_tie_note(c, t))
    d.put("model.norm.unit_offset", True, "Step3p7RMSNorm: x/rms(x) · (1 + w), every norm (q/k too)")
    b = t.bool("attention_bias")
    gqa(t, d, bias=b, out_bias=b, bias_src=t.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, "Step3p7Attention: RMSNorm(head_dim) on q and k, before the rotation")
    _gate(t, d)
    _scale(t, d)
    w = t.int("sliding_window", optional=True)
    typed_windows(t, d, w, ["full_attention"] * d.n_layers, "all full attention (Step3p7TextConfig)", null_refused=True)
    heads_per_layer(t, d, types)
    if per_type is not None and not t.failed("layer_types") and d.layers_known:
        layer_rope(t, d, per_type, types)
    _moe(t, d)
    _mlp_layers(t, d)
    dense_layers_ffn(t, d, bias_src=t.src("mlp_bias"))
    _clamps(t, d)
    _refused(t, d)
    _release_fields(t, d)
    c.value("image_token_id")
    for key in ("mtp_layer_types", "mtp_mlp_layer_types"):
        t.value(key)  # the MTP layers' own types: transformers builds them only for generate(use_mtp=True)
    note = d.fields["model.n_layers"][1]
    if n_mtp:
        note += f"; num_nextn_predict_layers {n_mtp}: transformers builds none (ignored)"
    vision = c.mapping("vision_config")
    _vision_sizes(c, vision)
    tower = vision_params(vision, c.bool("projector_bias"), d.get("model.d_model"))
    left_out = "the vision tower and its projector (vision_config" + (f": {tower:,} parameters" if tower else "") + ")"
    d.put("model.n_layers", d.n_layers, f"{note}; left out: {left_out}, which act on image inputs only")


def _cut_mtp_padding(t: HFConfig) -> int:
    """num_nextn_predict_layers, after cutting the per-layer lists padded with the MTP layers' entries to the
    decoder layers (Step3p7TextConfig.__post_init__)."""
    n_mtp = t.int("num_nextn_predict_layers", minimum=0)
    n, refused = t.value("num_hidden_layers"), t.failed("num_nextn_predict_layers")
    if (n_mtp or refused) and is_int(n):
        for key in PADDED:  # a refused count: any padding is cut, so that the lists are not refused for it too
            v = t.raw.get(key)
            if isinstance(v, list) and (len(v) == n + n_mtp or refused and len(v) > n):
                t.raw[key] = v[:n]
    return n_mtp


def _layer_types(t: HFConfig) -> list[str]:
    """layer_types as transformers reads it: unset, all full attention; none while they or the layer count are
    refused (no per-layer list is judged then); a sparse_attention_config is not built."""
    n = t.value("num_hidden_layers")
    if not (is_int(n) and 0 < n <= MAX_LAYERS):
        return []
    types = rope_layer_types(t, ["full_attention"] * n if t.value("layer_types") is None else [])
    return types if len(types) == n and set(types) <= set(ROPE_TYPES) else []  # else said by typed_windows


def _gate(t: HFConfig, d: Draft) -> None:
    g = t.value("gating")
    if GATES.get(g) if isinstance(g, (bool, str)) else None:
        d.put("attention.output_gate", "head", f"{t.src('gating')}: o_proj(attn · sigmoid(g_proj(x))), per head")
    else:  # false included: Step3p7Attention gates whatever gating says
        d.gap(
            t.prefix + "gating",
            g,
            "Step3p7Attention builds a gate of one value per element for anything but true or 'per-head', and its "
            "forward, which broadcasts one value per head, fails on it: no model to import",
            "none: set gating true or 'per-head' (the gate per head transformers runs)",
        )
        d.put("attention.output_gate", "head", "")
    d.put("attention.output_gate_fn", "sigmoid", "Step3p7Attention: sigmoid of g_proj")


def _scale(t: HFConfig, d: Draft) -> None:
    """query_pre_attn_scalar: the softmax scale is its -1/2 power (unset: head_dim's, the usual one)."""
    s = t.float("query_pre_attn_scalar", optional=True)
    if s is None or t.failed("head_dim") or s == t.value("head_dim"):
        return
    if s <= 0:
        t.bad("query_pre_attn_scalar", f"{shown(s)}: expected a positive number")
        return
    d.put("attention.scale", s**-0.5, t.src("query_pre_attn_scalar") + " ** -0.5")


def _moe(t: HFConfig, d: Draft) -> None:
    act = t.value("hidden_act")
    if act != "silu":  # Step3p7TextConfig sets hidden_act to silu whatever the config says
        d.gap(t.prefix + "hidden_act", act, "transformers' Step3p7Text runs silu whatever hidden_act says: "
              "ambiguous", "none: remove hidden_act (what transformers runs) or set it to 'silu'")  # fmt: skip
        t.raw["hidden_act"] = "silu"
    moe_core(t, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    router(
        d,
        "Step3p7TopKRouter: sigmoid, + e_score_correction_bias (a buffer) for selection only, top-k / their sum",
        score="sigmoid",
        softmax_after_topk=False,
        selection_bias=True,
        normalize_topk=True,
        normalize_eps=0.0,
    )
    d.put("moe.router.scale", t.float("moe_router_scaling_factor"), t.src("moe_router_scaling_factor"))
    d.section(
        "moe",
        n_shared_experts=(1, "Step3p7SparseMoeBlock: one shared Step3p7MLP, no gate, added to the routed sum"),
        d_ff_shared=(t.int("share_expert_dim"), t.src("share_expert_dim")),
    )


def _mlp_layers(t: HFConfig, d: Draft) -> None:
    """mlp_layer_types ('sparse': MoE, 'dense': Step3p7MLP(intermediate_size)); unset, the release's
    moe_layers_enum (the MoE layers' indices), else MoE from layer 3 on."""
    if t.value("mlp_layer_types") is not None:
        unset, note = [], ""
        t.value("moe_layers_enum")
        if t.given("moe_layers_enum"):  # transformers reads it only when mlp_layer_types is unset
            t.bad("moe_layers_enum", "given beside mlp_layer_types, which transformers uses: ambiguous")
    elif t.value("moe_layers_enum") is not None:
        moe = _moe_layers_enum(t)
        if moe is None:
            return
        unset, note = ["sparse" if i in moe else "dense" for i in range(d.n_layers)], t.src("moe_layers_enum")
    else:
        unset = ["dense" if i < FIRST_DENSE else "sparse" for i in range(d.n_layers)]
        note = f"mlp_layer_types unset: the first {FIRST_DENSE} layers dense, the rest MoE (Step3p7TextConfig)"
    if mlp_layer_types(t, d, unset, note):
        ignored(t, d, "Step3p7Text", "moe_layer_freq", lambda v: v == [int(x == "moe") for x in d.ffn], "layers")


def _moe_layers_enum(t: HFConfig) -> set[int] | None:
    v = t.value("moe_layers_enum")
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list) or not all(is_int(x) or (isinstance(x, str) and x.strip().isdigit()) for x in items):
        t.bad("moe_layers_enum", f"{shown(v)}: expected the MoE layers' indices, comma-separated or a list")
        return None
    return {int(x) for x in items}


def _clamps(t: HFConfig, d: Draft) -> None:
    """swiglu_limits (the routed experts') and swiglu_limits_shared (the shared MLP's, and the dense layers' MLP's):
    one limit per layer, 0 or null for none. A clamped layer's experts run swiglu_limit_after, min(silu(gate), L) ·
    clamp(up, ±L), as Step3p7Experts and Step3p7MLP compute it, through the layer's own moe override
    (layers.overrides[].moe); the section stays plain SwiGLU."""
    routed, shared = _limits(t, d, "swiglu_limits"), _limits(t, d, "swiglu_limits_shared")
    if routed is None or shared is None or len(d.ffn) != d.n_layers:  # refused, reported where read
        return
    on_dense = {i: x for i, (x, kind) in enumerate(zip(shared, d.ffn, strict=True)) if x and kind == "dense"}
    if on_dense:
        d.gap(
            t.prefix + "swiglu_limits_shared",
            on_dense,
            "a SwiGLU clamp on a dense layer's MLP (Step3p7MLP clamps with swiglu_limits_shared there too); moec "
            "clamps a MoE layer's experts per layer (layers.*.moe) but not a dense layer's FFN",
            "layers.*.ffn_activation_limit: a dense layer's own activation and limit. No count change",
        )
    moe = [kind == "moe" for kind in d.ffn]
    clamped, after = "swiglu_limit_after", "Step3p7Experts / Step3p7MLP: min(silu(gate), L) · clamp(up, ±L)"
    per_layer = {
        "activation": [clamped if r and m else None for r, m in zip(routed, moe, strict=True)],
        "activation_limit": [r if m else None for r, m in zip(routed, moe, strict=True)],
        # a layer that clamps one of routed and shared: the other keeps plain SwiGLU
        "shared_activation": [
            (clamped if s else "swiglu") if m and bool(r) != bool(s) else None
            for r, s, m in zip(routed, shared, moe, strict=True)
        ],
        "shared_activation_limit": [s if m else None for s, m in zip(shared, moe, strict=True)],
    }
    notes = {
        "activation": f"{t.src('swiglu_limits')}: clamped layers ({after})",
        "activation_limit": t.src("swiglu_limits"),
        "shared_activation": f"{t.src('swiglu_limits')} and {t.src('swiglu_limits_shared')}: the shared MLP "
        "clamped as its layer's entry says",
        "shared_activation_limit": t.src("swiglu_limits_shared"),
    }
    for name, values in per_layer.items():
        if any(v is not None for v in values):
            d.layer_moe[name] = (values, notes[name])


def _limits(t: HFConfig, d: Draft, key: str) -> list[float | None] | None:
    """One clamp limit per layer (None: no clamp; Step3p7 reads 0 and null alike), or None when refused."""
    v = t.value(key)
    if v is None:
        return [None] * d.n_layers
    if not isinstance(v, list) or not all(x is None or (is_number(x) and x >= 0) for x in v):
        t.bad(key, f"{shown(v)}: expected a list of one limit per layer (0 or null: no clamp)")
        return None
    if not d.fits_layers(t, key, v):
        return None
    too_large = {i: x for i, x in enumerate(v) if x and x > MAX_LIMIT}
    if too_large:
        d.gap(t.prefix + key, too_large, f"a clamp limit above {MAX_LIMIT:g}, past moec's bound on activation_limit",
              f"a larger bound on moe.activation_limit (at most {MAX_LIMIT:g} today)")  # fmt: skip
        return None
    return [float(x) if x else None for x in v]


def _refused(t: HFConfig, d: Draft) -> None:
    """What moec cannot express, each named."""
    if t.bool("mlp_bias"):
        d.gap(t.prefix + "mlp_bias", True, "biases on the dense and shared MLPs but none on the routed experts",
              "moe.shared_bias: biases on the shared experts alone. Count: + their biases")  # fmt: skip
    if t.value("use_bidirectional_attention") is not False:
        d.gap(t.prefix + "use_bidirectional_attention", t.value("use_bidirectional_attention"),
              "bidirectional attention (within the window on sliding layers)", "attention.causal: false. No count "
              "change")  # fmt: skip
    sparse = t.value("sparse_attention_config")
    if sparse:
        d.gap(t.prefix + "sparse_attention_config", sparse, "transformers' Step3p7Text builds no sparse-attention "
              "indexer whatever it says: ambiguous", "none: remove it (what transformers runs)")  # fmt: skip


# fields of the release's own code that transformers' Step3p7Text does not read: what each must say to agree with
# the model transformers builds, and the spec field whose note names it
RELEASE_FIELDS: dict[str, tuple[Any, str]] = {
    "use_head_wise_attn_gate": (True, "attention.output_gate"),
    "use_qk_norm": (True, "attention.qk_norm"),
    "zero_centered": (True, "model.norm.unit_offset"),
    "moe_router_activation": ("sigmoid", "moe.router.score"),
    "use_moe_router_bias": (True, "moe.router.selection_bias"),
    "norm_expert_weight": (True, "moe.router.normalize_topk"),
    "need_fp32_gate": (True, "moe.router.score"),
    "use_moe": (True, "moe.n_experts"),
    "att_impl_type": ("GQA", "attention.kind"),
    "sink": (False, "attention.kind"),
    "yarn_only_types": (["full_attention"], "model.positions.theta"),
    "use_rope_layers": ([], "model.positions.kind"),
}


def _release_fields(t: HFConfig, d: Draft) -> None:
    for key, (want, path) in RELEASE_FIELDS.items():
        if path in d.fields:
            ignored(t, d, "Step3p7Text", key, lambda v, want=want: v == want and type(v) is type(want), path)
    if t.given("max_seq_len"):  # the release's copy of max_position_embeddings (refused: nothing to compare with)
        agrees = lambda v: t.failed("max_position_embeddings") or v == d.get("model.max_seq_len")  # noqa: E731
        ignored(t, d, "Step3p7Text", "max_seq_len", agrees, "model.max_seq_len")


def _vision_sizes(c: HFConfig, vision: dict[str, Any]) -> None:
    """The tower's sizes its count reads, where given: integers (a layer count of 0 included) and a positive
    mlp_ratio, as Step3p7VisionConfig, a typed config, and its modules take them (the tower itself is left out)."""
    for key, v in vision.items():
        name = VISION_ALIASES.get(key, key)
        least = int(name != "num_hidden_layers")
        if name == "mlp_ratio" and not (is_number(v) and v > 0):
            c.bad(f"vision_config.{key}", f"{shown(v)}: expected a positive number")
        elif name in VISION_SIZES and not (is_int(v) and v >= least):
            c.bad(f"vision_config.{key}", f"{shown(v)}: expected an integer ≥ {least}")


def vision_params(vision: dict[str, Any], projector_bias: bool | None, d_text: Any) -> int | None:
    """Parameters of Step3p7VisionModel and the projector (None where a size is not an integer, ≥ 1 but for the layer
    count): the Conv2d patch embedding (no bias), the learned position table, the pre LayerNorm, each block's two
    LayerNorms, biased q/k/v/out, a biased two-matrix MLP of int(hidden_size · mlp_ratio) and two layer scales, two
    biased 3×3 convolutions (h → 2h → 4h), and the projector Linear(4h, text hidden_size)."""
    v = {**VISION_DEFAULTS, **{VISION_ALIASES.get(k, k): x for k, x in vision.items()}}
    sizes_read = all(is_int(v[k]) and v[k] >= (k != "num_hidden_layers") for k in VISION_SIZES)
    if not sizes_read or not is_number(v["mlp_ratio"]) or not is_int(d_text):
        return None
    h, inner = v["hidden_size"], int(v["hidden_size"] * v["mlp_ratio"])
    embed = v["num_channels"] * v["patch_size"] ** 2 * h + (v["image_size"] // v["patch_size"]) ** 2 * h + 2 * h
    block = 4 * h + 4 * (h * h + h) + 2 * h * inner + inner + h + 2 * h
    convs = 9 * h * 2 * h + 2 * h + 9 * 2 * h * 4 * h + 4 * h
    projector = 4 * h * d_text + (d_text if projector_bias else 0)
    return embed + v["num_hidden_layers"] * block + convs + projector


class Step3p7Mapper(GProjGateMapper):
    """The names save_pretrained writes (the module docstring); the MTP layers a release stores after the last
    decoder layer are let go, as transformers ignores them on load."""

    moe_blocks = ("moe.",)
    expert_biases = ("router_bias",)
    dropped = ("vision_model.", "vit_large_projector.")

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        self.let_go_mtp_layers("text_config")

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        if leaf.startswith("shared."):  # one level up, beside the moe block
            return self.dense(p + "share_expert.", leaf.removeprefix("shared."))
        return super().moe(p, plan, leaf)

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        """Stacked (E, f, d) gate and up, (E, d, f) down → moec's (E, d, 2f) and (E, f, d)."""
        import torch

        if leaf == "w_gate_up":
            gate, up = self.ck.get(blk + "gate_proj.weight"), self.ck.get(blk + "up_proj.weight")
            return torch.cat((gate.transpose(1, 2), up.transpose(1, 2)), dim=2)
        if leaf == "w_down":
            return self.ck.get(blk + "down_proj.weight").transpose(1, 2)
        return super().experts(blk, plan, leaf)


FAMILY = Family("step3p7", "Step3p7ForConditionalGeneration", DEFAULTS, translate, mapper=Step3p7Mapper)
