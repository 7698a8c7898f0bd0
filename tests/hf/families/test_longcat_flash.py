"""LongCat-Flash (model_type longcat_flash, Meituan): on LongcatFlashConfig's defaults (LongCat-Flash-Chat's shapes)
the analyzer's total equals transformers' model built on meta less the gate_up rows it allocates for the zero experts
and never reads, counted from its own tensors; a tiny save_pretrained checkpoint (two MLA + MLP pairs and a shortcut
MoE per layer, FFN and zero experts) loads with moec.from_hf to transformers' logits and router choices, zero experts
among them, also from transformers' in-memory (stacked) names; what transformers would not run as the config says is
refused, located."""

from __future__ import annotations

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model
from tests.hf.configs import hf_model_on_meta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    refused_fields,
    saved_checkpoint,
    tiny_hf,
)
from tests.hf.test_weights import assert_same, run_moec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# LongcatFlashConfig's defaults: 28 layers of hidden 6144, MLA of 64 heads (ranks 1536 / 512), dense MLPs of 12288,
# 512 experts of 2048 and 256 zero experts, top-12; published: 560B total, 18.6B-31.3B active
LONGCAT_FLASH = {"architectures": ["LongcatFlashForCausalLM"], "model_type": "longcat_flash"}


def test_release_counts_equal_transformers_model_on_meta_without_its_unread_zero_expert_rows():
    hf = hf_model_on_meta(LONGCAT_FLASH)
    total = sum(p.numel() for p in hf.parameters())
    experts = [layer.mlp.experts for layer in hf.model.layers]
    # gate_up_proj holds E + Z experts, down_proj E: the last Z gate_up slices are never read by the forward
    unread = sum((x.gate_up_proj.shape[0] - x.down_proj.shape[0]) * x.gate_up_proj[0].numel() for x in experts)
    routed = sum(x.down_proj.numel() * 3 for x in experts)  # E · (2f·d + d·f) per layer: three d·f matrices each
    c = hf.config
    params = analyze(hf_to_model(LONGCAT_FLASH)).params
    assert params.total == total - unread
    assert params.active == total - unread - routed // c.n_routed_experts * (c.n_routed_experts - c.moe_topk)
    assert round(params.total / 1e9) == 561 and 31 <= params.active / 1e9 <= 33  # upper bound: k slots on FFN experts


def test_defaults_are_transformers_class_defaults():
    from moec.hf.families.longcat_flash import DEFAULTS

    assert_table_holds_class_defaults(DEFAULTS, transformers.LongcatFlashConfig, at_least=20)
    assert DEFAULTS["default_theta"] == transformers.LongcatFlashConfig.default_theta


@pytest.mark.parametrize(
    "change,field",
    [
        ({"head_dim": 32}, "head_dim"),  # the rotary tables must be qk_rope_head_dim wide
        ({"num_hidden_layers": 28}, "num_hidden_layers"),  # transformers derives it as 2 · num_layers
        ({"zero_expert_type": "constant"}, "zero_expert_type"),  # transformers' zero experts are identities
        ({"router_bias": True}, "router_bias"),  # built, never added
        ({"norm_topk_prob": True}, "norm_topk_prob"),
        ({"attention_method": "GQA"}, "attention_method"),
        ({"mla_scale_kv_lora": False}, "mla_scale_kv_lora"),  # transformers scales whatever it says
        ({"attention_bias": True}, "attention_bias"),
        ({"q_lora_rank": None}, "q_lora_rank"),
    ],
)
def test_what_transformers_would_not_run_as_said_is_refused_located(change, field):
    assert field in refused_fields({**LONGCAT_FLASH, **change})


def test_release_fields_saying_what_transformers_runs_are_accepted():
    release = {"zero_expert_type": "identity", "attention_method": "MLA", "use_mla": 1, "mla_scale_q_lora": True}
    plan = hf_to_model({**LONGCAT_FLASH, "num_hidden_layers": 56, **release})
    assert plan.n_layers == 28 and plan.layers[0].pair_ffn is not None and plan.layers[0].ffn.n_zero_experts == 256


# 2 layers, MLA with ranks 24 / 16, dense MLPs of 96, 6 FFN experts of 16 and 3 zero experts, top-3
TINY = {
    "vocab_size": 128, "hidden_size": 64, "ffn_hidden_size": 96, "expert_ffn_hidden_size": 16, "num_layers": 2,
    "num_attention_heads": 4, "n_routed_experts": 6, "zero_expert_num": 3, "moe_topk": 3, "kv_lora_rank": 16,
    "q_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "head_dim": 8, "v_head_dim": 8,
    "max_position_embeddings": 64, "routed_scaling_factor": 2.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = tiny_hf("longcat_flash", TINY)
    with torch.no_grad():  # routers with logits of order 1 (the harness knows routers named gate.weight)
        for name, p in hf.named_parameters():
            if name.endswith("router.classifier.weight"):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    return saved_checkpoint(hf, tmp_path_factory, "longcat_flash")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    model = moec.from_hf(folder)
    assert assert_same(hf, model) <= 1e-4
    _, choices = run_moec(model)
    assert all((idx >= 6).any() and (idx < 6).any() for idx, _ in choices.values())  # zero and FFN experts chosen


def test_in_memory_stacked_names_load_to_the_same_logits(checkpoint, tmp_path):
    """transformers' state dict as it holds it: experts stacked, gate_up_proj with E + Z slices of which moec reads
    the first E."""
    from safetensors.torch import save_file

    hf, folder = checkpoint
    tensors = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    assert tensors["model.layers.0.mlp.experts.gate_up_proj"].shape[0] == 9
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file(tensors, tmp_path / "model.safetensors")
    assert assert_same(hf, moec.from_hf(tmp_path)) <= 1e-4


def test_the_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    """moec build renders shortcut-MoE pair layers, latent scales and zero experts: the generated model.py holding the
    imported weights gives moec.nn's logits and aux bit for bit."""
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, None, tmp_path)
