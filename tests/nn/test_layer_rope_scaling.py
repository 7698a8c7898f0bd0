"""A layer's own RoPE scaling (layers.*.attention.rope_scaling: Laguna XS 2.1 and Mellum 2.1 scale their full
layers by YaRN and their sliding ones not at all): each layer rotates with the tables of a model whose one scaling
is that layer's, the cached decode too; it counts nothing; it is validated where written, as the model's is, and
refused where a layer cannot have it; the code generator names it. (Against transformers' own per-type tables:
tests/hf/families/test_laguna.py and test_mellum.py.)"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moec.analyze.report import analyze  # noqa: E402
from moec.codegen.render import render_model_source  # noqa: E402
from moec.errors import SpecError  # noqa: E402
from moec.nn import build_model  # noqa: E402
from moec.nn.model import rotary_table  # noqa: E402
from moec.spec import load_spec, resolve  # noqa: E402
from moec.spec.plan import plan_from_dict  # noqa: E402
from tests.nn._decode import decoded  # noqa: E402

YARN = "{kind: yarn, factor: 4.0, original_max_seq_len: 16, beta_fast: 8.0}"
SPEC = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 2, max_seq_len: 64, positions: {kind: rope, theta: 10000.0SCALING}}
attention: {n_heads: 4, n_kv_heads: 2, head_dim: 8ATTN}
ffn: {d_ff: 24}
LAYERS
"""


def plan_of(scaling: str = "", layers: str = "", attn: str = ""):  # type: ignore[no-untyped-def]
    text = SPEC.replace("SCALING", f", scaling: {scaling}" if scaling else "").replace("ATTN", attn)
    return resolve(load_spec("t.yaml", text=text.replace("LAYERS", layers)))


def tables(plan, S: int = 40) -> list[tuple]:  # type: ignore[no-untyped-def]
    """The (cos, sin) each layer of the built model rotates with, over S positions."""
    m = build_model(plan, device="meta")
    ropes = {None: m.rotary} | m.layer_rotary
    return [ropes[rotary_table(lp.attention)](S, "cpu", torch.float64) for lp in plan.layers]


def own(layer: int, scaling: str) -> str:
    return f"layers: {{overrides: [{{select: [{layer}], attention: {{rope_scaling: {scaling}}}}}]}}"


@pytest.mark.parametrize(
    ("model", "layer1", "want"),
    [
        (YARN, "null", ["yarn", "none"]),  # Laguna XS 2.1's sliding layers: no scaling of their own
        ("", YARN, ["none", "yarn"]),
        (YARN, "{kind: linear, factor: 2.0}", ["yarn", "linear"]),
    ],
)
def test_each_layer_rotates_with_the_tables_of_its_own_scaling(model, layer1, want):
    whole = {
        "none": tables(plan_of())[0],
        "yarn": tables(plan_of(YARN))[0],
        "linear": tables(plan_of("{kind: linear, factor: 2.0}"))[0],
    }
    got = tables(plan_of(model, own(1, layer1)))
    for layer, kind in enumerate(want):
        for t, w in zip(got[layer], whole[kind], strict=True):  # cos, then sin: (S, rot)
            torch.testing.assert_close(t, w, rtol=0, atol=0)
    assert not torch.equal(whole["none"][0], whole["yarn"][0])  # the scalings differ at all


def test_the_cached_decode_reads_each_layers_own_tables():
    model = build_model(plan_of(YARN, own(1, "null")), dtype=torch.float64, seed=0)
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)[0]
    torch.testing.assert_close(decoded(model, ids, [1] * 20), full, rtol=1e-10, atol=1e-10)


def test_a_layers_own_scaling_counts_nothing_and_survives_the_resolved_plan():
    plan = plan_of(YARN, own(1, "null"))
    assert (analyze(plan).params, analyze(plan).flops) == (analyze(plan_of()).params, analyze(plan_of()).flops)
    assert plan_from_dict(plan.to_dict()) == plan


MLA = """\
name: t
model: {vocab_size: 64, d_model: 16, n_layers: 2, max_seq_len: 64}
attention: {kind: mla, n_heads: 2, kv_lora_rank: 8, qk_nope_head_dim: 4, qk_rope_head_dim: 4, v_head_dim: 4}
ffn: {d_ff: 24}
layers: {default: {attention: {rope_scaling: null}}}
"""


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (MLA, "layers.default.attention.rope_scaling", "needs attention.kind gqa"),
        (
            SPEC.replace("SCALING", "").replace("ATTN", "").replace("LAYERS", own(1, "{kind: dynamic, factor: 2.0}")),
            "layers.overrides[0].attention.rope_scaling.kind",
            "depend on the live sequence length",
        ),
        (  # the model's checks, where the layer writes it
            SPEC.replace("SCALING", "").replace("ATTN", "").replace("LAYERS", own(0, "{kind: yarn, factor: 4.0}")),
            "layers.overrides[0].attention.rope_scaling.original_max_seq_len",
            "needs original_max_seq_len",
        ),
    ],
)
def test_a_layer_scaling_it_cannot_have_is_refused_where_written(text, path, message):
    with pytest.raises(SpecError) as e:
        resolve(load_spec("t.yaml", text=text))
    assert any(p.path == path and message in p.message and p.line > 0 for p in e.value.problems), e.value.problems


NTK = "{kind: ntk_alpha, alpha: 2.0}"  # its base stretch's exponent is dim / (dim - 2): no 2-dim rotation


@pytest.mark.parametrize(
    ("scaling", "layers", "path"),
    [
        ("", f"overrides: [{{select: [1], attention: {{rotary_dim: 2, rope_scaling: {NTK}}}}}]", "layers.overrides[0]"),
        # a layer's own rotary_dim, in another section than the scaling that reaches it
        (NTK, "overrides: [{select: [1], attention: {rotary_dim: 2}}]", "model.positions.scaling"),
        ("", f"default: {{attention: {{rope_scaling: {NTK}}}}}, overrides: [{{select: [0], attention: {{rotary_dim: 2}}}}]",
         "layers.default"),
    ],
)  # fmt: skip
def test_a_scaling_is_checked_against_the_rotated_dims_of_the_layers_it_scales(scaling, layers, path):
    """Checked against the model's rotated dims alone, these loaded, and the layer's tables divided by zero."""
    with pytest.raises(SpecError) as e:
        plan_of(scaling, f"layers: {{{layers}}}")
    where = path if path.startswith("model") else f"{path}.attention.rope_scaling"
    assert [(p.path, p.message) for p in e.value.problems] == [
        (f"{where}.kind", "ntk_alpha scaling needs more than 2 rotated dims per head")
    ]
    # the same scaling on the layer of 8 rotated dims only loads and builds
    fine = f"layers: {{overrides: [{{select: [0], attention: {{rotary_dim: 2}}}}, {{select: [1], attention: {{rope_scaling: {NTK}}}}}]}}"
    assert len(tables(plan_of("", fine))) == 2


def test_the_code_generator_refuses_it_by_name():
    with pytest.raises(ValueError, match="codegen does not support a layer's own rope scaling"):
        render_model_source(plan_of(YARN, own(1, "null")))


def test_the_models_scaling_is_checked_against_the_mtp_blocks_too():
    # the layers rotate 8 dims of their own; an MTP block rotates the model's 2, with the model's scaling
    text = (
        SPEC.replace("SCALING", f", rotary_dim: 2, scaling: {NTK}")
        .replace("ATTN", "")
        .replace("LAYERS", "layers: {default: {attention: {rotary_dim: 8}}}\nmtp: {n_layers: 1, ffn: dense}")
    )
    with pytest.raises(SpecError) as e:
        resolve(load_spec("t.yaml", text=text))
    assert [p.path for p in e.value.problems] == ["model.positions.scaling.kind"]
    assert len(tables(resolve(load_spec("t.yaml", text=text.replace("mtp: {n_layers: 1, ffn: dense}", ""))))) == 2


def test_longrope_factors_are_counted_against_every_width_they_scale():
    # one factor per rotated frequency: 4 for the model's 8 dims, which layer 1's own 4 dims cannot take (its tables'
    # 2 frequencies against 4 factors: the forward failed on the shapes)
    longrope = ("{kind: longrope, factor: 4.0, original_max_seq_len: 16, short_factor: [1.0, 1.5, 2.0, 2.5], "
                "long_factor: [2.0, 3.0, 4.0, 5.0], short_mscale: 1.0, long_mscale: 1.2}")  # fmt: skip
    with pytest.raises(SpecError) as e:
        plan_of(longrope, "layers: {overrides: [{select: [1], attention: {rotary_dim: 4}}]}")
    assert [(p.path, p.message) for p in e.value.problems] == [
        (f"model.positions.scaling.{f}", "needs rotary dim / 2 = 2 values, got 4")
        for f in ("short_factor", "long_factor")
    ]
    assert len(tables(plan_of(longrope, "layers: {overrides: [{select: [1], attention: {rotary_dim: 8}}]}"))) == 2
