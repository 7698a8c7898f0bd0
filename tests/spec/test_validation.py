"""Bad specs give every problem at once, each with file:line:column and the field path."""

from __future__ import annotations

import pytest

from moec.errors import SpecError
from moec.spec import load_spec, resolve

GOOD = """\
moec: 1
name: t
model:
  vocab_size: 1000
  d_model: 64
  n_layers: 4
  max_seq_len: 512
attention:
  n_heads: 8
  n_kv_heads: 2
moe:
  n_experts: 8
  d_ff: 32
  router:
    top_k: 2
layers:
  default: {ffn: moe}
"""


def errors(text: str, sets: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as ei:
        load_spec("x.yaml", text=text, sets=sets)
    return [str(p) for p in ei.value.problems]


def test_good_spec_loads():
    m = resolve(load_spec("x.yaml", text=GOOD))
    assert m.n_layers == 4 and m.layers[0].ffn.top_k == 2


def test_top_k_above_experts_is_rejected_with_location():
    errs = errors(GOOD.replace("top_k: 2", "top_k: 9"))
    assert errs == ["x.yaml:15:12 moe.router.top_k: 9 exceeds moe.n_experts (8)"]


def test_every_problem_is_reported_not_just_the_first():
    bad = (
        GOOD.replace("top_k: 2", "top_k: 9")
        .replace("n_kv_heads: 2", "n_kv_heads: 3")
        .replace("d_model: 64", "d_model: 60")
    )
    errs = errors(bad)
    assert any("moe.router.top_k: 9 exceeds" in e for e in errs)
    assert any("attention.n_kv_heads" in e and "not divisible" in e for e in errs)
    assert any("d_model (60) is not divisible by n_heads (8)" in e for e in errs)
    assert all(e.startswith("x.yaml:") for e in errs)


def test_unknown_key_is_an_error_with_did_you_mean():
    errs = errors(GOOD.replace("    top_k: 2", "    top_k: 2\n    normalise_topk: true"))
    assert errs == [
        "x.yaml:16:5 moe.router.normalise_topk: unknown field 'normalise_topk'; did you mean 'normalize_topk'?"
    ]


def test_wrong_types_are_rejected_not_coerced():
    errs = errors(GOOD.replace("n_layers: 4", 'n_layers: "4"'))
    assert len(errs) == 1 and errs[0].startswith("x.yaml:6:13 model.n_layers: '4'")


@pytest.mark.parametrize(
    "old, new, expect",
    [
        ("n_layers: 4", "n_layers: 1000000000000", "model.n_layers"),
        ("d_model: 64", "d_model: -64", "model.d_model"),
        ("d_ff: 32", "d_ff: 0", "moe.d_ff"),
        ("max_seq_len: 512", "max_seq_len: 512\n  positions: {kind: rope, theta: 0}", "model.positions.theta"),
    ],
)
def test_sizes_are_positive_and_bounded(old: str, new: str, expect: str):
    errs = errors(GOOD.replace(old, new))
    assert any(expect in e for e in errs), errs


@pytest.mark.parametrize(
    "router, expect",
    [
        ("top_k: 2\n    n_groups: 3\n    topk_groups: 1", "3 does not divide the number of experts (8)"),
        ("top_k: 2\n    n_groups: 4\n    topk_groups: 5", "5 exceeds n_groups (4)"),
        ("top_k: 4\n    n_groups: 4\n    topk_groups: 1", "4 experts cannot be reached within 1 groups of 2"),
        ("top_k: 2\n    n_groups: 4", "n_groups and topk_groups go together"),
        ("top_k: 2\n    softmax_after_topk: true\n    score: sigmoid", "only meaningful with score: softmax"),
        ("dense: true\n    top_k: 3", "dense routing gives every expert a weight"),
        ("score: softmax", "router.top_k is required"),
    ],
)
def test_router_semantic_checks(router: str, expect: str):
    errs = errors(GOOD.replace("top_k: 2", router))
    assert any(expect in e for e in errs), errs


def test_override_index_beyond_the_model_is_rejected():
    errs = errors(
        GOOD.replace(
            "default: {ffn: moe}", "default: {ffn: moe}\n  overrides:\n    - {select: [1, 7], attention: {window: 16}}"
        )
    )
    assert errs == ["x.yaml:19:20 layers.overrides[0].select[1]: layer 7 does not exist (model.n_layers is 4)"]


def test_bare_every_n_needs_a_start():
    errs = errors(
        GOOD.replace("default: {ffn: moe}", "default: {ffn: dense}\n  overrides:\n    - {select: {every: 2}, ffn: moe}")
    )
    assert any("explicit start" in e for e in errs)


def test_window_longer_than_the_context_is_rejected():
    errs = errors(GOOD.replace("n_kv_heads: 2", "n_kv_heads: 2\n  window: 4096"))
    assert any("attention.window: 4096 exceeds model.max_seq_len (512)" in e for e in errs)


def test_missing_sections_are_named():
    errs = errors(GOOD.replace("default: {ffn: moe}", "default: {ffn: dense}"))
    assert any("no ffn section" in e for e in errs)
    errs = errors(GOOD.replace("attention:\n  n_heads: 8\n  n_kv_heads: 2\n", ""))
    assert any("attention: required field is missing" in e for e in errs)


def test_mla_requires_its_dims():
    errs = errors(GOOD.replace("n_kv_heads: 2", "kind: mla\n  kv_lora_rank: 16"))
    assert any("needs qk_nope_head_dim" in e for e in errs)


def test_invalid_yaml_points_at_the_line():
    errs = errors(GOOD.replace("  d_model: 64", "  d_model: [64"))
    assert len(errs) == 1 and errs[0].startswith("x.yaml:") and "invalid YAML" in errs[0]


def test_duplicate_keys_are_errors():
    errs = errors(GOOD.replace("  d_model: 64", "  d_model: 64\n  d_model: 128"))
    assert errs == ["x.yaml:6:3 model.d_model: duplicate key"]


def test_yaml_tags_that_construct_objects_are_refused():
    errs = errors(GOOD.replace("name: t", "name: !!python/object/apply:os.system ['echo hi']"))
    assert errs == ["x.yaml:2:7 name: unsupported tag !!python/object/apply:os.system (a spec holds only core YAML)"]


def test_alias_bombs_are_an_error_not_a_hang():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=False)
    )
    errs = errors(bomb)
    assert any("too large" in e for e in errs)


def test_scientific_floats_are_floats():
    m = resolve(load_spec("x.yaml", text=GOOD.replace("max_seq_len: 512", "max_seq_len: 512\n  norm: {eps: 1e-6}")))
    assert m.norm.eps == 1e-6


def test_set_overrides_and_reports_its_own_errors():
    m = resolve(load_spec("x.yaml", text=GOOD, sets=("moe.router.top_k=4", "model.n_layers=2")))
    assert m.layers[0].ffn.top_k == 4 and m.n_layers == 2
    errs = errors(GOOD, sets=("moe.router.top_k=99",))
    assert errs == ["--set moe.router.top_k: 99 exceeds moe.n_experts (8)"]
    errs = errors(GOOD, sets=("moe.router.topk=3",))
    assert errs == ["--set moe.router.topk: unknown field 'topk'; did you mean 'top_k'?"]


def test_extends_deep_merges_and_reports_locations_in_the_right_file(write_spec):
    write_spec(GOOD, "base.yaml")
    child = write_spec("extends: base.yaml\nname: child\nmoe:\n  router:\n    top_k: 12\n", "child.yaml")
    with pytest.raises(SpecError) as ei:
        load_spec(child)
    (p,) = ei.value.problems
    assert p.file.endswith("child.yaml") and p.line == 5 and p.path == "moe.router.top_k"
    child = write_spec("extends: base.yaml\nname: child\nmoe:\n  router:\n    top_k: 1\n", "child.yaml")
    m = resolve(load_spec(child))
    assert m.layers[0].ffn.top_k == 1 and m.layers[0].ffn.n_experts == 8  # merged, not replaced


def test_extends_a_shipped_spec_by_name(write_spec):
    child = write_spec("extends: mixtral-8x7b\nname: mixtral-top1\nmoe:\n  router: {top_k: 1}\n")
    m = resolve(load_spec(child))
    assert m.d_model == 4096 and m.layers[0].ffn.top_k == 1


def test_extends_cycles_and_missing_bases_are_errors(write_spec):
    write_spec("extends: b.yaml\nname: a\n", "a.yaml")
    b = write_spec("extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(SpecError, match="cycle"):
        load_spec(b)
    c = write_spec("extends: nowhere.yaml\nname: c\n", "c.yaml")
    with pytest.raises(SpecError, match="no spec named or at 'nowhere.yaml'"):
        load_spec(c)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n", "42\n"])
def test_documents_that_are_not_mappings(text: str):
    with pytest.raises(SpecError):
        load_spec("x.yaml", text=text)


def test_missing_file_is_a_clean_error(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.yaml")


def test_chunk_longer_than_the_context_is_rejected_where_it_is_written():
    errs = errors(GOOD.replace("n_kv_heads: 2", "n_kv_heads: 2\n  chunk: 4096"))
    assert any("x.yaml:11:" in e and "attention.chunk: 4096 exceeds model.max_seq_len (512)" in e for e in errs)
    over = GOOD + "  overrides:\n    - {select: [1], attention: {chunk: 1024}}\n"
    errs = errors(over)
    assert any("x.yaml:19:40 layers.overrides[0].attention.chunk: 1024 exceeds" in e for e in errs)


def test_chunk_qk_norm_and_temperature_resolve_per_layer():
    text = GOOD.replace(
        "n_kv_heads: 2",
        "n_kv_heads: 2\n  chunk: 16\n  qk_norm: true\n  qk_norm_kind: l2\n"
        "  temperature_tuning: {floor_scale: 8192, scale: 0.1}",
    )
    text = text.replace(
        "  default: {ffn: moe}",
        "  default: {ffn: moe, attention: {temperature_tuning: false}}\n"
        "  overrides:\n"
        "    - {select: {every: 2, start: 1}, attention: {rope: false, chunk: null, qk_norm: false,"
        " temperature_tuning: true}}",
    )
    layers = resolve(load_spec("x.yaml", text=text)).layers
    assert [lp.attention.chunk for lp in layers] == [16, None, 16, None]
    assert [lp.attention.qk_norm for lp in layers] == [True, False, True, False]
    assert [lp.attention.temperature_floor_scale for lp in layers] == [None, 8192.0, None, 8192.0]
    assert {lp.attention.qk_norm_kind for lp in layers} == {"l2"}


@pytest.mark.parametrize(
    "attention,expect",
    [
        ("qk_norm: true\n  qk_norm_kind: l2\n  qk_norm_scope: projection", "needs qk_norm_scope head"),
        ("qk_norm_kind: l2", "only meaningful with qk_norm"),
        ("chunk: 0", "greater than 0"),
        ("temperature_tuning: {floor_scale: 0, scale: 0.1}", "greater than 0"),
    ],
)
def test_new_attention_fields_are_checked(attention: str, expect: str):
    errs = errors(GOOD.replace("n_kv_heads: 2", "n_kv_heads: 2\n  " + attention))
    assert any(expect in e for e in errs), errs


def test_a_layer_turning_on_temperature_tuning_needs_its_parameters():
    errs = errors(GOOD + "  overrides:\n    - {select: [1], attention: {temperature_tuning: true}}\n")
    assert any("attention.temperature_tuning" in e and "has none" in e for e in errs)


def test_input_gating_is_refused_with_lora_experts():
    text = GOOD.replace("    top_k: 2", "    top_k: 2\n    apply_to: input").replace(
        "  d_ff: 32", "  d_ff: 32\n  expert_kind: lora\n  lora: {rank: 4}"
    )
    errs = errors(text)
    assert any("moe.router.apply_to" in e and "lora" in e for e in errs)


LONGROPE = (
    "  positions:\n    kind: rope\n    scaling: {kind: longrope, factor: 4.0, original_max_seq_len: 128,"
    " short_factor: [1.0, 1.0, 1.0, 1.0], long_factor: [1.0, 2.0, 3.0, 4.0], short_mscale: 1.2, long_mscale: 1.2}\n"
)


def test_longrope_resolves_with_its_factor_lists():
    text = GOOD.replace("  max_seq_len: 512\n", "  max_seq_len: 512\n" + LONGROPE)
    sc = resolve(load_spec("x.yaml", text=text)).positions.scaling
    assert sc.kind == "longrope" and sc.long_factor == (1.0, 2.0, 3.0, 4.0) and sc.short_mscale == 1.2


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("long_factor: [1.0, 2.0, 3.0, 4.0]", "long_factor: [1.0, 2.0]", "needs rotary dim / 2 = 4 values, got 2"),
        (", long_mscale: 1.2", "", "longrope scaling needs long_mscale"),
        ("original_max_seq_len: 128,", "", "longrope scaling needs original_max_seq_len"),
        ("kind: longrope", "kind: linear", "only meaningful with kind: longrope"),
    ],
)
def test_longrope_fields_are_checked(old: str, new: str, expect: str):
    text = GOOD.replace("  max_seq_len: 512\n", "  max_seq_len: 512\n" + LONGROPE.replace(old, new))
    assert any(expect in e for e in errors(text)), errors(text)


@pytest.mark.parametrize(
    "router,expect",
    [
        ("{top_k: 2, kind: sparsemixer, sparsemixer_eps: 0.01}", None),
        ("{top_k: 1, kind: sparsemixer}", "SparseMixer routes exactly top_k: 2"),
        ("{top_k: 2, kind: sparsemixer, normalize_topk: true}", "its own masked softmax"),
        ("{top_k: 2, sparsemixer_eps: 0.01}", "only meaningful with kind: sparsemixer"),
    ],
)
def test_sparsemixer_router_is_checked(router: str, expect: str | None):
    text = GOOD.replace("  router:\n    top_k: 2", f"  router: {router}")
    if expect is None:
        assert resolve(load_spec("x.yaml", text=text)).layers[0].ffn.router.kind == "sparsemixer"
    else:
        assert any("moe.router" in e and expect in e for e in errors(text)), errors(text)


def test_set_values_follow_the_yaml_rules_of_a_spec_and_their_problems_name_the_option():
    assert resolve(load_spec("x.yaml", text=GOOD, sets=("model.n_layers=010",))).n_layers == 10  # not octal 8
    assert errors(GOOD, sets=("model.n_layers=[",)) == [
        "--set model.n_layers: invalid YAML: did not find expected node content"
    ]
    assert errors(GOOD, sets=("model.n_layers=&a [*a]",)) == [
        "--set model.n_layers: alias *a refers to a node that contains it (recursive)"
    ]
    assert errors(GOOD, sets=("model.a\nb=1",)) == ["--set 'model.a\\nb': empty or unprintable field name"]
    assert errors(GOOD, sets=("extends=mixtral-8x7b",)) == [
        "--set extends: extends is read before --set applies; write it in the spec"
    ]


def test_a_file_that_is_not_a_spec_yaml_is_refused_as_an_extends_target_without_reading_it(write_spec):
    write_spec("secret: SECRET\n", "notes.txt")
    child = write_spec("extends: ./notes.txt\nname: c\n", "c.yaml")
    with pytest.raises(SpecError) as ei:
        load_spec(child)
    (p,) = ei.value.problems
    assert (p.line, p.column, p.path) == (1, 10, "extends") and "SECRET" not in str(p)
    assert "a .yaml/.yml file in this spec's folder" in p.message


def test_an_empty_document_is_not_a_spec():
    with pytest.raises(SpecError) as ei:
        load_spec("x.yaml", text="# only a comment\n")
    assert [str(p) for p in ei.value.problems] == ["x.yaml:1:1 a spec must be a YAML mapping, not an empty document"]


@pytest.mark.parametrize(
    "extra, path",
    [
        ("  overrides: [" + ", ".join(["{select: [0], ffn: moe}"] * 1025) + "]", "layers.overrides"),
        ("  overrides: [{select: [4096], ffn: moe}]", "layers.overrides[0].select.layers[0]"),
        ("  overrides: [{select: {every: 5000, start: 0}, ffn: moe}]", "layers.overrides[0].select.every"),
    ],
)
def test_lists_and_layer_indices_are_bounded_in_the_schema(extra: str, path: str):
    errs = errors(GOOD + extra + "\n")
    assert len(errs) == 1 and f" {path}: " in errs[0], errs


@pytest.mark.parametrize("ref", ["n" + "9" * 5000, "a/" + "9" * 5000 + ".yaml", "9" * 300 + ".yaml", '"x\\0y.yaml"'])
def test_extends_names_the_file_system_cannot_take_are_located(ref: str):
    """Found by the fuzz campaign: a 5,000-character name made the file system raise ENAMETOOLONG."""
    with pytest.raises(SpecError) as ei:
        load_spec("x.yaml", text=f"extends: {ref}\nname: x\n")
    assert [(p.line, p.column, p.path) for p in ei.value.problems] == [(1, 10, "extends")]


@pytest.mark.parametrize("key", ["none", "int", "Select", "constrained-int", "list[int]"])
def test_keys_spelt_like_pydantic_union_members_are_still_unknown_fields(key: str):
    """Found by the fuzz suite: a top-level ``none:`` lost its name with pydantic's union member names."""
    (err,) = errors(GOOD + f"{key}: 1\n")
    assert err.startswith(f"x.yaml:18:1 {key}: unknown field {key!r}"), err
    assert errors(GOOD.replace("  max_seq_len: 512\n", f"  max_seq_len: 512\n  {key}: 1\n"))[0].startswith(
        f"x.yaml:8:3 model.{key}: unknown field {key!r}"
    )
