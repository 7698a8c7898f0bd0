"""ERNIE-4.5 MoE (``model_type`` ernie4_5_moe, Ernie4_5_MoeForCausalLM; Baidu): Llama attention with interleaved
rotary pairs, a softmax router that chooses by softmax + ``e_score_correction_bias`` and weighs by the softmax
renormalised, ``moe_num_shared_experts`` shared experts of the routed width (one MLP, as DeepSeek's), dense
MLPs outside [moe_layer_start_index, moe_layer_end_index] and off every ``moe_layer_interval``-th layer, and
one ``use_bias`` for attention, dense and shared MLPs and the lm_head (never the routed experts).

The rotary pairs (2i, 2i+1) are a weight layout, not an architecture: the loader permutes q and k rows per
head into moec's half layout (q·k is unchanged), as for Llama-4. Fields of Baidu's own config that transformers
ignores are accepted where they agree with what transformers builds and refused where they would not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moec.hf.draft import Draft, Family, HFConfig, is_number, shown
from moec.hf.families._common import aux, base, defaults, dense_layers_ffn, gqa, moe_core, router, shared_experts
from moec.hf.mapper import Mapper, half_layout
from moec.spec.plan import LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch

    from moec.hf.checkpoint import Checkpoint

# fmt: off
DEFAULTS = defaults(500000.0, vocab_size=103424, hidden_size=2560, intermediate_size=12288, num_hidden_layers=28,
                    num_attention_heads=20, num_key_value_heads=4, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, use_bias=False, moe_intermediate_size=1536,
                    moe_k=6, moe_num_experts=64, moe_num_shared_experts=2, moe_layer_start_index=1,
                    moe_layer_end_index=-1, moe_layer_interval=1, moe_norm_min=1e-12, router_aux_loss_coef=0.001)
# fmt: on

# moec renormalises the top-k weights by their sum; ERNIE by max(sum, moe_norm_min). The two differ only when
# the chosen probabilities sum below moe_norm_min: at transformers' 1e-12, only where the selection bias keeps
# every expert of probability above 1e-12 (the best has at least 1/E) out of the top-k. A larger floor can
# change ordinary tokens and is refused.
NORM_MIN_EXACT = 1e-12


def translate(c: HFConfig, d: Draft) -> None:
    base(c, d, "ERNIE-4.5-MoE")
    # Ernie4_5_MoeRotaryEmbedding pairs adjacent dims (2i, 2i+1): a weight layout, which the loader permutes
    d.put("model.positions.kind", "rope", "ERNIE-4.5-MoE rotates pairs (2i, 2i+1); the loader re-lays q and k out")
    bias = c.bool("use_bias")
    gqa(c, d, bias=bias, out_bias=bias, bias_src=c.src("use_bias") + " (q, k, v and o)")
    d.put("model.head_bias", bias, c.src("use_bias") + " (lm_head)")
    moe_core(c, d, experts_key="moe_num_experts", width_key="moe_intermediate_size", top_k_key="moe_k")
    router(
        d,
        "Ernie4_5_MoeTopKRouter: softmax over all experts, top-k of softmax + e_score_correction_bias, "
        "weights from the softmax",
        score="softmax",
        softmax_after_topk=False,
        selection_bias=True,
        normalize_topk=True,
    )
    d.put("moe.router.selection_bias_parameter", True, "Ernie4_5_MoeStatics: an nn.Parameter (no gradient), counted")
    _norm_min(c, d)
    n_shared = shared_experts(c, d, "moe_num_shared_experts", " (HF fuses them into one MLP of n·width)")
    aux(c, d)
    _moe_layers(c, d)
    dense_layers_ffn(c, d, bias=bias, bias_src=c.src("use_bias"))
    _shared_bias(c, d, bias, n_shared)
    _baidu_fields(c, d)


def _norm_min(c: HFConfig, d: Draft) -> None:
    floor = c.float("moe_norm_min")
    if floor <= NORM_MIN_EXACT:
        note = f"Ernie4_5_MoeTopKRouter: ÷ max(sum, moe_norm_min {floor!r}), the plain sum above that floor"
        d.put("moe.router.normalize_topk", True, note)
    else:
        d.gap(
            "moe_norm_min",
            floor,
            "the top-k weights are divided by max(their sum, moe_norm_min), which bites at this floor; moec "
            "divides by the sum",
            "moe.router.normalize_min: float — the floor of the renormalising sum. No count change",
        )


def _moe_layers(c: HFConfig, d: Draft) -> None:
    """MoE where (i+1) % moe_layer_interval == 0 and start ≤ i ≤ end; end -1 is the last layer."""
    n = d.n_layers
    start = c.int("moe_layer_start_index", minimum=0)
    end = c.int("moe_layer_end_index", minimum=-1)
    end = n - 1 if end == -1 else end  # Ernie4_5_MoeConfig.__post_init__
    step = c.int("moe_layer_interval")
    d.ffn = ["moe" if (i + 1) % step == 0 and start <= i <= end else "dense" for i in range(n)]
    d.ffn_note = f"MoE where (i+1) % moe_layer_interval ({step}) == 0 and {start} ≤ i ≤ {end} (moe_layer_*_index)"


def _shared_bias(c: HFConfig, d: Draft, bias: bool, n_shared: int) -> None:
    n_moe = d.ffn.count("moe")
    if bias and n_shared and n_moe:
        f = d.get("moe.d_ff")
        d.gap(
            "use_bias",
            True,
            "Ernie4_5_MoeMLP biases reach the shared experts but not the routed ones",
            "moe.shared_bias: bool — biases on the shared experts only",
            param_delta=n_moe * (2 * n_shared * f + d.get("model.d_model")),
        )


def _baidu_fields(c: HFConfig, d: Draft) -> None:
    """Fields of ERNIE's own (PaddlePaddle) config that transformers does not read: named in the note of the spec
    field they concern when ERNIE's code builds what transformers builds, a gap (ambiguous) when it would not."""
    experts = d.get("moe.n_experts")
    checks = (
        ("use_rmsnorm", "model.norm.kind", lambda v: v is True, "RMSNorm"),
        ("moe_gate", "moe.router.top_k", lambda v: v == "topk", "plain top-k gating"),
        # a capacity factor of at least E leaves every expert room for every token: nothing is dropped, as in
        # transformers, which never drops
        ("moe_capacity", "moe.n_experts", lambda v: _all_at_least(v, experts), f"no dropping (factors ≥ {experts})"),
        # aux-loss-free balancing: the correction bias transformers always builds and this importer maps
        ("moe_use_aux_free", "moe.router.selection_bias", lambda v: v is True, "the correction bias"),
    )
    for key, path, agrees, what in checks:
        if not c.given(key):
            continue
        v = c.value(key)
        if not agrees(v):
            d.gap(key, v, f"ERNIE's own code reads it; transformers ignores it and builds {what}: ambiguous",
                  f"none: remove {key} (what transformers runs)")  # fmt: skip
            continue
        value, note = d.fields[path]
        spelt = str(v).lower() if isinstance(v, bool) else shown(v)  # JSON's spelling
        d.put(path, value, f"{note}; {key} {spelt}: agrees (transformers ignores it)".lstrip("; "))
    # ERNIE's multi-token prediction head and its loss weight: transformers builds no MTP layer and drops its
    # weights on load, and so does moec (its MTP modules are DeepSeek-V3's, not ERNIE's)
    mtp = [f"{k} {shown(c.value(k))}" for k in ("num_nextn_predict_layers", "multi_token_pred_lambda") if c.given(k)]
    if mtp:
        value, note = d.fields["model.n_layers"]
        d.put("model.n_layers", value, f"{note}; {', '.join(mtp)}: ERNIE's MTP head, which transformers ignores")


def _all_at_least(v: object, bound: int) -> bool:
    return isinstance(v, list) and bool(v) and all(is_number(x) and x >= bound for x in v)


class Ernie45MoeMapper(Mapper):
    """transformers' common names; the correction bias (1, E) under ``mlp.moe_statics`` (as saved) or
    ``mlp.gate.moe_statics`` (in memory); q and k rows permuted from interleaved rotary pairs to halves."""

    expert_biases = ("moe_statics.e_score_correction_bias", "gate.moe_statics.e_score_correction_bias")

    def __init__(self, ck: Checkpoint, plan: ResolvedModel):
        super().__init__(ck, plan)
        # ERNIE's MTP head (mtp_block, mtp_emb_norm, mtp_hidden_norm, mtp_linear_proj): transformers lets every
        # tensor whose name holds "mtp" go on load (_keys_to_ignore_on_load_unexpected), and so does moec
        ck.used.update(n for n in ck.file_of if "mtp" in n)

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        t = super().attention(p, lp, leaf)
        heads = {"q_proj": lp.attention.n_heads, "k_proj": lp.attention.n_kv_heads}.get(leaf.split(".")[0])
        return half_layout(t, heads) if heads else t

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        t = super().moe(p, plan, leaf)
        return t.reshape(-1) if leaf == "router.expert_bias" else t  # (1, E) → (E,)


FAMILY = Family(
    "ernie4_5_moe",
    "Ernie4_5_MoeForCausalLM",
    DEFAULTS,
    translate,
    aliases={"num_experts": "moe_num_experts", "num_experts_per_tok": "moe_k"},
    mapper=Ernie45MoeMapper,
)
