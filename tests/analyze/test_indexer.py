"""The sparse-attention indexer through `moec analyze` (docs/conventions.md, "Sparse attention indexer"): parameters,
the sparse (headline) and dense-equivalent attention FLOPs, and the KV cache, each against a count done by hand on a
model small enough to write out; and the spec section's strict checks."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from click.testing import CliRunner

from moec.cli import cli

# d 64, vocabulary 256 (untied), 2 layers, a SwiGLU FFN of 128, RMSNorm; MLA with 4 heads (q latent 32, kv latent
# 16, 8 nope + 8 rope, v 8) and an indexer of 4 heads of 16 keeping the 8 best keys.
TINY = """\
moec: 1
name: tiny-indexer
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 4096, norm: {kind: rmsnorm}}
attention:
  kind: mla
  n_heads: 4
  q_lora_rank: 32
  kv_lora_rank: 16
  qk_nope_head_dim: 8
  qk_rope_head_dim: 8
  v_head_dim: 8
  indexer: {n_heads: 4, head_dim: 16, top_k: 8}
ffn: {d_ff: 128, activation: swiglu}
layers: {default: {ffn: dense}}
"""
D, V, L, F = 64, 256, 2, 128
H, QR, KVR, NOPE, ROPE, VD = 4, 32, 16, 8, 8, 8
H_I, D_I, TOP_K = 4, 16, 8
MLA = D * QR + QR + QR * H * (NOPE + ROPE) + D * (KVR + ROPE) + KVR + KVR * H * (NOPE + VD) + H * VD * D  # 8752
INDEXER = QR * H_I * D_I + D * D_I + 2 * D_I + D * H_I  # wq_b, wk, k_norm (weight and bias), weights_proj: 3360


# JSON holds a non-integer count as a float: compared to the exact fraction within float rounding


def analyze_json(path, *args: str) -> dict:
    res = CliRunner().invoke(cli, ["analyze", str(path), *args, "--format", "json", "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)[0]


def test_parameters_count_the_indexer(write_spec):
    params = analyze_json(write_spec(TINY))["params"]
    norms = 2 * L * D + D
    assert MLA == 8752 and INDEXER == 3360
    assert params["total"] == params["active"] == V * D + L * (MLA + INDEXER + 3 * D * F) + norms + D * V


@pytest.mark.parametrize("seq", [4, 100])
def test_attention_flops_sparse_headline_and_dense_equivalent(write_spec, seq):
    """Causal: query i sees i+1 keys, attends min(i+1, top_k) of them, and its indexer scores all i+1."""
    a = analyze_json(write_spec(TINY), "--seq", str(seq), "--attention", "causal")
    seen = Fraction(seq + 1, 2)
    attended = Fraction(sum(min(i + 1, TOP_K) for i in range(seq)), seq)
    per_key = 2 * H * (NOPE + ROPE + VD)  # QKᵀ and AV, every head
    index_per_key = 2 * H_I * (D_I + 1)  # q·k per indexer head and the head-weighted sum
    sparse = L * (per_key * attended + index_per_key * seen)
    dense = L * per_key * seen
    assert a["flops"]["forward_attention"] == pytest.approx(
        float(sparse), rel=1e-15
    )  # the headline: what the model computes
    entry = a["conventions"]["sparse_attention"]
    assert entry["headline"] == "sparse"
    assert entry["forward_attention_sparse"] == a["flops"]["forward_attention"]
    assert entry["forward_attention_dense_equivalent"] == pytest.approx(float(dense), rel=1e-15)
    # one decode step after seq tokens: top_k (or all) keys attended, seq scored by the indexer
    step_sparse = L * (per_key * min(seq, TOP_K) + index_per_key * seq)
    assert entry["decode_attention_sparse"] == step_sparse
    assert entry["decode_attention_dense_equivalent"] == L * per_key * seq
    assert a["flops"]["decode_step"] == a["flops"]["forward_linear"] + step_sparse
    linear = 2 * L * (MLA - QR - KVR + INDEXER - 2 * D_I + 3 * D * F) + 2 * D * V  # matrices only
    assert a["flops"]["forward_linear"] == linear


def test_the_kv_cache_holds_the_indexer_key(write_spec):
    mem = analyze_json(write_spec(TINY), "--seq", "10", "--dtype", "bf16")["memory"]
    assert mem["kv_cache_bytes"] == 10 * L * (KVR + ROPE + D_I) * 2


def test_the_table_says_which_figure_the_headline_uses(write_spec):
    res = CliRunner().invoke(cli, ["analyze", str(write_spec(TINY)), "-q"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "sparse attention: headline at top-k keys (dense-equivalent in JSON)" in res.output


def test_a_model_without_an_indexer_has_no_sparse_entry():
    assert "sparse_attention" not in analyze_json("specs/deepseek-v3.yaml", "--seq", "4096")["conventions"]


@pytest.mark.parametrize(
    "section,where",
    [
        ("{n_heads: 4, head_dim: 16, top_k: 8, rope: true}", "attention.indexer.rope"),
        ("{n_heads: 4, head_dim: 16, top_k: 0}", "attention.indexer.top_k"),
        ("{n_heads: 4, head_dim: 16}", "attention.indexer.top_k"),
        ("{n_heads: 4, head_dim: 16, top_k: 8, rope_layout: pairs}", "attention.indexer.rope_layout"),
    ],
)
def test_the_section_is_strict(write_spec, section, where):
    res = CliRunner().invoke(
        cli, ["validate", str(write_spec(TINY.replace("{n_heads: 4, head_dim: 16, top_k: 8}", section)))]
    )
    assert res.exit_code == 2 and where in res.output, res.output


def validate(write_spec, text: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["validate", str(write_spec(text))])
    return res.exit_code, res.output


def test_cross_field_problems_are_named(write_spec):
    assert validate(write_spec, TINY)[0] == 0
    code, out = validate(write_spec, TINY.replace("head_dim: 16", "head_dim: 4"))
    assert code == 2 and "attention.indexer.head_dim: must be at least attention.qk_rope_head_dim (8)" in out
    code, out = validate(write_spec, TINY.replace("  q_lora_rank: 32\n", ""))
    assert code == 2 and "attention.indexer: the indexer reads MLA's query latent" in out and "q_lora_rank" in out


def test_moec_validate_reports_them_with_their_line(write_spec):
    gqa = TINY.replace("  kind: mla\n", "  kind: gqa\n").replace("  q_lora_rank: 32\n", "")
    for f in ("kv_lora_rank: 16", "qk_nope_head_dim: 8", "qk_rope_head_dim: 8", "v_head_dim: 8"):
        gqa = gqa.replace(f"  {f}\n", "")
    res = CliRunner().invoke(cli, ["validate", str(write_spec(gqa))])
    assert res.exit_code == 2, res.output
    assert "spec.yaml:" in res.output and "attention.indexer: the indexer reads MLA's query latent" in res.output
