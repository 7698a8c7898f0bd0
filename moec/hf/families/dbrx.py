"""DBRX (``model_type`` dbrx, DbrxForCausalLM): its own field names, with attention and experts in the nested
attn_config and ffn_config; LayerNorm without bias, every layer MoE, softmax top-k routing. Checkpoints
name everything their own way: a fused Wqkv, norms inside norm_attn_norm, experts as (E·f, d) matrices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moec.hf.draft import CannotExport, Draft, Family, HFConfig
from moec.hf.families._common import ACTIVATIONS, clip_qkv, defaults, derived, dropout, layer_count, router
from moec.hf.families._export_common import gated_hidden_act, moe_plan
from moec.hf.mapper import Mapper, Missing
from moec.hf.rope import read_rope
from moec.spec.plan import LayerPlan, MoEPlan, ResolvedModel

if TYPE_CHECKING:
    import torch


# fmt: off
DEFAULTS = defaults(10000.0, d_model=2048, n_heads=16, n_layers=24, max_seq_len=2048, vocab_size=32000,
                    resid_pdrop=0.0, emb_pdrop=0.0, attn_config=None, ffn_config=None, router_aux_loss_coef=None)
ATTN_DEFAULTS = {"attn_pdrop": 0.0, "clip_qkv": None, "kv_n_heads": 1, "rope_theta": None}
FFN_DEFAULTS = {"ffn_act_fn": None, "ffn_hidden_size": 3584, "moe_num_experts": 4, "moe_top_k": 1, "moe_jitter_eps": None,
                "moe_loss_weight": 0.01, "moe_normalize_expert_weights": 1.0, "hidden_size": None}
# fmt: on


def translate(c: HFConfig, d: Draft) -> None:
    attn = HFConfig(_dict(c, "attn_config"), ATTN_DEFAULTS, "attn_config.")
    ffn = HFConfig(_dict(c, "ffn_config"), FFN_DEFAULTS, "ffn_config.")
    c.children += [attn, ffn]
    ffn.value("hidden_size")  # DbrxConfig overwrites it with d_model
    d.put("model.vocab_size", c.int("vocab_size"), c.src("vocab_size"))
    d_model = c.int("d_model")
    d.put("model.d_model", d_model, c.src("d_model"))
    layer_count(c, d, "n_layers")
    d.put("model.max_seq_len", c.int("max_seq_len"), c.src("max_seq_len"))
    if c.bool("tie_word_embeddings"):
        c.bad("tie_word_embeddings", "DBRX does not support tied embeddings (DbrxConfig.validate_architecture)")
    d.put("model.tie_embeddings", False, c.src("tie_word_embeddings"))
    d.put("model.norm.kind", "layernorm", "DbrxBlock: nn.LayerNorm(d_model, bias=False)")
    d.put("model.norm.eps", 1e-5, "nn.LayerNorm default eps (DBRX has no eps field)")
    d.put("model.norm.bias", False, "DbrxBlock norm_1, norm_2 and norm_f: LayerNorm(bias=False)")
    d.put("model.positions.kind", "rope", "DBRX uses rotary positions")
    read_rope(c, d, theta_fallback=attn.value("rope_theta"))
    dropout(c, d, "resid_pdrop", "emb_pdrop")
    dropout(attn, d, "attn_pdrop")
    h = c.int("n_heads")
    d.section(
        "attention",
        kind=("gqa", ""),
        n_heads=(h, c.src("n_heads")),
        n_kv_heads=(attn.int("kv_n_heads"), attn.src("kv_n_heads")),
        head_dim=(d_model // h, "d_model / n_heads"),
        qk_norm=(False, ""),
        bias=(False, "DbrxAttention: Wqkv and out_proj have no bias"),
        out_bias=(False, ""),
    )
    derived(c, "num_key_value_heads", d.get("attention.n_kv_heads"))
    clip_qkv(attn, d, "clip_qkv")
    d.section(
        "moe",
        n_experts=(ffn.int("moe_num_experts"), ffn.src("moe_num_experts")),
        d_ff=(ffn.int("ffn_hidden_size"), ffn.src("ffn_hidden_size")),
        activation=(_dbrx_activation(ffn, d), ffn.src("ffn_act_fn") + " (gated: w1, v1, w2)"),
    )
    d.put("moe.router.top_k", ffn.int("moe_top_k"), ffn.src("moe_top_k"))
    p = ffn.float("moe_normalize_expert_weights", optional=True)
    if p not in (None, 1.0):
        d.gap(
            "ffn_config.moe_normalize_expert_weights",
            p,
            "top-k weights divided by their p-norm, p ≠ 1",
            "moe.router.normalize_topk_p: float (p-norm of the renormalisation)",
        )
    router(
        d, "DbrxFFN.route_tokens_to_experts: softmax over all experts, top-k", score="softmax", softmax_after_topk=False
    )
    d.put("moe.router.normalize_topk", p == 1.0, ffn.src("moe_normalize_expert_weights") + " (p = 1: sum)")
    d.put(
        "moe.router.jitter",
        ffn.float("moe_jitter_eps", optional=True) or 0.0,
        ffn.src("moe_jitter_eps") + " (DbrxRouter: router input only)",
    )
    coeff = ffn.float("moe_loss_weight", optional=True)
    d.put("moe.balance.load_balance_coeff", coeff or 0.0, ffn.src("moe_loss_weight") + " (training only)")
    c.value("router_aux_loss_coef")
    d.ffn = ["moe"] * d.n_layers
    d.ffn_note = "every DBRX layer is MoE"
    d.window = [None] * d.n_layers
    d.rope = [True] * d.n_layers


def _dbrx_activation(ffn: HFConfig, d: Draft) -> str:
    """ffn_act_fn: {"name": <a transformers activation>} (DbrxFFNConfig); absent means silu."""
    act = ffn.value("ffn_act_fn") or {"name": "silu"}
    name = act.get("name") if isinstance(act, dict) and set(act) <= {"name"} else None
    if not isinstance(name, str) or name not in ACTIVATIONS:
        d.gap("ffn_config.ffn_act_fn", act, "an expert activation moec does not map", "activation")
        return "swiglu"
    return ACTIVATIONS[name]


def _dict(c: HFConfig, key: str) -> dict[str, Any]:
    return {k: x for k, x in c.mapping(key).items() if k != "model_type"}


def export(m: ResolvedModel) -> dict[str, Any]:
    n = m.norm
    if (n.kind, n.placement, n.bias, n.eps) != ("layernorm", "pre", False, 1e-5):
        raise CannotExport("needs pre-norm LayerNorm without bias, eps 1e-5 (nn.LayerNorm's default)")
    if m.positions.kind != "rope" or m.positions.scaling is not None:
        raise CannotExport("needs plain rotary positions (no scaling)")
    if m.frozen or m.mtp or m.tie_embeddings:
        raise CannotExport("has no frozen components, MTP layers or tied embeddings")
    a, e = m.layers[0].attention, moe_plan(m, all_layers=True)
    act = gated_hidden_act(e.activation)
    r = e.router
    theta = m.positions.theta
    return {
        "architectures": [FAMILY.architecture],
        "model_type": "dbrx",
        "vocab_size": m.vocab_size,
        "d_model": m.d_model,
        "n_heads": a.n_heads,
        "n_layers": m.n_layers,
        "max_seq_len": m.max_seq_len,
        "tie_word_embeddings": False,
        # transformers 5.23 reads the rope base here, DBRX's own code in attn_config: write both
        "rope_theta": theta,
        "attn_config": {"kv_n_heads": a.n_kv_heads, "clip_qkv": a.clip_qkv, "rope_theta": theta},
        "ffn_config": {
            "ffn_act_fn": {"name": act},
            "ffn_hidden_size": e.d_ff,
            "moe_num_experts": e.n_experts,
            "moe_top_k": r.top_k,
            "moe_normalize_expert_weights": 1.0 if r.normalize_topk else None,
            "moe_jitter_eps": r.jitter or None,
            "moe_loss_weight": e.load_balance_coeff,
        },
    }


class DbrxMapper(Mapper):
    """DBRX's own names: a fused Wqkv, norms inside norm_attn_norm, experts as (E·f, d) matrices."""

    layer_fmt = "transformer.blocks.{i}."
    embed = "transformer.wte.weight"
    final_norm = "transformer.norm_f."
    attn_norm = "norm_attn_norm.norm_1."
    ffn_norm = "norm_attn_norm.norm_2."

    def attention(self, p: str, lp: LayerPlan, leaf: str) -> torch.Tensor:
        a = p + "norm_attn_norm.attn."
        if leaf == "o_proj.weight":
            return self.ck.get(a + "out_proj.weight")
        q, kv = lp.attention.n_heads * lp.attention.head_dim, lp.attention.n_kv_heads * lp.attention.head_dim
        rows = {"q_proj.weight": (0, q), "k_proj.weight": (q, q + kv), "v_proj.weight": (q + kv, q + 2 * kv)}
        if leaf not in rows:
            raise Missing([f"{a}{leaf}"])
        start, stop = rows[leaf]
        return self.ck.get(a + "Wqkv.weight")[start:stop]  # (q + 2·kv, d) rows [q | k | v]

    def moe(self, p: str, plan: MoEPlan, leaf: str) -> torch.Tensor:
        f = p + "ffn."
        if leaf == "router.weight":
            return self.ck.get(f + "router.layer.weight")
        import torch

        E, ff = plan.n_experts, plan.d_ff
        mlp = f + "experts.mlp."

        def per_expert(name: str) -> torch.Tensor:
            return self.ck.get(mlp + name).view(E, ff, -1)  # (E·f, d) → (E, f, d)

        if leaf == "experts.w_gate_up":  # w1 = gate, v1 = up, each [out, in] per expert
            return torch.cat((per_expert("w1").transpose(1, 2), per_expert("v1").transpose(1, 2)), dim=2)
        if leaf == "experts.w_down":  # DbrxExpertGLU: intermediate @ w2, so w2 is already [in, out]
            return per_expert("w2")
        raise Missing([f"{f}{leaf}"])


FAMILY = Family(
    "dbrx",
    "DbrxForCausalLM",
    DEFAULTS,
    translate,
    aliases={
        "num_attention_heads": "n_heads",
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_seq_len",
    },
    export=export,
    export_rank=90,
    mapper=DbrxMapper,
)
