"""Spec fields for the 2025–26 MoE releases (issue 11): what each resolves to in the plan, and the located
error each misuse gives. Expected values are worked out by hand from the families' transformers configs."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.spec import load_spec, plan_from_dict, resolve

GQA = """\
moec: 1
name: t
model:
  vocab_size: 100
  d_model: 64
  n_layers: 2
  max_seq_len: 64
  positions: {kind: rope}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 16}
ffn: {d_ff: 32}
"""
MLA = """\
moec: 1
name: t
model: {vocab_size: 100, d_model: 64, n_layers: 2, max_seq_len: 64}
attention: {kind: mla, n_heads: 4, kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8}
ffn: {d_ff: 32}
"""


def test_the_cli_reports_each_misused_new_field_located_with_exit_2(tmp_path):
    from click.testing import CliRunner

    from moec.cli import cli

    text = GQA.replace("positions: {kind: rope}", "positions: {kind: rope, rotary_dim: 5}").replace(
        "head_dim: 16}", "head_dim: 16, latent_norm_eps: 1.0e-6}"
    )
    (tmp_path / "t.yaml").write_text(text)
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "t.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 2, result.output
    assert lines[0].endswith(
        f"{located(text, 8, '5}')[len('t.yaml') :]} model.positions.rotary_dim: rotary positions "
        "need an even number (≥ 2) of rotated dims; got 5"
    )
    assert lines[1].endswith(
        f"{located(text, 9, '1.0e-6')[len('t.yaml') :]} attention.latent_norm_eps: only "
        "meaningful with attention.kind: mla"
    )


def plan(text: str = GQA, *sets: str):
    return resolve(load_spec("t.yaml", text=text, sets=sets))


def errors(text: str, *sets: str) -> list[str]:
    with pytest.raises(SpecError) as ei:
        load_spec("t.yaml", text=text, sets=sets)
    return [str(p) for p in ei.value.problems]


# --- partial rotary ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head_dim,setting,rotary_dim",
    [
        (16, "rotary_dim=6", 6),
        (128, "partial_rotary_factor=0.5", 64),  # GLM-4.5-Air: head_dim 128, factor 0.5
        (192, "partial_rotary_factor=0.334", 64),  # MiMo-V2-Flash: int(192 · 0.334) = int(64.128)
        (128, "partial_rotary_factor=1.0", 128),
    ],
)
def test_partial_rotary_resolves_to_the_rotated_dims(head_dim, setting, rotary_dim):
    p = plan(GQA, f"attention.head_dim={head_dim}", f"model.positions.{setting}")
    assert p.positions.rotary_dim == rotary_dim
    assert p.rope_dim == rotary_dim
    assert plan_from_dict(p.to_dict()) == p  # survives spec.resolved.yaml


def test_without_partial_rotary_the_whole_head_rotates_and_the_plan_is_unchanged():
    p = plan()
    assert p.positions.rotary_dim is None and p.rope_dim == 16
    assert "rotary_dim" not in load_spec("t.yaml", text=GQA).spec.model.positions.model_fields_set


def with_positions(extra: str, text: str = GQA) -> str:
    """The spec with more keys in model.positions (so errors point into the file)."""
    return text.replace("positions: {kind: rope}", "positions: {kind: rope, " + extra + "}")


def test_an_odd_head_dim_may_rotate_an_even_part():
    assert plan(with_positions("rotary_dim: 4"), "attention.head_dim=9").rope_dim == 4
    assert errors(GQA, "attention.head_dim=9") == [
        "--set attention.head_dim: rotary positions need an even head_dim, got 9"
    ]


def test_a_factor_that_truncates_to_an_even_width_loads():
    assert plan(with_positions("partial_rotary_factor: 0.3")).rope_dim == 4  # int(16 · 0.3) = int(4.8)


def located(text: str, line_no: int, value: str) -> str:
    """file:line:column of ``value`` (the first on that line): where the error must point."""
    return f"t.yaml:{line_no}:{text.splitlines()[line_no - 1].index(value) + 1}"


@pytest.mark.parametrize(
    "extra,at,message",
    [
        ("rotary_dim: 18", "18", "model.positions.rotary_dim: 18 rotated dims exceed the head dim (16)"),
        ("rotary_dim: 5", "5", "model.positions.rotary_dim: rotary positions need an even number (≥ 2) of rotated "
         "dims; got 5"),
        ("partial_rotary_factor: 0.45", "0.45", "model.positions.partial_rotary_factor: rotary positions need an "
         "even number (≥ 2) of rotated dims; head_dim 16 × 0.45 gives 7"),
        ("partial_rotary_factor: 0.05", "0.05", "model.positions.partial_rotary_factor: rotary positions need an "
         "even number (≥ 2) of rotated dims; head_dim 16 × 0.05 gives 0"),
        ("rotary_dim: 8, partial_rotary_factor: 0.5", "0.5", "model.positions.partial_rotary_factor: give "
         "rotary_dim or partial_rotary_factor, not both"),
        ("partial_rotary_factor: 1.5", "1.5", "model.positions.partial_rotary_factor: 1.5: input should be less "
         "than or equal to 1"),
        ("rotary_dim: 2, scaling: {kind: dynamic, factor: 2.0}", "dynamic", "model.positions.scaling.kind: dynamic "
         "scaling needs more than 2 rotated dims per head"),
    ],
)  # fmt: skip
def test_partial_rotary_misuse_is_located(extra, at, message):
    text = with_positions(extra)
    assert errors(text) == [f"{located(text, 8, at)} {message}"]


def test_partial_rotary_needs_rope_positions():
    text = with_positions("rotary_dim: 8").replace("kind: rope", "kind: learned")
    assert errors(text) == [f"{located(text, 8, '8}')} model.positions.rotary_dim: only meaningful with kind: rope"]


def test_partial_rotary_with_mla_points_at_qk_rope_head_dim():
    text = MLA.replace("max_seq_len: 64}", "max_seq_len: 64, positions: {rotary_dim: 2}}")
    assert errors(text) == [
        f"{located(text, 3, '2}')} model.positions.rotary_dim: MLA rotates its own qk_rope_head_dim dims; set that instead"
    ]


def test_longrope_factors_count_the_rotated_dims():
    sc = ("scaling: {kind: longrope, factor: 4.0, original_max_seq_len: 16, short_factor: [1, 1], "
          "long_factor: [2, 2], short_mscale: 1.0, long_mscale: 1.1}")  # fmt: skip
    assert plan(with_positions("rotary_dim: 4, " + sc)).rope_dim == 4
    errs = errors(with_positions(sc))
    assert len(errs) == 2 and "short_factor: needs rotary dim / 2 = 8 values, got 2" in errs[0]


# --- MLA latent norm eps -------------------------------------------------------------------------------


def test_latent_norm_eps_reaches_every_mla_layer_and_defaults_to_none():
    written = MLA.replace("v_head_dim: 8}", "v_head_dim: 8, latent_norm_eps: 1.0e-6}")
    assert {lp.attention.latent_norm_eps for lp in plan(written).layers} == {1e-6}
    assert {lp.attention.latent_norm_eps for lp in plan(MLA).layers} == {None}  # the model's eps: unchanged plans


def test_latent_norm_eps_without_mla_is_located():
    text = GQA.replace("head_dim: 16}", "head_dim: 16, latent_norm_eps: 1.0e-6}")
    assert errors(text) == [
        f"{located(text, 9, '1.0e-6')} attention.latent_norm_eps: only meaningful with attention.kind: mla"
    ]


# --- norm placement ------------------------------------------------------------------------------------


@pytest.mark.parametrize("placement,final_norm", [("pre", True), ("post", False), ("after_sublayer", True)])
def test_norm_placement_resolves_and_says_whether_the_stack_ends_with_a_norm(placement, final_norm):
    p = plan(GQA, f"model.norm.placement={placement}")
    assert p.norm.placement == placement and p.norm.final_norm is final_norm


def test_an_unknown_norm_placement_names_the_choices():
    text = GQA.replace("positions: {kind: rope}", "positions: {kind: rope}\n  norm: {placement: peri}")
    (err,) = errors(text)
    assert err.startswith(f"{located(text, 9, 'peri')} model.norm.placement:")
    assert "'pre', 'post', 'after_sublayer', 'normed_residual', 'sandwich' or 'parallel'" in err


# --- logits ----------------------------------------------------------------------------------------------


def test_logit_softcap_resolves_and_defaults_to_off():
    assert plan(GQA, "model.logit_softcap=30.0").logit_softcap == 30.0
    assert plan().logit_softcap is None
    p = plan(GQA, "model.logit_softcap=30.0")
    assert plan_from_dict(p.to_dict()) == p


@pytest.mark.parametrize("value,message", [("0", "input should be greater than 0"), ("-1.5", "greater than 0")])
def test_logit_softcap_must_be_positive(value, message):
    text = GQA.replace("positions: {kind: rope}", f"positions: {{kind: rope}}\n  logit_softcap: {value}")
    (err,) = errors(text)
    assert err.startswith(f"{located(text, 9, value)} model.logit_softcap: {value}: ") and message in err


# --- the selection bias as a parameter ----------------------------------------------------------------------

MOE = (
    GQA
    + """moe:
  n_experts: 8
  d_ff: 16
  router: {top_k: 2, selection_bias: true, selection_bias_parameter: true}
layers: {default: {ffn: moe}}
"""
)


def test_selection_bias_parameter_reaches_the_router_plan():
    r = plan(MOE).layers[0].ffn.router
    assert r.selection_bias and r.selection_bias_parameter
    assert not plan(MOE.replace(", selection_bias_parameter: true", "")).layers[0].ffn.router.selection_bias_parameter


def test_selection_bias_parameter_without_a_selection_bias_is_located():
    text = MOE.replace("selection_bias: true", "selection_bias: false")
    assert errors(text) == [
        f"{located(text, 14, 'true}')} moe.router.selection_bias_parameter: needs router.selection_bias: true "
        "(the bias it stores)"
    ]


# --- per-layer RoPE theta --------------------------------------------------------------------------------


def test_rope_theta_per_layer_follows_the_overrides():
    text = GQA.replace("ffn: {d_ff: 32}", "ffn: {d_ff: 32}\nlayers:\n  default: {attention: {rope_theta: 1.0e6}}\n"
                       "  overrides: [{select: [1], attention: {window: 8, rope_theta: 10000.0}}]")  # fmt: skip
    p = plan(text)
    assert [(lp.attention.rope_theta, lp.attention.window) for lp in p.layers] == [(1e6, None), (1e4, 8)]
    assert p.positions.theta == 10000.0  # the model's own base is untouched (MTP blocks use it)
    assert [lp.attention.rope_theta for lp in plan().layers] == [None, None]
    assert plan_from_dict(p.to_dict()) == p


def test_rope_theta_without_rope_positions_is_located():
    text = (
        GQA.replace("kind: rope}", "kind: learned}")
        + "layers: {overrides: [{select: [1], attention: {rope_theta: 1.0e4}}]}\n"
    )
    assert errors(text) == [
        f"{located(text, 11, '1.0e4')} layers.overrides[0].attention.rope_theta: a layer's rope_theta needs "
        "model.positions.kind: rope"
    ]


# --- NTK with a fixed alpha ----------------------------------------------------------------------------------


def test_ntk_alpha_resolves_without_a_factor():
    sc = plan(with_positions("scaling: {kind: ntk_alpha, alpha: 1000.0}")).positions.scaling
    assert (sc.kind, sc.alpha, sc.factor) == ("ntk_alpha", 1000.0, None)


@pytest.mark.parametrize(
    "scaling,at,message",
    [
        ("{kind: ntk_alpha}", "{kind: ntk", "model.positions.scaling: ntk_alpha scaling needs alpha"),
        ("{kind: ntk_alpha, alpha: 8.0, factor: 1.0}", "1.0}", "model.positions.scaling.factor: ntk_alpha "
         "stretches the base by alpha; it takes no factor"),
        ("{kind: dynamic, factor: 2.0, alpha: 8.0}", "8.0}", "model.positions.scaling.alpha: only meaningful with "
         "kind: ntk_alpha"),
        ("{kind: linear}", "{kind: linear", "model.positions.scaling: linear scaling needs factor"),
    ],
)  # fmt: skip
def test_ntk_alpha_and_factor_misuse_is_located(scaling, at, message):
    text = with_positions(f"scaling: {scaling}")
    assert errors(text) == [f"{located(text, 8, at)} {message}"]


# --- multimodal RoPE -----------------------------------------------------------------------------------------


def test_mrope_sections_resolve_to_a_tuple_and_survive_the_resolved_yaml():
    p = plan(with_positions("mrope_sections: [4, 2, 2], mrope_interleaved: true"))
    assert (p.positions.mrope_sections, p.positions.mrope_interleaved) == ((4, 2, 2), True)
    assert plan_from_dict(p.to_dict()) == p
    assert plan().positions.mrope_sections is None


@pytest.mark.parametrize(
    "extra,at,message",
    [
        ("mrope_sections: [4, 2, 4]", "[4, 2, 4]", "model.positions.mrope_sections: the sections share the 8 rotary "
         "frequencies (rotated dims / 2); they sum to 10"),
        ("rotary_dim: 8, mrope_sections: [4, 2, 2]", "[4, 2, 2]", "model.positions.mrope_sections: the sections "
         "share the 4 rotary frequencies (rotated dims / 2); they sum to 8"),
        ("mrope_interleaved: true", "true", "model.positions.mrope_interleaved: only meaningful with mrope_sections"),
        ("mrope_sections: [4, 4]", "[4, 4]", "model.positions.mrope_sections: [4, 4]: list should have at least 3 "
         "items after validation, not 2"),
    ],
)  # fmt: skip
def test_mrope_misuse_is_located(extra, at, message):
    text = with_positions(extra)
    assert errors(text) == [f"{located(text, 8, at)} {message}"]


# --- q/k norm after the rotation (Hunyuan-A13B) -----------------------------------------------------------


def test_qk_norm_after_rope_reaches_every_layer_and_defaults_to_before():
    written = GQA.replace("head_dim: 16}", "head_dim: 16, qk_norm: true, qk_norm_after_rope: true}")
    assert {lp.attention.qk_norm_after_rope for lp in plan(written).layers} == {True}
    normed = GQA.replace("head_dim: 16}", "head_dim: 16, qk_norm: true}")
    assert {lp.attention.qk_norm_after_rope for lp in plan(normed).layers} == {False}


@pytest.mark.parametrize(
    "extra,message",
    [
        ("qk_norm_after_rope: true", "only meaningful with qk_norm: true (here or in layers.*.attention)"),
        (
            "qk_norm: true, qk_norm_kind: l2, qk_norm_after_rope: true",
            "needs the learned per-head qk-norm (qk_norm_kind model, scope head)",
        ),
    ],
)
def test_qk_norm_after_rope_misuse_is_located(extra, message):
    text = GQA.replace("head_dim: 16}", f"head_dim: 16, {extra}}}")
    assert errors(text) == [f"{located(text, 9, 'true}')} attention.qk_norm_after_rope: {message}"]
