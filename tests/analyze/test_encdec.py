"""An encoder-decoder model through the analyzer (docs/conventions.md, "Encoder-decoder"): parameters, FLOPs per
(source, target) token pair, a decode step and the KV cache, each against a count done by hand on a model small
enough to write out."""

from __future__ import annotations

from fractions import Fraction

import pytest
from click.testing import CliRunner

from moec.analyze.report import analyze
from moec.cli import cli
from moec.spec import load_model
from tests.spec.test_encdec import TINY

# TINY: V 64 (tied), d 16, 2 heads of 4 (inner 8), ReLU FFN of 32, 4 experts of 32 top-1, RMSNorm, 8 buckets;
# encoder 3 layers (MoE on 1), decoder 2 layers (MoE on 1)
V, D, INNER, F, E, BUCKETS, H = 64, 16, 8, 32, 4, 8, 2
ATTN = 4 * D * INNER  # q, k, v, o: 512
FFN = 2 * D * F  # 1024
ROUTER = D * E
ENCODER = 3 * (ATTN + 2 * D) + 2 * FFN + ROUTER + E * FFN + H * BUCKETS + D  # 2 norms per layer, table, final norm
DECODER = 2 * (2 * ATTN + 3 * D) + FFN + ROUTER + E * FFN + H * BUCKETS + D  # self + cross, 3 norms per layer
EMBEDDING = V * D  # shared by both stacks and the head


def test_parameters_count_both_stacks_cross_attention_and_the_bias_tables(write_spec):
    a = analyze(load_model(str(write_spec(TINY))))
    assert a.params.total == EMBEDDING + ENCODER + DECODER
    assert a.params.active == a.params.total - 2 * (E - 1) * FFN  # one expert of four on each MoE layer
    assert a.params.embedding == EMBEDDING
    assert a.moe is not None and (a.moe.moe_layers, a.moe.dense_layers) == (2, 3)


@pytest.mark.parametrize("seq", [1, 7, 32])
def test_flops_per_token_pair_and_per_decode_step(write_spec, seq):
    a = analyze(load_model(str(write_spec(TINY))), seq=seq, attention="causal")
    scores = 2 * H * (4 + 4)  # QKᵀ and AV per key: 2·h·(d_qk + d_v)
    encoder_linear = 3 * 2 * ATTN + 2 * 2 * FFN + 2 * ROUTER + 2 * FFN
    decoder_linear = 2 * 2 * 2 * ATTN + 2 * FFN + 2 * ROUTER + 2 * FFN
    head = 2 * D * V
    assert a.flops.forward_linear == encoder_linear + decoder_linear + head
    encoder_scores = 3 * scores * seq  # bidirectional: every query sees S keys, whatever the mode
    decoder_scores = 2 * scores * Fraction(seq + 1, 2) + 2 * scores * seq  # causal self + cross over S sources
    assert Fraction(a.flops.forward_attention) == encoder_scores + decoder_scores
    cross_kv = 2 * 2 * D * INNER  # the source's K and V projections per decoder layer: cached while decoding
    step = decoder_linear - 2 * cross_kv + head + 2 * scores * seq + 2 * scores * seq
    assert a.flops.decode_step == step


def test_the_kv_cache_holds_self_and_cross_keys_and_values(write_spec):
    a = analyze(load_model(str(write_spec(TINY))), seq=20, dtype="bf16")
    per_token = 2 * (2 * INNER * 2) * 2  # 2 decoder layers × (K, V of 8 each, 2 bytes) × (self, cross)
    assert a.memory.kv_cache_bytes_per_token == per_token
    assert a.memory.kv_cache_bytes == per_token * 20


def test_the_conventions_say_what_the_unit_is(write_spec):
    res = CliRunner().invoke(cli, ["analyze", str(write_spec(TINY))], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "encoder-decoder: per (source, target) token pair" in " ".join(res.output.split())  # unwrapped
    assert "encoder_decoder" in analyze(load_model(str(write_spec(TINY)))).conventions
    assert "encoder_decoder" not in analyze(load_model("mixtral-8x7b")).conventions


@pytest.mark.parametrize(
    "args",
    [
        ["smoke-run", "{spec}"],
        ["plan", "{spec}"],
        ["roofline", "{spec}"],
        ["sweep", "{spec}", "--grid", "moe.n_experts=2,4"],
        ["diff", "{spec}", "{spec}"],
        ["analyze", "--verify", "{spec}"],
    ],
    ids=lambda a: " ".join(a[:2]).replace("{spec}", "").strip(),
)
def test_every_command_that_cannot_run_one_refuses_it_by_name(write_spec, tmp_path, args):
    spec = str(write_spec(TINY))
    res = CliRunner().invoke(cli, [a.format(spec=spec, out=tmp_path / "out") for a in args])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "tiny-encdec is an encoder-decoder model (3 encoder and 2 decoder layers)" in text
    assert (
        "moec.build_model, moec.from_hf and moec build take encoder-decoder models; this command does not take one yet"
        in text
    )
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_codegen_renders_it_with_its_own_template_only(write_spec):
    """render_model_source renders an encoder-decoder with moec/codegen/encdec.py (tests/codegen/test_encdec_codegen.py
    compares it with the library); the decoder-only features alone still refuse one by name."""
    from moec.codegen import render_model_source
    from moec.codegen.features import plan_features

    m = load_model(str(write_spec(TINY.replace("kind: relative_bucket, n_buckets: 8, max_distance: 16", "kind: none"))))
    with_bias = load_model(str(write_spec(TINY)))  # relative_bucket positions: named before the positions' kind
    for plan in (m, with_bias):
        src = render_model_source(plan)
        assert "def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor)" in src
        with pytest.raises(ValueError, match="codegen does not support an encoder-decoder model"):
            plan_features(plan, list(plan.layers))


def test_export_hf_says_why_switch_transformers_cannot_express_it(write_spec):
    from moec.errors import SpecError
    from moec.hf.config import export_hf_config

    # switch_transformers exports encoder-decoder specs (tests/hf/families/test_switch_transformers.py); TINY's
    # head is not scaled by d_model^-0.5 as Switch's tied head is
    with pytest.raises(SpecError, match="switch_transformers: scales the tied output by d_model\\^-0.5"):
        export_hf_config(load_model(str(write_spec(TINY))))


def test_export_hf_writes_the_shipped_switch_spec_as_a_config_transformers_builds_to_its_count(tmp_path):
    import json

    import torch
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    out = tmp_path / "config.json"
    res = CliRunner().invoke(cli, ["export-hf", "switch-base-8-encdec", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cfg = json.loads(out.read_text())
    assert cfg["model_type"] == "switch_transformers"
    with torch.device("meta"):
        hf = SwitchTransformersForConditionalGeneration(SwitchTransformersConfig(**cfg))
    assert sum(p.numel() for p in hf.parameters()) == analyze(load_model("switch-base-8-encdec")).params.total


def test_export_hf_through_the_cli_says_why_no_family_expresses_tiny(write_spec):
    res = CliRunner().invoke(cli, ["export-hf", str(write_spec(TINY))])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "switch_transformers: scales the tied output by d_model^-0.5" in " ".join(res.output.split())


def test_layer_rows_say_which_stack_they_are_in(write_spec):
    rows = analyze(load_model(str(write_spec(TINY)))).layers
    assert [(r.index, r.attention, r.ffn) for r in rows] == [
        (0, "gqa (encoder)", "dense"),
        (1, "gqa (encoder)", "moe"),
        (2, "gqa (encoder)", "dense"),
        (0, "gqa + cross", "dense"),
        (1, "gqa + cross", "moe"),
    ]
    assert [r.params for r in rows[3:]] == [2 * ATTN + 3 * D + FFN + H * BUCKETS, 2 * ATTN + 3 * D + ROUTER + E * FFN]
