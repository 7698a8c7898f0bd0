"""Importing Hugging Face config.json files: parity with transformers' own models, the shipped specs,
the per-layer semantics of each family, and clear errors for everything moec cannot represent."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from moec.analyze import analyze
from moec.commands.hf import import_hf
from moec.errors import SpecError
from moec.hf import SUPPORTED_MODEL_TYPES, hf_to_model, import_hf_config
from moec.hf.config import plan_differences, render_yaml, translate
from moec.hf.families import FAMILIES
from moec.spec import load_model, load_spec, resolve
from tests.conftest import ROOT
from tests.hf.configs import EXACT, RELEASES, SHIPPED, TINY, hf_model_on_meta, hf_params, without
from tests.hf.test_registry import families_tested_by

transformers = pytest.importorskip("transformers")

# Every release config imports exactly (EXACT). Configs with a field moec cannot represent, and the fields
# the importer names, each with a proposed schema addition:
GAPS = {
    "mixtral, router_jitter_noise 0.1": ({**RELEASES["mixtral"], "router_jitter_noise": 0.1}, ["router_jitter_noise"]),
    "phimoe, attention_factor in longrope": (
        {**RELEASES["phimoe"], "rope_scaling": {**RELEASES["phimoe"]["rope_scaling"], "attention_factor": 1.1}},
        ["rope_scaling.attention_factor"],
    ),
}  # fmt: skip

# Published totals, independent of both moec and transformers (docs/conventions.md, "Reference figures";
# Llama-2-7B's model card).
PUBLISHED_TOTAL = {"mixtral": 46_702_792_704, "deepseek_v3": 671_026_404_352, "llama": 6_738_415_616}


def test_every_supported_model_type_has_a_release_config():
    """Here (RELEASES, all EXACT) or in the family's own test module, with its count parity test."""
    assert set(RELEASES) == set(EXACT)
    own = families_tested_by("counts_equal_transformers_model_on_meta")
    assert set(SUPPORTED_MODEL_TYPES) == set(RELEASES) | own


@pytest.mark.parametrize("model_type", EXACT)
def test_analyzer_total_equals_transformers_model_on_meta(model_type):
    cfg = RELEASES[model_type]
    result = analyze(hf_to_model(cfg))
    assert result.params.total == hf_params(cfg)
    if model_type in PUBLISHED_TOTAL:
        assert result.params.total == PUBLISHED_TOTAL[model_type]


def test_deepseek_v3_mtp_is_reported_apart_because_transformers_builds_none():
    result = analyze(hf_to_model(RELEASES["deepseek_v3"]))
    assert result.mtp is not None and result.mtp.n_layers == 1 and result.mtp.params > 0
    # the headline total is the main model alone: the 671,026,404,352 transformers builds
    assert result.params.total == PUBLISHED_TOTAL["deepseek_v3"]


@pytest.mark.parametrize("case", sorted(GAPS))
def test_unrepresentable_fields_are_refused_naming_each_field(case):
    cfg, fields = GAPS[case]
    with pytest.raises(SpecError) as e:
        import_hf_config(cfg)
    text = str(e.value)
    for field in fields:
        assert field in text
    assert "proposed schema addition" in text


@pytest.mark.parametrize("case", sorted(GAPS))
def test_refused_configs_differ_from_transformers_exactly_by_their_gaps(case):
    """The nearest spec the importer drafts, plus each gap's stated parameter delta, is transformers'
    count: the mapping is right everywhere else and each proposed schema addition is sized."""
    cfg = GAPS[case][0]
    t = translate(cfg)
    assert not t.problems(gaps=False)
    nearest = analyze(resolve(load_spec("draft", text=render_yaml(t)))).params.total
    assert nearest + sum(g.param_delta for g in t.gaps) == hf_params(cfg)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec_equals_the_import_of_its_release_config(name):
    # Compared: every per-layer field except the balance coefficients (training only; config.json
    # files spell them inconsistently, e.g. DeepSeek-V3's aux_loss_alpha 0.001 vs the paper's 0.0001).
    assert plan_differences(load_model(name), hf_to_model(SHIPPED[name]), training=False) == []


def test_deepseek_v3_spec_and_config_differ_only_in_training_coefficients():
    diff = plan_differences(load_model("deepseek-v3"), hf_to_model(RELEASES["deepseek_v3"]))
    assert {d.split(":")[0] for d in diff} == {
        "layers[*].ffn.load_balance_coeff",
        "layers[*].ffn.bias_update_rate",
        "mtp[*].ffn.load_balance_coeff",
        "mtp[*].ffn.bias_update_rate",
    }


@pytest.mark.parametrize("model_type", EXACT)
def test_configs_as_transformers_saves_them_import_to_the_same_plan(model_type):
    """save_pretrained writes the transformers 5 spelling: rope_parameters, layer_types, derived fields."""
    cfg = RELEASES[model_type]
    # DBRX: transformers 5.23 reads the rope base from rope_parameters only (attn_config.rope_theta, where
    # DBRX keeps it, is ignored); a config built with the same base in both places saves consistently
    built = {**cfg, "rope_theta": cfg["attn_config"]["rope_theta"]} if model_type == "dbrx" else cfg
    saved = hf_model_on_meta(built).config.to_dict()
    assert plan_differences(hf_to_model(saved), hf_to_model(cfg)) == []


def test_dbrx_rope_base_in_two_disagreeing_places_is_refused():
    """What transformers 5.23 saves for the released DBRX config: rope_parameters with the default base
    (what transformers runs) beside attn_config.rope_theta 500000 (what DBRX was trained with)."""
    saved = hf_model_on_meta(RELEASES["dbrx"]).config.to_dict()
    with pytest.raises(SpecError, match="attn_config.rope_theta .*ambiguous"):
        hf_to_model(saved)


@pytest.mark.parametrize("model_type", EXACT)
def test_written_yaml_loads_and_resolves_to_the_same_plan(model_type):
    text = import_hf_config(RELEASES[model_type])
    plan = resolve(load_spec(f"{model_type}.yaml", text=text))
    assert plan_differences(plan, hf_to_model(RELEASES[model_type])) == []


def test_comments_name_the_source_fields():
    lines = import_hf_config(RELEASES["deepseek_v3"]).splitlines()

    def comment(prefix: str) -> str:
        return next(line for line in lines if line.strip().startswith(prefix)).split("#", 1)[1]

    assert "hidden_size" in comment("d_model:")
    assert "n_routed_experts" in comment("n_experts:")
    assert "moe_intermediate_size" in comment("d_ff: 2048")
    assert "first_k_dense_replace" in comment("- {select: {first: 0, last: 2}, ffn: dense}")
    assert "num_nextn_predict_layers" in comment("n_layers: 1")
    assert "routed_scaling_factor" in comment("scale:")
    qwen = import_hf_config(RELEASES["qwen2_moe"])
    assert "shared_expert_intermediate_size" in qwen and "shared_expert_gate" in qwen
    assert "# Ignored (no effect on the architecture):" in qwen


def test_defaulted_fields_are_marked_as_transformers_defaults():
    text = import_hf_config(without(RELEASES["mixtral"], "num_local_experts"))
    assert "num_local_experts (transformers default)" in text


# --- which layers are MoE, which slide, which rotate: against transformers' own modules ----------


def _hf_layers(cfg):
    """Per layer of transformers' model: (is MoE, sliding window, uses rope)."""
    model = hf_model_on_meta(cfg)
    hf = model.config
    types = getattr(hf, "layer_types", None)  # what the per-layer masks are built from
    out = []
    for i, layer in enumerate(model.model.layers):
        names = [n for n, _ in layer.named_parameters()]
        moe = any("experts" in n and "shared" not in n for n in names)
        attn = layer.self_attn
        if types is not None:
            window = hf.sliding_window if types[i] == "sliding_attention" else None
        else:  # one mask for all layers
            window = getattr(attn, "sliding_window", getattr(hf, "sliding_window", None))
        out.append((moe, window or None, bool(getattr(attn, "use_rope", True))))
    return out


def _moec_layers(plan):
    return [(lp.ffn.kind == "moe", lp.attention.window, lp.attention.rope) for lp in plan.layers]


SEMANTICS = {
    "qwen2_moe: decoder_sparse_step 2, mlp_only_layers, sliding on even layers < max_window_layers": {
        **TINY, "model_type": "qwen2_moe", "num_hidden_layers": 8, "decoder_sparse_step": 2, "mlp_only_layers": [3],
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
        "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 5,
    },
    "qwen3_moe: decoder_sparse_step 3 ((i+1) % 3), mlp_only_layers, sliding everywhere": {
        **TINY, "model_type": "qwen3_moe", "num_hidden_layers": 7, "decoder_sparse_step": 3, "mlp_only_layers": [5],
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16,
        "use_sliding_window": True, "sliding_window": 32,
    },
    "qwen3 dense: sliding on layers >= max_window_layers": {
        **TINY, "model_type": "qwen3", "num_hidden_layers": 5, "head_dim": 16, "use_sliding_window": True,
        "sliding_window": 8, "max_window_layers": 3,
    },
    "qwen2 dense: explicit layer_types": {
        **TINY, "model_type": "qwen2", "num_hidden_layers": 4, "use_sliding_window": True, "sliding_window": 8,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    },
    "deepseek_v3: first_k_dense_replace 2": {
        **TINY, "model_type": "deepseek_v3", "num_hidden_layers": 5, "num_key_value_heads": 4,
        "first_k_dense_replace": 2, "n_routed_experts": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
        "moe_intermediate_size": 16, "q_lora_rank": 32, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 8, "v_head_dim": 8, "num_nextn_predict_layers": 0,
    },
    "mistral: the class default window 4096 applies when the config omits it": {
        **TINY, "model_type": "mistral", "num_hidden_layers": 2, "max_position_embeddings": 8192,
    },
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SEMANTICS))
def test_layer_pattern_matches_transformers_modules(case):
    cfg = SEMANTICS[case]
    assert _moec_layers(hf_to_model(cfg)) == _hf_layers(cfg)


@pytest.mark.parametrize(
    "model_type,extra",
    [
        ("llama4_text", {"interleave_moe_layer_step": 2, "no_rope_layer_interval": 3, "intermediate_size_mlp": 80,
                         "num_local_experts": 4, "head_dim": 16, "attention_chunk_size": 16}),
        ("gpt_oss", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8, "head_dim": 16}),
    ],
)  # fmt: skip
def test_layer_pattern_of_interleaved_families_matches_transformers(model_type, extra):
    """Interleaved MoE, NoPE layers (Llama-4) and alternating windows (gpt-oss)."""
    cfg = {**TINY, "model_type": model_type, "num_hidden_layers": 6, **extra}
    t = translate(cfg)
    plan = resolve(load_spec("draft", text=render_yaml(t)))
    assert _moec_layers(plan) == _hf_layers(cfg)


def test_gpt_oss_config_without_rope_parameters_gets_transformers_default_yarn():
    cfg = {**TINY, "model_type": "gpt_oss", "num_hidden_layers": 2, "num_local_experts": 4, "head_dim": 16}
    sc = hf_to_model(cfg).positions.scaling
    hf = hf_model_on_meta(cfg).config.rope_parameters
    assert (sc.kind, sc.factor, sc.original_max_seq_len, sc.beta_fast, sc.beta_slow, sc.truncate) == (
        hf["rope_type"], hf["factor"], hf["original_max_position_embeddings"], hf["beta_fast"], hf["beta_slow"],
        hf["truncate"],
    )  # fmt: skip


def test_dropout_is_named_in_the_header_as_training_only():
    text = import_hf_config(RELEASES["granitemoe"])  # attention_dropout 0.1
    assert "# Not represented (training only: dropout" in text and "attention_dropout 0.1" in text


def test_phimoe_training_only_noise_and_sampling_are_named_in_the_header():
    text = import_hf_config(RELEASES["phimoe"])  # input_jitter_noise 0.01
    head = next(line for line in text.splitlines() if line.startswith("# Not represented"))
    assert "input_jitter_noise 0.01" in head and "SparseMixer's training-time sampling" in head


def test_transformers_class_defaults_are_the_importers_defaults():
    for mt, fam in FAMILIES.items():
        cls = transformers.CONFIG_MAPPING[mt]
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert fam.defaults["default_theta"] == cls.default_theta, mt
        for key, value in fam.defaults.items():
            if key in fields and fields[key] is not dataclasses.MISSING:
                assert fields[key] == value, (mt, key)


# --- errors ----------------------------------------------------------------------------------


def test_unknown_model_type_is_refused_with_its_location(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"hidden_size": 8, "model_type": "mamba"}, indent=2))
    with pytest.raises(SpecError) as e:
        hf_to_model(p)
    (problem,) = e.value.problems
    assert (problem.file, problem.line, problem.path) == (str(p), 3, "model_type")
    assert "'mamba' is not a supported model_type" in problem.message and "mixtral" in problem.message


@pytest.mark.parametrize(
    "model_type,change,field",
    [
        ("mixtral", {"foo_scale": 2.0}, "foo_scale"),  # unknown field: may change the model
        ("mixtral", {"router_jitter_noise": 0.1}, "router_jitter_noise"),  # jitter on the experts too
        ("qwen3_moe", {"hidden_act": "relu"}, "hidden_act"),  # a gated ReLU has no moec activation
        ("deepseek_v3", {"topk_method": "greedy"}, "topk_method"),  # DeepseekV3TopkRouter ignores it
        ("deepseek_v3", {"moe_layer_freq": 2}, "moe_layer_freq"),  # HF and DeepSeek's code disagree
        ("olmoe", {"sliding_window": 64}, "sliding_window"),  # transformers' OLMoE ignores it
        ("deepseek_v2", {"norm_topk_prob": True}, "norm_topk_prob"),  # HF ignores it, DeepSeek renormalises
        ("llama", {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}}, "rope_scaling.rope_type"),
        ("llama", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ("llama", {"hidden_size": "4096"}, "hidden_size"),  # wrong type
        ("mixtral", {"num_experts": 4}, "num_experts"),  # alias disagreeing with num_local_experts
    ],
)
def test_unrepresentable_or_invalid_values_are_refused_naming_the_field(model_type, change, field):
    with pytest.raises(SpecError) as e:
        hf_to_model({**RELEASES[model_type], **change})
    assert field in {p.path for p in e.value.problems}


def test_a_value_the_spec_checks_reject_points_back_at_the_config_field():
    with pytest.raises(SpecError) as e:
        hf_to_model({**RELEASES["mixtral"], "num_experts_per_tok": 9})
    (problem,) = e.value.problems
    assert problem.path == "num_experts_per_tok" and "exceeds moe.n_experts" in problem.message


def test_unmapped_fields_at_their_transformers_default_are_accepted():
    cfg = {**RELEASES["qwen3_moe"], "output_router_logits": False, "max_window_layers": 28, "pad_token_id": 7}
    assert plan_differences(hf_to_model(cfg), hf_to_model(RELEASES["qwen3_moe"])) == []


def test_invalid_json_reports_line_and_column(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{\n  "model_type": "llama",\n  "hidden_size": 40,,\n}')
    with pytest.raises(SpecError) as e:
        hf_to_model(p)
    assert e.value.problems[0].line == 3 and "not valid JSON" in e.value.problems[0].message


# --- the command and the no-torch promise -----------------------------------------------------------


def test_import_hf_prints_the_spec_and_writes_only_with_force(tmp_path):
    d = tmp_path / "Mixtral-8x7B-v0.1"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(RELEASES["mixtral"]))
    runner = CliRunner()
    r = runner.invoke(import_hf, [str(d)])
    assert r.exit_code == 0 and "name: Mixtral-8x7B-v0.1" in r.output
    out = tmp_path / "spec.yaml"
    assert runner.invoke(import_hf, [str(d), "-o", str(out)]).exit_code == 0
    assert plan_differences(load_model(str(out)), hf_to_model(d)) == []
    out.write_text("keep me")
    r = runner.invoke(import_hf, [str(d), "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output and out.read_text() == "keep me"
    assert runner.invoke(import_hf, [str(d), "-o", str(out), "--force"]).exit_code == 0
    assert out.read_text().startswith("# Imported by `moec import-hf`")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_import_hf_bad_input_exits_2(tmp_path):
    r = CliRunner().invoke(import_hf, [str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "no such file" in r.output


def test_importing_and_analyzing_a_config_never_imports_torch(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(RELEASES["deepseek_v3"]))
    code = (
        "import sys\n"
        "from moec.hf import hf_to_model, import_hf_config\n"
        "from moec.analyze import analyze\n"
        f"analyze(hf_to_model({str(p)!r})); import_hf_config({str(p)!r})\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_llama4_per_layer_attention_features_match_transformers_modules():
    """Chunked masks on layer_types 'chunked_attention', the L2 qk-norm where transformers builds it (rope
    layers), temperature tuning where it applies it (NoPE layers)."""
    cfg = {**TINY, "model_type": "llama4_text", "num_hidden_layers": 6, "no_rope_layer_interval": 3,
           "num_local_experts": 4, "head_dim": 16, "attention_chunk_size": 16, "floor_scale": 32}  # fmt: skip
    hf = hf_model_on_meta(cfg)
    plan = hf_to_model(cfg)
    for lp, layer, kind in zip(plan.layers, hf.model.layers, hf.config.layer_types, strict=True):
        a, attn = lp.attention, layer.self_attn
        assert a.chunk == (16 if kind == "chunked_attention" else None)
        assert a.rope == bool(attn.use_rope)
        assert a.qk_norm == hasattr(attn, "qk_norm") and a.qk_norm_kind == "l2"
        tuned = attn.attn_temperature_tuning and not attn.use_rope
        assert (a.temperature_floor_scale, a.temperature_scale) == ((32.0, 0.1) if tuned else (None, None))
