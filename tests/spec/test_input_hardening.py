"""Hostile and mistaken spec input, as a user meets it through ``moec validate`` and ``moec analyze``: each
is refused with exit code 2 and one ``file:line:column field: message`` line (counted by hand in the
texts below), or read the way YAML 1.2 says, never with a traceback, a hang or a line of someone else's
file in the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.errors import SpecError
from moec.spec import load_spec
from tests.conftest import ROOT

SPEC = """\
moec: 1
name: t
model:
  vocab_size: 1000
  d_model: 64
  n_layers: 4
  max_seq_len: 512
  tie_embeddings: false
attention:
  n_heads: 8
ffn:
  d_ff: 128
"""
# line 6: "  n_layers: 4", its value at column 13; line 8: "  tie_embeddings: false", value at column 19
SECRET = "root:$6$SECRETHASH$abcdefgh:19000:0:99999:7:::"
COMMANDS = ["validate", "analyze"]


def edit(old: str, new: str) -> str:
    assert SPEC.count(old) == 1, old
    return SPEC.replace(old, new)


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in r.output and not isinstance(r.exception, (AssertionError, TypeError)), r.output
    return r.exit_code, r.output


def run_process(*args: str) -> tuple[int, str]:
    """In a child process, so that a read that blocks fails the test (timeout) instead of hanging the suite."""
    r = subprocess.run(
        [sys.executable, "-m", "moec.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# extends reads shipped specs and .yaml files in the spec's own folder, nothing else


@pytest.fixture
def layout(tmp_path):
    """tmp/specs/ holds the user's specs; tmp/ holds files outside that folder, one of them secret."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (tmp_path / "shadow").write_text(SECRET + "\n")
    (tmp_path / "shadow.yaml").write_text(SECRET + "\n")
    (tmp_path / "secret.yaml").write_text(f"{SECRET}: 1\nname: leaked\n")
    (specs / "base.yaml").write_text(SPEC)
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("{tmp}/shadow", "not an absolute path"),
        ("{tmp}/shadow.yaml", "not an absolute path"),
        ("../secret.yaml", "leaves the folder of this spec"),
        ("../shadow.yaml", "leaves the folder of this spec"),
        ("sub/../../secret.yaml", "leaves the folder of this spec"),
        ("link.yaml", "leaves the folder of this spec"),  # a symbolic link to ../secret.yaml
        ("../specs/../shadow", "extends takes a shipped spec name or a .yaml/.yml file"),
        ("/etc/passwd", "not an absolute path"),
    ],
)
def test_extends_outside_the_spec_folder_is_refused_without_reading_it(layout, command: str, ref: str, why: str):
    os.symlink(layout / "secret.yaml", layout / "specs" / "link.yaml")
    child = layout / "specs" / "child.yaml"
    child.write_text(f"extends: {ref.format(tmp=layout)}\nname: child\n")
    code, out = run(command, str(child))
    assert code == 2, out
    assert f"error: {child}:1:10 extends: " in out and why in out, out
    assert "SECRET" not in out and "$6$" not in out and "leaked" not in out and ":0:0:" not in out, out


@pytest.mark.parametrize("ref", ["base.yaml", "sub/../base.yaml", "inner.yaml", "textbook-dense"])
def test_extends_inside_the_folder_or_a_shipped_name_still_works(layout, ref: str):
    os.symlink(layout / "specs" / "base.yaml", layout / "specs" / "inner.yaml")  # a link that stays inside
    child = layout / "specs" / "child.yaml"
    child.write_text(f"extends: {ref}\nname: child\nmodel: {{n_layers: 3}}\n")
    code, out = run("validate", str(child))
    assert code == 0 and "ok " in out and "3 layers" in out, out


def test_an_extended_fifo_is_refused_at_the_extends_line(layout):
    os.mkfifo(layout / "specs" / "pipe.yaml")
    child = layout / "specs" / "child.yaml"
    child.write_text("name: child\nextends: pipe.yaml\n")
    code, out = run_process("validate", str(child))
    assert code == 2 and f"{child}:2:10 extends: 'pipe.yaml': is a FIFO (named pipe), not a spec file" in out, out


def test_set_extends_is_refused_naming_the_option():
    code, out = run("analyze", "textbook-dense", "--set", "extends=/etc/passwd")
    assert code == 2 and "error: --set extends: extends is read before --set applies" in out, out
    assert ":0:0:" not in out


# ---------------------------------------------------------------------------------------------
# files that are not regular files are refused at once


@pytest.mark.parametrize("command", COMMANDS)
def test_dev_zero_is_refused_without_reading_it(command: str):
    code, out = run_process(command, "/dev/zero")
    assert code == 2 and "error: /dev/zero is a character device, not a spec file" in out, out


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_is_refused_at_once(tmp_path, command: str):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    code, out = run_process(command, str(fifo))  # nothing ever writes to it: a blocking open would hang
    assert code == 2 and f"error: {fifo} is a FIFO (named pipe), not a spec file" in out, out


def test_a_fifo_named_config_json_is_refused_at_once(tmp_path):
    """Hugging Face config.json files are read by the same reader."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    code, out = run_process("analyze", str(fifo))
    assert code == 2 and f"error: {fifo} is a FIFO (named pipe), not a config.json file" in out, out


def test_a_directory_and_a_file_too_large_are_named(tmp_path):
    code, out = run("validate", str(tmp_path))
    assert code == 2 and f"{tmp_path} is a directory, not a spec file" in out, out
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    code, out = run("validate", str(big))
    assert code == 2 and f"{big} larger than 1 MiB; not a spec" in out, out


def test_bytes_that_are_not_utf8_are_located(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(SPEC.replace("name: t", "name: caf\xe9").encode("latin-1"))
    code, out = run("validate", str(bad))
    assert code == 2 and f"{bad}:2:10 not UTF-8 text (byte 0xe9)" in out, out


# ---------------------------------------------------------------------------------------------
# YAML 1.2 core scalars: no octal, base-60 or yes/no surprises


@pytest.mark.parametrize(("written", "layers"), [("010", 10), ("0o10", 8), ("0x10", 16), ("+7", 7)])
def test_integers_are_read_as_yaml_1_2(tmp_path, written: str, layers: int):
    path = tmp_path / "x.yaml"
    path.write_text(edit("n_layers: 4", f"n_layers: {written}"))
    code, out = run("analyze", str(path), "--format", "json")
    assert code == 0, out
    assert len(json.loads(out)[0]["layers"]) == layers


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ("n_layers: 4", "n_layers: 1:0", ":6:13 model.n_layers: '1:0': input should be a valid integer"),
        ("n_layers: 4", "n_layers: 1_000", ":6:13 model.n_layers: '1_000': input should be a valid integer"),
        (
            "tie_embeddings: false",
            "tie_embeddings: yes",
            ":8:19 model.tie_embeddings: 'yes': input should be a valid boolean",
        ),
        (
            "tie_embeddings: false",
            "tie_embeddings: off",
            ":8:19 model.tie_embeddings: 'off': input should be a valid boolean",
        ),
    ],
    ids=["base-60", "underscores", "yes", "off"],
)
def test_yaml_1_1_spellings_are_strings_and_so_type_errors(tmp_path, command: str, old: str, new: str, want: str):
    path = tmp_path / "x.yaml"
    path.write_text(edit(old, new))
    code, out = run(command, str(path))
    assert code == 2 and f"error: {path}{want}" in out, out


# ---------------------------------------------------------------------------------------------
# tags, aliases, merges, sizes: located errors


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        ("n_layers: 4", 'n_layers: !!int ""', ":6:13 model.n_layers: !!int '' is not an integer"),
        (
            "tie_embeddings: false",
            "tie_embeddings: !!bool maybe",
            ":8:19 model.tie_embeddings: !!bool 'maybe' is not a boolean",
        ),
        ("n_layers: 4", "n_layers: !!timestamp nope", ":6:13 model.n_layers: unsupported tag !!timestamp"),
        (
            "n_layers: 4",
            "n_layers: !!python/object/apply:os.system [true]",
            ":6:13 model.n_layers: unsupported tag !!python/object/apply:os.system",
        ),
        (
            "n_layers: 4",
            "n_layers: " + "9" * 5000,
            ":6:13 model.n_layers: an integer of 5000 digits is too long (at most 1000)",
        ),
        ("n_layers: 4", "n_layers: &a [*a]", ":6:17 alias *a refers to a node that contains it (recursive)"),
        ("n_layers: 4", "n_layers: *nowhere", ":6:13 alias *nowhere refers to no anchor before it"),
        (
            "  n_layers: 4",
            "  !!python/name:os.system n_layers: 4",
            ":6:3 model: mapping keys must be plain strings, not a tagged !!python/name:os.system key",
        ),
        ("  n_layers: 4", "  ? [n_layers]\n  : 4", ":6:5 model: mapping keys must be plain strings, not a seq key"),
        (
            "  n_layers: 4",
            "  n_layers: 4\n  <<: 5",
            ":7:7 model.<<: a merge (<<) takes a mapping or a list of mappings",
        ),
        ("name: t", "name: " + "a" * 20_000, ":2:7 name: a value of 20000 characters is too long (at most 10000)"),
        (
            "  n_layers: 4",
            "  n_layers: 4\n  " + "k" * 300 + ": 1",
            ":7:3 model: a key of 300 characters is too long (at most 256)",
        ),
        (
            "  n_layers: 4",
            '  n_layers: 4\n  "bad\\u001bkey": 1',
            ":7:3 model: key 'bad\\x1bkey' holds a line break or control character",
        ),
        # the document and model are 2 levels, so the 63rd "[" (column 13 + 62) is the 65th level
        ("n_layers: 4", "n_layers: " + "[" * 70 + "]" * 70, ":6:75 nested more than 64 levels deep"),
        ("name: t", "name: t\x00", ":2:8 character U+0000 is not allowed in YAML"),
        ("moec: 1\n", "moec: 1\n---\n", ":2:1 a spec is one YAML document; this starts a second one"),
    ],
    ids=[
        "int-empty",
        "bool-maybe",
        "timestamp",
        "python-tag",
        "5000-digits",
        "recursive-alias",
        "undefined-alias",
        "tagged-key",
        "sequence-key",
        "merge-of-a-scalar",
        "long-string",
        "long-key",
        "control-character-key",
        "nesting",
        "nul",
        "second-document",
    ],
)
def test_hostile_yaml_gives_one_located_error(tmp_path, command: str, old: str, new: str, want: str):
    path = tmp_path / "x.yaml"
    path.write_text(edit(old, new))
    code, out = run(command, str(path))
    assert code == 2 and f"error: {path}{want}" in out, out
    assert out.count("error: ") == 1, out


# ---------------------------------------------------------------------------------------------
# the merge-key idiom: merged keys are defaults that the mapping's own keys override

MERGED = (
    SPEC
    + """\
layers:
  default: {ffn: dense, attention: &att {window: 64, rope: true}}
  overrides:
    - select: [1]
      attention: {<<: *att, window: 128}
    - select: [2]
      attention: {window: 256, <<: *att}
    - select: [3]
      attention:
        <<: [{window: 32}, *att]
"""
)


@pytest.mark.parametrize("command", COMMANDS)
def test_merge_keys_give_defaults_that_explicit_keys_override_in_any_order(tmp_path, command: str):
    path = tmp_path / "x.yaml"
    path.write_text(MERGED)
    code, out = run(command, str(path), *(["--format", "json"] if command == "analyze" else []))
    assert code == 0, out
    if command == "analyze":
        # layer 3 merges two mappings: the first listed wins (YAML merge-key spec)
        assert [layer["window"] for layer in json.loads(out)[0]["layers"]] == [64, 128, 256, 32]


def test_two_explicit_equal_keys_beside_a_merge_are_still_duplicates(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(MERGED.replace("{<<: *att, window: 128}", "{<<: *att, window: 128, window: 8}"))
    code, out = run("validate", str(path))
    assert code == 2 and f"{path}:17:42 layers.overrides[0].attention.window: duplicate key" in out, out


def test_a_merged_key_is_located_where_the_anchor_wrote_it():
    text = MERGED.replace("window: 64, rope: true", "window: 64, rope: maybe")
    with pytest.raises(SpecError) as ei:
        load_spec("x.yaml", text=text)
    # rope: maybe is written once (line 14, column 60) and reaches layers.default and two overrides
    assert {(p.line, p.column) for p in ei.value.problems} == {(14, 60)}
    assert len(ei.value.problems) == 4  # default + the three overrides that merge *att
