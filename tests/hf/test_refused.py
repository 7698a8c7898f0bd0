"""Known but refused Hugging Face families (moec/hf/refused.py): each is a real transformers model_type that no
family module imports, and a config of it is refused at its model_type line, naming the missing features, through
the library and through the CLI (exit 2, no traceback, no output written)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from transformers import CONFIG_MAPPING

from moec.cli import cli
from moec.errors import SpecError
from moec.hf import hf_to_model
from moec.hf.families import FAMILIES
from moec.hf.refused import REFUSED_FAMILIES


def test_every_refused_family_is_a_transformers_model_type_that_no_family_module_imports():
    assert REFUSED_FAMILIES
    for model_type, features in REFUSED_FAMILIES.items():
        assert model_type in CONFIG_MAPPING, f"{model_type}: transformers has no such model_type"
        assert model_type not in FAMILIES, f"{model_type}: imported by moec/hf/families/ and refused at once"
        assert features.strip() and features == features.strip()


@pytest.mark.parametrize("model_type", sorted(REFUSED_FAMILIES))
def test_a_refused_familys_config_is_refused_at_its_model_type_naming_the_features(model_type, tmp_path):
    config = CONFIG_MAPPING[model_type]().to_dict()  # the class defaults, as transformers writes them
    path = tmp_path / "config.json"
    text = json.dumps(config, indent=2)
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        hf_to_model(path)
    (problem,) = e.value.problems
    line = 1 + text[: text.index('"model_type"')].count("\n")
    assert (problem.file, problem.line, problem.path) == (str(path), line, "model_type")
    assert f"model_type {model_type!r} is known but not imported yet" in problem.message
    assert REFUSED_FAMILIES[model_type] in problem.message


def test_the_cli_refuses_it_with_exit_2_and_writes_nothing(tmp_path):
    model_type = sorted(REFUSED_FAMILIES)[0]
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": model_type, "hidden_size": 8}, indent=2))
    out = tmp_path / "spec.yaml"
    result = CliRunner().invoke(cli, ["import-hf", str(path), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "known but not imported yet" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_no_model_type_is_written_twice_in_the_table():
    """A dict literal keeps the last of two equal keys silently: read the table's source for them."""
    import ast
    import inspect

    import moec.hf.refused

    tree = ast.parse(inspect.getsource(moec.hf.refused))
    (table,) = [n.value for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and n.target.id == "REFUSED_FAMILIES"]
    written = [k.value for k in table.keys if isinstance(k, ast.Constant)]
    for spread in (
        v for k, v in zip(table.keys, table.values, strict=True) if k is None
    ):  # **dict.fromkeys((...), text)
        written += [e.value for e in spread.args[0].elts]
    assert len(written) == len(set(written)) == len(REFUSED_FAMILIES)
