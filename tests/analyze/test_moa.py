"""The mixture of attention heads through `moec analyze` (docs/conventions.md, "Mixture of attention heads"):
parameters (total and active), linear and score FLOPs, and the KV cache, each against a count by hand on a model
small enough to write out; the counts against a model built on meta; the spec section's strict checks, located."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from click.testing import CliRunner

from moec.cli import cli

# d 64, vocabulary 256 (untied), 2 layers, RMSNorm; attention: 6 experts of 4 query heads of 16 over 2 shared KV
# heads, top-2, the output bias; an MoE FFN of 4 SwiGLU experts of 32, top-2, its output bias.
TINY = """\
moec: 1
name: tiny-moa
model: {vocab_size: 256, d_model: 64, n_layers: 2, max_seq_len: 4096, norm: {kind: rmsnorm}}
attention:
  kind: moa
  n_heads: 4
  n_kv_heads: 2
  head_dim: 16
  out_bias: true
  experts: {n_experts: 6, top_k: 2, softmax_after_topk: true}
moe:
  n_experts: 4
  d_ff: 32
  output_bias: true
  router: {top_k: 2, softmax_after_topk: true}
layers: {default: {ffn: moe}}
"""
D, V, L = 64, 256, 2
E_A, K_A, H, KV, HD = 6, 2, 4, 2, 16
E, K, F = 4, 2, 32
EXPERT_A = 2 * D * H * HD  # one attention expert's query and output projections: 8192
SHARED_A = 2 * D * KV * HD + D * E_A  # the shared keys and values, the router: 4480
EXPERT = 3 * D * F  # one SwiGLU expert: 6144


def analyze_json(path, *args: str) -> dict:
    res = CliRunner().invoke(cli, ["analyze", str(path), *args, "--format", "json", "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)[0]


def test_parameters_count_every_attention_expert_and_activate_top_k(write_spec):
    params = analyze_json(write_spec(TINY))["params"]
    common = V * D + D * V + (2 * L + 1) * D + L * (SHARED_A + D + D * E + D)  # embedding, head, norms, biases
    assert params["total"] == common + L * (E_A * EXPERT_A + E * EXPERT)
    assert params["active"] == common + L * (K_A * EXPERT_A + K * EXPERT)


@pytest.mark.parametrize("seq", [1, 100])
def test_flops_run_top_k_experts_and_top_k_times_h_heads(write_spec, seq):
    a = analyze_json(write_spec(TINY), "--seq", str(seq), "--attention", "causal")["flops"]
    linear = 2 * L * (K_A * EXPERT_A + SHARED_A + D * E + K * EXPERT) + 2 * D * V
    assert a["forward_linear"] == linear
    scores = L * 2 * (K_A * H) * Fraction(seq + 1, 2) * (HD + HD)  # QKᵀ and AV for each of the k·h heads
    assert a["forward_attention"] == pytest.approx(float(scores), rel=1e-15)


def test_the_kv_cache_holds_the_shared_heads_only(write_spec):
    mem = analyze_json(write_spec(TINY), "--seq", "10", "--dtype", "bf16")["memory"]
    assert mem["kv_cache_bytes"] == 10 * L * KV * 2 * HD * 2


def test_the_convention_is_stated(write_spec):
    conventions = analyze_json(write_spec(TINY))["conventions"]
    assert "top_k" in conventions["mixture_of_attention_heads"]
    assert "mixture_of_attention_heads" not in analyze_json("specs/mixtral-8x7b.yaml")["conventions"]


def test_the_analyzer_counts_the_model_moec_builds():
    torch = pytest.importorskip("torch")
    from moec.analyze import analyze
    from moec.nn import build_model
    from moec.spec import load_model

    plan = load_model("specs/jetmoe-8b.yaml")
    model = build_model(plan, device="meta", dtype=torch.float32)
    built = {c: t + f for c, (t, f) in model.param_counts().items()}
    counted = {c.name: c.params for c in analyze(plan).components if c.params}
    assert built == counted


def validate(write_spec, text: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["validate", str(write_spec(text))])
    return res.exit_code, res.output


@pytest.mark.parametrize(
    "old,new,where",
    [
        ("top_k: 2, softmax", "top_k: 7, softmax", "attention.experts.top_k: must be at most n_experts (6)"),
        ("n_experts: 6,", "n_experts: 0,", "attention.experts.n_experts"),
        ("softmax_after_topk: true}\nmoe", "softmax_after_topk: true, jitter: 0.1}\nmoe", "attention.experts.jitter"),
        ("  experts: {n_experts: 6, top_k: 2, softmax_after_topk: true}\n", "", "attention.kind: moa (mixture of"),
        ("  kind: moa\n", "", "attention.experts: attention experts need attention.kind moa"),
        ("  out_bias: true\n", "  out_bias: true\n  qk_norm: true\n", "attention.qk_norm: not supported with"),
        (
            "softmax_after_topk: true}\nmoe",
            "score: sigmoid, softmax_after_topk: true}\nmoe",
            "attention.experts.softmax_after_topk: only meaningful with score softmax",
        ),
        ("layers: {default: {ffn: moe}}", "layers: {default: {ffn: moe, attention: {n_heads: 2}}}", "n_heads"),
        ("n_kv_heads: 2", "n_kv_heads: 3", "attention.n_kv_heads"),
    ],
)
def test_the_section_is_strict_and_its_problems_located(write_spec, old, new, where):
    assert validate(write_spec, TINY)[0] == 0
    assert old in TINY
    code, out = validate(write_spec, TINY.replace(old, new))
    assert code == 2 and where in out, out


def test_moec_plan_refuses_it_by_name():
    """moec.dist keeps a mixture of attention heads whole on every tensor-parallel rank, which the planner's KV and
    traffic figures do not model yet: one line naming the feature, exit 2."""
    res = CliRunner().invoke(cli, ["plan", "specs/jetmoe-8b.yaml"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "moec plan does not support attention.kind moa yet" in res.output
