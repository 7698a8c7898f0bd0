"""Llama-4's text model (``model_type`` llama4_text, Llama4ForCausalLM): NoPE layers among rotary ones,
chunked attention, the weightless L2 qk-norm and temperature tuning, each on the layers transformers
applies it to; MoE layers (top-k of the logits, sigmoid of the chosen, scaling the expert input) with an
ungated shared expert, among dense MLPs. Checkpoints name both ``feed_forward.``, hold the experts stacked
in moec's layout already, and pair rotary dimensions adjacently (re-laid out here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, is_int, is_number, shown
from moec.hf.families._common import all_known, aux, base, defaults, dense_ffn, gqa, jitter_on_hidden, moe_core, router
from moec.hf.families._export_common import dense_plan, export_base, export_moe_common, moe_plan
from moec.hf.families.hy_v3 import ignored  # a release field transformers does not read, named
from moec.hf.mapper import Mapper, Missing, WrappedCausalLMMapper, half_layout
from moec.spec.plan import DenseFFNPlan, LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch


# fmt: off
DEFAULTS = defaults(500000.0, vocab_size=202048, hidden_size=5120, intermediate_size=8192,
                    intermediate_size_mlp=16384, num_hidden_layers=48, num_attention_heads=40,
                    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    num_experts_per_tok=1, num_local_experts=16, moe_layers=None, interleave_moe_layer_step=1,
                    use_qk_norm=True, router_aux_loss_coef=0.001, router_jitter_noise=0.0, no_rope_layers=None,
                    no_rope_layer_interval=4, attention_chunk_size=8192, layer_types=None,
                    attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1, attention_bias=False)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "Llama-4")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)")
    _rope_layers(c, d)
    d.layer_attention["chunk"] = (
        _chunks(c, d),
        "attention_chunk_size on the layer_types 'chunked_attention' layers",
    )
    qk_norm = c.bool("use_qk_norm")
    if qk_norm:
        d.put("attention.qk_norm_kind", "l2", "use_qk_norm: Llama4TextL2Norm (weightless, eps rms_norm_eps)")
    d.layer_attention["qk_norm"] = (
        [qk_norm and r for r in d.rope],
        "use_qk_norm: Llama4TextAttention builds its qk_norm on the rope layers only",
    )
    tuning, tuning_note = _truthy(c, "attn_temperature_tuning")
    tuned = [tuning and not r for r in d.rope]
    if any(tuned):
        floor_scale, attn_scale = c.value("floor_scale"), c.value("attn_scale")
        if not is_number(floor_scale) or floor_scale <= 0:
            c.bad("floor_scale", f"{shown(floor_scale)}: expected a positive number")
        elif not is_number(attn_scale) or attn_scale < 0:
            c.bad("attn_scale", f"{shown(attn_scale)}: expected a non-negative number")
        else:
            d.put("attention.temperature_tuning.floor_scale", float(floor_scale), c.src("floor_scale"))
            d.put("attention.temperature_tuning.scale", float(attn_scale), c.src("attn_scale"))
    d.layer_attention["temperature_tuning"] = (tuned, f"{tuning_note}: on the NoPE layers only")
    moe_core(c, d, experts_key="num_local_experts", width_key="intermediate_size")
    router(
        d,
        "Llama4Router: top-k of the logits, sigmoid of the chosen; Llama4TextMoe scales the expert input",
        score="sigmoid",
        softmax_after_topk=False,
        normalize_topk=False,
        apply_to="input",
    )
    jitter_on_hidden(c, d, "router_jitter_noise")
    d.section(
        "moe",
        n_shared_experts=(1, "Llama4TextMoe.shared_expert (always on, no gate)"),
        d_ff_shared=(c.int("intermediate_size"), c.src("intermediate_size")),
    )
    aux(c, d)
    _moe_layers(c, d)
    if c.given("for_llm_compressor"):  # a flag of Meta's quantisation tooling that no transformers code reads
        ignored(c, d, "Llama4", "for_llm_compressor", lambda _: True, "model.n_layers")


def _truthy(c: HFConfig, key: str) -> tuple[bool, str]:
    """A flag Llama4TextAttention tests only for truth (``if self.attn_temperature_tuning``): an integer is
    accepted (Llama-4-Scout's release, written with transformers 4.51, says ``4``; 5.x's strict config wants a
    bool, so the release no longer loads there as published) with a note saying how it is read; anything else
    must be a bool."""
    v = c.value(key)
    if is_int(v):
        return bool(v), f"{key} {v}: Llama4TextAttention tests it for truth, so {str(bool(v)).lower()}"
    return c.bool(key), c.src(key)


def _rope_layers(c: HFConfig, d: Draft) -> None:
    """no_rope_layers (1 = rope), else NoPE on every no_rope_layer_interval-th layer."""
    n = d.n_layers
    interval = c.int("no_rope_layer_interval")
    use_rope = c.int_list("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    if len(use_rope) != n:
        if d.layers_known:
            c.bad("no_rope_layers", f"{len(use_rope)} entries for {n} layers (1 = this layer uses rope)")
        use_rope = [1] * n
    d.rope = [bool(u) for u in use_rope]
    d.rope_note = (
        "no_rope_layers (1 = rope)"
        if c.given("no_rope_layers") and c.value("no_rope_layers")
        else f"NoPE where (i+1) % no_rope_layer_interval ({interval}) == 0"
    )


def _chunks(c: HFConfig, d: Draft) -> list[int | None]:
    """Per layer: attention_chunk_size on the layer_types 'chunked_attention' layers (default: the rope ones)."""
    n = d.n_layers
    chunk = c.int("attention_chunk_size", optional=True)
    default = ["chunked_attention" if r else "full_attention" for r in d.rope]
    types = c.str_list("layer_types") if c.value("layer_types") else default
    if types is not None and len(types) != n and d.layers_known:
        c.bad("layer_types", f"{len(types)} entries for {n} layers")
    if types is None or len(types) != n or not all_known(c, "layer_types", types, _LAYER_TYPES):
        return [None] * n
    return [chunk if t == "chunked_attention" else None for t in types]


_LAYER_TYPES = ("chunked_attention", "full_attention")


def _moe_layers(c: HFConfig, d: Draft) -> None:
    """moe_layers, else every interleave_moe_layer_step-th layer; the others are dense MLPs."""
    step = c.int("interleave_moe_layer_step")
    if c.value("moe_layers") is not None:
        moe_layers = set(c.int_list("moe_layers"))
        d.ffn_note = "moe_layers"
    else:
        moe_layers = set(range(step - 1, d.n_layers, step))
        d.ffn_note = f"MoE on layers range(interleave_moe_layer_step - 1, n, {step}) (HF: (i+1) % step == 0)"
    d.ffn = ["moe" if i in moe_layers else "dense" for i in range(d.n_layers)]
    if "dense" in d.ffn:
        dense_ffn(c, d, key="intermediate_size_mlp", bias_src="Llama4TextMLP has no biases")
    else:
        c.value("intermediate_size_mlp")


def export(m: ResolvedModel) -> dict[str, Any]:
    cfg = export_base(m, FAMILIES[0], nope=True)
    attns = [lp.attention for lp in m.layers]
    a, e, f = attns[0], moe_plan(m), dense_plan(m)
    chunks = {x.chunk for x in attns} - {None}
    if len(chunks) > 1:
        raise CannotExport("layers attend in chunks of different sizes")
    if any(x.qk_norm and x.qk_norm_kind != "l2" for x in attns):
        raise CannotExport("has only the weightless l2 qk-norm")
    tuned = [x for x in attns if x.temperature_floor_scale is not None]
    cfg.update(
        intermediate_size=e.d_ff,
        intermediate_size_mlp=f.d_ff if f else DEFAULTS["intermediate_size_mlp"],
        num_local_experts=e.n_experts,
        moe_layers=[lp.index for lp in m.layers if isinstance(lp.ffn, MoEPlan)],
        attention_bias=a.bias,
        no_rope_layers=[int(x.rope) for x in attns],
        attention_chunk_size=chunks.pop() if chunks else None,
        layer_types=["chunked_attention" if x.chunk else "full_attention" for x in attns],
        use_qk_norm=any(x.qk_norm for x in attns),
        attn_temperature_tuning=bool(tuned),
        router_jitter_noise=0.0,
    )
    if tuned:
        cfg.update(floor_scale=tuned[0].temperature_floor_scale, attn_scale=tuned[0].temperature_scale)
    export_moe_common(cfg, e)
    return cfg


class Llama4Mapper(Mapper):
    """Llama-4: ``feed_forward.`` blocks (dense MLP or MoE), ``router``, ``shared_expert``, stacked experts
    already in moec's layout, and interleaved rotary pairs re-laid out by permuting q and k rows."""

    moe_blocks = ("feed_forward.",)
    routers = ("router.",)
    shared = "shared_expert."

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        t = super().attention(p, lp, leaf)
        heads = {"q_proj": lp.attention.n_heads, "k_proj": lp.attention.n_kv_heads}.get(leaf.split(".")[0])
        return half_layout(t, heads) if heads else t

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        if part == "ffn" and isinstance(lp.ffn, DenseFFNPlan):
            return self.dense(self.layer(i) + "feed_forward.", leaf)
        return super().block(lp, i, part, leaf)

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        src = {"w_gate_up": "gate_up_proj", "w_down": "down_proj"}.get(leaf)  # (E, d, 2f) [gate | up], (E, f, d)
        if src is None:
            raise Missing([f"{blk}experts.{leaf}"])
        return self.ck.get(f"{blk}experts.{src}")


class Llama4WrapperMapper(WrappedCausalLMMapper, Llama4Mapper):
    """Llama4ForConditionalGeneration: the text model under ``language_model.`` (its head too); the vision
    model's and the projector's tensors are let go, as the spec's notes say."""

    dropped = ("vision_model.", "multi_modal_projector.")


# Llama4Config, the multimodal wrapper (its text_config is read with DEFAULTS; its default_theta is unused), and
# Llama4VisionConfig
WRAPPER_DEFAULTS = {"default_theta": 10000.0, "text_config": None, "vision_config": None, "boi_token_index": 200080,
                    "eoi_token_index": 200081, "image_token_index": 200092, "tie_word_embeddings": False}  # fmt: skip
VISION_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 34, "num_attention_heads": 16, "num_channels": 3,
                   "intermediate_size": 5632, "vision_output_dim": 7680, "image_size": 448, "patch_size": 14,
                   "projector_input_dim": 4096, "projector_output_dim": 4096}  # fmt: skip


def translate_wrapper(c: HFConfig, d: Draft) -> None:
    """``model_type`` llama4 (Llama4ForConditionalGeneration): its language_model is Llama4ForCausalLM of
    text_config, imported as llama4_text is; the vision model and the projector are left out, and named."""
    raw = c.mapping("text_config")
    t = HFConfig(raw, DEFAULTS, prefix="text_config.")
    c.children.append(t)
    if raw.get("model_type") not in (None, "llama4_text"):
        t.bad("model_type", f"{shown(raw['model_type'])}: the text model of llama4 is llama4_text")
    translate(t, d)
    tie = c.value("tie_word_embeddings")
    if c.given("tie_word_embeddings") and tie != d.get("model.tie_embeddings"):
        c.bad("tie_word_embeddings", f"{shown(tie)}: disagrees with text_config.tie_word_embeddings, which ties "
              "Llama4ForCausalLM's head; ambiguous")  # fmt: skip
    for key in ("boi_token_index", "eoi_token_index", "image_token_index"):
        c.value(key)  # token ids of the image inputs moec leaves out
    tower = vision_params(c.mapping("vision_config"), d.get("model.d_model"))
    count = f": {tower:,} parameters with the projector" if tower is not None else ""
    note = d.fields["model.n_layers"][1]
    d.put("model.n_layers", d.n_layers, f"{note}; left out: the vision model and multi_modal_projector "
          f"(vision_config{count}), which act on image inputs only")  # fmt: skip


def vision_params(vision: dict[str, Any], d_text: int) -> int | None:
    """Parameters of Llama4VisionModel plus Llama4MultiModalProjector (bias-free linear to the text width);
    None where the config gives a field a count cannot use (a non-square image or patch, a non-integer)."""
    v = {**VISION_DEFAULTS, **vision}
    keys = list(VISION_DEFAULTS)
    if not all(is_int(v[k]) and v[k] > 0 for k in keys):
        return None
    h, inner, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    attn_width = v["num_attention_heads"] * (h // v["num_attention_heads"])
    patches = (v["image_size"] // v["patch_size"]) ** 2 + 1  # plus the class token's position
    embeddings = h + patches * h + v["num_channels"] * v["patch_size"] ** 2 * h  # class token, positions, patches
    layer = 4 * attn_width * h + 3 * attn_width + h + 2 * h * inner + inner + h + 4 * h  # biased q,k,v,o; MLP; 2 LNs
    adapter = inner * v["projector_input_dim"] + v["projector_output_dim"] ** 2  # Llama4VisionMLP2, no biases
    return embeddings + 4 * h + layers * layer + adapter + v["vision_output_dim"] * d_text


FAMILIES = (
    Family(
        "llama4_text", "Llama4ForCausalLM", DEFAULTS, translate, export=export, export_rank=100, mapper=Llama4Mapper
    ),
    Family(
        "llama4",
        "Llama4ForConditionalGeneration's language_model (Llama4ForCausalLM)",
        WRAPPER_DEFAULTS,
        translate_wrapper,
        mapper=Llama4WrapperMapper,
        aliases={
            "image_token_id": "image_token_index",
            "boi_token_id": "boi_token_index",
            "eoi_token_id": "eoi_token_index",
        },  # fmt: skip
    ),
)
