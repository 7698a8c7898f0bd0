"""Step-3.7 (``model_type`` step3p7): moec imports the text model (step3p5, the Step-3.5 architecture) of the
multimodal wrapper and names the vision tower and projector it leaves out. Oracles: transformers'
Step3p7ForConditionalGeneration built on the meta device (its language model and LM head for the counts, its vision
model and projector for the count left out), and tiny checkpoints saved with save_pretrained for the logits and
router choices."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    TextView,
    assert_a_release_mtp_layer_is_let_go,
    assert_same_routed_logits,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import run_hf, run_moec  # noqa: E402

# stepfun-ai/Step-3.7-Flash's config.json as published facts give it (the Hugging Face repository is not reachable
# from here, and no GitHub copy of the whole file was found): every value below is asserted about the release file
# by a public test or read from its GGUF conversion (45 layers, one full-attention layer in four with 64 query heads
# and half-width rotary at base 5e6, 96 heads and full-width rotary at base 1e4 on the sliding ones, window 512,
# dense layers 0-2, 288 experts top-8 of width 1280, one shared expert of 1280, scale 3, llama3 scaling of the
# full-attention layers, SwiGLU clamps on layers 43-44, three MTP layers). The release pads rope_theta and the
# clamp lists with the MTP layers' entries, whose values no source gives: 1e4 and 0 here (transformers cuts them).
_TYPES = ["full_attention" if i % 4 == 0 else "sliding_attention" for i in range(45)]
STEP_37_FLASH: dict = {
    "architectures": ["Step3p7ForConditionalGeneration"], "model_type": "step3p7", "projector_bias": False,
    "text_config": {
        "architectures": ["Step3p5ForCausalLM"], "model_type": "step3p5", "hidden_size": 4096,
        "intermediate_size": 11264, "num_hidden_layers": 45, "vocab_size": 128896,
        "max_position_embeddings": 262144, "max_seq_len": 262144, "num_attention_heads": 64,
        "num_attention_groups": 8, "head_dim": 128, "rms_norm_eps": 1e-5, "bos_token_id": 0,
        "eos_token_id": [1, 2, 128007], "pad_token_id": 1, "layer_types": _TYPES, "sliding_window": 512,
        "attention_other_setting": {"attention_type": "sliding_attention", "num_attention_heads": 96,
                                    "num_attention_groups": 8, "head_dim": 128},
        "partial_rotary_factors": [0.5 if t == "full_attention" else 1.0 for t in _TYPES],
        "rope_theta": [5e6 if t == "full_attention" else 1e4 for t in _TYPES] + [1e4] * 3,
        "rope_scaling": {"rope_type": "llama3", "factor": 2.0, "original_max_position_embeddings": 131072,
                         "low_freq_factor": 1.0, "high_freq_factor": 32.0},
        "yarn_only_types": ["full_attention"], "use_head_wise_attn_gate": True, "use_qk_norm": True,
        "zero_centered": True, "use_moe": True, "moe_layers_enum": ",".join(str(i) for i in range(3, 45)),
        "moe_num_experts": 288, "moe_top_k": 8, "moe_intermediate_size": 1280, "share_expert_dim": 1280,
        "moe_router_activation": "sigmoid", "moe_router_scaling_factor": 3.0, "need_fp32_gate": True,
        "norm_expert_weight": True, "use_moe_router_bias": True,
        "swiglu_limits": [7.0 if i in (43, 44) else 0.0 for i in range(48)],
        "swiglu_limits_shared": [16.0 if i in (43, 44) else 0.0 for i in range(48)],
        "num_nextn_predict_layers": 3, "tie_word_embeddings": False,
    },
    "vision_config": {"model_type": "perception_encoder", "image_size": 728, "patch_size": 14, "width": 1536,
                      "layers": 47, "heads": 16},
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def on_meta(cfg: dict):
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device("meta"):
        return transformers.Step3p7ForConditionalGeneration(transformers.Step3p7Config(**kw))


def text_counts(hf) -> tuple[int, int]:
    tc = hf.config.text_config
    keep = lambda n: n.startswith(("model.language_model.", "lm_head."))  # noqa: E731
    return model_counts(hf, tc.n_routed_experts, tc.num_experts_per_tok, keep=keep)


def tower(hf) -> int:
    return sum(p.numel() for n, p in hf.named_parameters() if not n.startswith(("model.language_model.", "lm_head.")))


def test_release_counts_equal_transformers_model_on_meta():
    """The release imports whole (its clamps and the full layers' scaling included) and counts as transformers."""
    release = on_meta(STEP_37_FLASH)
    params = analyze(hf_to_model(STEP_37_FLASH)).params
    assert (params.total, params.active) == text_counts(release)
    text = import_hf_config(STEP_37_FLASH)
    assert f"left out: the vision tower and its projector (vision_config: {tower(release):,} parameters)" in text
    assert "num_nextn_predict_layers 3: transformers builds none (ignored)" in text


def test_release_scales_rope_on_its_full_attention_layers_only():
    """rope_scaling (llama3) is the full-attention type's (Step3p7TextConfig): those layers rotate with it, the
    sliding ones unscaled; the config transformers saves holds it inside the full_attention mapping and imports to
    the same plan."""
    plan = hf_to_model(STEP_37_FLASH)
    kinds = [lp.attention.rope_scaling.kind if lp.attention.rope_scaling else None for lp in plan.layers]
    assert kinds == ["llama3" if i % 4 == 0 else None for i in range(45)]
    saved = on_meta(STEP_37_FLASH).config.to_dict()
    assert saved["text_config"]["rope_parameters"]["full_attention"]["rope_type"] == "llama3"
    assert "rope_type" not in saved["text_config"]["rope_parameters"]["sliding_attention"] or (
        saved["text_config"]["rope_parameters"]["sliding_attention"]["rope_type"] == "default"
    )
    assert plan_differences(plan, hf_to_model(saved)) == []


def test_release_clamps_layers_43_and_44_only():
    """swiglu_limits 7 and swiglu_limits_shared 16 on layers 43-44 (Step3p7SparseMoeBlock reads them there):
    those layers' experts run swiglu_limit_after with their limits, every other MoE layer plain SwiGLU."""
    plan = hf_to_model(STEP_37_FLASH)
    clamps = {
        lp.index: (lp.ffn.activation, lp.ffn.activation_limit, lp.ffn.shared_activation, lp.ffn.shared_activation_limit)
        for lp in plan.layers[3:]
    }
    assert clamps == {i: ("swiglu", None, None, None) for i in range(3, 43)} | {
        i: ("swiglu_limit_after", 7.0, None, 16.0) for i in (43, 44)
    }


def test_release_fields_transformers_ignores_are_named():
    text = import_hf_config(STEP_37_FLASH)
    for said in ("use_head_wise_attn_gate true", "zero_centered true", "moe_router_activation 'sigmoid'",
                 "norm_expert_weight true", "yarn_only_types ['full_attention']", "max_seq_len 262144"):  # fmt: skip
        assert f"text_config.{said}: transformers ignores it" in text


def test_release_format_imports_to_the_plan_of_the_config_transformers_saves(tmp_path):
    """The release's fields (aliases, per-layer rope lists, moe_layers_enum, attention_other_setting) and the
    config.json save_pretrained writes for them (rope_parameters per type, mlp_layer_types, per_layer_config)."""
    release = STEP_37_FLASH
    saved = on_meta(release).config.to_dict()
    assert "per_layer_config" in saved["text_config"]
    assert plan_differences(hf_to_model(release), hf_to_model(saved)) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"use_head_wise_attn_gate": False}, "text_config.use_head_wise_attn_gate"),
        ({"zero_centered": False}, "text_config.zero_centered"),
        ({"hidden_act": "gelu"}, "text_config.hidden_act"),
        ({"attention_other_setting": {"num_attention_heads": 96, "num_attention_groups": 4}},
         "text_config.attention_other_setting.num_attention_groups"),
        ({"rope_theta": [5e6] + [1e4] * 3 + [6e6] + [1e4] * 40}, "text_config.rope_theta"),
        ({"model_type": "step3p7"}, "text_config.model_type"),
        ({"tie_word_embeddings": True}, "text_config.tie_word_embeddings"),
        ({"use_bidirectional_attention": True}, "text_config.use_bidirectional_attention"),
        ({"mlp_bias": True}, "text_config.mlp_bias"),
        ({"gating": False}, "text_config.gating"),
        ({"gating": "per-element"}, "text_config.gating"),
        ({"swiglu_limits_shared": [16.0] + [0.0] * 44}, "text_config.swiglu_limits_shared"),  # dense layer 0's MLP
        ({"swiglu_limits": 7.0}, "text_config.swiglu_limits"),
        ({"swiglu_limits": [-1.0] * 45}, "text_config.swiglu_limits"),
        ({"swiglu_limits_shared": [0.0] * 44}, "text_config.swiglu_limits_shared"),
        ({"swiglu_limits": [2e4] * 45}, "text_config.swiglu_limits"),
        ({"moe_top_k": 8, "num_experts_per_tok": 4}, "text_config.moe_top_k"),
        ({"moe_layer_freq": [1] * 45}, "text_config.moe_layer_freq"),
        ({"num_hidden_layers": 10**12, "layer_types": None}, "text_config.num_hidden_layers"),  # was a MemoryError
        # one bad field, one problem: what it feeds is not refused as well
        ({"layer_types": "x"}, "text_config.layer_types"),  # (the rope lists, the sliding heads)
        ({"layer_types": ["full_attention"] * 44}, "text_config.layer_types"),  # one short: (the rope lists)
        ({"layer_types": ["chunked_attention"] * 45}, "text_config.layer_types"),  # no such type: (the rope lists)
        ({"num_nextn_predict_layers": "x"}, "text_config.num_nextn_predict_layers"),  # (the padded lists)
        ({"max_position_embeddings": ["x"]}, "text_config.max_position_embeddings"),  # (max_seq_len's copy)
        ({"num_attention_groups": "x"}, "text_config.num_attention_groups"),  # at the alias written; (the setting's)
        ({"per_layer_config": {**{str(i): {"num_attention_heads": 96} for i in range(45) if i % 4},
                               "1": {"num_attention_heads": 96, "head_dim": 64}}},
         "text_config.per_layer_config.1.head_dim"),
    ],
)  # fmt: skip
def test_text_fields_that_would_change_the_model_are_refused(change, field):
    cfg = copy.deepcopy(STEP_37_FLASH)
    cfg["text_config"].update(change)
    assert refused_fields(cfg) == [field]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"projector_bias": "x"}, "projector_bias"),  # the left-out projector has a bias or not
        ({"vision_config": {"width": "x"}}, "vision_config.width"),  # Step3p7VisionConfig is typed: it refuses these
        ({"vision_config": {"mlp_ratio": -1.0}}, "vision_config.mlp_ratio"),
    ],
)
def test_the_left_out_towers_fields_transformers_refuses_are_refused_located(change, field):
    """Fields of the wrapper and the tower it leaves out: they were read as any value, silently (exit 0)."""
    assert refused_fields({**STEP_37_FLASH, **change}) == [field]


def test_a_tower_of_no_layers_is_counted_as_transformers_builds_it():
    cfg = copy.deepcopy(STEP_37_FLASH)
    cfg["vision_config"]["layers"] = 0
    assert f"(vision_config: {tower(on_meta(cfg)):,} parameters)" in import_hf_config(cfg)


# A tiny Step-3.7: a dense first layer then MoE (8 experts, top 2, scale 2.5, a shared MLP of another width), full
# layers with 4 heads rotating half of head_dim 16 at base 5e6, sliding layers (window 4) with 6 heads rotating all
# of it at 1e4, a query_pre_attn_scalar other than head_dim, one MTP layer (not built), a one-block tower.
TINY = {
    "model_type": "step3p7",
    "text_config": {
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_sliding_attention_heads": 6,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        "sliding_window": 4, "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"], "n_routed_experts": 8,
        "num_experts_per_tok": 2, "moe_intermediate_size": 16, "share_expert_dim": 24,
        "moe_router_scaling_factor": 2.5, "query_pre_attn_scalar": 12, "max_position_embeddings": 64,
        "rope_theta": [5e6, 1e4, 1e4, 5e6], "partial_rotary_factors": [0.5, 1.0, 1.0, 0.5],
        "num_nextn_predict_layers": 1,
    },
    "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28,
                      "patch_size": 14, "mlp_ratio": 2.0},
}  # fmt: skip


def tiny_hf(cfg: dict):
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    c = transformers.Step3p7Config(**kw)
    c.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.Step3p7ForConditionalGeneration(c).eval()
    away_from_init(hf, keep=lambda n: n.startswith("model.language_model."))
    return hf


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return saved_checkpoint(tiny_hf(TINY), tmp_path_factory, "step3p7")


def assert_same_logits_and_choices(hf, model) -> None:
    """_harness.assert_same_routed_logits through the wrapper's text view: Step3p7TopKRouter returns the renormalised
    k weights and its MoE block scales the routed sum by moe_router_scaling_factor (2.5 here) afterwards, moec's
    router scales the k weights (the same product); the MoE layers are the tiny model's 1, 2 and 3."""
    assert [lp.index for lp in model.plan.layers if lp.ffn.kind == "moe"] == [1, 2, 3]
    assert assert_same_routed_logits(TextView(hf), model, "Step3p7TopKRouter", 2.5) <= 1e-4


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert [lp.attention.n_heads for lp in model.plan.layers] == [4, 6, 6, 4]
    assert [lp.attention.rotary_dim for lp in model.plan.layers] == [None, 16, 16, None]
    assert_same_logits_and_choices(hf, model)


# the tiny model as the release is: clamps that bite on some layers (layer 1 its shared MLP's only, layer 2 its
# experts' only, layer 3 both, each its own limit; layer 0 is dense and unclamped) and a llama3 rope scaling of the
# full-attention layers (0 and 3) only, past its original length of 4 positions
RELEASE_LIKE = {
    "swiglu_limits": [0.0, 0.0, 0.05, 0.08],
    "swiglu_limits_shared": [0.0, 0.06, 0.0, 0.1],
    "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "original_max_position_embeddings": 4,
                     "low_freq_factor": 1.0, "high_freq_factor": 4.0},
}  # fmt: skip


def test_tiny_checkpoint_with_clamps_and_full_layer_scaling_gives_transformers_logits(tmp_path_factory, tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["text_config"].update(RELEASE_LIKE)
    hf, folder = saved_checkpoint(tiny_hf(cfg), tmp_path_factory, "step3p7_release_like")
    model = moec.from_hf(folder)
    assert [(lp.ffn.activation, lp.ffn.shared_activation) for lp in model.plan.layers[1:]] == [
        ("swiglu", "swiglu_limit_after"),
        ("swiglu_limit_after", "swiglu"),
        ("swiglu_limit_after", None),
    ]
    assert [lp.attention.rope_scaling is not None for lp in model.plan.layers] == [True, False, False, True]
    assert_same_logits_and_choices(hf, model)
    want, _ = run_hf(TextView(hf))
    # each part bites: the same weights without the full layers' scaling (moec), or without a clamp (transformers)
    unscaled = tmp_path / "unscaled"
    shutil.copytree(folder, unscaled)
    saved = json.loads((unscaled / "config.json").read_text())
    full = saved["text_config"]["rope_parameters"]["full_attention"]
    kept = {k: full[k] for k in ("rope_theta", "partial_rotary_factor") if k in full}
    saved["text_config"]["rope_parameters"]["full_attention"] = {"rope_type": "default", **kept}
    (unscaled / "config.json").write_text(json.dumps(saved))
    assert (run_moec(moec.from_hf(unscaled))[0] - want).abs().max().item() > 1e-3
    for module in hf.modules():
        if hasattr(module, "limit"):
            module.limit = float("inf")
    assert (run_hf(TextView(hf))[0] - want).abs().max().item() > 1e-3


def test_a_release_mtp_layer_is_let_go(tmp_path_factory, tmp_path):
    """A checkpoint without the routed scale (assert_same compares transformers' router weights as they are)."""
    cfg = copy.deepcopy(TINY)
    cfg["text_config"]["moe_router_scaling_factor"] = 1.0
    hf, folder = saved_checkpoint(tiny_hf(cfg), tmp_path_factory, "step3p7_mtp")
    assert json.loads((folder / "config.json").read_text())["text_config"]["num_nextn_predict_layers"] == 1
    assert_a_release_mtp_layer_is_let_go(TextView(hf), folder, tmp_path, mtp_layer=4)
