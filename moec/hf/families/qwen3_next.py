"""Qwen3-Next (``model_type`` qwen3_next, Qwen3NextForCausalLM): Gated DeltaNet (moec.mixers.gated_deltanet,
docs/mixers.md) on the layers ``layer_types`` calls linear_attention, gated GQA on the full_attention ones (unset:
every ``full_attention_interval``-th layer, 4 by default); RMSNorm(head_dim) on q and k and a sigmoid gate per
element of each head on the attention output (``attention.output_gate: element``); rotary positions on the first
partial_rotary_factor of each head (0.25 unless the config says otherwise); every norm zero-centred, scaling by
1 + w (``model.norm.unit_offset``); Qwen2-MoE's block (softmax top-k, optionally renormalised, one shared expert
scaled by a sigmoid gate), dense layers where mlp_only_layers or decoder_sparse_step say.

Checkpoints fuse what moec keeps apart, and the weight mapping splits them: the attention's ``q_proj`` holds each
head's query rows then its gate rows (``[q_h; gate_h]`` per head) → ``q_proj`` and ``gate_proj``; the delta net's
``in_proj_qkvz`` holds, for each key head j, ``[q_j; k_j; v_j; z_j]`` (v_j and z_j the rows of its
n_value_heads / n_key_heads value heads) → ``in_proj_qkv`` (all queries, all keys, all values) and ``in_proj_z``;
``in_proj_ba`` holds ``[b_j; a_j]`` per key head → ``in_proj_b`` and ``in_proj_a``. The release's
multi-token-prediction tensors (``mtp.*``), which transformers builds no module for, are let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig, shown
from moec.hf.families._common import base, defaults, gqa, moe_core, qwen_moe_ffn, router
from moec.hf.families._export_common import export_qwen_moe, one
from moec.hf.families.glm4_moe import take_partial_rotary
from moec.hf.families.hy_v3 import equals, ignored
from moec.hf.mapper import Mapper

if TYPE_CHECKING:
    import torch

    from moec.spec.plan import LayerPlan, ResolvedModel

# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=48,
                    num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                    rms_norm_eps=1e-6, attention_bias=False, head_dim=256, linear_conv_kernel_dim=4,
                    linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                    linear_num_value_heads=32, decoder_sparse_step=1, moe_intermediate_size=512,
                    shared_expert_intermediate_size=512, num_experts_per_tok=10, num_experts=512,
                    norm_topk_prob=True, router_aux_loss_coef=0.001, mlp_only_layers=None, layer_types=None,
                    full_attention_interval=4)
# fmt: on

DEFAULT_PARTIAL_ROTARY = 0.25  # Qwen3NextConfig.__post_init__ sets it when the config gives none
LINEAR, FULL = "linear_attention", "full_attention"
# the delta net's fields in config.json → moec.mixers.gated_deltanet's section
DELTANET_FIELDS = {
    "n_key_heads": "linear_num_key_heads",
    "n_value_heads": "linear_num_value_heads",
    "key_head_dim": "linear_key_head_dim",
    "value_head_dim": "linear_value_head_dim",
    "conv_kernel": "linear_conv_kernel_dim",
}


def translate(c: HFConfig, d: Draft) -> None:
    factor, factor_src = take_partial_rotary(
        c, DEFAULT_PARTIAL_ROTARY, f"partial_rotary_factor unset: {DEFAULT_PARTIAL_ROTARY} (Qwen3NextConfig's default)"
    )
    base(c, d, "Qwen3-Next")
    if factor is not None:
        d.put("model.positions.partial_rotary_factor", factor, factor_src)
    gated_attention(c, d, "Qwen3Next")
    layer_mixers(c, d, "Qwen3NextGatedDeltaNet")
    deltanet_section(c, d)
    shared_expert_moe(c, d, "Qwen3Next", gated=True)
    d.put("moe.router.normalize_topk", c.bool("norm_topk_prob"), c.src("norm_topk_prob"))
    qwen_moe_ffn(c, d, "num_experts", bias_src="Qwen3NextMLP has no biases")
    ignored(c, d, "Qwen3Next", "use_sliding_window", equals(False), "attention.kind")  # the release's; never slides


def gated_attention(c: HFConfig, d: Draft, cls: str) -> None:
    """Qwen3-Next's attention and norms, which Qwen3.5 keeps: zero-centred norms, GQA with RMSNorm(head_dim) on q
    and k, a sigmoid gate per element of each head from q_proj. ``cls`` names the family's classes."""
    d.put("model.norm.unit_offset", True, f"{cls}RMSNorm: w initialised 0, scales by 1 + w (every norm, q/k too)")
    b = c.bool("attention_bias")
    gqa(c, d, bias=b, out_bias=b, bias_src=c.src("attention_bias") + " (q, k, v and o)", qk_norm=True)
    d.put("attention.qk_norm", True, f"{cls}Attention: RMSNorm(head_dim) on q and k, before the rotation")
    d.put("attention.output_gate", "element", f"{cls}Attention: q_proj also gives a sigmoid gate on each output")


def shared_expert_moe(c: HFConfig, d: Draft, cls: str, *, gated: bool) -> None:
    """The MoE block of Qwen3-Next and its descendants: softmax top-k over num_experts and one shared expert of
    shared_expert_intermediate_size, its output scaled by a sigmoid gate where ``gated``."""
    moe_core(c, d, experts_key="num_experts", width_key="moe_intermediate_size")
    router(d, f"{cls}TopKRouter: softmax over all experts, top-k", score="softmax", softmax_after_topk=False)
    gate_note = "scaled by sigmoid(shared_expert_gate(x)), a Linear(d, 1)" if gated else "added in full, no gate"
    d.section(
        "moe",
        n_shared_experts=(1, f"{cls}SparseMoeBlock.shared_expert"),
        d_ff_shared=(c.int("shared_expert_intermediate_size"), c.src("shared_expert_intermediate_size")),
        shared_gate=(gated, f"{cls}SparseMoeBlock: the shared expert's output {gate_note}"),
    )


def layer_types(c: HFConfig, d: Draft) -> tuple[list[str] | None, str]:
    """layer_types as transformers reads it (unset: full attention every full_attention_interval-th layer), and
    its source; None when it is refused (reported)."""
    if c.value("layer_types") is None:
        n = c.int("full_attention_interval")
        types = [LINEAR if (i + 1) % n else FULL for i in range(d.n_layers)]
        return types, f"layer_types unset: full_attention every {c.src('full_attention_interval')} ({n}) layers"
    types = c.str_list("layer_types")
    if not d.fits_layers(c, "layer_types", types):
        return None, ""
    unknown = sorted({t for t in types if t not in (LINEAR, FULL)})
    for t in unknown:
        c.bad("layer_types", f"{shown(t)} is not linear_attention or full_attention")
    if unknown:
        return None, ""
    n = c.int("full_attention_interval", optional=True) if c.given("full_attention_interval") else None
    if n is not None and types != [LINEAR if (i + 1) % n else FULL for i in range(d.n_layers)]:
        d.gap(
            "full_attention_interval",
            n,
            "layer_types (which transformers reads) places the full_attention layers otherwise: ambiguous",
            "none: remove full_attention_interval or make it agree with layer_types",
        )
    return types, "layer_types"


def layer_mixers(c: HFConfig, d: Draft, module: str) -> None:
    types, src = layer_types(c, d)
    if types is None:
        return
    d.mixer = ["gated_deltanet" if t == LINEAR else "attention" for t in types]
    d.mixer_note = f"{src}: linear_attention is {module}"


def deltanet_section(c: HFConfig, d: Draft) -> None:
    """mixers.gated_deltanet from the linear_* fields (read whether or not a layer uses them); its norm's eps is
    rms_norm_eps (the section leaves it to model.norm.eps). Its convolution's activation is hidden_act, moec's is
    silu: another one is refused."""
    values = {name: (c.int(key), c.src(key)) for name, key in DELTANET_FIELDS.items()}
    hk, hv = values["n_key_heads"][0], values["n_value_heads"][0]
    if hv % hk:
        c.bad("linear_num_value_heads", f"{hv} is not a multiple of linear_num_key_heads ({hk})")
    act = c.str("hidden_act")
    if act not in (None, "silu", "swish"):
        d.gap("hidden_act", act, f"{act!r} on the Gated DeltaNet's convolution (moec's is silu)", "activation")
    if "gated_deltanet" in getattr(d, "mixer", ()):
        d.section("mixers.gated_deltanet", **values)


def export(m: ResolvedModel) -> dict[str, Any]:
    """The plan as a qwen3_next config.json: zero-centred norms, every layer Gated DeltaNet or gated attention,
    one sigmoid-gated shared expert; what else differs comes back changed from the re-import and is refused."""
    if not m.norm.unit_offset:
        raise CannotExport("needs zero-centred norms (model.norm.unit_offset)")
    kinds = [lp.mixer_kind for lp in m.layers]
    if not set(kinds) <= {"attention", "gated_deltanet"}:
        raise CannotExport("has Gated DeltaNet and attention layers only")
    cfg, e = export_qwen_moe(m, FAMILY)
    if e.n_shared_experts != 1 or not e.shared_gate:
        raise CannotExport("has one shared expert, with a sigmoid gate")
    attn = m.layers[0].attention
    cfg.update(
        layer_types=[LINEAR if k == "gated_deltanet" else FULL for k in kinds],
        shared_expert_intermediate_size=e.d_ff_shared,
        attention_bias=attn.bias,
        partial_rotary_factor=(m.positions.rotary_dim or attn.head_dim) / attn.head_dim,
    )
    nets = [lp.mixer for lp in m.layers if lp.mixer is not None]
    if nets:
        net = one(nets, "the Gated DeltaNet")
        cfg.update({key: getattr(net, name) for name, key in DELTANET_FIELDS.items()})
    return cfg


class GatedAttentionMapper(Mapper):
    """Qwen3-Next's and Qwen3.5's shared names: Qwen2-MoE's ``shared_expert``, the attention's q_proj holding each
    head's query rows then its gate rows, split into moec's q_proj and gate_proj; the releases' ``mtp.*`` tensors
    let go (transformers builds no module for them)."""

    shared = "shared_expert."
    dropped: tuple[str, ...] = ("mtp.",)

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        name, _, kind = leaf.partition(".")
        if name not in ("q_proj", "gate_proj"):
            return super().attention(p, lp, leaf)
        fused = self.ck.get(p + self.attn + "q_proj." + kind)  # (h·2·hd, ...): [q_h; gate_h] per head
        h, hd = lp.attention.n_heads, lp.attention.head_dim
        per_head = fused.reshape(h, 2, hd, *fused.shape[1:])
        return per_head[:, 0 if name == "q_proj" else 1].reshape(h * hd, *fused.shape[1:])


class Qwen3NextMapper(GatedAttentionMapper):
    """The gated attention's names, and the delta net's fused in_proj_qkvz and in_proj_ba split into moec's
    projections (the module docstring)."""

    mixer_prefix = "linear_attn."

    def mixer(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        where = p + self.mixer_prefix
        if leaf in ("in_proj_qkv.weight", "in_proj_z.weight"):
            return self._qkvz(self.ck.get(where + "in_proj_qkvz.weight"), lp.mixer, leaf)
        if leaf in ("in_proj_b.weight", "in_proj_a.weight"):
            ba = self.ck.get(where + "in_proj_ba.weight")  # (H_k·2r, d): [b_j; a_j] per key head
            hk, r = lp.mixer.n_key_heads, lp.mixer.n_value_heads // lp.mixer.n_key_heads
            grouped = ba.reshape(hk, 2, r, ba.shape[-1])
            return grouped[:, 0 if leaf == "in_proj_b.weight" else 1].reshape(hk * r, ba.shape[-1])
        return self.ck.get(where + leaf)

    @staticmethod
    def _qkvz(w: torch.Tensor, m: Any, leaf: str) -> torch.Tensor:
        """in_proj_qkvz (rows [q_j; k_j; v_j; z_j] per key head j) → in_proj_qkv ([all q; all k; all v]) or
        in_proj_z (all z)."""
        import torch

        hk, dk, dv = m.n_key_heads, m.key_head_dim, m.value_head_dim
        r = m.n_value_heads // hk
        q, k, v, z = w.reshape(hk, -1, w.shape[-1]).split([dk, dk, r * dv, r * dv], dim=1)
        if leaf == "in_proj_z.weight":
            return z.reshape(hk * r * dv, -1)
        return torch.cat([q.reshape(hk * dk, -1), k.reshape(hk * dk, -1), v.reshape(hk * r * dv, -1)])


FAMILY = Family(
    "qwen3_next", "Qwen3NextForCausalLM", DEFAULTS, translate, export=export, export_rank=310, mapper=Qwen3NextMapper
)
