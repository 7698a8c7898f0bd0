"""Property tests: random valid specs never crash the analyzer; random garbage always gives a clean,
located SpecError, never a traceback; YAML integers, merge keys and layer selectors mean what their
definitions say."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moec.analyze import analyze
from moec.errors import SpecError
from moec.spec import load_spec, resolve


@st.composite
def valid_specs(draw) -> dict:
    heads = draw(st.sampled_from([1, 2, 4, 8, 16]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4, 8, 16) if heads % k == 0]))
    head_dim = draw(st.sampled_from([8, 16, 64]))
    n_layers = draw(st.integers(1, 12))
    seq = draw(st.sampled_from([64, 512, 4096]))
    spec: dict = {
        "moec": 1,
        "name": "h",
        "model": {
            "vocab_size": draw(st.integers(1, 300_000)),
            "d_model": draw(st.integers(1, 8192)),
            "n_layers": n_layers,
            "max_seq_len": seq,
            "tie_embeddings": draw(st.booleans()),
            "norm": {
                "kind": draw(st.sampled_from(["rmsnorm", "layernorm"])),
                "placement": draw(st.sampled_from(["pre", "post"])),
            },
            "positions": {"kind": draw(st.sampled_from(["rope", "learned", "none"]))},
        },
        "ffn": {
            "d_ff": draw(st.integers(1, 20000)),
            "activation": draw(st.sampled_from(["swiglu", "geglu", "gelu", "relu", "silu"])),
        },
    }
    if draw(st.booleans()):
        spec["attention"] = {
            "n_heads": heads,
            "n_kv_heads": kv,
            "head_dim": head_dim,
            "qk_norm": draw(st.booleans()),
            "window": draw(st.one_of(st.none(), st.integers(1, seq))),
        }
    else:
        spec["attention"] = {
            "kind": "mla",
            "n_heads": heads,
            "kv_lora_rank": draw(st.integers(1, 1024)),
            "q_lora_rank": draw(st.one_of(st.none(), st.integers(1, 2048))),
            "qk_nope_head_dim": draw(st.integers(1, 256)),
            "qk_rope_head_dim": 2 * draw(st.integers(1, 64)),
            "v_head_dim": draw(st.integers(1, 256)),
        }
    if draw(st.booleans()):
        m = draw(st.sampled_from([1, 2, 4]))
        E = draw(st.integers(1, 64))
        k = draw(st.integers(1, E))
        spec["moe"] = {
            "n_experts": E,
            "d_ff": m * draw(st.integers(1, 4096)),
            "granularity": m,
            "n_shared_experts": draw(st.integers(0, 2)),
            "router": {
                "top_k": k,
                "score": draw(st.sampled_from(["softmax", "sigmoid"])),
                "normalize_topk": draw(st.booleans()),
            },
            "capacity_factor": draw(st.one_of(st.none(), st.floats(0.5, 4))),
        }
        start = draw(st.integers(0, n_layers - 1))
        spec["layers"] = {
            "default": {"ffn": "dense"},
            "overrides": [{"select": {"every": draw(st.integers(1, 4)), "start": start}, "ffn": "moe"}],
        }
    return spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_specs(), st.integers(1, 100_000), st.sampled_from(["full", "causal"]))
def test_random_valid_specs_never_crash_the_analyzer(spec: dict, seq: int, mode: str):
    m = resolve(load_spec("h.yaml", text=yaml.safe_dump(spec)))
    a = analyze(m, seq=seq, attention=mode)  # type: ignore[arg-type]
    assert a.params.total >= a.params.active > 0
    assert a.flops.forward > 0 and a.flops.training >= 2 * a.flops.forward
    assert len(a.layers) == m.n_layers


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_random_text_gives_a_clean_error(text: str):
    try:
        load_spec("r.yaml", text=text)
    except SpecError as e:
        assert e.problems and all(p.file == "r.yaml" for p in e.problems)


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
FIELDS = [
    ("model", "d_model"),
    ("model", "n_layers"),
    ("model", "vocab_size"),
    ("model", "max_seq_len"),
    ("model", "norm"),
    ("attention", "n_heads"),
    ("attention", "n_kv_heads"),
    ("attention", "window"),
    ("attention", "kind"),
    ("moe", "n_experts"),
    ("moe", "d_ff"),
    ("moe", "router"),
    ("moe", "capacity_factor"),
    ("layers", "overrides"),
]
BASE = {
    "moec": 1,
    "name": "w",
    "model": {"vocab_size": 100, "d_model": 64, "n_layers": 4, "max_seq_len": 128},
    "attention": {"n_heads": 4},
    "moe": {"n_experts": 4, "d_ff": 32, "router": {"top_k": 2}},
    "layers": {"default": {"ffn": "moe"}},
}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FIELDS), JUNK)
def test_random_wrong_values_give_a_located_error(field: tuple[str, str], value):
    import copy

    spec = copy.deepcopy(BASE)
    spec[field[0]][field[1]] = value
    text = yaml.safe_dump(spec)
    try:
        m = resolve(load_spec("w.yaml", text=text))
    except SpecError as e:
        for p in e.problems:
            assert p.file == "w.yaml" and p.line is not None, str(p)
        return
    analyze(m)  # the value happened to be valid: it must then analyze


# ---------------------------------------------------------------------------------------------
# YAML reading and layer selection, each against an independent definition

SPEC_WITH_LAYERS = "moec: 1\nname: y\nmodel: {{vocab_size: 8, d_model: 8, n_layers: {}, max_seq_len: 8}}\n"
SPEC_WITH_LAYERS += "attention: {{n_heads: 2}}\nffn: {{d_ff: 8}}\n"


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4096), st.sampled_from(["{:d}", "{:05d}", "+{:d}", "0o{:o}", "0x{:x}", "0x{:X}"]))
def test_integers_are_read_as_yaml_1_2_core_says(n: int, form: str):
    """A leading zero is decimal (YAML 1.1 read it as octal); 0o and 0x are the only other bases."""
    written = form.format(n)
    assert resolve(load_spec("y.yaml", text=SPEC_WITH_LAYERS.format(written))).n_layers == n


KEYS = st.sampled_from(["a", "b", "c", "d"])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(KEYS, st.integers(0, 9)),
    st.lists(st.tuples(KEYS, st.integers(10, 19)), max_size=4),
    st.integers(0, 4),
)
def test_merge_keys_are_defaults_that_explicit_keys_override(base: dict, explicit: list, merge_at: int):
    """``{<<: *base, k: v}`` is ``{**base, k: v}`` wherever the ``<<`` stands; a key written twice is an error."""
    from moec.spec.yamlio import parse_yaml

    entries = [f"{k}: {v}" for k, v in explicit]
    entries.insert(min(merge_at, len(entries)), "<<: *base")
    text = "base: &base {" + ", ".join(f"{k}: {v}" for k, v in base.items()) + "}\nout: {" + ", ".join(entries) + "}\n"
    keys = [k for k, _ in explicit]
    if len(set(keys)) < len(keys):
        with pytest.raises(SpecError, match="duplicate key"):
            parse_yaml(text, "m.yaml")
        return
    assert parse_yaml(text, "m.yaml").value["out"] == {**base, **dict(explicit)}


@st.composite
def selectors(draw) -> dict:
    form = draw(st.sampled_from(["list", "range", "every"]))
    if form == "list":
        return {"layers": draw(st.lists(st.integers(0, 40), max_size=8))}
    if form == "range":
        return {"first": draw(st.integers(0, 40)), "last": draw(st.integers(0, 40))}
    sel = {"every": draw(st.integers(1, 7)), "start": draw(st.integers(0, 40))}
    if draw(st.booleans()):
        sel["last"] = draw(st.integers(0, 40))
    return sel


@settings(max_examples=300, deadline=None)
@given(selectors(), st.integers(1, 32))
def test_a_selector_names_exactly_the_layers_its_definition_says(sel: dict, n_layers: int):
    """README: a list of indices, an inclusive range first..last, or every N from start (up to last)."""
    from moec.spec.resolve import assign_selected, selected_layers
    from moec.spec.schema import Select

    def named(i: int) -> bool:
        if "layers" in sel:
            return i in sel["layers"]
        if "every" in sel:
            return i >= sel["start"] and (i - sel["start"]) % sel["every"] == 0 and i <= sel.get("last", i)
        return sel["first"] <= i <= sel["last"]

    expected = [i for i in range(n_layers) if named(i)]
    select = Select(**sel)
    assert selected_layers(select, n_layers) == expected
    marks = ["-"] * n_layers
    assign_selected(marks, select, "x")
    assert [i for i, v in enumerate(marks) if v == "x"] == expected
