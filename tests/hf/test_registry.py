"""The family registry (moec/hf/families/): every module is found, a broken or empty one stops the import
naming it, two modules cannot claim one model_type, export keeps its order, no family module imports torch,
and the README's family list is the registry's."""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys

import pytest

from moec.hf.families import FAMILIES, discover, export_order
from tests.conftest import ROOT

_PACKAGE_IDS = itertools.count()
FAMILY_TESTS = ROOT / "tests" / "hf" / "families"


def families_tested_by(name_part: str) -> set[str]:
    """The model_types whose own test module (tests/hf/families/test_<model_type>.py) defines a test whose
    name contains ``name_part``: the alternative to a case in the shared tables of test_import/test_weights."""
    out = set()
    for path in FAMILY_TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text(), str(path))
        tests = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        if any(name_part in t for t in tests):
            stem = path.stem.removeprefix("test_")  # a module name cannot hold nllb-moe's hyphen
            out.add(next((mt for mt in FAMILIES if mt.replace("-", "_") == stem), stem))
    return out


# A family module as small as the registry accepts: a Family with a translator that does nothing.
FAMILY_MODULE = """
from moec.hf.draft import Family

def translate(c, d):
    pass

{name} = {value}
"""


def _family(model_type: str, name: str = "FAMILY") -> str:
    value = f"Family({model_type!r}, 'XForCausalLM', {{}}, translate)"
    if name == "FAMILIES":
        value = f"({value},)"
    return FAMILY_MODULE.format(name=name, value=value)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A fresh importable package on sys.path; write(modules) fills it and returns (path, package name)."""
    name = f"families_under_test_{next(_PACKAGE_IDS)}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(modules: dict[str, str]) -> tuple[list[str], str]:
        for module, text in modules.items():
            (folder / f"{module}.py").write_text(text)
        return [str(folder)], name

    yield write
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_every_module_is_a_family_and_helpers_are_not_read(package):
    found = discover(
        *package(
            {
                "alpha": _family("alpha_moe"),
                "beta": _family("beta_moe", "FAMILIES"),
                "_helpers": "raise RuntimeError('a helper module is not a family and is not imported')",
            }
        )
    )
    assert list(found) == ["alpha_moe", "beta_moe"]
    assert found["beta_moe"].architecture == "XForCausalLM"


@pytest.mark.parametrize(
    "text, error, message",
    [
        ("raise RuntimeError('half-written family')", RuntimeError, "half-written family"),
        ("def translate(:\n", SyntaxError, None),
        ("X = 1\n", ImportError, "must define exactly one of FAMILY"),
        (_family("gamma") + "\nFAMILIES = (FAMILY,)\n", ImportError, "must define exactly one of FAMILY"),
        ("FAMILY = 'gamma'\n", ImportError, "FAMILY must be a Family"),
        (_family("gamma", "FAMILIES").replace(",)", ")"), ImportError, "FAMILIES a non-empty tuple"),
    ],
    ids=["raises", "syntax error", "no family", "both names", "not a Family", "not a tuple"],
)
def test_a_broken_or_empty_module_stops_the_import_loudly(package, text, error, message):
    with pytest.raises(error, match=message) as exc:
        discover(*package({"alpha": _family("alpha_moe"), "gamma": text}))
    if error is ImportError:
        assert ".gamma" in str(exc.value)  # the module is named


def test_two_modules_claiming_one_model_type_are_refused_naming_both(package):
    with pytest.raises(ImportError, match=r"'alpha_moe' is defined by both \S+\.alpha and \S+\.beta"):
        discover(*package({"alpha": _family("alpha_moe"), "beta": _family("alpha_moe")}))


def test_export_tries_the_families_in_the_order_they_were_tried_before_the_split():
    """The order of the two tables export.py held (moec 0.x), first family that expresses the plan wins."""
    moe = ["mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3", "deepseek_v2", "granitemoe", "olmoe", "gpt_oss",
           "dbrx", "llama4_text", "phimoe"]  # fmt: skip
    dense = ["llama", "mistral", "qwen2", "qwen3"]
    assert [f.model_type for f in export_order(moe=True) if f.model_type in moe] == moe
    assert [f.model_type for f in export_order(moe=False) if f.model_type in dense] == dense
    assert not {f.model_type for f in export_order(moe=True)} & set(dense)


def test_importing_every_family_module_never_imports_torch():
    """A family's Mapper subclass lives beside its translator, and `moec analyze config.json` loads them all."""
    code = (
        "import sys\n"
        "import moec.hf.families, moec.hf.mapper\n"
        "assert len(moec.hf.families.FAMILIES) >= 15\n"
        "heavy = {'torch', 'transformers', 'safetensors'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def _readme_row(command: str) -> str:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{command}")]
    assert len(rows) == 1, f"README has {len(rows)} rows for {command}"
    return rows[0]


def test_readme_lists_exactly_the_registrys_families():
    """The import-hf row names the imported MoE families, then (after "dense") the dense ones, then (after
    "spec →") the exported ones in the order export tries them, each as `model_type`."""
    row = _readme_row("moec import-hf")
    imported, _, exported = row.partition("; spec → ")
    moe_part, _, dense_part = imported.partition(" dense ")
    names = re.compile(r"`([a-z][a-z0-9_-]*)`")  # model_types; `config.json` and the commands do not match
    fix = "README.md's import-hf row must list each model_type of moec/hf/families/"
    assert set(names.findall(moe_part)) == {mt for mt, f in FAMILIES.items() if not f.dense}, fix
    assert set(names.findall(dense_part)) == {mt for mt, f in FAMILIES.items() if f.dense}, fix
    in_order = [f.model_type for f in (*export_order(moe=True), *export_order(moe=False))]
    assert names.findall(exported) == in_order, fix
