"""Every located spec error names the exact ``file:line:column`` it promises (yamlio's docstring: 1-based,
the start of the node). A scalar error points at the value; an unknown key at the key; a section-level error
(a check on a whole mapping, a missing field) at the first character of that section's value — its first
key in block style, its ``{`` in flow style — never at its end. Every expected location below was counted
by hand in the text above it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.errors import SpecError
from moec.spec import load_spec

SPEC = """\
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
# line numbers of SPEC, for reading the cases below:
#  3 model:            9   n_heads: 8        14   router:
#  4   vocab_size: …  10   n_kv_heads: 2     15     top_k: 2
#  5   d_model: 64    11 moe:                16 layers:
#  8 attention:       12   n_experts: 8      17   default: {ffn: moe}


def located(text: str, sets: tuple[str, ...] = (), file: str = "x.yaml") -> list[str]:
    with pytest.raises(SpecError) as ei:
        load_spec(file, text=text, sets=sets)
    return [str(p) for p in ei.value.problems]


def edit(old: str, new: str) -> str:
    assert SPEC.count(old) == 1, old
    return SPEC.replace(old, new)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # scalars: the value's first character
        (edit("top_k: 2", "top_k: 9"), "x.yaml:15:12 moe.router.top_k: 9 exceeds moe.n_experts (8)"),
        (edit("d_model: 64", "d_model: sixty"), "x.yaml:5:12 model.d_model: 'sixty': input should be a valid integer"),
        (
            edit("n_kv_heads: 2", "n_kv_heads: 3"),
            "x.yaml:10:15 attention.n_kv_heads: n_heads (8) is not divisible by n_kv_heads (3)",
        ),
        # a scalar inside a flow mapping
        (
            edit("{ffn: moe}", "{ffn: mo}"),
            "x.yaml:17:18 layers.default.ffn: 'mo': input should be 'dense', 'moe' or 'none'",
        ),
        # an unknown key: the key, not its value
        (edit("  n_kv_heads: 2\n", "  n_kv_heads: 2\n  n_kv: 3\n"), "x.yaml:11:3 attention.n_kv: unknown field 'n_kv'"),
        # a duplicate key: the second occurrence
        (edit("  d_model: 64\n", "  d_model: 64\n  d_model: 128\n"), "x.yaml:6:3 model.d_model: duplicate key"),
    ],
    ids=["check", "type", "divisible", "flow-scalar", "unknown-key", "duplicate"],
)
def test_scalar_and_key_errors_point_at_the_value_or_the_key(text: str, want: str):
    errs = located(text)
    assert len(errs) == 1 and errs[0].startswith(want), errs


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # a check on the whole attention section: its first key, line 9 column 3 (the section ends on line 11)
        (
            edit("n_kv_heads: 2", "kind: mla\n  kv_lora_rank: 16\n  qk_rope_head_dim: 4\n  v_head_dim: 8"),
            ["x.yaml:9:3 attention: attention.kind mla needs qk_nope_head_dim"],
        ),
        # a field missing from a section: the section, not the end of it
        (edit("  n_heads: 8\n", ""), ["x.yaml:9:3 attention.n_heads: required field is missing"]),
        (edit("  d_model: 64\n", ""), ["x.yaml:4:3 model.d_model: required field is missing"]),
        # a nested section: router starts at top_k on line 15, column 5
        (
            edit("top_k: 2", "score: softmax"),
            ["x.yaml:15:5 moe.router: router.top_k is required (or set router.dense: true)"],
        ),
        # a flow-style section starts at its brace
        (
            edit("attention:\n  n_heads: 8\n  n_kv_heads: 2\n", "attention: {n_kv_heads: 2}\n"),
            ["x.yaml:8:12 attention.n_heads: required field is missing"],
        ),
        # a problem with the whole document: its first line
        (
            edit("default: {ffn: moe}", "default: {ffn: dense}"),
            ["x.yaml:1:1 some layers use a dense FFN but the spec has no ffn section"],
        ),
    ],
    ids=["mla-section", "missing-in-block", "missing-first-key", "nested-section", "flow-section", "document"],
)
def test_section_level_errors_point_at_the_start_of_the_section(text: str, want: list[str]):
    assert located(text) == want


def test_a_section_in_the_middle_of_the_file_points_at_its_own_start():
    """A check on a mapping inside moe (an unused lora section, flow style) points at its brace, line 14
    column 9; one on a scalar of the same section at that value."""
    text = edit("  d_ff: 32\n", "  d_ff: 32\n  lora: {rank: 4}\n")
    assert located(text) == ["x.yaml:14:9 moe.lora: only meaningful with expert_kind: lora"]
    text = edit("  n_experts: 8\n", "  n_experts: 8\n  expert_kind: lora\n")
    assert located(text) == ["x.yaml:13:16 moe.expert_kind: lora experts need a moe.lora section (rank, alpha)"]


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ("name: t", "name: !!python/object/apply:os.system ['echo hi']", "x.yaml:2:7 name"),  # on a sequence
        ("model:\n", "model: !!python/object:os.system\n", "x.yaml:3:8 model"),  # on a block mapping
        ("n_heads: 8", "n_heads: !!python/name:os.system 8", "x.yaml:9:12 attention.n_heads"),  # on a scalar
        ("default: {ffn: moe}", "default: !custom {ffn: moe}", "x.yaml:17:12 layers.default"),  # a local tag
    ],
    ids=["sequence", "mapping", "scalar", "local"],
)
def test_tags_are_refused_at_the_tag_whatever_node_carries_them(old: str, new: str, want: str):
    """A spec is data: a tag that would construct an object is an error at the tag, also on a mapping or
    a sequence (whose tags a loader that reads only the children would ignore)."""
    tag = new.split("!", 1)[1].split()[0]
    assert located(edit(old, new)) == [f"{want}: unsupported tag !{tag} (a spec holds only core YAML)"]


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        # the parser stops at the ':' after n_layers, the first token a flow sequence cannot hold
        ("  d_model: 64", "  d_model: [64", "x.yaml:6:11 invalid YAML: did not find expected ',' or ']'"),
        ("n_heads: 8", "n_heads: 8\x07", "x.yaml:9:13 character U+0007 is not allowed in YAML"),  # after '8'
        ("name: t", "name: t\x00x", "x.yaml:2:8 character U+0000 is not allowed in YAML"),
        (
            "  n_layers: 4\n",
            "  n_layers: 4\n\tbad: 1\n",
            "x.yaml:7:1 invalid YAML: found a tab character that violates indentation",
        ),
        (
            "moe:\n",
            "moe:\n  n_experts: 8: 9\n",
            "x.yaml:12:15 invalid YAML: mapping values are not allowed in this context",
        ),
        ("layers:\n", "---\nlayers:\n", "x.yaml:16:1 a spec is one YAML document; this starts a second one"),
    ],
    ids=["unclosed-flow", "bell", "nul", "tab", "second-colon", "second-document"],
)
def test_unreadable_yaml_points_at_the_offending_character(old: str, new: str, want: str):
    assert located(edit(old, new)) == [want]


def test_errors_in_an_extended_spec_point_into_the_file_that_wrote_them(write_spec):
    base = write_spec(SPEC, "base.yaml")
    child = write_spec("extends: base.yaml\nname: child\nmoe:\n  router: {top_k: 12}\n", "child.yaml")
    with pytest.raises(SpecError) as ei:
        load_spec(str(child))
    assert [str(p) for p in ei.value.problems] == [f"{child}:4:19 moe.router.top_k: 12 exceeds moe.n_experts (8)"]
    # the merged attention section is the child's (its brace: line 3, column 12); the n_kv_heads the base
    # wrote inside it keeps its place in the base (line 10, column 15)
    child.write_text("extends: base.yaml\nname: child\nattention: {kind: mla}\n")
    with pytest.raises(SpecError) as ei:
        load_spec(str(child))
    needs = [f"{child}:3:12 attention: attention.kind mla needs {f}" for f in ("kv_lora_rank", "qk_nope_head_dim")]
    needs += [f"{child}:3:12 attention: attention.kind mla needs {f}" for f in ("qk_rope_head_dim", "v_head_dim")]
    assert [str(p) for p in ei.value.problems] == [
        f"{base}:10:15 attention.n_kv_heads: MLA has no separate KV heads (leave n_kv_heads unset)",
        *needs,
    ]


def test_set_errors_name_the_option_not_a_line():
    assert located(SPEC, sets=("moe.router.top_k=99",)) == ["--set moe.router.top_k: 99 exceeds moe.n_experts (8)"]


def test_the_cli_prints_the_same_location_and_exits_2(write_spec):
    path = write_spec(edit("top_k: 2", "top_k: 9"), "bad.yaml")
    res = CliRunner().invoke(cli, ["validate", str(path)])
    assert res.exit_code == 2
    assert f"{path}:15:12 moe.router.top_k: 9 exceeds moe.n_experts (8)" in res.output
    assert "Traceback" not in res.output
