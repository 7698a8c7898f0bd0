"""Hostile config.json files and checkpoints, as a user meets them through the CLI: each is refused with
exit code 2 and one ``error: file:line:col field: message`` line per problem, never a traceback, never a
partial output. Expected lines are found in the written text independently of moec's key locator."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from moec.cli import cli
from moec.errors import SpecError
from moec.hf.config import hf_to_model
from tests.hf.configs import RELEASES

ERROR_LINE = re.compile(r"^error: (?P<file>.+?):(?P<line>\d+):(?P<col>\d+) (?P<field>\S*?):? .+$")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def line_of(text: str, *keys: str) -> int:
    """1-based line of the last of ``keys``, each searched for after the line of the one before (a nested
    key inside its parent), as ``"key":`` at the start of a line of json.dumps(indent=2) output."""
    lines, at = text.split("\n"), 0
    for key in keys:
        at = next(i for i in range(at, len(lines)) if lines[i].lstrip().startswith(f'"{key}": '))
    return at + 1


def write(tmp_path: Path, cfg: dict[str, Any] | None = None, text: str | None = None) -> tuple[Path, str]:
    text = json.dumps(cfg, indent=2) if text is None else text
    path = tmp_path / "config.json"
    path.write_text(text)
    return path, text


def assert_refused_at(result: Any, path: Path, where: list[tuple[int, str]]) -> None:
    """Exit 2 through SystemExit, no traceback, and exactly one located error line per expected problem."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [ERROR_LINE.match(s) for s in result.output.splitlines() if s.startswith("error:")]
    assert all(errors), result.output
    assert sorted((int(m["line"]), m["field"]) for m in errors) == sorted(where), result.output
    assert {m["file"] for m in errors} == {str(path)}
    assert f"{len(where)} problem" in result.output


DS3, L4, DBRX, QWEN2 = RELEASES["deepseek_v3"], RELEASES["llama4_text"], RELEASES["dbrx"], RELEASES["qwen2"]

# name → (config, the field each problem names, the key path that locates it); one problem each
BAD_CONFIGS: dict[str, tuple[dict[str, Any], str, tuple[str, ...]]] = {
    "model_type as a list": ({**RELEASES["mixtral"], "model_type": ["mixtral"]}, "model_type", ("model_type",)),
    "hidden_act as a list": ({**RELEASES["mixtral"], "hidden_act": ["silu"]}, "hidden_act", ("hidden_act",)),
    "rope_type as a list": (
        {**RELEASES["llama"], "rope_scaling": {"rope_type": ["linear"], "factor": 2.0}},
        "rope_scaling.rope_type",
        ("rope_scaling", "rope_type"),
    ),
    "layer_types entries as lists": (
        {**QWEN2, "layer_types": [["full_attention"]] * QWEN2["num_hidden_layers"]},
        "layer_types",
        ("layer_types",),
    ),
    "llama4 layer_types entries as lists": (
        {**L4, "layer_types": [["chunked_attention"]] * L4["num_hidden_layers"]},
        "layer_types",
        ("layer_types",),
    ),
    "q_lora_rank as a string": ({**DS3, "q_lora_rank": "1536"}, "q_lora_rank", ("q_lora_rank",)),
    "kv_lora_rank as a string": ({**DS3, "kv_lora_rank": "512"}, "kv_lora_rank", ("kv_lora_rank",)),
    "10^8 layers": ({**RELEASES["mixtral"], "num_hidden_layers": 10**8}, "num_hidden_layers", ("num_hidden_layers",)),
    "attn_temperature_tuning not a bool (read once per layer)": (
        {**L4, "attn_temperature_tuning": "yes"},
        "attn_temperature_tuning",
        ("attn_temperature_tuning",),
    ),
    "a nested DBRX field of the wrong type": (
        {**DBRX, "attn_config": {**DBRX["attn_config"], "kv_n_heads": "8"}},
        "attn_config.kv_n_heads",
        ("attn_config", "kv_n_heads"),
    ),
    # found by the spec checks after translation, pointed back at the config field it came from
    "heads not divisible by KV heads": (
        {**RELEASES["mixtral"], "num_key_value_heads": 5},
        "num_key_value_heads",
        ("num_key_value_heads",),
    ),
}


@pytest.mark.parametrize("command", ["analyze", "import-hf"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_exits_2_with_one_located_line(tmp_path, command, case):
    cfg, field, keys = BAD_CONFIGS[case]
    path, text = write(tmp_path, cfg)
    assert_refused_at(run(command, str(path)), path, [(line_of(text, *keys), field)])


@pytest.mark.parametrize("rank", ["q_lora_rank", "kv_lora_rank"])
def test_a_string_rank_with_mla_biases_gives_two_located_lines(tmp_path, rank):
    """MLA biases are a gap whose parameter count adds the ranks: with a rank given as a string that sum
    raised a TypeError. Now: the gap and the rank, each at its own line."""
    path, text = write(tmp_path, {**DS3, rank: "512", "attention_bias": True})
    where = [(line_of(text, rank), rank), (line_of(text, "attention_bias"), "attention_bias")]
    assert_refused_at(run("analyze", str(path)), path, where)


def test_a_field_at_its_default_is_located_at_the_config_itself(tmp_path):
    """num_key_value_heads absent (Mixtral's default 8) with 12 heads: the text has no key to point at, so
    the problem points at the object's opening brace."""
    cfg = {k: v for k, v in RELEASES["mixtral"].items() if k != "num_key_value_heads"}
    path, text = write(tmp_path, {**cfg, "num_attention_heads": 12, "head_dim": 128})
    r = run("analyze", str(path))
    assert_refused_at(r, path, [(1, "num_key_value_heads")])
    assert f"{path}:1:1 " in r.output


def test_a_value_the_import_writes_to_two_spec_fields_is_one_problem(tmp_path):
    """DeepSeek-V3's moe_intermediate_size is the routed experts' width and, times n_shared_experts, the shared
    expert's: past the spec's bound it was two problems at the same line, one per spec field."""
    path, text = write(tmp_path, {**DS3, "moe_intermediate_size": 10**12})
    r = run("import-hf", str(path))
    assert_refused_at(r, path, [(line_of(text, "moe_intermediate_size"), "moe_intermediate_size")])
    assert "(spec fields moe.d_ff, moe.d_ff_shared)" in r.output


HOSTILE_JSON = {
    # the object is level 1, so the 32nd bracket (column 7 + 31) opens level 33
    "nested 100000 deep": ('{"model_type": "mixtral",\n "x": ' + "[" * 100_000 + "]" * 100_000 + "}", 2, 38),
    "an integer of 5000 digits": ('{"model_type": "mixtral",\n "vocab_size": ' + "9" * 5000 + "}", 2, 16),
    "NaN": ('{"model_type": "mixtral",\n "rms_norm_eps": NaN}', 2, 18),
    "a key given twice": ('{"model_type": "mixtral",\n "hidden_size": 8,\n "hidden_size": 16}', 3, 2),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
@pytest.mark.parametrize("command", ["analyze", "import-hf"])
def test_hostile_json_exits_2_with_one_located_line(tmp_path, command, case):
    text, line, col = HOSTILE_JSON[case]
    path, _ = write(tmp_path, text=text)
    r = run(command, str(path))
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output
    errors = [s for s in r.output.splitlines() if s.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}:{line}:{col} "), r.output


def test_a_hundred_million_layers_are_refused_at_once(tmp_path):
    """The 55-byte config that used to build per-layer lists of 10^8 entries (3 GB, tens of seconds)."""
    path, _ = write(tmp_path, text='{"model_type":"mixtral","num_hidden_layers":100000000}')
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(SpecError) as e:
        hf_to_model(path)
    seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(p.line, p.column, p.path) for p in e.value.problems] == [(1, 25, "num_hidden_layers")]
    assert peak < 200 << 20 and seconds < 1.0, (peak, seconds)


def test_each_distinct_bad_layer_type_is_one_problem(tmp_path):
    """36 layers, two unknown layer types among them: two problems, each listing its layers."""
    n = QWEN2["num_hidden_layers"]
    types = ["full_attention"] * n
    types[3], types[4], types[10:] = "sliding", "sliding", ["global"] * (n - 10)
    path, text = write(tmp_path, {**QWEN2, "layer_types": types})
    with pytest.raises(SpecError) as e:
        hf_to_model(path)
    assert len(e.value.problems) == 2
    by_value = {p.message.split(" on layers ")[0]: p for p in e.value.problems}
    assert set(by_value) == {"'sliding'", "'global'"}
    assert "[3, 4]" in by_value["'sliding'"].message and f"(and {n - 10 - 5} more)" in by_value["'global'"].message
    assert {p.line for p in e.value.problems} == {line_of(text, "layer_types")}


# ---------------------------------------------------------------------------------------------
# checkpoints: integer and boolean tensors where a float weight belongs

TINY_LLAMA = {"model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 32, "tie_word_embeddings": False}  # fmt: skip

# transformers' tensor names and [out, in] shapes for TINY_LLAMA (head_dim 4), written out by hand
TINY_LLAMA_TENSORS = {
    "model.embed_tokens.weight": (16, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.self_attn.k_proj.weight": (4, 8),
    "model.layers.0.self_attn.v_proj.weight": (4, 8),
    "model.layers.0.self_attn.o_proj.weight": (8, 8),
    "model.layers.0.post_attention_layernorm.weight": (8,),
    "model.layers.0.mlp.gate_proj.weight": (12, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.0.mlp.down_proj.weight": (8, 12),
    "model.norm.weight": (8,),
    "lm_head.weight": (16, 8),
}


def write_checkpoint(folder: Path, odd: str | None = None, dtype: Any = None) -> None:
    torch = pytest.importorskip("torch")
    save_file = pytest.importorskip("safetensors.torch").save_file
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    g = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(shape, generator=g) for name, shape in TINY_LLAMA_TENSORS.items()}
    if odd is not None:
        tensors[odd] = torch.randint(0, 2**20, TINY_LLAMA_TENSORS[odd], generator=g).to(dtype)
    save_file(tensors, str(folder / "model.safetensors"))


def test_a_complete_float_checkpoint_builds(tmp_path):
    """The control for the refusals below: the hand-written checkpoint is complete and loads."""
    write_checkpoint(tmp_path / "hf")
    r = run("build", "--from-hf", str(tmp_path / "hf"), "-o", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize(("dtype_name", "stored"), [("int32", "I32"), ("int64", "I64"), ("bool", "BOOL")])
def test_an_integer_checkpoint_tensor_is_refused_naming_it(tmp_path, dtype_name, stored):
    torch = pytest.importorskip("torch")
    odd = "model.layers.0.mlp.down_proj.weight"
    write_checkpoint(tmp_path / "hf", odd, getattr(torch, dtype_name))
    r = run("build", "--from-hf", str(tmp_path / "hf"), "-o", str(tmp_path / "out"))
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "Traceback" not in r.output
    errors = [s for s in r.output.splitlines() if s.startswith("error:")]
    assert len(errors) == 1, r.output
    assert odd in errors[0] and f"stored as {stored} in model.safetensors" in errors[0]
    assert not (tmp_path / "out").exists()
