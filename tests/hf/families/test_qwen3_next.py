"""Qwen3-Next (model_type qwen3_next): Gated DeltaNet on three layers of four, gated GQA on the fourth. On the
release config the analyzer's total and active equal transformers' model built on meta, and so do the shipped
spec's (specs/qwen3-next-80b-a3b.yaml); a tiny save_pretrained checkpoint (its fused q_proj, in_proj_qkvz and
in_proj_ba split by the mapper) loads with moec.from_hf to transformers' logits and router choices, and decodes
token by token to its own full forward; what transformers would not run as the config says is refused, located."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import plan_differences
from moec.spec import load_model
from tests.conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Qwen/Qwen3-Next-80B-A3B-Instruct config.json (transformers 4.57.0.dev0): layer_types unset, the pattern from
# full_attention_interval. Published: 80B total, 3B active.
QWEN3_NEXT_80B_A3B = {
    "architectures": ["Qwen3NextForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "full_attention_interval": 4,
    "head_dim": 256, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5120,
    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
    "linear_value_head_dim": 128, "max_position_embeddings": 262144, "mlp_only_layers": [], "model_type": "qwen3_next",
    "moe_intermediate_size": 512, "norm_topk_prob": True, "num_attention_heads": 16, "num_experts": 512,
    "num_experts_per_tok": 10, "num_hidden_layers": 48, "num_key_value_heads": 2, "output_router_logits": False,
    "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000000,
    "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 512, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.57.0.dev0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(QWEN3_NEXT_80B_A3B)).params
    assert (params.total, params.active) == hf_counts(QWEN3_NEXT_80B_A3B)
    assert round(params.total / 1e9) == 80 and round(params.active / 1e9) == 4  # "80B-A3B": 79.7B / 3.87B
    layers = hf_to_model(QWEN3_NEXT_80B_A3B).layers
    assert [lp.mixer_kind for lp in layers[:4]] == ["gated_deltanet"] * 3 + ["attention"]
    assert sum(lp.mixer_kind == "attention" for lp in layers) == 12


def test_shipped_spec_is_the_release_and_counts_as_transformers():
    spec = load_model(SPECS / "qwen3-next-80b-a3b.yaml")
    assert plan_differences(spec, hf_to_model(QWEN3_NEXT_80B_A3B)) == []
    params = analyze(spec, seq=131072).params
    assert (params.total, params.active) == hf_counts(QWEN3_NEXT_80B_A3B)


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters (partial_rotary_factor inside), layer_types written out."""
    kw = {k: v for k, v in QWEN3_NEXT_80B_A3B.items() if k != "model_type"}
    saved = transformers.Qwen3NextConfig(**kw).to_dict()
    assert "rope_parameters" in saved and "layer_types" in saved
    assert plan_differences(hf_to_model(saved), hf_to_model(QWEN3_NEXT_80B_A3B)) == []


def release(**change) -> dict:
    cfg = copy.deepcopy(QWEN3_NEXT_80B_A3B)
    cfg.update(change)
    return cfg


_TYPES = ["linear_attention"] * 3 + ["full_attention"]


@pytest.mark.parametrize(
    "cfg,field",
    [
        (release(layer_types=["linear_attention"] * 47 + ["sliding_attention"]), "layer_types"),
        (release(layer_types=_TYPES * 12, full_attention_interval=2), "full_attention_interval"),  # disagree
        (release(linear_num_key_heads=12), "linear_num_value_heads"),  # 32 value heads over 12 key heads
        (release(hidden_act="relu"), "hidden_act"),  # the delta net's convolution and the experts use it
        (release(use_sliding_window=True), "use_sliding_window"),  # Qwen3NextAttention never slides
        (release(linear_chunk_size=128), "linear_chunk_size"),  # a field nobody reads
    ],
)
def test_what_transformers_would_not_run_as_said_is_refused_located(cfg, field):
    assert field in refused_fields(cfg)


def test_layer_types_written_out_are_read_as_given():
    types = ["full_attention"] + ["linear_attention"] * 47
    layers = hf_to_model(release(layer_types=types, full_attention_interval=None)).layers
    assert [lp.mixer_kind for lp in layers[:2]] == ["attention", "gated_deltanet"]


# GQA 4/2 heads of 16 with a quarter rotating, the delta net with 2 key heads of 16 over 4 value heads of 8, a
# dense layer among MoE ones (mlp_only_layers), top-2 of 8 experts and a shared expert; layer 3 is attention
TINY = {
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 24, "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [1],
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 8,
    "linear_conv_kernel_dim": 4, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf("qwen3_next", TINY), tmp_path_factory, "qwen3_next")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = load_file(folder / "model.safetensors").keys()
    assert {"model.layers.0.linear_attn.in_proj_qkvz.weight", "model.layers.0.linear_attn.in_proj_ba.weight"} <= names
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["gated_deltanet"] * 3 + ["attention"]
    assert [lp.ffn.kind for lp in model.plan.layers] == ["moe", "dense", "moe", "moe"]
    assert assert_same(hf, model) <= 1e-4


def test_tiny_checkpoint_decodes_token_by_token_to_its_full_forward(checkpoint):
    """The delta net's state and the attention's KV cache carried through a prefill and single-token steps."""
    model = moec.from_hf(checkpoint[1]).double()
    cache, outs, start = model.new_cache(2, TOKENS.shape[1]), [], 0
    with torch.no_grad():
        for n in [5] + [1] * (TOKENS.shape[1] - 5):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            start += n
        full = model(TOKENS)[0]
    assert (torch.cat(outs, dim=1) - full).abs().max() <= 1e-10


def test_the_release_mtp_tensors_are_let_go(checkpoint, tmp_path):
    """The release stores its multi-token-prediction layer as mtp.*; transformers builds none and drops them."""
    hf, folder = checkpoint
    tensors = load_file(folder / "model.safetensors")
    tensors["mtp.fc.weight"] = torch.zeros(64, 128)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    assert assert_same(hf, moec.from_hf(tmp_path)) <= 1e-4


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.qwen3_next import DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.Qwen3NextConfig, at_least=20)
    assert DEFAULTS["default_theta"] == transformers.Qwen3NextConfig.default_theta


def test_shipped_spec_exports_as_qwen3_next_with_the_analyzers_count():
    from moec.hf import export_hf_config
    from tests.hf.configs import hf_params

    plan = load_model(SPECS / "qwen3-next-80b-a3b.yaml")
    cfg = export_hf_config(plan)
    assert cfg["model_type"] == "qwen3_next" and cfg["partial_rotary_factor"] == 0.25
    assert hf_params(cfg) == analyze(plan).params.total
    assert plan_differences(plan, hf_to_model(cfg)) == []


@pytest.mark.parametrize(
    "change,reason",
    [
        ("model.norm.unit_offset=false", "needs zero-centred norms"),
        ("moe.shared_gate=false", "one shared expert, with a sigmoid gate"),
    ],
)
def test_what_qwen3_next_cannot_say_is_not_exported_as_it(change, reason):
    from moec.errors import SpecError
    from moec.hf import export_hf_config

    with pytest.raises(SpecError, match=reason):
        export_hf_config(load_model(str(SPECS / "qwen3-next-80b-a3b.yaml"), sets=[change]))


def test_tiny_model_exports_to_a_checkpoint_transformers_runs_to_its_logits(checkpoint, tmp_path):
    """Config (by qwen3_next's exporter, not the one the model was imported from) and weights written by moec:
    transformers' model of them gives moec's logits."""
    model = moec.from_hf(checkpoint[1])
    moec.export_hf(model, tmp_path / "out", family="qwen3_next")
    hf = transformers.Qwen3NextForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert assert_same(hf, model) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    from tests.hf.families._harness import assert_generated_model_gives_the_library_logits

    assert_generated_model_gives_the_library_logits(moec.from_hf(checkpoint[1]), TOKENS, tmp_path)


def test_attention_biases_split_as_their_rows(tmp_path):
    """With attention_bias, q_proj's bias holds each head's query then gate entries too."""
    hf = tiny_hf("qwen3_next", {**TINY, "attention_bias": True})
    hf.save_pretrained(tmp_path)
    model = moec.from_hf(tmp_path)
    assert model.layers[3].attn.gate_proj.bias is not None
    assert assert_same(hf, model) <= 1e-4


def test_a_sequence_over_two_chunks_gives_transformers_logits(checkpoint):
    """70 tokens: the delta net's chunked form carries its state from one 64-token chunk into a shorter one."""
    hf, folder = checkpoint
    tokens = torch.randint(0, 128, (1, 70), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs, ours = hf(tokens).logits, moec.from_hf(folder)(tokens)[0]
    assert (theirs - ours).abs().max() <= 1e-4
