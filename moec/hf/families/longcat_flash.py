"""LongCat-Flash (``model_type`` longcat_flash, LongcatFlashForCausalLM; Meituan, arXiv 2509.01322): ``num_layers``
layers of two (MLA attention, dense MLP) pairs and one shortcut MoE (moec's ``model.block: shortcut_moe_pair``), the
MoE reading the first pair's MLP input and joining after the second pair. Its router scores ``n_routed_experts`` FFN
experts and ``zero_expert_num`` zero-computation experts (``moe.n_zero_experts``: a slot on one adds its weight × the
input) with a softmax, chooses by the scores plus ``e_score_correction_bias`` (selection only), and scales the chosen
scores by ``routed_scaling_factor`` without renormalising. MLA always has a query bottleneck and interleaved rotary
pairs, and scales the query by sqrt(hidden_size / q_lora_rank) and the normed kv latent by
sqrt(hidden_size / kv_lora_rank) (``attention.latent_scales``: constants, no parameters, no FLOPs).

Counting: transformers allocates ``mlp.experts.gate_up_proj`` for all E + Z experts though only the first E are ever
read (``down_proj`` has E); moec counts zero experts as 0 parameters (docs/conventions.md, "Zero-computation
experts"), so transformers' total is moec's plus num_layers · Z · 2 · expert_ffn_hidden_size · hidden_size of unused
tensors, and save_pretrained writes them as ``experts.{E..E+Z-1}.{gate,up}_proj``, which the import lets go and the
export writes as zeros.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, shown
from moec.hf.families._common import base, defaults, dense_ffn, mla, moe_core, router
from moec.hf.mapper import Mapper
from moec.spec.plan import MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint
    from moec.spec.plan import LayerPlan

# fmt: off
DEFAULTS = defaults(10000000.0, vocab_size=131072, hidden_size=6144, num_layers=28, num_attention_heads=64,
                    num_key_value_heads=None, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    attention_bias=False, ffn_hidden_size=12288, q_lora_rank=1536, kv_lora_rank=512,
                    qk_nope_head_dim=128, qk_rope_head_dim=64, head_dim=64, v_head_dim=128, qk_head_dim=None,
                    moe_topk=12, n_routed_experts=512, zero_expert_num=256, expert_ffn_hidden_size=2048,
                    routed_scaling_factor=6.0)
# fmt: on

_ROUTER = "LongcatFlashTopkRouter"
# fields of Meituan's own config.json that transformers' classes do not read: each must say what transformers runs
# (the values it may hold, the first the one to propose)
_RELEASE_FIELDS = {
    "zero_expert_type": (("identity",), "a zero expert returns its input (nn.Identity)"),
    "attention_method": (("MLA", "mla"), "every attention is LongcatFlashMLA"),
    "use_mla": ((1, True), "every attention is LongcatFlashMLA"),
    "router_bias": ((False,), f"{_ROUTER} builds a classifier bias but never adds it to the logits"),
    "norm_topk_prob": ((False,), f"{_ROUTER} does not renormalise the chosen scores"),
    "mla_scale_q_lora": ((True,), "LongcatFlashMLA always scales the query by sqrt(hidden_size / q_lora_rank)"),
    "mla_scale_kv_lora": ((True,), "LongcatFlashMLA always scales the kv latent by sqrt(hidden_size / kv_lora_rank)"),
}


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "LongcatFlash", layers_key="num_layers")
    if c.given("num_hidden_layers") and c.value("num_hidden_layers") != 2 * (d.n_layers or 0):
        c.bad("num_hidden_layers", f"{shown(c.value('num_hidden_layers'))}: LongCat-Flash derives it as 2 · num_layers")
    c.value("num_hidden_layers")
    d.put("model.block", "shortcut_moe_pair", "LongcatFlashDecoderLayer: two (MLA, MLP) pairs and a shortcut MoE")
    c.int("q_lora_rank")  # LongcatFlashMLA always builds q_a_proj: null is refused here, before mla reads it
    mla(c, d, "LongcatFlash")
    _rotary_width(c, d)
    d.put("attention.latent_scales", True, "LongcatFlashMLA: mla_scale_q_lora and mla_scale_kv_lora, always applied")
    moe_core(c, d, experts_key="n_routed_experts", width_key="expert_ffn_hidden_size", top_k_key="moe_topk")
    zero = c.int("zero_expert_num", minimum=0, optional=True)
    d.put("moe.n_zero_experts", zero or 0, c.src("zero_expert_num") + " (identity experts; null: 0)")
    note = f"{_ROUTER}: softmax over E + Z experts, + e_score_correction_bias for selection only, no renormalising"
    router(d, note, score="softmax", selection_bias=True, normalize_topk=False)
    d.put("moe.router.scale", c.float("routed_scaling_factor"), c.src("routed_scaling_factor"))
    d.put("moe.balance.load_balance_coeff", 0.0, "LongcatFlash's training balance is not in its config (inference)")
    dense_ffn(c, d, key="ffn_hidden_size")
    for key, (agree, runs) in _RELEASE_FIELDS.items():
        v = c.value(key)
        if c.given(key) and not any(v == a and type(v) is type(a) for a in agree):
            d.gap(key, v, f"transformers ignores {key}: {runs}; ambiguous", f"none: set {key} to {agree[0]!r}")


def _rotary_width(c: HFConfig, d: Draft) -> None:
    """LongcatFlashRotaryEmbedding's tables are head_dim wide (null: hidden_size / num_attention_heads), and MLA
    rotates qk_rope_head_dim dims with them: transformers runs only when the two agree."""
    rope, heads = d.get("attention.qk_rope_head_dim"), c.int("num_attention_heads")
    width = c.value("head_dim") or (d.get("model.d_model") or 0) // (heads or 1)
    if rope is not None and width != rope and not c.failed("head_dim"):
        c.bad("head_dim", f"{shown(width)}: the rotary tables' width must equal qk_rope_head_dim ({rope})")


class LongcatFlashMapper(Mapper):
    """Pairs under ``self_attn.{j}``, ``input_layernorm.{j}``, ``post_attention_layernorm.{j}`` and ``mlps.{j}``
    (moec's ``attn.{j}``, ``attn_norm.{j}``, ``ffn_norm.{j}``, ``pair_ffn.{j}``); the MoE under ``mlp.`` with its
    router at ``router.classifier`` and the selection bias at ``router.e_score_correction_bias``. The MTP module
    (``model.mtp.``), which transformers does not build, and the zero experts' unused tensors are let go."""

    routers = ("router.classifier.",)
    expert_biases = ("router.e_score_correction_bias",)
    dropped = ("model.mtp.",)

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        ck.used.update(self._unread())

    def _unread(self) -> list[str]:
        """The zero experts' gate_proj and up_proj tensors save_pretrained writes (transformers' forward never reads
        them), where the checkpoint holds them."""
        names = []
        for i, lp in enumerate(self.plan.layers):
            if isinstance(lp.ffn, MoEPlan):
                e, n = self.layer(i) + "mlp.experts.", lp.ffn.n_experts
                zero = range(n, n + lp.ffn.n_zero_experts)
                names += [f"{e}{x}.{w}.weight" for x in zero for w in ("gate_proj", "up_proj")]
        return [name for name in names if name in self.ck]

    def derived(self) -> dict[str, torch.Tensor]:
        """Zeros for the zero experts' unread tensors, so that an export holds every tensor transformers saves."""
        import torch

        plan, d = self.plan, self.plan.d_model
        f = next(lp.ffn.d_ff for lp in plan.layers if isinstance(lp.ffn, MoEPlan))
        return {name: torch.zeros(f, d) for name in self._unread()}

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        p = self.layer(i)
        j, _, rest = leaf.partition(".")
        if part == "attn":
            return self.ck.get(f"{p}self_attn.{j}.{rest}")
        names = {"attn_norm": "input_layernorm.", "ffn_norm": "post_attention_layernorm."}
        if part in names:
            return self.ck.get(f"{p}{names[part]}{j}.{rest}")
        if part == "pair_ffn":
            return self.dense(f"{p}mlps.{j}.", rest)
        return super().block(lp, i, part, leaf)

    def experts(self, blk: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        t = super().experts(blk, plan, leaf)
        return t[: plan.n_experts]  # stacked in memory: gate_up_proj holds E + Z experts, the last Z never read


FAMILY = Family(
    "longcat_flash",
    "LongcatFlashForCausalLM",
    DEFAULTS,
    translate,
    aliases={
        "num_local_experts": "n_routed_experts",
        "num_experts_per_tok": "moe_topk",
        "intermediate_size": "ffn_hidden_size",
        "moe_intermediate_size": "expert_ffn_hidden_size",
    },
    mapper=LongcatFlashMapper,
)
