"""The tiny specs the tests build, run and compare, each declared once.

Tests that need a variant take one of these with ``--set`` style overrides (:func:`tiny_plan`'s ``sets``, read
exactly as ``moec --set`` reads them) rather than a copy of the text. A spec whose exact text a test depends on
(line numbers in its error messages, figures derived by hand from every tensor) stays beside that test.
"""

from __future__ import annotations

from moec.spec import load_spec, resolve
from moec.spec.plan import ResolvedModel

# Mixtral in miniature: every layer routes top-2 of 4 SwiGLU experts (softmax, the two weights renormalised),
# GQA with 2 KV heads
TINY_MOE = """\
moec: 1
name: tiny-moe
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32}
attention: {n_heads: 4, n_kv_heads: 2}
moe: {n_experts: 4, d_ff: 16, router: {top_k: 2, normalize_topk: true}}
layers: {default: {ffn: moe}}
"""

# DeepSeek-V3 in miniature: MLA with a q low-rank and yarn RoPE, a dense first layer, 8 routed experts and one
# shared one, the sigmoid router with its selection bias, group-limited routing (4 groups, top-2 by the sum of
# each group's best two) and the routed scale, sequence-wise balance, and one MTP block.
TINY_DEEPSEEK_V3 = """\
moec: 1
name: tiny-deepseek-v3
model: {vocab_size: 64, d_model: 32, n_layers: 3, max_seq_len: 32, norm: {kind: rmsnorm, eps: 1.0e-6},
  positions: {kind: rope, theta: 10000.0, scaling: {kind: yarn, factor: 4.0, original_max_seq_len: 8,
              beta_fast: 32.0, beta_slow: 1.0, mscale: 1.0, mscale_all_dim: 1.0}}}
attention: {kind: mla, n_heads: 4, q_lora_rank: 24, kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 4,
            v_head_dim: 8}
ffn: {d_ff: 48}
moe:
  n_experts: 8
  d_ff: 16
  n_shared_experts: 1
  router: {top_k: 2, score: sigmoid, normalize_topk: true, scale: 2.5, selection_bias: true, n_groups: 4,
           topk_groups: 2, group_score: top2_sum}
  balance: {bias_update_rate: 0.001, load_balance_coeff: 0.0001, load_balance_granularity: sequence}
layers:
  default: {ffn: moe}
  overrides: [{select: {first: 0, last: 0}, ffn: dense}]
mtp: {n_layers: 1, ffn: moe}
"""


def tiny_plan(text: str = TINY_MOE, *sets: str) -> ResolvedModel:
    """The resolved plan of a spec text, with ``--set KEY=VALUE`` overrides."""
    return resolve(load_spec("tiny.yaml", text=text, sets=sets))
