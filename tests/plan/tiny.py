"""The tiny MoE spec the planner's tests derive figures for by hand (every tensor small enough to list)."""

from __future__ import annotations

from moec.spec import load_spec, resolve
from moec.spec.plan import ResolvedModel

# V = 10, d = 4, L = 2 MoE layers, h = 2 heads of head_dim 2, 1 KV head, E = 4 SwiGLU experts of width 3,
# top-2, RMSNorm (weight only), untied head, rope. Its tensors, (out, in) for linears:
#   embed (10, 4) · per layer: attn_norm (4), q (4, 4), k (2, 4), v (2, 4), o (4, 4), ffn_norm (4),
#   router (4, 4), experts w_gate_up (4, 4, 6), w_down (4, 3, 4) · final norm (4) · lm_head (10, 4)
TINY = """
moec: 1
name: tiny
model: {vocab_size: 10, d_model: 4, n_layers: 2, max_seq_len: 64}
attention: {n_heads: 2, n_kv_heads: 1}
ffn: {d_ff: 6, activation: swiglu}
moe:
  n_experts: 4
  d_ff: 3
  router: {top_k: 2}
layers:
  default: {ffn: moe}
"""


MLA = "kind: mla, kv_lora_rank: 4, qk_nope_head_dim: 2, qk_rope_head_dim: 2, v_head_dim: 2"


def tiny(*sets: str, mla: bool = False) -> ResolvedModel:
    """The tiny spec with --set style overrides; ``mla``: multi-head latent attention instead of GQA."""
    text = TINY.replace("n_kv_heads: 1", MLA) if mla else TINY
    return resolve(load_spec("tiny.yaml", text=text, sets=sets))
