"""Each misuse of a spec field is one error, at the field to change (``file:line:column`` of its value or its
section), reported beside the spec's other problems. Every expected location was counted by hand in the text
above it."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.spec import load_spec

BASE = """\
moec: 1
name: t
model:
  vocab_size: 256
  d_model: 64
  n_layers: 4
  max_seq_len: 128
  norm: {kind: rmsnorm, placement: pre}
  positions: {kind: rope}
attention: {n_heads: 4, n_kv_heads: 2}
ffn: {d_ff: 128}
layers:
  default: {attention: {rope: true}}
"""


def problems(text: str) -> list[str]:
    """Every problem of the spec as ``line:column path: message``."""
    with pytest.raises(SpecError) as ei:
        load_spec("t.yaml", text=text)
    return [f"{p.line}:{p.column} {p.path}: {p.message}" for p in ei.value.problems]


def test_a_norm_gate_site_written_twice_is_located_at_the_repeat():
    text = BASE.replace("  positions:", "  norm_gate: {rank: 4, sites: [mixer, dense_ffn, mixer]}\n  positions:")
    # line 9: "  norm_gate: {rank: 4, sites: [mixer, dense_ffn, mixer]}", the second mixer at column 50
    assert problems(text) == ["9:50 model.norm_gate.sites[2]: mixer: each site once"]


def test_a_norm_gate_on_post_norms_is_located_at_the_gate_beside_the_other_problems():
    text = BASE.replace("placement: pre", "placement: post").replace(
        "  positions:", "  norm_gate: {rank: 4, sites: [mixer]}\n  positions:"
    )
    text = text.replace("n_kv_heads: 2", "n_kv_heads: 3")
    # line 9: "  norm_gate: {...}", its mapping at column 14; line 11: "attention: {n_heads: 4, n_kv_heads: 3}", the 3
    # at column 37
    assert problems(text) == [
        "9:14 model.norm_gate: norm_gate gates the pre-norms of standard blocks: needs norm.placement pre and "
        "block standard",
        "11:37 attention.n_kv_heads: n_heads (4) is not divisible by n_kv_heads (3)",
    ]


def test_a_layers_own_rope_scaling_without_rope_positions_is_one_error():
    text = BASE.replace("kind: rope}", "kind: learned}").replace(
        "{rope: true}", "{rope: true, rope_scaling: {kind: linear, factor: 2}}"
    )
    # line 13: "  default: {attention: {rope: true, rope_scaling: {kind: linear, factor: 2}}}", the mapping at column 51
    assert problems(text) == [
        "13:51 layers.default.attention.rope_scaling: a layer's own rope scaling needs model.positions.kind: rope"
    ]


def test_a_value_no_member_of_a_union_takes_is_one_error_naming_each_member():
    """layers.*.attention.indexer is ``bool | Literal["shared"]``: pydantic refuses 'yes' once per member."""
    text = BASE.replace("{rope: true}", "{rope: true, indexer: 'yes'}")
    # line 13: "  default: {attention: {rope: true, indexer: 'yes'}}", the value at column 46
    assert problems(text) == [
        "13:46 layers.default.attention.indexer: 'yes': input should be a valid boolean, or input should be 'shared'"
    ]


ENCODER_DECODER = """\
moec: 1
name: t
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 64, positions: {kind: none}}
attention: {n_heads: 4}
moe: {n_experts: 4, d_ff: 32, router: {top_k: 1}}
layers: {default: {ffn: moe}}
encoder:
  n_layers: 2
  layers:
    default: {ffn: moe}
    overrides: [{select: [1], moe: {activation: swiglu_limit, activation_limit: 3}}]
"""


def test_an_encoder_layers_own_moe_is_refused_not_ignored():
    """The encoder's layers plan the moe section itself; a layer's own activation there would be dropped silently."""
    # line 11: "    overrides: [{select: [1], moe: {...}}]", the moe mapping at column 36
    assert problems(ENCODER_DECODER) == [
        "11:36 encoder.layers.overrides[0].moe: an encoder layer's MoE is the moe section's (a layer's own: decoder "
        "only)"
    ]


def test_mlas_own_options_on_gqa_are_each_refused_by_name():
    text = BASE.replace("n_kv_heads: 2}", "n_kv_heads: 2, latent_scales: true, rope_key_norm: true, query_gate: true}")
    # line 10: "attention: {n_heads: 4, n_kv_heads: 2, latent_scales: true, rope_key_norm: true, query_gate: true}"
    assert problems(text) == [
        "10:55 attention.latent_scales: only meaningful with attention.kind: mla (it scales MLA's latents)",
        "10:76 attention.rope_key_norm: only meaningful with attention.kind: mla (it norms MLA's rotary key)",
        "10:94 attention.query_gate: only meaningful with attention.kind: mla (it replaces MLA's q_b_proj)",
    ]


MOA = """\
moec: 1
name: t
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 64}
attention: {kind: moa, n_heads: 4, n_kv_heads: 2, head_dim: 16, experts: {n_experts: 4, top_k: 2}, q_lora_rank: 8}
ffn: {d_ff: 64}
layers: {default: {attention: {kv_lora_rank: 8}}}
"""


def test_a_field_a_mixture_of_attention_heads_does_not_take_is_refused_once():
    """q_lora_rank and a layer's kv_lora_rank are MLA's too: moa's refusal is the one error, not also MLA's."""
    # line 4: q_lora_rank's 8 at column 113; line 6: "layers: {default: {attention: {kv_lora_rank: 8}}}", the 8 at 46
    assert problems(MOA) == [
        "4:113 attention.q_lora_rank: not supported with attention.kind moa (mixture of attention heads)",
        "6:46 layers.default.attention.kv_lora_rank: not supported with attention.kind moa (mixture of attention heads)",
    ]


SPARSE = """\
moec: 1
name: t
model: {vocab_size: 256, d_model: 64, n_layers: 4, max_seq_len: 128}
attention:
  kind: mla
  n_heads: 4
  q_lora_rank: 32
  kv_lora_rank: 16
  qk_nope_head_dim: 16
  qk_rope_head_dim: 8
  v_head_dim: 16
  indexer: {n_heads: 2, head_dim: 16, top_k: 8}
ffn: {d_ff: 128}
layers:
  overrides:
    - {select: [0], attention: {indexer: shared}}
    - {select: [3], attention: {indexer: false}}
"""


def test_a_first_layer_sharing_an_indexer_choice_is_located_where_its_shared_is_written():
    """Layer 0 shares (the first override) and no layer runs an indexer before it; the second override, which turns
    layer 3's off, is not the one to change."""
    # line 16: "    - {select: [0], attention: {indexer: shared}}", shared at column 42
    assert problems(SPARSE) == [
        "16:42 layers.overrides[0].attention.indexer: layer 0 shares the choice of an earlier layer's indexer, and no "
        "layer before it runs one"
    ]


def test_a_window_on_a_layer_that_runs_the_indexer_is_located_where_that_window_is_written():
    """Layer 2 slides (the first override) and runs the indexer; the second override's window is on layer 0, whose
    indexer is off, and is not the one to change."""
    text = SPARSE.replace(
        "    - {select: [0], attention: {indexer: shared}}\n    - {select: [3], attention: {indexer: false}}\n",
        "    - {select: [2], attention: {window: 16}}\n    - {select: [0], attention: {window: 8, indexer: false}}\n",
    )
    # line 16: "    - {select: [2], attention: {window: 16}}", 16 at column 41
    assert problems(text) == [
        "16:41 layers.overrides[0].attention.window: not with attention.indexer (layers 2): a windowed decode would "
        "break the indexer's ties differently"
    ]


def test_yarns_own_constants_must_be_finite():
    """beta_fast and mscale reach the cos/sin tables: nan or inf is refused at the field, not computed with."""
    text = BASE.replace(
        "  positions: {kind: rope}",
        "  positions: {kind: rope, scaling: {kind: yarn, factor: 2, original_max_seq_len: 64, beta_fast: .nan, "
        "mscale: .inf}}",
    )
    # line 9: the scaling mapping; .nan at column 97, .inf at column 111
    assert problems(text) == [
        "9:97 model.positions.scaling.beta_fast: nan: input should be a finite number",
        "9:111 model.positions.scaling.mscale: inf: input should be a finite number",
    ]


def test_a_limit_missing_from_the_ffn_section_the_experts_inherit_is_one_error():
    """moe.activation unset: the experts take ffn's swiglu_limit (and its limit, once written), so the missing limit
    is ffn's problem alone; a moe section that writes the same activation itself needs its own limit too."""
    inherited = BASE.replace(
        "ffn: {d_ff: 128}",
        "ffn: {d_ff: 128, activation: swiglu_limit}\nmoe: {n_experts: 4, d_ff: 64, router: {top_k: 2}}",
    )
    # line 11: "ffn: {d_ff: 128, activation: swiglu_limit}", the activation at column 30
    assert problems(inherited) == [
        "11:30 ffn.activation: swiglu_limit has no default clamp limit: write ffn.activation_limit"
    ]
    written = inherited.replace("d_ff: 64,", "d_ff: 64, activation: swiglu_limit,")
    # line 12: "moe: {n_experts: 4, d_ff: 64, activation: swiglu_limit, router: {top_k: 2}}", its activation at 43
    assert problems(written) == [
        "11:30 ffn.activation: swiglu_limit has no default clamp limit: write ffn.activation_limit",
        "12:43 moe.activation: swiglu_limit has no default clamp limit: write moe.activation_limit",
    ]


def test_an_moe_output_norm_in_shortcut_moe_pair_layers_is_refused_not_ignored():
    """The pair block has no norm on its MoE's output (moec.nn and the generated model would build none)."""
    from moec.spec import load_model

    with pytest.raises(SpecError) as ei:
        load_model("longcat-flash", sets=["moe.output_norm=true"])
    assert [f"{p.path}: {p.message}" for p in ei.value.problems] == [
        "moe.output_norm: not supported with shortcut_moe_pair"
    ]
