"""moec diff's per-layer rows: compared layer by layer, a run of layers with the same two values on one row, each
side showing what those layers hold (not a missing value where the two sides group their layers differently)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from moec.cli import cli


def fields(*args: str) -> list[dict]:
    r = CliRunner().invoke(cli, ["diff", *args, "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["fields"]


def test_one_layers_own_head_count_is_one_row_with_both_values():
    # mixtral-8x7b: 32 query heads on every layer; B gives layer 1 sixteen
    got = fields(
        "mixtral-8x7b", "mixtral-8x7b", "--set-b", "layers.overrides=[{select: [1], attention: {n_heads: 16}}]"
    )
    assert got == [{"field": "layers 1 attention.n_heads", "a": 32, "b": 16}]


def test_runs_of_layers_that_change_alike_share_a_row():
    # textbook-moe: 8 MoE layers of gelu experts; B gives layers 2-4 and 6 their own activation (ungated as gelu)
    sets = "layers.overrides=[{select: [2, 3, 4, 6], moe: {activation: relu}}]"
    got = fields("textbook-moe", "textbook-moe", "--set-b", sets)
    assert got == [
        {"field": "layers 2..4 ffn.activation", "a": "gelu", "b": "relu"},
        {"field": "layers 6 ffn.activation", "a": "gelu", "b": "relu"},
    ]
