"""Qwen3-Omni-MoE (model_type qwen3_omni_moe): the thinker-talker wrapper imports the thinker's text decoder. On the
release config the analyzer's total and active equal transformers' thinker (Qwen3OmniMoeThinkerForConditionalGeneration)
on meta less its audio and vision towers, whose counts the spec's note gives exactly; the talker and code2wav are
named, not counted. A tiny checkpoint of the whole model (Qwen3OmniMoeForConditionalGeneration with
enable_audio_output false, the smallest that saves the release's names: a thinker saved alone is a
qwen3_omni_moe_thinker config.json) loads with moec.from_hf to transformers' logits and router choices on text; the
generated model.py gives moec.nn's logits; fields transformers ignores are named when they agree and refused when
they do not."""

from __future__ import annotations

import copy

import pytest

from moec.analyze import analyze
from moec.hf import hf_to_model, import_hf_config
from moec.hf.config import plan_differences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

import moec  # noqa: E402
from tests.hf.families._harness import (  # noqa: E402
    assert_generated_model_gives_the_library_logits,
    assert_table_holds_class_defaults,
    away_from_init,
    model_counts,
    refused_fields,
    saved_checkpoint,
)
from tests.hf.test_weights import TOKENS, assert_same  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Qwen/Qwen3-Omni-30B-A3B-Instruct config.json (transformers 4.57.0.dev0). The thinker's text, vision and audio
# configs as another project's test fixture copies them, with the generation settings and other keys older
# transformers wrote into every sub-config; the thinker's and the wrapper's own fields as a dump of the loaded
# config shows them; the talker's and code2wav's configs cut to a few fields (moec reads nothing in them).
# Published: 30B-A3B (the thinker's text model: 30.5B total, 3.35B active).
_GENERATION = {
    "diversity_penalty": 0.0, "do_sample": False, "early_stopping": False, "encoder_no_repeat_ngram_size": 0,
    "length_penalty": 1.0, "max_length": 20, "min_length": 0, "no_repeat_ngram_size": 0, "num_beam_groups": 1,
    "num_beams": 1, "num_return_sequences": 1, "output_scores": False, "remove_invalid_values": False,
    "repetition_penalty": 1.0, "return_dict_in_generate": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "typical_p": 1.0,
}  # fmt: skip
_OLD_KEYS = {
    "_name_or_path": "", "add_cross_attention": False, "chunk_size_feed_forward": 0,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "is_decoder": False, "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "output_attentions": False, "output_hidden_states": False,
    "pruned_heads": {}, "return_dict": True, "tf_legacy_loss": False, "tie_encoder_decoder": False,
    "torchscript": False, "use_bfloat16": False,
}  # fmt: skip
QWEN3_OMNI_30B_A3B = {
    "architectures": ["Qwen3OmniMoeForConditionalGeneration"], "model_type": "qwen3_omni_moe",
    "assistant_token_id": 77091, "enable_audio_output": True, "im_end_token_id": 151645, "im_start_token_id": 151644,
    "system_token_id": 8948, "transformers_version": "4.57.0.dev0", "tts_bos_token_id": 151672,
    "tts_eos_token_id": 151673, "tts_pad_token_id": 151671, "user_token_id": 872,
    "thinker_config": {
        "audio_end_token_id": 151670, "audio_start_token_id": 151669, "audio_token_id": 151675, "dtype": "bfloat16",
        "image_token_id": 151655, "initializer_range": 0.02, "model_type": "qwen3_omni_moe_thinker",
        "position_id_per_seconds": 13, "seconds_per_chunk": 2, "tie_word_embeddings": False, "user_token_id": 872,
        "video_token_id": 151656, "vision_end_token_id": 151653, "vision_start_token_id": 151652,
        "text_config": {
            **_GENERATION, **_OLD_KEYS, "attention_bias": False, "attention_dropout": 0.0, "decoder_sparse_step": 1,
            "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
            "intermediate_size": 768, "max_position_embeddings": 65536, "mlp_only_layers": [],
            "model_type": "qwen3_omni_moe_text", "moe_intermediate_size": 768, "norm_topk_prob": True,
            "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
            "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
            "rope_scaling": {"interleaved": True, "mrope_interleaved": True, "mrope_section": [24, 20, 20],
                             "rope_type": "default", "type": "default"},
            "rope_theta": 1000000, "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 0,
            "tie_word_embeddings": False, "use_cache": True, "use_qk_norm": True, "use_sliding_window": False,
            "vocab_size": 152064,
        },
        "vision_config": {
            **_GENERATION, **_OLD_KEYS, "apply_vit_abs_pos_embed": True, "deepstack_visual_indexes": [8, 16, 24],
            "depth": 27, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "image_size": 768, "in_channels": 3,
            "in_chans": 3, "initializer_range": 0.02, "intermediate_size": 4304,
            "model_type": "qwen3_omni_moe_vision_encoder", "num_heads": 16, "out_hidden_size": 2048, "patch_size": 16,
            "spatial_merge_size": 2, "spatial_patch_size": 16, "temporal_patch_size": 2, "tie_word_embeddings": True,
            "tokens_per_second": 2,
        },
        "audio_config": {
            **_GENERATION, **_OLD_KEYS, "activation_dropout": 0, "activation_function": "gelu",
            "attention_dropout": 0, "conv_chunksize": 500, "d_model": 1280, "downsample_hidden_size": 480,
            "dropout": 0, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "encoder_layers": 32,
            "initializer_range": 0.02, "max_source_positions": 1500, "model_type": "qwen3_omni_moe_audio_encoder",
            "n_window": 50, "n_window_infer": 800, "num_hidden_layers": 32, "num_mel_bins": 128, "output_dim": 2048,
            "scale_embedding": False, "tie_word_embeddings": True,
        },
    },
    "talker_config": {"accept_hidden_layer": 24, "num_code_groups": 16, "thinker_hidden_size": 2048},
    "code2wav_config": {"codebook_size": 2048, "num_quantizers": 16, "num_hidden_layers": 8},
}  # fmt: skip


def thinker_on_meta(cfg: dict):
    """transformers' thinker of a wrapper config, on meta (the talker is another model, left out)."""
    kw = {k: v for k, v in copy.deepcopy(cfg).items() if k != "model_type"}
    with torch.device("meta"):
        wrapper = transformers.Qwen3OmniMoeConfig(**kw)
        return transformers.Qwen3OmniMoeThinkerForConditionalGeneration(wrapper.thinker_config), wrapper


def is_text(name: str) -> bool:
    return name.startswith(("model.language_model.", "lm_head."))


def test_release_counts_equal_transformers_model_on_meta():
    thinker, _ = thinker_on_meta(QWEN3_OMNI_30B_A3B)
    params = analyze(hf_to_model(QWEN3_OMNI_30B_A3B)).params
    assert (params.total, params.active) == model_counts(thinker, 128, 8, keep=is_text)
    assert round(params.total / 1e9, 1) == 30.5 and round(params.active / 1e9, 2) == 3.35  # 30B-A3B
    audio = sum(p.numel() for p in thinker.model.audio_tower.parameters())
    vision = sum(p.numel() for p in thinker.model.visual.parameters())
    assert sum(p.numel() for p in thinker.parameters()) == params.total + audio + vision  # nothing else
    note = import_hf_config(QWEN3_OMNI_30B_A3B)
    assert f"the audio tower (thinker_config.audio_config: {audio:,} parameters)" in note
    assert f"the vision tower (thinker_config.vision_config: {vision:,} parameters)" in note
    assert "the talker (talker_config) and code2wav (code2wav_config): the speech output" in note


def test_release_config_as_transformers_saves_it_imports_to_the_same_plan():
    """save_pretrained's spelling: rope_parameters, no generation settings, the defaults written out."""
    _, wrapper = thinker_on_meta(QWEN3_OMNI_30B_A3B)
    saved = wrapper.to_dict()
    assert "rope_parameters" in saved["thinker_config"]["text_config"]
    assert plan_differences(hf_to_model(saved), hf_to_model(QWEN3_OMNI_30B_A3B)) == []


def test_the_generation_settings_older_transformers_wrote_are_inert():
    """transformers pops them on load; so does moec, naming them in the header of the spec it writes."""
    header = import_hf_config(QWEN3_OMNI_30B_A3B).split("moec: 1")[0]
    assert "repetition_penalty" in header and "temperature" in header


def with_text(**change) -> dict:
    cfg = copy.deepcopy(QWEN3_OMNI_30B_A3B)
    cfg["thinker_config"]["text_config"].update(change)
    return cfg


_T = "thinker_config.text_config."


@pytest.mark.parametrize(
    "cfg,field",
    [
        (with_text(use_qk_norm=False), _T + "use_qk_norm"),  # the attention always norms q and k
        (with_text(use_sliding_window=True, sliding_window=4096), _T + "use_sliding_window"),  # it never slides
        (with_text(shared_expert_intermediate_size=768), _T + "shared_expert_intermediate_size"),  # no shared expert
        (with_text(rope_scaling={"type": "default", "mrope_section": [24, 20, 20], "interleaved": False}),
         _T + "rope_scaling.interleaved"),  # the sections are interleaved whatever it says
        (with_text(rope_scaling={"type": "default", "mrope_section": [24, 20]}), _T + "rope_scaling.mrope_section"),
        (with_text(model_type="qwen3_moe"), _T + "model_type"),
        (with_text(hidden_act="relu"), _T + "hidden_act"),  # no gated ReLU in moec
        (with_text(lora_rank=8), _T + "lora_rank"),  # a field nobody maps, inside the nested config
    ],
)  # fmt: skip
def test_fields_transformers_would_not_run_as_said_are_refused_located(cfg, field):
    assert refused_fields(cfg) == [field]


def test_through_the_cli_a_field_nested_twice_is_one_located_error(tmp_path):
    import json

    from click.testing import CliRunner

    from moec.commands.hf import import_hf

    path = tmp_path / "config.json"
    path.write_text(json.dumps(with_text(use_qk_norm=False), indent=2))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if '"use_qk_norm"' in text)
    r = CliRunner().invoke(import_hf, [str(path), "-o", str(tmp_path / "spec.yaml")])
    assert r.exit_code == 2 and not (tmp_path / "spec.yaml").exists()
    assert f"{path}:{line}:" in r.output and f"{_T}use_qk_norm: False" in r.output and "Traceback" not in r.output


def test_a_norm_topk_prob_false_is_imported_as_transformers_runs_it():
    """Qwen3-Omni's router reads the switch (Qwen3-VL-MoE's does not)."""
    assert not hf_to_model(with_text(norm_topk_prob=False)).layers[0].ffn.router.normalize_topk


# a dense layer among MoE ones, top-2 of 8, mrope sections of a 16-wide head, untied; towers of one block
TINY = {
    "enable_audio_output": False,
    "thinker_config": {
        "text_config": {
            "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "moe_intermediate_size": 16,
            "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [1], "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2],
                                                      "rope_theta": 1e4},
        },
        "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2,
                          "out_hidden_size": 64, "patch_size": 4, "deepstack_visual_indexes": [0],
                          "num_position_embeddings": 16},
        "audio_config": {"encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32, "d_model": 16,
                         "output_dim": 64, "downsample_hidden_size": 8, "num_mel_bins": 16},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = transformers.Qwen3OmniMoeConfig(**copy.deepcopy(TINY))
    cfg.thinker_config.text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.Qwen3OmniMoeForConditionalGeneration(cfg).eval()
    away_from_init(hf, keep=lambda name: name.startswith(("thinker.model.language_model.", "thinker.lm_head.")))
    return saved_checkpoint(hf, tmp_path_factory, "qwen3_omni_moe")


def test_tiny_checkpoint_gives_transformers_logits_and_router_choices(checkpoint):
    hf, folder = checkpoint
    names = load_file(folder / "model.safetensors").keys()
    assert {"thinker.lm_head.weight", "thinker.model.layers.0.mlp.gate.weight"} <= names  # the release's names
    model = moec.from_hf(folder)
    assert [lp.ffn.kind for lp in model.plan.layers] == ["moe", "dense", "moe"]
    assert list(model.plan.positions.mrope_sections) == [4, 2, 2] and model.plan.positions.mrope_interleaved
    assert assert_same(hf.thinker, model) <= 1e-4  # the thinker: the text model and its head


def test_the_talker_and_code2wav_tensors_are_let_go(checkpoint, tmp_path):
    """A release with enable_audio_output true holds the speech output's models beside the thinker."""
    hf, folder = checkpoint
    tensors = load_file(folder / "model.safetensors")
    tensors["talker.model.layers.0.mlp.gate.weight"] = torch.zeros(8, 16)
    tensors["code2wav.pre_transformer.norm.weight"] = torch.ones(16)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    assert assert_same(hf.thinker, moec.from_hf(tmp_path)) <= 1e-4


def test_generated_model_py_gives_the_library_logits(checkpoint, tmp_path):
    model = moec.from_hf(checkpoint[1])
    assert_generated_model_gives_the_library_logits(model, TOKENS, tmp_path)


def test_text_defaults_are_transformers_class_defaults():
    """The registry-wide test holds the wrapper's table to Qwen3OmniMoeConfig; these hold its parts'."""
    from moec.hf.families.qwen3_omni_moe import AUDIO_DEFAULTS, TEXT_DEFAULTS, THINKER_DEFAULTS

    for table, cls in (
        (TEXT_DEFAULTS, transformers.Qwen3OmniMoeTextConfig),
        (THINKER_DEFAULTS, transformers.Qwen3OmniMoeThinkerConfig),
        (AUDIO_DEFAULTS, transformers.Qwen3OmniMoeAudioEncoderConfig),
    ):
        assert_table_holds_class_defaults(table, cls, at_least=6)
    assert TEXT_DEFAULTS["default_theta"] == transformers.Qwen3OmniMoeTextConfig.default_theta
