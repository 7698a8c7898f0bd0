"""moec.nn's encoder-decoder model (moec/nn/encdec.py, moec/nn/relative_bias.py), piece by piece against plain
oracles: T5's buckets against hand-derived values and transformers' own function, the per-sequence expert capacity
against a counting loop, the biased self- and cross-attention against an explicit float64 softmax, a Switch layer's
dropped tokens against a per-token loop; the model as a whole: the analyzer's parameters on meta, causality of the
decoder, and the features it cannot build refused by name. Logits parity with transformers is in
tests/hf/families/test_switch_transformers.py."""

from __future__ import annotations

import math
import re

import pytest
import torch

from moec.analyze import analyze
from moec.errors import CommandError
from moec.nn import build_model
from moec.nn.encdec import EncoderDecoderModel, RelativeAttention, earliest_per_sequence
from moec.nn.moe import MoE
from moec.nn.relative_bias import relative_position_bucket
from moec.spec import load_model, load_spec, resolve
from tests.spec.test_encdec import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(text: str = TINY):
    return resolve(load_spec("tiny-encdec.yaml", text=text))


# --- T5's relative position buckets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "offset,bidirectional,bucket",
    [
        (0, True, 0),
        (-3, True, 3),  # a key 3 before the query: exact buckets 0..7 of the lower half
        (3, True, 19),  # 3 after: the upper half starts at 16
        (-8, True, 8),  # first logarithmic bin: 8 + floor(log(8/8)/log(128/8)·8) = 8
        (-200, True, 15),  # past max_distance: the half's last bucket
        (200, True, 31),
        (5, False, 0),  # causal: a later key counts as offset 0
        (-20, False, 17),  # 16 + floor(log(20/16)/log(128/16)·16) = 16 + floor(1.717) = 17
        (-127, False, 31),  # 16 + floor(log(127/16)/log(8)·16) = 16 + floor(15.94)
        (-128, False, 31),  # saturated from max_distance on
    ],
)
def test_buckets_are_t5s_by_hand(offset, bidirectional, bucket):
    got = relative_position_bucket(torch.tensor([offset]), bidirectional=bidirectional, n_buckets=32, max_distance=128)
    assert got.tolist() == [bucket]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("n_buckets,max_distance", [(32, 128), (8, 16), (10, 20)])
def test_buckets_equal_transformers_function_on_every_offset(bidirectional, n_buckets, max_distance):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.models.switch_transformers.modeling_switch_transformers.SwitchTransformersAttention
    offsets = torch.arange(-300, 301)
    want = theirs._relative_position_bucket(offsets, bidirectional, n_buckets, max_distance)
    got = relative_position_bucket(offsets, bidirectional=bidirectional, n_buckets=n_buckets, max_distance=max_distance)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "buckets,field",
    [("n_buckets: 3, max_distance: 16", "n_buckets"), ("n_buckets: 8, max_distance: 4", "max_distance")],
)
def test_buckets_the_arithmetic_cannot_serve_are_refused_at_load(buckets, field):
    from moec.errors import SpecError

    with pytest.raises(SpecError) as e:  # 3: no exact bucket per direction; 4 ≤ 8 // 2: bins that never widen
        tiny(TINY.replace("n_buckets: 8, max_distance: 16", buckets))
    assert [p.path for p in e.value.problems] == [f"model.positions.{field}"]


# --- the per-sequence capacity -------------------------------------------------------------------


def counting_oracle(idx: list[list[int]], seq_len: int, capacity: int) -> list[list[bool]]:
    """Walk each sequence's first choices, then its second ones, counting each expert's takers."""
    keep = [[False] * len(row) for row in idx]
    for start in range(0, len(idx), seq_len):
        taken: dict[int, int] = {}
        for j in range(len(idx[0])):
            for t in range(start, start + seq_len):
                e = idx[t][j]
                if e >= 0 and taken.get(e, 0) < capacity:
                    taken[e] = taken.get(e, 0) + 1
                    keep[t][j] = True
    return keep


@pytest.mark.parametrize("k,seq_len,capacity", [(1, 6, 2), (1, 12, 1), (2, 4, 3), (1, 12, 12)])
def test_each_expert_keeps_the_earliest_tokens_of_each_sequence(k, seq_len, capacity):
    g = torch.Generator().manual_seed(k * 100 + seq_len)
    idx = torch.randint(-1, 4, (2 * seq_len, k), generator=g)  # -1: a slot no expert was given
    got = earliest_per_sequence(idx, seq_len, capacity, n_experts=4)
    assert got.tolist() == counting_oracle(idx.tolist(), seq_len, capacity)


def test_a_switch_layer_over_capacity_passes_its_tokens_through_untouched():
    plan = tiny()
    model = build_model(plan, device="cpu", dtype=torch.float64, seed=0).eval()
    moe = model.encoder.layers[1].ffn
    assert isinstance(moe, MoE) and plan.expert_capacity == 4
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 10, 16, dtype=torch.float64, generator=g)
    with torch.no_grad():
        moe.router.weight.copy_(torch.randn(4, 16, generator=g))  # logits of order 1: some expert overflows
        y, aux = moe(x)
        logits = x.reshape(-1, 16) @ moe.router.weight.T  # (T, E)
        probs = logits.softmax(-1)
        experts = moe.experts
        want = torch.zeros(20, 16, dtype=torch.float64)
        for b in range(2):
            taken = [0] * 4
            for s in range(10):  # top-1, earliest first, at most 4 per expert per sequence
                t = b * 10 + s
                e = int(probs[t].argmax())
                if taken[e] < 4:
                    taken[e] += 1
                    h = torch.relu(x.reshape(-1, 16)[t] @ experts.w_gate_up[e]) @ experts.w_down[e]
                    want[t] = probs[t, e] * h
    assert torch.allclose(y.reshape(-1, 16), want, atol=1e-12)
    assert int(aux.dropped) == sum(1 for t in range(20) if not want[t].any()) > 0
    assert int(aux.tokens_per_expert.sum()) + int(aux.dropped) == 20


# --- the biased attention ------------------------------------------------------------------------


def explicit_attention(att: RelativeAttention, x, memory, bias, causal):
    """softmax(q·kᵀ·scale + bias [masked above the diagonal]) · v, head by head, in float64."""
    src = x if memory is None else memory
    hd = att.plan.head_dim
    q = (x @ att.q_proj.weight.T).unflatten(-1, (-1, hd))  # (B, S, h, hd)
    k = (src @ att.k_proj.weight.T).unflatten(-1, (-1, hd))
    v = (src @ att.v_proj.weight.T).unflatten(-1, (-1, hd))
    out = torch.zeros_like(q)
    S, T = q.shape[1], k.shape[1]
    for h in range(q.shape[2]):
        scores = q[:, :, h] @ k[:, :, h].transpose(1, 2) * att.scale  # (B, S, T)
        if bias is not None:
            scores = scores + bias[0, h]
        if causal:
            scores = scores.masked_fill(torch.ones(S, T, dtype=torch.bool).triu(1), -math.inf)
        out[:, :, h] = scores.softmax(-1) @ v[:, :, h]
    return out.flatten(2) @ att.o_proj.weight.T


@pytest.mark.parametrize("which", ["encoder self", "decoder self", "cross"])
def test_biased_attention_equals_an_explicit_softmax(which):
    model = build_model(tiny(), device="cpu", dtype=torch.float64, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 16, dtype=torch.float64, generator=g)
    memory = torch.randn(2, 9, 16, dtype=torch.float64, generator=g)
    with torch.no_grad():
        if which == "cross":
            att = model.layers[1].cross_attn
            got, want = att(x, memory=memory), explicit_attention(att, x, memory, None, False)
        else:
            stack = model.encoder.layers if which == "encoder self" else model.layers
            causal = which == "decoder self"
            bias = stack[0].attn.relative_bias(7, 7)  # (1, h, 7, 7): the first layer's table, read by layer 1
            att = stack[1].attn
            got, want = att(x, bias, causal=causal), explicit_attention(att, x, None, bias, causal)
    assert torch.allclose(got, want, atol=1e-12)


def test_only_each_stacks_first_self_attention_holds_a_table():
    model = build_model(tiny(), device="meta")
    tables = [n for n, _ in model.named_parameters() if "relative_bias" in n]
    assert tables == ["encoder.layers.0.attn.relative_bias.weight", "layers.0.attn.relative_bias.weight"]
    assert model.encoder.layers[0].attn.relative_bias.bidirectional
    assert not model.layers[0].attn.relative_bias.bidirectional


# --- the model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["tiny", "switch-base-8-encdec"])
def test_built_on_meta_it_has_exactly_the_analyzers_parameters(source):
    plan = tiny() if source == "tiny" else load_model(source)
    model = build_model(plan, device="meta")
    assert isinstance(model, EncoderDecoderModel)
    a = analyze(plan)
    assert sum(p.numel() for p in model.parameters()) == a.params.total
    assert model.param_counts() == {c.name: (c.trainable, c.frozen) for c in a.components if c.params}


def test_the_decoder_is_causal_and_reads_the_whole_source():
    model = build_model(tiny(), device="cpu", dtype=torch.float64, seed=0).eval()
    g = torch.Generator().manual_seed(4)
    src, tgt = torch.randint(0, 64, (1, 9), generator=g), torch.randint(0, 64, (1, 6), generator=g)
    with torch.no_grad():
        logits, aux = model(src, tgt)
        later = tgt.clone()
        later[0, 4] = (later[0, 4] + 1) % 64
        changed_target, _ = model(src, later)
        last = src.clone()
        last[0, -1] = (last[0, -1] + 1) % 64
        changed_source, _ = model(last, tgt)
    assert logits.shape == (1, 6, 64)
    assert torch.equal(changed_target[:, :4], logits[:, :4]) and not torch.equal(changed_target[:, 4], logits[:, 4])
    assert not torch.allclose(changed_source[:, 0], logits[:, 0])  # the first target sees the last source token
    # the encoder's layers, then the decoder's: an aux for each MoE layer (layer 1 of each stack)
    assert [a is not None for a in aux.layers] == [False, True, False, False, True]


@pytest.mark.parametrize(
    "edit,named",
    [
        (("attention: {n_heads: 2, head_dim: 4, scale: 1.0}", "attention: {n_heads: 2, head_dim: 4, qk_norm: true}"),
         "attention.qk_norm"),
        (("positions: {kind: relative_bucket, n_buckets: 8, max_distance: 16}", "positions: {kind: learned}"),
         "learned positions"),
    ],
)  # fmt: skip
def test_what_it_cannot_build_is_refused_by_name(edit, named):
    with pytest.raises(CommandError, match=f"tiny-encdec is an encoder-decoder model with {named}"):
        build_model(tiny(TINY.replace(*edit)), device="meta")


MOE = "moe: {n_experts: 4, d_ff: 32, activation: relu, router: {top_k: 1}, drop_policy: position}"


@pytest.mark.parametrize(
    ("moe_fields", "refused"),
    [
        ("output_norm: true", "moe.output_norm"),  # applied by the decoder-only Block, not by the MoE module
        ("n_shared_experts: 1", None),
        ("shared_gate: true, n_shared_experts: 1", None),
        ("output_bias: true", None),
        ("n_zero_experts: 2", "moe.n_zero_experts with encoder.expert_capacity"),
        ("granularity: 2", None),
        ("d_ff_shared: 16, n_shared_experts: 2", None),
    ],
)
def test_every_moe_variant_builds_exactly_what_the_analyzer_counts_or_is_refused_by_name(moe_fields, refused):
    """A feature the encoder-decoder block does not apply must not be built without it: the meta model holds the
    analyzer's parameters, or build_model refuses naming the feature; which of the two, each variant says."""
    plan = tiny(TINY.replace(MOE, MOE[:-1] + ", " + moe_fields + "}"))
    assert plan != tiny()
    if refused is not None:
        with pytest.raises(CommandError, match=f"tiny-encdec is an encoder-decoder model with {re.escape(refused)},"):
            build_model(plan, device="meta")
        return
    model = build_model(plan, device="meta")
    assert sum(p.numel() for p in model.parameters()) == analyze(plan).params.total


def test_bad_token_ids_are_one_clear_error():
    model = build_model(tiny(), device="cpu", seed=0)
    ok = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="decoder_input_ids: token id 64 is outside the vocabulary"):
        model(ok, torch.full((1, 3), 64))
    with pytest.raises(ValueError, match="input_ids hold 1 sequences, decoder_input_ids 2"):
        model(ok, torch.zeros(2, 3, dtype=torch.long))


def test_a_training_step_reaches_every_parameter():
    """The decoder's cross-entropy plus the routers' aux losses: every weight gets a gradient, both stacks' bias
    tables and the routers included (a table or a router left out of the forward would get none)."""
    plan = tiny(TINY.replace("drop_policy: position}", "drop_policy: position, balance: {z_loss_coeff: 0.001}}"))
    model = build_model(plan, device="cpu", seed=0).train()
    g = torch.Generator().manual_seed(5)
    src, tgt = torch.randint(0, 64, (2, 8), generator=g), torch.randint(0, 64, (2, 6), generator=g)
    logits, aux = model(src, tgt[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten()) + aux.loss
    loss.backward()
    # an expert no token reached in this batch gets a zero gradient, never None
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "experts" not in n)
