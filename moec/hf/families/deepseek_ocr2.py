"""DeepSeek-OCR-2 (``model_type`` deepseek_ocr2, DeepseekOcr2ForConditionalGeneration): the multimodal wrapper;
moec imports its ``text_config`` (DeepseekOcr2TextModel and the LM head) and leaves out the vision side (a SAM
encoder, a Qwen2-style vision encoder and the projector), which acts on image inputs only and is not counted.

The text model is DeepSeek-V2's MoE under Llama attention (GQA, attention_bias on q, k, v and o; head_dim is
always hidden_size / num_attention_heads, DeepseekOcr2TextConfig overwrites any other): DeepseekOcr2TextTopkRouter
is DeepseekV2TopkRouter's math (softmax over all experts, greedy or group-limited top-k, no renormalisation, a
routed scale), n_shared_experts fused into one MLP, and mlp_layer_types choosing dense or sparse per layer.

Checkpoints (the release's, and what save_pretrained writes) hold the text model under the common names and the
vision side under ``model.`` prefixes of its own, which are let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import base, defaults, dense_ffn, gqa, moe_core, shared_experts, text_tie_note
from moec.hf.families.deepseek import _v2_router as deepseek_v2_router
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import ResolvedModel

# DeepseekOcr2Config (the wrapper; its default_theta is unused) and DeepseekOcr2TextConfig
DEFAULTS = {"default_theta": 10000.0, "tie_word_embeddings": False, "text_config": None, "vision_config": None,
            "image_token_id": 128815}  # fmt: skip
# fmt: off
TEXT_DEFAULTS = defaults(10000.0, vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False, n_group=None, n_routed_experts=64,
                         n_shared_experts=2, routed_scaling_factor=1.0, topk_group=None, topk_method="greedy",
                         num_experts_per_tok=None, moe_intermediate_size=1407, mlp_layer_types=None,
                         norm_topk_prob=False, pretraining_tp=1)
# fmt: on
_KINDS = {"dense": "dense", "sparse": "moe"}


def translate(c: HFConfig, d: Draft) -> None:
    t = text_config(c, dict(c.mapping("text_config")), TEXT_DEFAULTS, "deepseek_ocr2")
    text_model(c, t, d, "DeepseekOcr2Text")
    types = t.str_list("mlp_layer_types")
    if types is None and not t.failed("mlp_layer_types"):
        t.bad("mlp_layer_types", "null: DeepseekOcr2TextDecoderLayer reads one 'dense' or 'sparse' per layer")
    mlp_layers(t, d, types, "mlp_layer_types")
    left_out(c, d)


# The steps unlimited_ocr shares: the same text model under another wrapper.


def text_config(
    c: HFConfig, raw: dict[str, Any], table: dict[str, Any], wrapper: str, prefix: str = "text_config."
) -> HFConfig:
    """The wrapper's text config ``raw`` as a nested config located under ``prefix``; num_experts is
    n_routed_experts (the text config's attribute_map, folded by HFConfig: a conflict refused at the alias). Not
    _common.text_config, which reads the mapping at its key: unlimited_ocr's original spelling builds ``raw``."""
    t = HFConfig(raw, table, prefix=prefix, aliases={"num_experts": "n_routed_experts"})
    c.children.append(t)
    if raw.get("model_type") not in (None, f"{wrapper}_text"):
        t.bad("model_type", f"{shown(raw['model_type'])}: the text model of {wrapper} is {wrapper}_text")
    return t


def text_model(c: HFConfig, t: HFConfig, d: Draft, name: str) -> None:
    """Everything but the per-layer MLP kinds: Llama attention, DeepSeek-V2's router, the fused shared experts.
    ``name`` is the text model's class prefix in transformers (DeepseekOcr2Text)."""
    base(t, d, name)
    d.put("model.tie_embeddings", c.bool("tie_word_embeddings"), c.src("tie_word_embeddings") + text_tie_note(c, t))
    b = t.bool("attention_bias")
    gqa(t, d, bias=b, out_bias=b, bias_src=t.src("attention_bias") + " (q, k, v and o)")
    heads, width = d.get("attention.n_heads"), d.get("model.d_model")
    if t.given("head_dim") and t.value("head_dim") != width // heads:
        t.bad("head_dim", f"{shown(t.value('head_dim'))}: {name}Config sets hidden_size / heads "
              f"({width // heads}) whatever is given: ambiguous")  # fmt: skip
    d.put("attention.head_dim", width // heads, f"{name}Config: hidden_size / num_attention_heads")
    moe_core(t, d, experts_key="n_routed_experts", width_key="moe_intermediate_size")
    deepseek_v2_router(t, d)
    d.put("moe.router.scale", t.float("routed_scaling_factor"), t.src("routed_scaling_factor"))
    shared_experts(t, d, "n_shared_experts", f" ({name}Moe: one MLP of n·width)")
    if t.bool("mlp_bias"):
        d.gap(t.prefix + "mlp_bias", True, "biases on the dense and shared MLPs only (the stacked experts have none)",
              "moe.shared_bias and ffn.bias. Count: per layer, the MLP's 2·width + d_model")  # fmt: skip
    t.value("intermediate_size")  # the dense layers' width: read here whether or not any layer is dense


def mlp_layers(t: HFConfig, d: Draft, types: list[str] | None, note: str) -> None:
    """One 'dense' or 'sparse' per layer (transformers indexes the list per layer); None: already refused."""
    if types is None:
        return
    if len(types) != d.n_layers or any(x not in _KINDS for x in types):
        t.bad("mlp_layer_types", f"{shown(types)}: expected {d.n_layers} entries of 'dense' or 'sparse'")
        return
    d.ffn = [_KINDS[x] for x in types]
    d.ffn_note = note
    if "dense" in d.ffn:
        dense_ffn(t, d, bias_src="mlp_bias false")


def left_out(c: HFConfig, d: Draft) -> None:
    c.value("image_token_id")
    c.mapping("vision_config")  # the vision side, left out
    note = d.fields["model.n_layers"][1]
    d.put("model.n_layers", d.n_layers, f"{note}; left out, not counted: the vision encoders and projector "
          "(vision_config), which act on image inputs only")  # fmt: skip


class DeepseekOcr2Mapper(Mapper):
    """The text model under the base names (``model.layers.``, ``model.embed_tokens.``, ``model.norm.``, experts
    one by one), as the release and save_pretrained name it; the vision side's tensors (``model.sam_model.``,
    ``model.qwen2_model.``, ``model.projector.``, ...) are let go."""

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        text = ("model.layers.", "model.embed_tokens.", "model.norm.")
        ck.used.update(n for n in ck.file_of if n.startswith("model.") and not n.startswith(text))


FAMILY = Family("deepseek_ocr2", "DeepseekOcr2ForConditionalGeneration", DEFAULTS, translate, mapper=DeepseekOcr2Mapper)
