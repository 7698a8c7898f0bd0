"""Issue 15's small frictions, through the CLI: `diff` lists only changes someone made and takes --set, and
`analyze --format json` has one shape (a list) for one spec and for several."""

from __future__ import annotations

import json

from click.testing import CliRunner

from moec.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def diff_json(*args: str) -> dict:
    r = run("diff", *args, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_diff_leaves_out_fields_only_one_side_has_at_their_default():
    # textbook-moe.yaml writes n_experts 8, d_ff 2048 (the dense width), gelu (the dense one), top_k 1,
    # score softmax (the default) and load_balance_coeff 0.01; d_ff_shared resolves from d_ff
    d = diff_json("textbook-dense", "textbook-moe")
    assert {f["field"] for f in d["fields"]} == {
        "layer pattern",
        "layers 0..7 ffn.kind",
        "layers 0..7 ffn.n_experts",
        "layers 0..7 ffn.router.top_k",
        "layers 0..7 ffn.load_balance_coeff",
        "layers 0..7 ffn.d_ff_shared",
    }


def test_diff_keeps_a_one_sided_field_that_is_not_the_default():
    d = diff_json("textbook-dense", "textbook-moe", "--set-b", "moe.router.score=sigmoid")
    [score] = [f for f in d["fields"] if f["field"].endswith("ffn.router.score")]
    assert (score["a"], score["b"]) == (None, "sigmoid")


def test_diff_set_b_shows_one_change_and_its_cost():
    d = diff_json("mixtral-8x7b", "mixtral-8x7b", "--set-b", "moe.router.top_k=1")
    assert d["fields"] == [{"field": "layers 0..31 ffn.router.top_k", "a": 2, "b": 1}]
    active = next(m for m in d["metrics"] if m["metric"] == "active params")
    # one expert fewer per token: 32 layers × 3 SwiGLU matrices of 4096 × 14336
    assert active["delta"] == -32 * 3 * 4096 * 14336


def test_diff_set_applies_to_both():
    assert diff_json("mixtral-8x7b", "mixtral-8x7b", "--set", "moe.router.top_k=1")["fields"] == []
    d = diff_json("mixtral-8x7b", "textbook-moe", "--set", "moe.router.top_k=1", "--set-a", "moe.router.top_k=2")
    assert not any(f["field"].endswith("router.top_k") and f["b"] != 1 for f in d["fields"])


def test_diff_bad_set_is_a_located_error():
    r = run("diff", "mixtral-8x7b", "mixtral-8x7b", "--set-b", "moe.router.top_k=99")
    assert r.exit_code == 2
    assert "moe.router.top_k: 99 exceeds moe.n_experts (8)" in r.output
    assert "Traceback" not in r.output


def test_analyze_json_is_a_list_for_one_spec_and_for_several():
    one = json.loads(run("analyze", "textbook-moe", "--format", "json").stdout)
    two = json.loads(run("analyze", "textbook-moe", "textbook-dense", "--format", "json").stdout)
    assert isinstance(one, list) and [a["name"] for a in one] == ["textbook-moe"]
    assert [a["name"] for a in two] == ["textbook-moe", "textbook-dense"]
    assert one[0] == two[0]
