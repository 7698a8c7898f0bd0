"""`moec analyze` on hybrid models (docs/mixers.md), against figures derived by hand from the architectures'
published shapes: the linear layers' decode state is constant in S, the attention layers' KV cache linear in S,
and a tiny short-convolution hybrid's parameters, FLOPs at two context lengths and state bytes in two dtypes."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from moec.cli import cli
from tests.conftest import SPECS

QWEN3_NEXT = str(SPECS / "qwen3-next-80b-a3b.yaml")


def analyze_json(*args: str) -> dict:
    res = CliRunner().invoke(cli, ["analyze", *args, "--format", "json", "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)[0]


def analyze_table(*args: str) -> str:
    res = CliRunner().invoke(cli, ["analyze", *args, "-q"], env={"COLUMNS": "120"}, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


# Qwen3-Next-80B-A3B (its config.json): 48 layers, full attention on every 4th (layers 3, 7, ..., 47), GQA with
# 16 query heads and 2 KV heads of 256; the other 36 are Gated DeltaNet with 16 key heads of 128, 32 value
# heads of 128 and a convolution of kernel 4 over q, k and v; the delta rule's state is kept in float32.
LAYERS, ATTENTION_EVERY = 48, 4
KV_HEADS, HEAD_DIM = 2, 256
KEY_HEADS, VALUE_HEADS, KEY_DIM, VALUE_DIM, CONV_KERNEL = 16, 32, 128, 128, 4
ATTENTION_LAYERS = LAYERS // ATTENTION_EVERY  # 12
LINEAR_LAYERS = LAYERS - ATTENTION_LAYERS  # 36
BYTES = {"bf16": 2, "fp32": 4}


def qwen3_next_kv_bytes(seq: int, dtype: str) -> int:
    """K and V of every KV head, each attention layer, each cached token."""
    return ATTENTION_LAYERS * 2 * KV_HEADS * HEAD_DIM * BYTES[dtype] * seq


def qwen3_next_state_bytes(dtype: str) -> int:
    """Per linear layer: the convolution's last kernel − 1 inputs over the q, k and v channels (model dtype) and
    each value head's key_dim × value_dim state (float32 at least)."""
    conv_channels = 2 * KEY_HEADS * KEY_DIM + VALUE_HEADS * VALUE_DIM
    conv = conv_channels * (CONV_KERNEL - 1) * BYTES[dtype]
    recurrent = VALUE_HEADS * KEY_DIM * VALUE_DIM * max(BYTES[dtype], 4)
    return LINEAR_LAYERS * (conv + recurrent)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_qwen3_next_state_is_constant_in_s_and_the_kv_cache_linear(dtype: str):
    for seq in (4096, 131072):
        memory = analyze_json(QWEN3_NEXT, "--seq", str(seq), "--dtype", dtype)["memory"]
        assert memory["kv_cache_bytes"] == qwen3_next_kv_bytes(seq, dtype)
        assert memory["state_bytes_per_sequence"] == memory["state_bytes"] == qwen3_next_state_bytes(dtype)


def test_qwen3_next_table_shows_kv_cache_and_state_at_s():
    text = analyze_table(QWEN3_NEXT, "--seq", "131072")
    kv, state = qwen3_next_kv_bytes(131072, "bf16"), qwen3_next_state_bytes("bf16")
    assert kv == 3 << 30  # 24 KiB per token × 128 Ki tokens
    row = re.search(r"KV cache and state at S=131072, batch 1\s*│\s*([\d.]+) GiB", text)
    assert row and float(row.group(1)) == round((kv + state) / (1 << 30), 2)
    assert re.search(r"mixer state/sequence \(bf16\)\s*│\s*73\.69 MiB", text)  # 77,266,944 B
    assert "sequence mixing" in text and "attention scores" not in text


def test_an_attention_only_model_keeps_its_rows():
    text = analyze_table(str(SPECS / "mixtral-8x7b.yaml"), "--seq", "4096")
    assert "attention scores" in text
    for hybrid_only in ("sequence mixing", "state/sequence", "KV cache and state", "decode FLOPs"):
        assert hybrid_only not in text


# A short-convolution hybrid small enough to count by hand: d 64, vocabulary 256 (untied), layer 0 the gated
# short convolution (kernel 3), layer 1 GQA with 4 heads and 2 KV heads of 16, a SwiGLU FFN of 128 in both,
# RMSNorm.
TINY_SHORT_CONV = """\
moec: 1
name: tiny-short-conv
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 128, norm: {kind: rmsnorm}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 16}
mixers:
  short_conv: {kernel: 3}
ffn: {d_ff: 128, activation: swiglu}
layers:
  default: {ffn: dense, mixer: attention}
  overrides:
    - {select: {layers: [0]}, mixer: short_conv}
"""
D, V, KERNEL, HEADS, KV, HD, F = 64, 256, 3, 4, 2, 16, 128
SHORT_CONV_MATRICES = 3 * D * D + D * D  # in_proj (d → b, c, x) and out_proj
ATTENTION_MATRICES = D * HD * (HEADS + 2 * KV) + HEADS * HD * D
FFN_MATRICES = 3 * D * F
HEAD_MATRIX = D * V


def test_tiny_short_conv_hybrid_params(write_spec):
    params = analyze_json(str(write_spec(TINY_SHORT_CONV)))["params"]
    norms = 2 * D + 2 * D + D  # two per layer and the final one
    conv = D * KERNEL  # one depthwise kernel per channel, no bias
    expected = V * D + SHORT_CONV_MATRICES + conv + ATTENTION_MATRICES + 2 * FFN_MATRICES + HEAD_MATRIX + norms
    assert params["total"] == params["active"] == expected == 111_104


@pytest.mark.parametrize("seq", [1, 100])
def test_tiny_short_conv_hybrid_flops_at_two_lengths(write_spec, seq: int):
    flops = analyze_json(str(write_spec(TINY_SHORT_CONV)), "--seq", str(seq))["flops"]
    linear = 2 * (SHORT_CONV_MATRICES + ATTENTION_MATRICES + 2 * FFN_MATRICES + HEAD_MATRIX)
    conv = 2 * KERNEL * D  # the depthwise convolution, the same at every S
    scores = 2 * 2 * HEADS * HD * seq  # QKᵀ and AV over S keys (full attention)
    assert flops["forward_linear"] == linear
    assert flops["forward_attention"] == conv + scores
    assert flops["forward"] == linear + conv + scores
    assert flops["decode_step"] == linear + conv + scores  # one token after S: its scores span S keys
    assert flops["training"] == 3 * (linear + conv + scores)


@pytest.mark.parametrize(("dtype", "nbytes"), [("bf16", 2), ("fp32", 4)])
def test_tiny_short_conv_hybrid_state_bytes(write_spec, dtype: str, nbytes: int):
    for seq, batch in ((1, 1), (100, 3)):
        memory = analyze_json(
            str(write_spec(TINY_SHORT_CONV)), "--seq", str(seq), "--batch", str(batch), "--dtype", dtype
        )["memory"]
        state = D * (KERNEL - 1) * nbytes  # the last kernel − 1 inputs per channel, whatever S
        assert memory["state_bytes_per_sequence"] == state
        assert memory["state_bytes"] == state * batch
        assert memory["kv_cache_bytes"] == 2 * KV * HD * nbytes * seq * batch  # the attention layer only


def test_tiny_short_conv_hybrid_layer_table_names_each_mixer(write_spec):
    text = analyze_table(str(write_spec(TINY_SHORT_CONV)), "--layers")
    assert re.search(r"│\s*0 │ dense │ short_conv\s", text)
    assert re.search(r"│\s*1 │ dense │ gqa\s", text)
    md = CliRunner().invoke(cli, ["analyze", str(write_spec(TINY_SHORT_CONV)), "--layers", "--format", "md", "-q"])
    layer0 = SHORT_CONV_MATRICES + D * KERNEL + 2 * D + FFN_MATRICES  # the mixer, its norm and the FFN's
    assert md.exit_code == 0 and f"| 0 | dense | short_conv | - | {layer0:,} |" in md.output


def test_side_by_side_rows_line_up_when_one_spec_is_a_hybrid():
    """The attention-only spec gets the hybrid rows too, with no state: one row per metric for both."""
    text = analyze_table(QWEN3_NEXT, str(SPECS / "qwen3-30b-a3b.yaml"), "--seq", "4096")
    row = re.search(r"mixer state/sequence \(bf16\)\s*│\s*73\.69 MiB\s*│\s*0 B", text)
    assert row, text
    # Qwen3-30B-A3B: 48 attention layers × K and V of 4 KV heads of 128 × 2 bytes × 4096 tokens, no state
    assert re.search(r"KV cache and state at S=4096, batch 1\s*│\s*[\d.]+ MiB\s*│\s*384\.00 MiB", text)
    assert 48 * 2 * 4 * 128 * 2 * 4096 == 384 << 20
