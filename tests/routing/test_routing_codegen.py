"""The code generator refuses, by name, every routing feature its templates do not render yet
(docs/routing.md), through `moec build`: exit 2, one error line, no output folder."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from moec.cli import cli
from tests.tiny_specs import TINY_MOE


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (("moe.router.kind=gshard", "moe.router.normalize_topk=false"), "moe.router.kind 'gshard'"),
        (("moe.router.kind=expert_choice", "moe.router.normalize_topk=false"), "moe.router.kind 'expert_choice'"),
        (("moe.router.kind=hash", "moe.router.normalize_topk=false"), "moe.router.kind 'hash'"),
        (("moe.router.mlp_hidden=4",), "moe.router.mlp_hidden"),
        (("moe.capacity_factor=1.0", "moe.capacity_group_size=4"), "moe.capacity_group_size"),
    ],
)
def test_build_refuses_routing_it_cannot_render(tmp_path, sets: tuple[str, ...], named: str):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_MOE)
    out = tmp_path / "out"
    args = ["build", str(spec), "-o", str(out)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not out.exists()
