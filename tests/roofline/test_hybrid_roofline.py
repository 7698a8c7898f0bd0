"""The roofline of a hybrid model (docs/mixers.md) against figures derived by hand: a short-convolution layer
beside an attention layer, in decode (the state read and written back, one convolution step per token) and in
prefill (the state written once, the convolution over every prompt token); tensor parallelism refused by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from moec.plan.accelerators import ACCELERATORS
from moec.roofline.model import Workload, layout_problems, roofline
from moec.spec import load_model

# d 64, layer 0 the gated short convolution (kernel 3, no bias), layer 1 GQA (4 heads, 2 KV heads of 16); a dense
# SwiGLU FFN of 128 in both
SPEC = """\
moec: 1
name: conv-hybrid
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 4096, norm: {kind: rmsnorm}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 16}
mixers:
  short_conv: {kernel: 3}
ffn: {d_ff: 128, activation: swiglu}
layers:
  default: {ffn: dense, mixer: attention}
  overrides:
    - {select: {layers: [0]}, mixer: short_conv}
"""
D, KERNEL, HEADS, KV, HD = 64, 3, 4, 2, 16
BF16 = 2
CONV_WEIGHTS = 4 * D * D  # in_proj d → 3d, out_proj d → d
CONV_PARAMS = CONV_WEIGHTS + D * KERNEL
STATE = D * (KERNEL - 1) * BF16  # the last kernel − 1 inputs of each channel, per sequence
H100 = ACCELERATORS["h100"]


@pytest.fixture
def model(write_spec):
    return load_model(str(write_spec(SPEC)))


def cost(r, name):
    return next(c for c in r.costs if c.name == name)


@pytest.mark.parametrize("batch", [1, 8])
def test_decode_reads_and_writes_the_state_and_the_kv_cache(model, batch: int):
    seq = 1000
    r = roofline(model, H100, "h100", Workload("decode", batch=batch, seq=seq))
    state = cost(r, "mixer_state")
    assert state.flops == batch * 2 * KERNEL * D  # one convolution window per channel and token
    assert state.bytes == 2 * batch * STATE  # read, then written back: the same at any context
    projections = cost(r, "mixers")
    assert projections.flops == batch * 2 * CONV_WEIGHTS and projections.bytes == CONV_PARAMS * BF16
    scores = cost(r, "attention_scores")  # the attention layer alone: its scores over S keys and its KV cache
    assert scores.flops == batch * 2 * 2 * HEADS * HD * seq
    assert scores.bytes == batch * seq * 2 * KV * HD * BF16
    assert r.kv_cache_bytes == batch * (seq * 2 * KV * HD * BF16 + STATE)


def test_prefill_writes_the_state_once_and_convolves_every_token(model):
    batch, seq = 2, 512
    r = roofline(model, H100, "h100", Workload("prefill", batch=batch, seq=seq))
    state = cost(r, "mixer_state")
    assert state.flops == batch * seq * 2 * KERNEL * D
    assert state.bytes == batch * STATE
    assert cost(r, "mixers").flops == batch * seq * 2 * CONV_WEIGHTS


def test_tensor_parallelism_of_a_mixer_is_refused_by_name(model):
    problems = layout_problems(model, Workload("decode", tp=2))
    assert ("--tp", "tp = 2 splits attention and FFNs, not the token mixers short_conv") in problems
    assert layout_problems(model, Workload("decode", ep=1)) == []


def test_the_cli_names_the_mixer_rows(write_spec):
    spec = str(write_spec(SPEC))
    done = subprocess.run([sys.executable, "-m", "moec", "roofline", spec], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "mixer proj." in done.stdout and "mixer scan + state" in done.stdout
    assert "KV + mixer state" in done.stdout
    done = subprocess.run([sys.executable, "-m", "moec", "roofline", spec, "--tp", "2"], capture_output=True, text=True)
    assert done.returncode == 2 and "not the token mixers short_conv" in done.stderr
