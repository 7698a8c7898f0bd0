"""Nemotron-H (model_type nemotron_h): NVIDIA-Nemotron-3-Nano-30B-A3B's counts equal transformers' model on meta and
the shipped spec is its import; each layer's one sublayer (Mamba2, attention, MLP or MoE) maps to a mixer with
ffn: none or an FFN with mixer: none, from layers_block_type or the release's hybrid_override_pattern; a tiny random
checkpoint saved by transformers (all four kinds, sigmoid group-limited routing with a selection bias and a scale,
the shared MLP) loads with moec.from_hf to transformers' logits (its torch fallback) and router choices; what moec
cannot say is refused, naming the field."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from moec.hf.config import plan_differences
from moec.spec import load_model
from moec.spec.plan import MoEPlan

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from moec.hf.families.nemotron_h import DEFAULTS  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_source_matches_the_library,
    assert_table_holds_class_defaults,
    hf_counts,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPERTS = ".experts."  # mixer.experts.*; the shared MLP is mixer.shared_experts.*

# nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16 config.json (transformers_version 4.55.4), as a public copy holds it
# (jax-ml/jax-llm-examples' nemotron3 tests): 52 layers, 23 Mamba2 + 23 MoE + 6 attention. Published: 31.6B total,
# 3.2B active (3.6B with the embeddings).
NANO = {
    "architectures": ["NemotronHForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "chunk_size": 128, "conv_kernel": 4, "eos_token_id": 2, "expand": 2, "head_dim": 128, "hidden_dropout": 0.0,
    "hidden_size": 2688, "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
    "initializer_range": 0.02, "intermediate_size": 1856, "layer_norm_epsilon": 1e-05, "mamba_head_dim": 64,
    "mamba_hidden_act": "silu", "mamba_num_heads": 64, "mamba_proj_bias": False, "mamba_ssm_cache_dtype": "float32",
    "max_position_embeddings": 262144, "mlp_bias": False, "mlp_hidden_act": "relu2", "model_type": "nemotron_h",
    "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712, "n_group": 1, "n_groups": 8,
    "n_routed_experts": 128, "n_shared_experts": 1, "norm_eps": 1e-05, "norm_topk_prob": True,
    "num_attention_heads": 32, "num_experts_per_tok": 6, "num_hidden_layers": 52, "num_key_value_heads": 2,
    "num_logits_to_keep": 1, "pad_token_id": 0, "partial_rotary_factor": 1.0, "rescale_prenorm_residual": True,
    "residual_in_fp32": False, "rope_theta": 10000, "routed_scaling_factor": 2.5, "sliding_window": None,
    "ssm_state_size": 128, "tie_word_embeddings": False, "time_step_floor": 0.0001, "time_step_max": 0.1,
    "time_step_min": 0.001, "topk_group": 1, "torch_dtype": "bfloat16", "transformers_version": "4.55.4",
    "use_bias": False, "use_cache": True, "use_conv_bias": True, "use_mamba_kernels": True, "vocab_size": 131072,
}  # fmt: skip

# Every kind of layer, two of Mamba2 and MoE; 8 experts in 2 groups, the best group's top-2 scaled by 2.5; 4 SSM heads
# of 8 in 2 groups, chunks of 5 so that the 12 test tokens end in a short chunk; Δ clamped from below at 0.05.
TINY = {
    "vocab_size": 128, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "layers_block_type": ["linear_attention", "moe", "full_attention", "mlp", "linear_attention", "moe"],
    "intermediate_size": 40, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
    "routed_scaling_factor": 2.5, "moe_intermediate_size": 16, "moe_shared_expert_intermediate_size": 24,
    "mamba_num_heads": 4, "mamba_head_dim": 8, "ssm_state_size": 8, "n_groups": 2, "conv_kernel": 3,
    "chunk_size": 5, "time_step_min": 0.05, "use_bias": True, "max_position_embeddings": 64,
}  # fmt: skip


def test_release_counts_equal_transformers_model_on_meta():
    params = analyze(hf_to_model(NANO)).params
    assert (params.total, params.active) == hf_counts(NANO, experts=EXPERTS)
    assert (params.total, params.active) == (31_577_937_344, 3_580_073_408)  # published 31.6B total, 3.6B active


def test_shipped_spec_is_the_release_import():
    shipped = load_model("nemotron-3-nano-30b-a3b")
    assert plan_differences(shipped, hf_to_model(NANO)) == []
    params = analyze(shipped).params
    assert (params.total, params.active) == hf_counts(NANO, experts=EXPERTS)


def test_one_sublayer_per_layer_and_the_mamba2_fields():
    plan = hf_to_model(NANO)
    kinds = "".join(
        {"mamba2": "M", "attention": "*"}.get(lp.mixer_kind, "E" if lp.has_ffn else "?") for lp in plan.layers
    )
    assert kinds == NANO["hybrid_override_pattern"]
    assert all(lp.has_ffn == (lp.mixer_kind == "none") for lp in plan.layers)
    assert all(isinstance(lp.ffn, MoEPlan) for lp in plan.layers if lp.has_ffn)
    m = plan.layers[0].mixer
    assert (m.n_heads, m.head_dim, m.state_dim, m.n_groups, m.conv_kernel, m.chunk) == (64, 64, 128, 8, 4, 128)
    assert (m.conv_bias, m.bias, m.step_min, m.step_max, m.norm_eps) == (True, False, 0.001, None, 1e-5)
    current = {**NANO, "layers_block_type": ["linear_attention" if ch == "M" else "moe" if ch == "E" else
               "full_attention" for ch in NANO["hybrid_override_pattern"]]}  # fmt: skip
    del current["hybrid_override_pattern"]
    assert plan_differences(hf_to_model(current), plan) == []  # transformers 5's spelling, the same layers
    legacy = {**current, "layers_block_type": [{"linear_attention": "mamba", "full_attention": "attention"}.get(t, t)
              for t in current["layers_block_type"]]}  # fmt: skip
    assert plan_differences(hf_to_model(legacy), plan) == []  # the names transformers remaps


def test_class_defaults_count_as_transformers():
    cfg = {"model_type": "nemotron_h", "mlp_hidden_act": "relu"}
    params = analyze(hf_to_model(cfg)).params
    assert (params.total, params.active) == hf_counts(cfg, experts=EXPERTS)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"mlp_hidden_act": "gelu_fast"}, "mlp_hidden_act"),
        ({"mamba_hidden_act": "gelu"}, "mamba_hidden_act"),
        ({"moe_latent_size": 1024}, "moe_latent_size"),  # latent projections around the experts
        ({"n_shared_experts": 2}, "n_shared_experts"),  # transformers builds one shared MLP whatever it says
        ({"num_nextn_predict_layers": 1}, "num_nextn_predict_layers"),
        ({"attention_bias": True}, "attention_bias"),  # NemotronHAttention has no biases whatever it says
        ({"sliding_window": 4096}, "sliding_window"),
        ({"norm_eps": 1e-6}, "norm_eps"),
        ({"hybrid_override_pattern": "MEX"}, "hybrid_override_pattern"),
        ({"layers_block_type": []}, "layers_block_type"),
        ({"num_hidden_layers": 50}, "num_hidden_layers"),  # the pattern has 52
    ],
)
def test_what_moec_cannot_say_is_refused(change, field):
    assert field in refused_fields({**NANO, **change})


def test_defaults_table_holds_transformers_class_defaults():
    assert_table_holds_class_defaults(DEFAULTS, transformers.NemotronHConfig, at_least=40)


@pytest.fixture(scope="module", params=["relu2", "relu"])
def checkpoint(request, tmp_path_factory):
    hf = tiny_hf("nemotron_h", {**TINY, "mlp_hidden_act": request.param})
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # Mamba2 dynamics where a state lasts (decays about 0.9 a token); routers of order one
        for block in hf.model.layers:
            if block.block_type == "linear_attention":
                block.mixer.A_log.copy_(torch.randn(block.mixer.A_log.shape, generator=g) * 0.5 - 1.5)
                block.mixer.dt_bias.copy_(torch.randn(block.mixer.dt_bias.shape, generator=g) * 0.5 - 1.0)
            if block.block_type == "moe":
                block.mixer.gate.weight.normal_(0, 0.5, generator=g)
        for name, p in hf.named_parameters():  # biases around 0: around 1, they would route every token alike
            if name.endswith(".bias"):
                p.normal_(0, 0.1, generator=g)
    return saved_checkpoint(hf, tmp_path_factory, f"nemotron_h_{request.param}")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.mixer_kind for lp in model.plan.layers] == ["mamba2", "none", "attention", "none", "mamba2", "none"]
    assert assert_same(hf, model) <= 1e-4


def test_tiny_checkpoint_decodes_token_by_token_to_transformers_logits(checkpoint):
    """The Mamba2 layers' convolution inputs and float32 scan state and the attention layers' KV cache carried
    through a prefill and one-token steps give transformers' logits of the whole sequence at once."""
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    cache, outs, start = model.new_cache(2, TOKENS.shape[1]), [], 0
    with torch.no_grad():
        for n in [7] + [1] * (TOKENS.shape[1] - 7):
            outs.append(model(TOKENS[:, start : start + n], cache=cache, start=start)[0])
            start += n
        want = hf(TOKENS).logits
    assert (torch.cat(outs, dim=1) - want).abs().max() <= 1e-4


def test_generated_model_gives_the_library_logits(tmp_path):
    assert_generated_source_matches_the_library(
        {**{**TINY, "mlp_hidden_act": "relu2"}, "model_type": "nemotron_h"}, tmp_path
    )
