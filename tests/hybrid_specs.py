"""A tiny hybrid spec (docs/mixers.md) that the command tests run: three token-mixer kinds besides attention,
dense, MoE and absent FFNs, small enough for a CPU smoke-run of a few seconds."""

from __future__ import annotations

# layer 0 Gated DeltaNet + dense FFN, layer 1 short convolution + MoE, layer 2 GQA + MoE, layer 3 Mamba alone
TINY_HYBRID = """\
moec: 1
name: tiny-hybrid
model: {vocab_size: 64, d_model: 32, n_layers: 4, max_seq_len: 64, norm: {kind: rmsnorm}}
attention: {n_heads: 4, n_kv_heads: 2}
mixers:
  gated_deltanet: {n_key_heads: 2, n_value_heads: 4, key_head_dim: 8, value_head_dim: 8, chunk: 8}
  short_conv: {kernel: 3}
  mamba: {state_size: 4, chunk: 8}
ffn: {d_ff: 64}
moe: {n_experts: 4, d_ff: 16, router: {top_k: 2}, balance: {load_balance_coeff: 0.01}}
layers:
  default: {ffn: moe, mixer: attention}
  overrides:
    - {select: {layers: [0]}, mixer: gated_deltanet, ffn: dense}
    - {select: {layers: [1]}, mixer: short_conv}
    - {select: {layers: [3]}, mixer: mamba, ffn: none}
"""
