"""model.norm_gate (A.X-K2's AXK2GatedRMSNorm, GatedNorm): the gated norm against its formula written out by hand,
the analyzer's parameters and FLOPs against hand counts (2·d·r and 4·d·r per gated norm), the sites each layer
gates, and the refusals by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moec.analyze import analyze
from moec.errors import SpecError
from moec.nn import build_model
from moec.spec import load_spec, resolve

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = """
name: gated
model: {vocab_size: 64, d_model: 32, n_layers: 2, max_seq_len: 32, norm_gate: {rank: 4, sites: [mixer, moe_ffn]}}
attention: {n_heads: 4}
ffn: {d_ff: 24}
moe: {n_experts: 4, d_ff: 8, router: {top_k: 2}}
layers: {default: {ffn: moe}, overrides: [{select: [0], ffn: dense}]}
"""
PLAIN = SPEC.replace(", norm_gate: {rank: 4, sites: [mixer, moe_ffn]}", "")


def plan_of(text: str):  # type: ignore[no-untyped-def]
    return resolve(load_spec("gated.yaml", text=text))


def test_the_gated_norm_is_its_formula():
    """y = RMSNorm(x)·w; y · sigmoid(fc2(silu(fc1(y)))), the sigmoid in float32. The float64 gate changes the
    output by far more than the tolerance: it is not a no-op."""
    model = build_model(plan_of(SPEC), device="cpu", dtype=torch.float64, seed=0)
    norm = model.layers[1].ffn_norm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5 + (p.dim() == 1))
    x = torch.randn(3, 5, 32, generator=g, dtype=torch.float64)
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.norm.weight
    want = y * torch.sigmoid(F.silu(y @ norm.mlp.fc1.weight.T) @ norm.mlp.fc2.weight.T)
    assert (want - y).abs().max() > 0.1
    with torch.no_grad():
        torch.testing.assert_close(norm(x), want, rtol=1e-6, atol=1e-6)  # moec's RMSNorm normalises in float32


def test_each_layer_gates_the_sites_it_has_and_the_analyzer_counts_them():
    """Layer 0 (dense) gates its mixer norm only, layer 1 (MoE) both: 3 gates of 2·32·4 weights, 4·32·4 FLOPs each
    per token; the final norm is not gated."""
    gated, plain = plan_of(SPEC), plan_of(PLAIN)
    model = build_model(gated, device="meta")
    names = sorted({n.rsplit(".mlp.", 1)[0] for n, _ in model.named_parameters() if ".mlp.fc" in n})
    assert names == ["layers.0.attn_norm", "layers.1.attn_norm", "layers.1.ffn_norm"]
    a, b = analyze(gated), analyze(plain)
    assert sum(p.numel() for p in model.parameters()) == a.params.total
    assert a.params.total - b.params.total == 3 * 2 * 32 * 4 == a.params.active - b.params.active
    assert a.flops.forward - b.flops.forward == 3 * 4 * 32 * 4


@pytest.mark.parametrize(
    ("old", "new", "path", "message"),
    [
        ("sites: [mixer, moe_ffn]", "sites: [mixer, mixer]", "model.norm_gate.sites[1]", "each site once"),
        ("n_layers: 2,", "n_layers: 2, norm: {placement: post},", "model.norm_gate", "needs norm.placement pre"),
    ],
)
def test_what_the_gate_cannot_wrap_is_refused_where_written(old, new, path, message):
    with pytest.raises(SpecError) as e:
        load_spec("gated.yaml", text=SPEC.replace(old, new))
    assert [(p.path, p.line) for p in e.value.problems] == [(path, 3)]
    assert message in e.value.problems[0].message
