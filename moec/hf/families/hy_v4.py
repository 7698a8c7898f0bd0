"""HY-V4 (``model_type`` hy_v4, HYV4ForCausalLM; Tencent's Hy4-preview): DeepSeek-V3.2's MLA with a lightning indexer,
one learned sink logit per head and a sigmoid gate per element of each head's values, inside hyper-connections of
hc_mult streams (``model.hyper_connections``, docs/hyper-connections.md) without the stream mix: each sublayer's
connection weights the streams into it (pre) and its output back into them (post = hc_magnitude·σ(·) + hc_eps),
and the streams carry over unmixed (``residual: identity``); a dynamic head merges them before the final norm.
The FFN is a dense SwiGLU on the ``dense`` layers of mlp_layer_types (default: the first), else DeepSeek-V3's
router (sigmoid, a selection-only bias, one group by default), routed experts with the clamped SwiGLU
``swiglu_limit`` (silu(min(gate, L))·clamp(up, ±L), L = swiglu_limit) and plain SwiGLU shared experts fused into
one MLP (``moe.shared_activation``).

MLA's rotary layout differs from moec's and is absorbed by the loader, as a pure row permutation of the checkpoint
(q·k is unchanged when q and k are permuted alike): HYV4Attention rotates MLA's rotary dims in halves (pairs
(i, i + r/2)) where moec's MLA rotates adjacent pairs, so the rotary rows of q_b_proj and kv_a_proj_with_mqa are
interleaved on load. HYV4Indexer rotates the LAST qk_rope_head_dim dims of each indexer head, in halves
(``attention.indexer.rope_dims: last``).

The ``shared`` layers of indexer_types (the default: layer 0 and every fourth from 1 run the indexer, the others
reuse the last full layer's choice) are ``layers.*.attention.indexer: shared``. The multi-token-prediction layers
(``model.mtp_layers``) are not part of the model transformers builds, which lets them go on load; so does moec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, is_int
from moec.hf.families._common import activation, all_known, base, defaults, dense_layers_ffn, mla
from moec.hf.families._indexer_share import shared_indexer_layers
from moec.hf.families.glm4_moe import glm4_moe_block, mtp_not_built
from moec.hf.families.hy_v3 import equals, ignored, mlp_layers
from moec.hf.mapper import Mapper, gate_up
from moec.spec.plan import LayerPlan

if TYPE_CHECKING:
    import torch


# fmt: off
DEFAULTS = defaults(10000.0, vocab_size=120832, hidden_size=2816, intermediate_size=6912, moe_intermediate_size=768,
                    num_hidden_layers=34, num_attention_heads=32, num_key_value_heads=32, head_dim=256,
                    hidden_act="silu", max_position_embeddings=262144, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    attention_bias=False, attention_dropout=0.0, n_routed_experts=256, n_shared_experts=1,
                    num_experts_per_tok=8, routed_scaling_factor=2.827, norm_topk_prob=True, n_group=1, topk_group=1,
                    q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256,
                    mlp_layer_types=None, layer_types=None, index_topk=2048, index_head_dim=128, index_n_heads=16,
                    indexer_types=None, hc_mult=4, hc_magnitude=2.0, hc_eps=1e-6, learnable_sink_init=0.0,
                    swiglu_limit=10.0)
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    hy_v4_text(c, d, "HYV4")


def hy_v4_text(c: HFConfig, d: Draft, cls: str, rotary: str = "halves") -> None:
    """HY-V4's text model (``cls`` names the classes: HYV4, or HYV4VL for the text model of HY-V4-VL, whose rotary
    pairs are adjacent, ``rotary`` interleaved, and whose latent norms take rms_norm_eps)."""
    base(c, d, cls)
    kv = c.int("num_key_value_heads") if c.given("num_key_value_heads") else None  # a count, or the config refuses it
    heads = c.value("num_attention_heads")  # what __post_init__ makes of it, whatever given (refused heads: said once)
    c.raw["num_key_value_heads"] = heads if is_int(heads) and heads > 0 else None
    mla(c, d, cls)
    if rotary == "interleaved":  # HYV4VLAttention builds its latent norms at rms_norm_eps: the model's
        d.fields.pop("attention.latent_norm_eps", None)
    if kv is not None:
        n_heads, note = d.fields["attention.n_heads"]
        d.put("attention.n_heads", n_heads, f"{note} (num_key_value_heads {kv}: {cls}Config sets it to this)")
    c.value("head_dim")  # __post_init__ sets it to qk_rope_head_dim
    d.put("attention.sinks", True, f"{cls}Attention.sinks: one learned logit per head")
    c.float("learnable_sink_init")  # the sinks' init: no effect on a loaded model
    d.put("attention.output_gate", "element", f"{cls}Attention: o_proj(attn · σ(gate_proj(x))), a gate per element")
    _layer_types(c, d)
    mlp_layers(c, d)
    glm4_moe_block(c, d, cls)
    limit = c.float("swiglu_limit")
    d.put("moe.activation", "swiglu_limit", f"{cls}Experts: silu(min(gate, L)) · clamp(up, ±L), whatever hidden_act")
    d.put("moe.activation_limit", limit, c.src("swiglu_limit"))
    d.put("moe.shared_activation", activation(c, d), c.src("hidden_act") + f" ({cls}MLP: unclamped)")
    dense_layers_ffn(c, d, bias_src=f"{cls}MLP has no biases")
    indexer(c, d, cls, rotary)
    hyper_connections(c, d, cls)
    mtp_not_built(c, d)
    release_fields(c, d, cls)


def release_fields(c: HFConfig, d: Draft, cls: str) -> None:
    """Fields of Tencent's own code that the release config.json (tencent/Hy4-preview) carries and transformers'
    class does not read: each is named beside the spec field it concerns when it says what transformers builds,
    refused as ambiguous when it does not (hy_v3.ignored)."""
    agree = {
        "enable_ihc": (True, "model.hyper_connections.n_streams"),
        "gated_mla": (True, "attention.output_gate"),
        "gating_type": ("elementwise", "attention.output_gate"),
        "learnable_sink": (True, "attention.sinks"),
        "use_mla": (True, "attention.kind"),
        "use_dsa": (True, "attention.indexer.top_k"),
    }
    for key, (want, path) in agree.items():
        ignored(c, d, cls, key, equals(want), path)
    # no effect on the model transformers builds: fp32 logits, a deterministic-backward switch, the MTP loss weight
    for key, path in (("enable_lm_head_fp32", "model.tie_embeddings"), ("bitwise_backward_align", "model.d_model"),
                      ("mtp_loss_factor", "model.n_layers")):  # fmt: skip
        ignored(c, d, cls, key, lambda _: True, path)


def _layer_types(c: HFConfig, d: Draft) -> None:
    """layer_types: every layer ``indexed_attention``, the only kind the class has (the release spells it
    ``deepseek_sparse_attention``, which transformers reads as the same)."""
    if c.value("layer_types") is None:
        return
    types = c.str_list("layer_types")
    if d.fits_layers(c, "layer_types", types):
        all_known(c, "layer_types", types, ("indexed_attention", "deepseek_sparse_attention"))


def indexer(c: HFConfig, d: Draft, cls: str, rotary: str) -> None:
    """Every layer's lightning indexer: heads, width, top-k, its key's LayerNorm at rms_norm_eps; its last
    qk_rope_head_dim dims rotated, paired as ``rotary`` says; the ``shared`` layers of indexer_types run none and
    attend the keys the last full layer chose (``layers.*.attention.indexer: shared``)."""
    d.section(
        "attention.indexer",
        n_heads=(c.int("index_n_heads"), c.src("index_n_heads")),
        head_dim=(c.int("index_head_dim"), c.src("index_head_dim")),
        top_k=(c.int("index_topk"), c.src("index_topk")),
        rope_layout=(rotary, f"{cls}Indexer rotates its rotary dims in {rotary}"),
        rope_dims=("last", f"{cls}Indexer: q_pass, q_rot = split([index_head_dim − r, r]); the key alike"),
        key_norm_eps=(c.float("rms_norm_eps"), f"{c.src('rms_norm_eps')} ({cls}Indexer's k_norm: a LayerNorm with it)"),
    )
    given = c.value("indexer_types") is not None
    if not d.layers_known:  # the count is refused: indexer_types is read, not judged
        return
    n = d.n_layers  # HYV4Config's default: layer 0 and every fourth from 1 run the indexer
    types = (
        c.str_list("indexer_types") if given else ["full" if i == 0 or (i - 1) % 4 == 0 else "shared" for i in range(n)]
    )
    where = "indexer_types" if given else "indexer_types unset: the class's schedule (layer 0, then every 4th from 1)"
    shared_indexer_layers(c, d, "indexer_types", types, where, cls)


def hyper_connections(c: HFConfig, d: Draft, cls: str) -> None:
    """{cls}HyperConnection around each sublayer and {cls}HyperHead: n streams, no stream mix, post scaled by
    hc_magnitude with hc_eps added as to pre, a dynamic head."""
    d.section(
        "model.hyper_connections",
        n_streams=(c.int("hc_mult"), c.src("hc_mult")),
        residual=("identity", f"{cls}DecoderLayer: post ⊗ f(x) + x, the streams unmixed"),
        post_scale=(c.float("hc_magnitude"), c.src("hc_magnitude")),
        post_eps=(True, f"{cls}HyperConnection: post = hc_magnitude·σ(·) + hc_eps"),
        eps=(c.float("hc_eps"), c.src("hc_eps")),
        head=("dynamic", f"{cls}HyperHead: its own weighting of the streams"),
    )


def _interleave_rows(w: torch.Tensor, r: int) -> torch.Tensor:
    """Rows (..., r, cols) of rotary dims paired in halves (i, i + r/2) → adjacent pairs (2i, 2i + 1)."""
    import torch

    order = torch.stack((torch.arange(r // 2), torch.arange(r // 2) + r // 2), dim=-1).flatten()  # (r,)
    return w[..., order, :] if w.dim() > 1 else w[order]


class HYV4Mapper(Mapper):
    """transformers' names, or the release's (what save_pretrained writes back: ``hc_pre.hc_attn_layer.hc_fn`` for
    ``attn_hc.fn``, ``hc_pre.hc_head.hc_head_fn`` for ``hc_head.hc_fn``, ``learnable_sink_param`` for ``sinks``,
    ``linear_gate`` for every ``gate_proj``); MLA's rotary rows re-laid for moec's rotation (the module docstring);
    the MTP layers let go."""

    dropped = ("model.mtp_layers.",)
    mla_halves = True  # MLA's rotary rows paired in halves (HY-V4; HY-V4-VL pairs them adjacently, as moec)

    release_hc_head = "model.hc_pre.hc_head.hc_head_"  # the release's name of the head's tensors, less the leaf

    def load(self, name: str) -> torch.Tensor:
        if name.startswith("hc_head."):
            leaf = name.removeprefix("hc_head.")
            return self.ck.get(self._first([f"{self.hc_head}hc_{leaf}", self.release_hc_head + leaf]))
        return super().load(name)

    def block(self, lp: LayerPlan, i: int, part: str, leaf: str) -> torch.Tensor:
        if part in ("attn_hc", "ffn_hc"):
            p, site = self.layer(i), "attn" if part == "attn_hc" else "mlp"
            return self.ck.get(self._first([f"{p}{part}.{leaf}", f"{p}hc_pre.hc_{site}_layer.hc_{leaf}"]))
        return super().block(lp, i, part, leaf)

    def dense(self, p: str, leaf: str) -> torch.Tensor:
        if leaf == "w_gate_up" and p + "gate_proj.weight" not in self.ck:  # the release's linear_gate
            return gate_up(self.ck.get(p + "linear_gate.weight"), self.ck.get(p + "up_proj.weight"))
        return super().dense(p, leaf)

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        release = {"sinks": "learnable_sink_param", "gate_proj.weight": "linear_gate.weight"}.get(leaf)
        if release is not None:
            return self.ck.get(self._first([p + self.attn + leaf, p + self.attn + release]))
        w = super().attention(p, lp, leaf)
        a = lp.attention
        r, h = a.qk_rope_head_dim or 0, a.n_heads
        if leaf == "q_b_proj.weight" and self.mla_halves:  # (h·(nope + r), q_lora): each head's rotary rows
            heads = w.view(h, -1, w.shape[-1]).clone()
            heads[:, -r:] = _interleave_rows(heads[:, -r:], r)
            return heads.reshape(w.shape)
        if leaf == "kv_a_proj_with_mqa.weight" and self.mla_halves:  # (kv_lora + r, d): the rotary key's rows last
            out = w.clone()
            out[-r:] = _interleave_rows(w[-r:], r)
            return out
        return w


FAMILY = Family(
    "hy_v4",
    "HYV4ForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_local_experts": "n_routed_experts"},
    mapper=HYV4Mapper,
)
