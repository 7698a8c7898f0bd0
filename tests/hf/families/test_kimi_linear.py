"""Kimi-Linear (model_type kimi_linear): the release config's counts equal transformers' model on meta, and the
shipped spec is its import; a tiny random checkpoint saved by transformers (Kimi Delta Attention and NoPE MLA
layers, a dense first layer, DeepSeek-V3's router with two expert groups, under Moonshot's checkpoint names) loads
with moec.from_hf to transformers' logits and router choices, also decoding token by token; the fields of
Moonshot's code that transformers does not read are accepted where they agree with what it builds and refused where
they do not; the shipped spec exports to a config.json transformers builds with its counts; the generated model.py
gives moec.nn's logits."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import export_hf_config, plan_differences
from moec.spec import load_model
from tests.conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

import moec  # noqa: E402
from moec.hf.families.kimi_linear import DEFAULTS  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

# moonshotai/Kimi-Linear-48B-A3B-Instruct config.json, as public copies of it hold it (NVIDIA-NeMo Megatron-Bridge's
# Kimi-Linear bridge test fixture, other engines' config fixtures): Moonshot's field names (num_experts,
# moe_renormalize, model_max_length, linear_attn_config with 1-based layer lists), plus its own mla_use_nope,
# moe_router_activation_func, moe_layer_freq and use_grouped_topk. Published: 48B total, 3B activated.
RELEASE = {
    "architectures": ["KimiLinearForCausalLM"],
    "model_type": "kimi_linear",
    "first_k_dense_replace": 1,
    "head_dim": 72,
    "hidden_act": "silu",
    "hidden_size": 2304,
    "initializer_range": 0.02,
    "intermediate_size": 9216,
    "kv_lora_rank": 512,
    "linear_attn_config": {
        "full_attn_layers": [4, 8, 12, 16, 20, 24, 27],
        "head_dim": 128,
        "kda_layers": [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26],
        "num_heads": 32,
        "short_conv_kernel_size": 4,
    },
    "mla_use_nope": True,
    "model_max_length": 1048576,
    "moe_intermediate_size": 1024,
    "moe_layer_freq": 1,
    "moe_renormalize": True,
    "moe_router_activation_func": "sigmoid",
    "num_attention_heads": 32,
    "num_expert_group": 1,
    "num_experts": 256,
    "num_experts_per_token": 8,
    "num_hidden_layers": 27,
    "num_key_value_heads": 32,
    "num_nextn_predict_layers": 0,
    "num_shared_experts": 1,
    "q_lora_rank": None,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-5,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "routed_scaling_factor": 2.446,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "torch_dtype": "bfloat16",
    "use_grouped_topk": True,
    "v_head_dim": 128,
    "vocab_size": 163840,
}
FULL_ATTENTION = [3, 7, 11, 15, 19, 23, 26]  # 0-based

# KDA on layers 0, 1 and 3 (1-based 1, 2, 4), NoPE MLA on layer 2; layer 0 dense; 8 experts top-2 in two groups
# of which one is chosen, two shared experts, a scale away from 1
TINY = {
    "vocab_size": 128, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
    "intermediate_size": 48, "moe_intermediate_size": 16, "num_experts": 8, "num_experts_per_token": 2,
    "num_shared_experts": 2, "num_expert_group": 2, "topk_group": 1, "moe_renormalize": True,
    "routed_scaling_factor": 1.7, "kv_lora_rank": 16, "q_lora_rank": None, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 8, "rms_norm_eps": 1e-5, "first_k_dense_replace": 1,
    "linear_attn_config": {"kda_layers": [1, 2, 4], "full_attn_layers": [3], "num_heads": 2, "head_dim": 8,
                           "short_conv_kernel_size": 3},
    "model_max_length": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_changes(cfg: dict, **changes) -> dict:
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(RELEASE)).params
    assert (params.total, params.active) == hf_counts(RELEASE)
    assert (params.total, params.active) == (49_122_675_072, 3_484_453_248)  # "48B total, 3B activated"


def test_shipped_spec_is_the_import_and_counts_as_transformers():
    shipped = load_model("kimi-linear-48b-a3b")
    # the spec says the balancing has no auxiliary loss; config.json says nothing of training
    assert plan_differences(shipped, hf_to_model(RELEASE)) == []
    assert (analyze(shipped).params.total, analyze(shipped).params.active) == hf_counts(RELEASE)


def test_layer_lists_choose_the_mixer_and_the_kda_sizes():
    plan = hf_to_model(RELEASE)
    assert [i for i, lp in enumerate(plan.layers) if lp.mixer_kind == "attention"] == FULL_ATTENTION
    assert {lp.mixer_kind for lp in plan.layers} == {"attention", "kda"}
    kda = plan.layers[0].mixer
    assert (kda.n_heads, kda.head_dim, kda.conv_kernel, kda.decay_rank, kda.gate_rank) == (32, 128, 4, 128, 128)
    assert (kda.decay, kda.norm_eps, plan.positions.kind) == ("softplus", 1e-5, "none")
    assert [lp.ffn.kind for lp in plan.layers[:2]] == ["dense", "moe"]
    # transformers' layer_types (what save_pretrained writes) say the same; unset everywhere: full attention
    # on layers 4, 8, ... as KimiLinearConfig decides
    types = ["full_attention" if i in FULL_ATTENTION else "linear_attention" for i in range(27)]
    assert hf_to_model({**RELEASE, "layer_types": types}) == plan
    unset = with_changes(RELEASE, linear_attn_config={"num_heads": 32, "head_dim": 128})
    assert [i for i, lp in enumerate(hf_to_model(unset).layers) if lp.mixer_kind == "attention"] == [
        4,
        8,
        12,
        16,
        20,
        24,
    ]


def test_release_fields_transformers_ignores_are_read_where_they_agree():
    text = import_hf_config(RELEASE)
    assert "mixer: kda" in text and "kind: none" in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mla_use_nope": False}, "mla_use_nope"),  # Moonshot's code would rotate the MLA rope dims
        ({"moe_router_activation_func": "softmax"}, "moe_router_activation_func"),
        ({"moe_layer_freq": 2}, "moe_layer_freq"),
        ({"num_expert_group": 4, "topk_group": 2, "use_grouped_topk": False}, "use_grouped_topk"),
        ({"hidden_act": "gelu"}, "hidden_act"),  # KDA's convolution is followed by SiLU in moec
        ({"attention_bias": True}, "attention_bias"),
        ({"gate_lower_bound": -5.0}, "gate_lower_bound"),  # Kimi K3's fields: not this model
        ({"layer_types": ["sliding_attention"] * 27}, "layer_types"),
        ({"mlp_layer_types": ["dense"] * 26}, "mlp_layer_types"),
        ({"linear_num_heads": 16}, "linear_num_heads"),  # disagrees with linear_attn_config.num_heads
    ],
)
def test_fields_that_disagree_with_what_transformers_runs_are_refused(change, field):
    assert field in refused_fields(with_changes(RELEASE, **change))


@pytest.mark.parametrize(
    ("linear", "field"),
    [
        ({"use_full_rank_gate": True}, "linear_attn_config.use_full_rank_gate"),  # Kimi K3's full-rank decay
        ({"kda_layers": list(range(1, 27))}, "linear_attn_config.full_attn_layers"),  # 4, 8, ... in both lists
        ({"kda_layers": [1, 2, 3]}, "linear_attn_config.kda_layers"),  # most layers in neither list
        ({"full_attn_layers": [4, 8, 12, 16, 20, 24, 28]}, "linear_attn_config.full_attn_layers"),  # no layer 28
        ({"full_attn_layers": None}, "linear_attn_config.kda_layers"),  # transformers ignores a lone list
    ],
)
def test_bad_layer_lists_and_unknown_kda_fields_are_refused_naming_them(linear, field):
    lists = {k: v for k, v in {**RELEASE["linear_attn_config"], **linear}.items() if v is not None}
    cfg = with_changes(RELEASE, linear_attn_config=lists)
    assert field in refused_fields(cfg)


@pytest.mark.parametrize("field,value", [("num_experts", "x"), ("model_max_length", -1)])  # Moonshot's names
def test_a_bad_value_under_a_release_name_is_refused_at_that_key(field, value, tmp_path):
    """A release's spelling of a field (FAMILY's aliases: num_local_experts, max_position_embeddings) is read under
    transformers' name, and a problem with it is named and located as the file writes it, on line 3 here, through
    the CLI (exit 2, no traceback)."""
    import json

    from click.testing import CliRunner

    from moec.cli import cli

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "kimi_linear", field: value}, indent=2))
    res = CliRunner().invoke(cli, ["import-hf", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"error: {path}:3:3 {field}: {value!r}: expected an integer" in res.output


def test_refused_layer_types_are_the_one_problem_not_the_release_lists_compared_with_them():
    linear = {**TINY.get("linear_attn_config", {}), "kda_layers": [1], "full_attn_layers": [2]}
    cfg = {**TINY, "layer_types": ["x"] * TINY["num_hidden_layers"], "linear_attn_config": linear}
    assert refused_fields({**cfg, "model_type": "kimi_linear"}) == ["layer_types"]


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.KimiLinearConfig, at_least=25)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("kimi_linear", TINY), tmp_path_factory, "kimi_linear")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = set(load_file(folder / "model.safetensors"))
    # Moonshot's names, as transformers writes them: one convolution per q, k, v, the decay beside them
    assert {"model.layers.0.self_attn.q_conv1d.weight", "model.layers.0.self_attn.A_log"} <= names
    assert "model.layers.1.block_sparse_moe.experts.0.w1.weight" in names
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["kda", "kda", "attention", "kda"]
    assert model.plan.layers[3].ffn.router.n_groups == 2
    assert assert_same(hf, model) <= 1e-4


def test_tiny_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model({**TINY, "model_type": "kimi_linear"})).params
    assert (params.total, params.active) == hf_counts({**TINY, "model_type": "kimi_linear"})


def test_tiny_checkpoint_decodes_token_by_token_to_transformers_logits(checkpoint):
    """KDA's convolution and delta-rule state and MLA's latent cache carried through a prefill and one-token steps
    give transformers' logits of the whole sequence at once."""
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    cache, outs, start = model.new_cache(2, TOKENS.shape[1]), [], 0
    with torch.no_grad():
        for n in [5] + [1] * (TOKENS.shape[1] - 5):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            start += n
        want = hf(TOKENS).logits
    assert (torch.cat(outs, dim=1) - want).abs().max() <= 1e-4


def test_export_round_trip_of_the_shipped_spec():
    """import(export(spec)) is the spec, and transformers builds the exported config.json with the spec's counts."""
    shipped = load_model("kimi-linear-48b-a3b")
    cfg = export_hf_config(shipped)
    assert (cfg["model_type"], cfg["linear_attn_config"]["full_attn_layers"]) == (
        "kimi_linear",
        [4, 8, 12, 16, 20, 24, 27],
    )
    assert plan_differences(shipped, hf_to_model(cfg)) == []
    assert hf_counts(cfg) == (analyze(shipped).params.total, analyze(shipped).params.active)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("kda: {n_heads: 32, head_dim: 128, conv_kernel: 4}", "kda: {n_heads: 32, head_dim: 128, decay_rank: 0}",
         "rank head_dim"),
        ("kda: {n_heads: 32, head_dim: 128, conv_kernel: 4}", "kda: {n_heads: 32, head_dim: 128, decay: bounded_sigmoid}",
         "softplus decay"),
        ("kda: {n_heads: 32, head_dim: 128, conv_kernel: 4}", "kda: {n_heads: 32, head_dim: 128, chunk: 128}", "chunk"),
        ("kda: {n_heads: 32, head_dim: 128, conv_kernel: 4}", "kda: {n_heads: 32, head_dim: 128, norm_eps: 1.0e-6}",
         "rms_norm_eps"),
        ("positions: {kind: none}", "positions: {kind: rope}", "no position encoding"),
    ],
)  # fmt: skip
def test_export_refuses_what_a_kimi_linear_config_cannot_say(old, new, reason, tmp_path):
    from moec.hf.draft import CannotExport
    from moec.hf.families.kimi_linear import FAMILY

    text = (SPECS / "kimi-linear-48b-a3b.yaml").read_text()
    assert old in text
    (tmp_path / "spec.yaml").write_text(text.replace(old, new))
    with pytest.raises(CannotExport, match=reason):
        FAMILY.export(load_model(str(tmp_path / "spec.yaml")))


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)
