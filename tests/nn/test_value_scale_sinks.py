"""MiMo-V2-Flash's two attention options against plain oracles (the causal GQA of tests/nn/_gqa.py): the constant on
the values (attention.value_scale) and a layer's own attention sinks (layers.*.attention.sinks); their counts by
hand and their validation, located. (The generated model.py renders both: tests/codegen.)"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moec.analyze.report import analyze  # noqa: E402
from moec.errors import SpecError  # noqa: E402
from moec.spec import load_spec, resolve  # noqa: E402
from tests.nn._decode import decoded  # noqa: E402
from tests.nn._gqa import naive_gqa, perturbed, through_o_proj  # noqa: E402

SPEC = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 2, max_seq_len: 16, positions: {kind: none}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 8ATTN}
ffn: {d_ff: 24}
LAYERS
"""


def plan_of(attn: str = "", layers: str = ""):  # type: ignore[no-untyped-def]
    return resolve(load_spec("t.yaml", text=SPEC.replace("ATTN", attn).replace("LAYERS", layers)))


def test_value_scale_multiplies_the_values_and_counts_nothing():
    plan = plan_of(", value_scale: 0.707")
    att = perturbed(plan).layers[0].attn
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(
        att(x), through_o_proj(att, naive_gqa(att, x, value_scale=0.707)), rtol=1e-12, atol=1e-12
    )
    assert not torch.allclose(att(x), through_o_proj(att, naive_gqa(att, x)))  # the scale is applied, not ignored
    plain = analyze(plan_of())
    assert analyze(plan).params.total == plain.params.total  # a constant, no parameter
    assert analyze(plan).flops == plain.flops  # elementwise: 0 FLOPs by the conventions


def test_value_scale_reaches_the_cached_values():
    model = perturbed(plan_of(", value_scale: 0.5"))
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(2))
    full = model(ids)[0]  # (1, 6, V)
    torch.testing.assert_close(decoded(model, ids, [1] * 6), full, rtol=1e-10, atol=1e-10)


def test_a_layer_turns_sinks_on_for_itself_alone():
    plan = plan_of(layers="layers: {overrides: [{select: [1], attention: {sinks: true}}]}")
    assert [lp.attention.sinks for lp in plan.layers] == [False, True]
    model = perturbed(plan)
    assert model.layers[0].attn.sinks is None
    att = model.layers[1].attn
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(att(x), through_o_proj(att, naive_gqa(att, x, sinks=att.sinks)), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(att(x), through_o_proj(att, naive_gqa(att, x)))  # the sinks take mass
    # one sink logit per query head, on the one layer that has them
    assert analyze(plan).params.total == analyze(plan_of()).params.total + 4


def test_a_layer_turns_the_sections_sinks_off():
    plan = plan_of(", sinks: true", "layers: {overrides: [{select: [0], attention: {sinks: false}}]}")
    assert [lp.attention.sinks for lp in plan.layers] == [False, True]
    assert analyze(plan).params.total == analyze(plan_of()).params.total + 4


MLA = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 1, max_seq_len: 16}
attention: {kind: mla, n_heads: 2, kv_lora_rank: 8, qk_nope_head_dim: 4, qk_rope_head_dim: 4, v_head_dim: 4,
  value_scale: 0.5}
ffn: {d_ff: 24}
"""


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (MLA, "attention.value_scale", "not supported with MLA"),
        (SPEC.replace("ATTN", ", value_scale: 0").replace("LAYERS", ""), "attention.value_scale", "greater than 0"),
        (
            SPEC.replace("ATTN", "").replace("LAYERS", "layers: {default: {attention: {sinks: maybe}}}"),
            "layers.default.attention.sinks",
            "bool",
        ),
    ],
)
def test_bad_values_are_refused_where_written(text, path, message):
    with pytest.raises(SpecError) as e:
        resolve(load_spec("t.yaml", text=text))
    assert any(p.path == path and message in p.message and p.line > 0 for p in e.value.problems), e.value.problems
