"""Ling 3.0 (``model_type`` bailing_hybrid, BailingHybridForCausalLM; inclusionAI): Kimi Delta Attention (moec's
``kda`` mixer with full-rank decay and output-gate projections and, with ``kda_safe_gate``, the bounded decay
``kda_lower_bound·sigmoid(exp(A)·(f + dt_bias))``; docs/mixers.md, "kda") on most layers, and on the last layer of
every ``layer_group_size`` multi-head latent attention with DeepSeek's interleaved rotary positions and a sigmoid
gate per head on its output (``attention.output_gate: head``); a dense SwiGLU MLP before ``first_k_dense_replace``,
then DeepSeek-V3's MoE (Kimi-Linear's block). The multi-token-prediction layers the releases store after the decoder
(``num_nextn_predict_layers``) are not built by transformers and are not imported. The exporter writes
``layer_types`` and the KDA fields for a plan of KDA as Ling builds it (full rank, KDA heads = MLA heads) and gated
MLA.

Checkpoints keep Ling's names (:class:`BailingHybridMapper`), which transformers' save_pretrained writes back:
``model.word_embeddings``, each layer's mixer or attention under ``attention.`` with its output projection ``dense``
and the attention's gate ``g_proj``; KDA's ``f_proj``, ``dt_bias`` and ``A_log`` (H,) beside the rest, its three
convolutions ``q_conv1d``, ``k_conv1d``, ``v_conv1d`` (D, 1, K) that moec stacks into one; the selection bias
``gate.expert_bias``. transformers' in-memory names (``embed_tokens``, ``self_attn.``, ``o_proj``, ``forget_gate.``,
one ``conv1d``) load too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import LINEAR_FULL_TYPES, base, defaults, linear_full_layer_types, mla
from moec.hf.families._export_common import export_base, mla_fields
from moec.hf.families.kimi_linear import (
    ALIASES,
    export_kda_plan,
    export_moe_block,
    kda_activation,
    kda_tensor,
    moe_block,
)
from moec.hf.mapper import Mapper
from moec.spec.plan import LayerPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=157184, hidden_size=2560, intermediate_size=6144, moe_intermediate_size=768,
                    num_hidden_layers=42, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=1,
                    routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, v_head_dim=128,
                    qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=2,
                    norm_topk_prob=True, max_position_embeddings=262144, rms_norm_eps=1e-6, attention_bias=False,
                    num_mtp_layers=1, num_local_experts=512, rope_theta=6_000_000.0, head_dim=128,
                    short_conv_kernel_size=4, layer_group_size=6, kda_safe_gate=True, kda_lower_bound=-5.0,
                    layer_types=None, mlp_layer_types=None, mtp_loss_scaling_factor=0.0)
# fmt: on

_LINEAR, _FULL = LINEAR_FULL_TYPES


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "BailingHybrid")
    mla(c, d, "BailingHybrid")
    _mixers(c, d)
    _kda(c, d)
    moe_block(c, d, "BailingHybrid")
    _mtp(c, d)
    d.put(
        "attention.output_gate", "head", "BailingHybridAttention: o_proj(attn · sigmoid(g_proj(x))), one gate per head"
    )


def _mixers(c: HFConfig, d: Draft) -> None:
    """layer_types when given, else full attention on the last layer of every layer_group_size."""
    if c.value("layer_types") is None:
        group = c.int("layer_group_size")
        d.mixer = ["attention" if (i + 1) % group == 0 else "kda" for i in range(d.n_layers)]
        d.mixer_note = f"full attention where (i + 1) % layer_group_size ({group}) == 0, else KDA"
        return
    c.value("layer_group_size")  # what layer_types was derived from
    types, src = linear_full_layer_types(c, d)
    if types is not None:
        d.mixer = ["kda" if t == _LINEAR else "attention" for t in types]
        d.mixer_note = f"{src}: linear_attention is BailingHybridDeltaAttention"


def _size(c: HFConfig, derived: str, key: str) -> tuple[int, str]:
    """A KDA size: the field BailingHybridConfig derives (what save_pretrained writes, and what it reads back
    first), else the one it derives it from."""
    if c.given(derived):
        c.value(key)
        return c.int(derived), c.src(derived)
    return c.int(key), c.src(key)


def _kda(c: HFConfig, d: Draft) -> None:
    heads, heads_src = _size(c, "linear_num_heads", "num_attention_heads")
    head_dim, head_dim_src = _size(c, "linear_head_dim", "head_dim")
    kernel, kernel_src = _size(c, "linear_conv_kernel_dim", "short_conv_kernel_size")
    bounded = c.bool("kda_safe_gate")
    lower = c.float("kda_lower_bound")
    kda_activation(c, d)
    if "kda" not in d.mixer:
        return
    d.section(
        "mixers.kda",
        n_heads=(heads, heads_src),
        head_dim=(head_dim, head_dim_src),
        conv_kernel=(kernel, kernel_src),
        decay_rank=(0, "BailingHybridForgetGate: one full-rank f_proj"),
        gate_rank=(0, "BailingHybridDeltaAttention: one full-rank g_proj"),
        decay=("bounded_sigmoid" if bounded else "softplus", c.src("kda_safe_gate")),
        norm_eps=(d.get("model.norm.eps"), c.src("rms_norm_eps") + " (o_norm's too)"),
    )
    if bounded:
        d.put("mixers.kda.decay_lower_bound", lower, c.src("kda_lower_bound"))


def _mtp(c: HFConfig, d: Draft) -> None:
    """The releases' multi-token-prediction layers: transformers builds none and lets their tensors go."""
    n = c.int("num_mtp_layers", minimum=0)
    if n:
        d.put("model.n_layers", d.n_layers, f"{c.src('num_hidden_layers')}; num_nextn_predict_layers {n}: "
              "transformers builds none (ignored)")  # fmt: skip
    scale = c.float("mtp_loss_scaling_factor")
    if scale:
        d.training_only.append(f"mtp_loss_scaling_factor {scale!r}")


def export(m: ResolvedModel) -> dict[str, Any]:
    kinds = [lp.mixer_kind for lp in m.layers]
    if set(kinds) - {"attention", "kda"}:
        raise CannotExport(f"has KDA and attention layers only (spec: {sorted(set(kinds))})")
    attn = m.layers[0].attention
    if (attn.kind, attn.output_gate) != ("mla", "head"):
        raise CannotExport("has MLA with a sigmoid gate per head only (attention.output_gate: head)")
    cfg = export_base(m, FAMILY, nope=False)
    cfg.update(
        **mla_fields(attn),
        layer_types=[_LINEAR if k == "kda" else _FULL for k in kinds],
        num_nextn_predict_layers=0,
    )
    if "kda" in kinds:
        cfg.update(_export_kda(m, attn.n_heads))
    export_moe_block(m, cfg)
    return cfg


def _export_kda(m: ResolvedModel, heads: int) -> dict[str, Any]:
    """head_dim, short_conv_kernel_size and the gate of KDA as BailingHybridDeltaAttention builds it."""
    p = export_kda_plan(m)
    if p.n_heads != heads:
        raise CannotExport(f"has as many KDA heads as attention heads (spec: {p.n_heads} and {heads})")
    if p.decay_rank or p.gate_rank:
        raise CannotExport("builds KDA's decay and output-gate projections at full rank (decay_rank, gate_rank 0)")
    bounded = p.decay == "bounded_sigmoid"
    out = {"head_dim": p.head_dim, "short_conv_kernel_size": p.conv_kernel, "kda_safe_gate": bounded}
    return out | ({"kda_lower_bound": p.decay_lower_bound} if bounded else {})


class BailingHybridMapper(Mapper):
    """Ling's names (the module docstring), and the release's MTP layers let go as transformers does
    (BailingHybridModel._keys_to_ignore_on_load_unexpected: ``model.layers.{i}.*`` for the
    ``num_nextn_predict_layers`` layers after the last)."""

    expert_biases = ("gate.expert_bias", "gate.e_score_correction_bias")

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        self.let_go_mtp_layers()

    def load(self, name: str) -> torch.Tensor:
        if name == "embed.weight":
            return self.ck.get(self._first(["model.word_embeddings.weight", "model.embed_tokens.weight"]))
        return super().load(name)

    def _sublayer(self, p: str, leaf: str) -> tuple[str, str]:
        """The prefix of a layer's attention or mixer (Ling's attention., transformers' self_attn.) and the leaf
        renamed where Ling's name differs: o_proj is dense, the attention's gate_proj g_proj."""
        attn = self._first([p + "attention.o_proj.weight", p + "attention.dense.weight", p + "self_attn.o_proj.weight"])
        attn = attn.removesuffix("o_proj.weight").removesuffix("dense.weight")
        for ours, ling in (("o_proj.", "dense."), ("gate_proj.", "g_proj.")):
            if leaf.startswith(ours) and attn + leaf not in self.ck:
                return attn, ling + leaf.removeprefix(ours)
        return attn, leaf

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        return self.ck.get("".join(self._sublayer(p, leaf)))

    def mixer(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        """moec's KDA names → Ling's: the decay one level up with A_log (H,) as (1, 1, H, 1), the convolution in
        three; the rest as :meth:`_sublayer` names it."""
        attn, leaf = self._sublayer(p, leaf)
        t = kda_tensor(self.ck, attn, leaf)
        moved = leaf.startswith("forget_gate.") and attn + leaf not in self.ck
        return t.view(1, 1, -1, 1) if moved and leaf.endswith("A_log") else t


FAMILY = Family(
    "bailing_hybrid",
    "BailingHybridForCausalLM",
    DEFAULTS,
    translate,
    aliases={**ALIASES, "num_nextn_predict_layers": "num_mtp_layers"},
    export=export,
    mapper=BailingHybridMapper,
)
