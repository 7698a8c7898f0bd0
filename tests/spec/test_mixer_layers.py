"""Layers choose their token mixer (docs/mixers.md): the pattern resolves layer by layer, every problem is
located, and the plan round-trips through spec.resolved.yaml."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.spec import load_spec, plan_from_dict, resolve
from moec.spec.plan import AbsentPlan

# 8 layers: a short convolution everywhere, full attention on every 4th from layer 3 (3 and 7), layer 5 an
# FFN-only layer, layer 6 a mixer-only one
HYBRID = """\
moec: 1
name: t
model: {vocab_size: 64, d_model: 32, n_layers: 8, max_seq_len: 64}
attention: {n_heads: 4, n_kv_heads: 2}
mixers:
  short_conv: {kernel: 4}
ffn: {d_ff: 48}
layers:
  default: {mixer: short_conv}
  overrides:
    - select: {every: 4, start: 3}
      mixer: attention
    - select: [5]
      mixer: none
    - select: [6]
      ffn: none
"""


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as ei:
        resolve(load_spec("x.yaml", text=text))
    return [str(p) for p in ei.value.problems]


def test_each_layer_gets_the_mixer_and_ffn_its_pattern_names():
    plan = resolve(load_spec("x.yaml", text=HYBRID))
    kinds = [lp.mixer_kind for lp in plan.layers]
    assert kinds == ["short_conv"] * 3 + ["attention", "short_conv", "none", "short_conv", "attention"]
    assert [lp.ffn.kind for lp in plan.layers] == ["dense"] * 6 + ["none", "dense"]
    assert plan.layers[0].mixer.kernel == 4 and isinstance(plan.layers[5].mixer, AbsentPlan)
    assert plan.hybrid and [lp.has_attention for lp in plan.layers].count(True) == 2


def test_the_plan_round_trips_through_plain_data():
    plan = resolve(load_spec("x.yaml", text=HYBRID))
    assert plan_from_dict(plan.to_dict()) == plan


def test_an_attention_only_spec_is_not_hybrid_and_says_nothing_of_mixers():
    text = HYBRID.split("mixers:")[0] + "ffn: {d_ff: 48}\n"
    plan = resolve(load_spec("x.yaml", text=text))
    assert not plan.hybrid and all(lp.mixer is None and lp.mixer_kind == "attention" for lp in plan.layers)


def test_a_mixer_without_its_section_is_reported_where_it_is_chosen():
    text = HYBRID.replace("mixers:\n  short_conv: {kernel: 4}\n", "")
    assert errors(text) == [
        "x.yaml:7:20 layers.default.mixer: layers 0-2, 4, 6 use mixer short_conv but the spec has no "
        "mixers.short_conv section"
    ]


def test_a_section_no_layer_uses_is_an_error():
    text = HYBRID.replace("default: {mixer: short_conv}", "default: {mixer: attention}")
    assert errors(text) == [
        "x.yaml:6:15 mixers.short_conv: mixers.short_conv is given but no layer's mixer is short_conv (layers.*.mixer)"
    ]


def test_a_layer_with_neither_mixer_nor_ffn_is_an_error():
    text = HYBRID.replace("    - select: [6]\n      ffn: none\n", "    - select: [5]\n      ffn: none\n")
    assert errors(text) == ["x.yaml:9:3 layers: layer 5 has neither a token mixer nor an FFN (mixer: none, ffn: none)"]


def test_an_unknown_mixer_names_the_choices():
    (msg,) = errors(HYBRID.replace("{mixer: short_conv}", "{mixer: mamba3}"))
    assert msg.startswith("x.yaml:9:20 layers.default.mixer: 'mamba3': input should be 'attention', ")
    assert "'short_conv' or 'none'" in msg


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (
            ("model: {", "model: {residual_scales: {ffn: {alpha: 2.0}}, "),
            "model.residual_scales",
            "only meaningful with model.norm.placement: normed_residual",
        ),
        (
            ("model: {", "model: {norm: {kind: layernorm, unit_offset: true}, "),
            "model.norm.unit_offset",
            "a unit-offset weight is supported on rmsnorm",
        ),
        (
            ("model: {", "model: {norm: {placement: normed_residual}, residual_multiplier: 2.0, "),
            "model.residual_multiplier",
            "normed_residual scales its branches with model.residual_scales",
        ),
        (
            ("ffn: {d_ff: 48}", "ffn: {d_ff: 48}\nmtp: {n_layers: 1, ffn: dense}"),
            "mtp",
            "MTP blocks are supported in attention-only models",
        ),
    ],
)
def test_block_options_that_do_not_apply_are_refused_by_name(change, where, message):
    (msg,) = errors(HYBRID.replace(*change))
    assert f" {where}: {message}" in msg


def test_an_mtp_block_cannot_drop_its_ffn():
    (msg,) = errors(HYBRID.replace("ffn: {d_ff: 48}", "ffn: {d_ff: 48}\nmtp: {n_layers: 1, ffn: none}"))
    assert "mtp.ffn: 'none': input should be 'dense' or 'moe'" in msg


def test_attention_settings_on_layers_without_attention_are_refused_where_written():
    """A window on the short-convolution layers would be dropped silently; on a selection that holds an attention
    layer (3) it applies there and is fine."""
    ignored = HYBRID.replace(
        "    - select: [5]\n", "    - {select: [0, 1], attention: {window: 8}}\n    - select: [5]\n"
    )
    assert errors(ignored) == [
        "x.yaml:13:35 layers.overrides[1].attention: layers 0-1 have no attention (mixer short_conv), so these "
        "settings would apply to none"
    ]
    applied = HYBRID.replace(
        "    - select: [5]\n", "    - {select: [2, 3], attention: {window: 8}}\n    - select: [5]\n"
    )
    windows = [lp.attention.window for lp in resolve(load_spec("x.yaml", text=applied)).layers if lp.has_attention]
    assert windows == [8, None]  # layers 3 and 7
    only_mixers = HYBRID.replace("      mixer: attention\n", "      mixer: short_conv\n").replace(
        "default: {mixer: short_conv}", "default: {mixer: short_conv, attention: {rope: false}}"
    )
    assert errors(only_mixers) == [
        "x.yaml:9:43 layers.default.attention: no layer's mixer is attention, so these settings would apply to none"
    ]


def test_a_model_whose_every_layer_lacks_a_token_mixer_is_warned_about():
    """Valid (each layer still has its FFN), but no position sees another: a warning at layers, not an error."""
    text = HYBRID.split("mixers:")[0] + "ffn: {d_ff: 48}\nlayers: {default: {mixer: none}}\n"
    warnings = [str(w) for w in load_spec("x.yaml", text=text).warnings]
    assert warnings == [
        "x.yaml:6:1 layers: no layer has a token mixer (every layers.*.mixer is none): no position sees another"
    ]
    assert not load_spec("x.yaml", text=HYBRID).warnings  # layer 5 alone without one is Nemotron-H's pattern


def test_residual_factors_for_a_sublayer_no_layer_has_are_warned_about():
    """MiniMax's factors for the lightning layers, written in a model without any: valid, but they apply to none."""
    text = HYBRID.split("mixers:")[0].replace(
        "model: {", "model: {norm: {placement: normed_residual}, residual_scales: {mixer: {alpha: 2.0}}, "
    )
    warnings = [str(w) for w in load_spec("x.yaml", text=text + "ffn: {d_ff: 48}\n").warnings]
    assert warnings == [
        "x.yaml:3:63 model.residual_scales.mixer: no layer has a token mixer besides attention: these factors apply "
        "to none"
    ]
